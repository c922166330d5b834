//! Merging a task's result into its job's board × commit table, and
//! deciding what is tried again.
//!
//! Rules (issue 12): `skip`, `success`, `warning` and `error` are final
//! for their cell. `abort`, `abnormal` and `interrupt`, and cells the
//! result does not mention at all, are tried again — only those cells, as
//! new tasks — until the task lineage has had `max_attempts` attempts;
//! then they are final `abort` with the reason. `abnormal` (the guest or
//! the machinery broke) is retried like `abort`: it is not the build's
//! fault either. An expired lease counts as an attempt too, so a task
//! that kills every agent it lands on cannot circulate for ever.
//!
//! Operations are `<target>@<commit_upto>` where `commit_upto` indexes the
//! task's OWN commit list, which after a partial retry is a subset of the
//! job's: the index maps back through the task's commit list to the job's
//! column, never directly.

use std::collections::BTreeMap;

use manifests::{ResultManifest, ResultStatus};

use crate::jobs::{JobSpec, TaskCells};

/// Whether a cell with this status is done for good.
pub fn is_final(status: ResultStatus) -> bool {
    matches!(
        status,
        ResultStatus::Skip | ResultStatus::Success | ResultStatus::Warning | ResultStatus::Error
    )
}

/// A cell's final outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellOutcome {
    /// Board index in the job.
    pub board: usize,
    /// Column index in the job.
    pub commit: usize,
    /// Final status.
    pub status: ResultStatus,
    /// The build's log (or why the cell was given up).
    pub log: String,
}

/// What a result does to the table.
#[derive(Debug, Clone, Default)]
pub struct Merge {
    /// Cells that are now final.
    pub finished: Vec<CellOutcome>,
    /// New tasks for cells to try again (attempt + 1).
    pub retry: Vec<TaskCells>,
    /// Why cells were retried or given up (for the task's record).
    pub note: Option<String>,
    /// Operations that name no cell of the task (logged, kept out of the table).
    pub ignored: Vec<String>,
}

/// The first non-blank line of a log, for one-line reasons.
pub fn first_line(log: &str) -> &str {
    log.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// Splits `<target>@<commit_upto>`.
fn board_op(name: &str) -> Option<(&str, usize)> {
    let (target, upto) = name.rsplit_once('@')?;
    if target.is_empty() || upto.is_empty() || !upto.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((target, upto.parse().ok()?))
}

/// Merges `result` for the task with `cells` (its `attempt`-th attempt)
/// into `spec`'s table.
pub fn merge(spec: &JobSpec, cells: &TaskCells, attempt: u32, result: &ResultManifest) -> Merge {
    let mut out = Merge::default();
    // (board, column) -> (status, log) for the task's cells.
    let mut seen: BTreeMap<(usize, usize), (ResultStatus, String)> = BTreeMap::new();
    let mut task_level: Vec<String> = Vec::new();
    for op in &result.operations {
        let log = op.log.clone().unwrap_or_default();
        let Some((target, upto)) = board_op(&op.name) else {
            // `machine`, `worker`, ...: says something about the whole task.
            task_level.push(format!("{}: {}: {}", op.name, op.status, first_line(&log)));
            continue;
        };
        let board = cells
            .boards
            .iter()
            .copied()
            .find(|&b| spec.boards.get(b).is_some_and(|x| x.target == target));
        let column = cells.commits.get(upto).copied();
        match (board, column) {
            (Some(b), Some(c)) => {
                seen.insert((b, c), (op.status, log));
            }
            _ => out.ignored.push(op.name.clone()),
        }
    }
    let task_reason = if task_level.is_empty() {
        format!("not in the {} result", result.status)
    } else {
        task_level.join("; ")
    };
    let mut again: Vec<(usize, usize)> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    for (b, c) in cells.cells() {
        match seen.remove(&(b, c)) {
            Some((status, log)) if is_final(status) => out.finished.push(CellOutcome {
                board: b,
                commit: c,
                status,
                log,
            }),
            Some((status, log)) => {
                let why = format!("{status}: {}", first_line(&log));
                if !reasons.contains(&why) {
                    reasons.push(why);
                }
                again.push((b, c));
            }
            None => {
                if !reasons.contains(&task_reason) {
                    reasons.push(task_reason.clone());
                }
                again.push((b, c));
            }
        }
    }
    if again.is_empty() {
        return out;
    }
    let reason = reasons.join("; ");
    if attempt >= spec.max_attempts {
        out.note = Some(format!(
            "gave up on {} cell(s) after {attempt} attempt(s): {reason}",
            again.len()
        ));
        out.finished
            .extend(again.into_iter().map(|(b, c)| CellOutcome {
                board: b,
                commit: c,
                status: ResultStatus::Abort,
                log: format!("gave up after {attempt} attempt(s): {reason}\n"),
            }));
    } else {
        out.note = Some(format!(
            "{} cell(s) to try again (attempt {}): {reason}",
            again.len(),
            attempt + 1
        ));
        out.retry = regroup(&again);
    }
    out
}

/// Tasks covering exactly `cells`: boards with the same set of missing
/// commits share a task (a task is always boards × commits).
pub fn regroup(cells: &[(usize, usize)]) -> Vec<TaskCells> {
    let mut by_board: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(b, c) in cells {
        let v = by_board.entry(b).or_default();
        if !v.contains(&c) {
            v.push(c);
        }
    }
    let mut by_commits: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
    for (b, mut commits) in by_board {
        commits.sort_unstable();
        by_commits.entry(commits).or_default().push(b);
    }
    by_commits
        .into_iter()
        .map(|(commits, boards)| TaskCells { boards, commits })
        .collect()
}

/// What an expired lease does to its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// Back to the queue as attempt `n`.
    Requeue(u32),
    /// Out of attempts: these cells are final `abort`.
    GiveUp(Vec<CellOutcome>),
}

/// Decides an expired lease: `why` says whose lease and how long.
pub fn expiry(spec: &JobSpec, cells: &TaskCells, attempt: u32, why: &str) -> Expiry {
    if attempt < spec.max_attempts {
        return Expiry::Requeue(attempt + 1);
    }
    Expiry::GiveUp(
        cells
            .cells()
            .map(|(b, c)| CellOutcome {
                board: b,
                commit: c,
                status: ResultStatus::Abort,
                log: format!("gave up after {attempt} attempt(s): {why}\n"),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{Defaults, JobRequest};
    use manifests::OperationResult;

    fn spec() -> JobSpec {
        JobRequest {
            repository: "https://example.org/u-boot.git".into(),
            commits: vec!["aaaa".into(), "bbbb".into(), "cccc".into()],
            boards: vec!["a x".into(), "b x".into(), "c x".into()],
            machine: "*".into(),
            ..JobRequest::default()
        }
        .into_spec(Defaults {
            boards_per_task: 3,
            max_attempts: 3,
        })
        .expect("valid")
    }

    fn result(ops: &[(&str, ResultStatus)]) -> ResultManifest {
        let mut r = ResultManifest::new("u-boot", "0");
        for (name, status) in ops {
            r.push_operation(OperationResult {
                name: name.to_string(),
                status: *status,
                log: Some(format!("log of {name}\n")),
            });
        }
        r
    }

    use ResultStatus::*;

    #[test]
    fn full_success_finishes_every_cell() {
        let s = spec();
        let t = &s.split()[0];
        let ops: Vec<String> = ["a", "b", "c"]
            .iter()
            .flat_map(|b| (0..3).map(move |c| format!("{b}@{c}")))
            .collect();
        let r = result(
            &ops.iter()
                .map(|o| (o.as_str(), Success))
                .collect::<Vec<_>>(),
        );
        let m = merge(&s, t, 1, &r);
        assert_eq!(m.finished.len(), 9);
        assert!(m.retry.is_empty() && m.note.is_none() && m.ignored.is_empty());
    }

    #[test]
    fn interrupted_result_retries_only_the_missing_cells() {
        let s = spec();
        let t = &s.split()[0];
        let r = result(&[
            ("a@0", Success),
            ("a@1", Warning),
            ("a@2", Error),
            ("b@0", Success),
            ("b@1", Interrupt),
            ("machine", Interrupt),
        ]);
        let m = merge(&s, t, 1, &r);
        assert_eq!(m.finished.len(), 4);
        // b misses columns 1 and 2, c misses all three: two tasks.
        assert_eq!(
            m.retry,
            vec![
                TaskCells {
                    boards: vec![2],
                    commits: vec![0, 1, 2]
                },
                TaskCells {
                    boards: vec![1],
                    commits: vec![1, 2]
                },
            ]
        );
        let note = m.note.expect("note");
        assert!(
            note.contains("attempt 2") && note.contains("machine: interrupt"),
            "{note}"
        );
    }

    #[test]
    fn commit_upto_maps_through_the_tasks_own_commit_list() {
        let s = spec();
        // A retry task for board b at job columns 1 and 2 only.
        let t = TaskCells {
            boards: vec![1],
            commits: vec![1, 2],
        };
        let r = result(&[("b@0", Success), ("b@1", Error), ("b@2", Success)]);
        let m = merge(&s, &t, 2, &r);
        let got: Vec<(usize, usize, ResultStatus)> = m
            .finished
            .iter()
            .map(|c| (c.board, c.commit, c.status))
            .collect();
        assert_eq!(got, [(1, 1, Success), (1, 2, Error)]);
        assert_eq!(m.ignored, ["b@2"], "no third commit in this task");
        assert!(m.retry.is_empty());
    }

    #[test]
    fn out_of_attempts_cells_become_abort_with_the_reason() {
        let s = spec();
        let t = TaskCells {
            boards: vec![0],
            commits: vec![0, 1],
        };
        let r = result(&[("a@0", Success), ("a@1", Abort)]);
        let m = merge(&s, &t, 3, &r);
        assert!(m.retry.is_empty());
        let last = m.finished.last().expect("cell");
        assert_eq!((last.commit, last.status), (1, Abort));
        assert!(last.log.contains("gave up after 3") && last.log.contains("log of a@1"));
    }

    #[test]
    fn expiry_requeues_until_out_of_attempts() {
        let s = spec();
        let t = &s.split()[0];
        assert_eq!(expiry(&s, t, 1, "x"), Expiry::Requeue(2));
        match expiry(&s, t, 3, "lease expired") {
            Expiry::GiveUp(cells) => {
                assert_eq!(cells.len(), 9);
                assert!(cells[0].log.contains("lease expired"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn board_ops_are_parsed_strictly() {
        assert_eq!(board_op("sandbox@2"), Some(("sandbox", 2)));
        assert_eq!(board_op("a@b@0"), Some(("a@b", 0)));
        for bad in ["machine", "@0", "x@", "x@-1", "x@1a"] {
            assert_eq!(board_op(bad), None, "{bad}");
        }
    }
}
