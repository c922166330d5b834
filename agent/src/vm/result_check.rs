//! What the agent forwards of a guest's result: the guest runs untrusted
//! code, so its result manifest is evidence about the task, not the
//! result itself. The result the controller gets is built here from the
//! task the agent sent (name, version, checksums, the set of operations)
//! with only each asked-for operation's status and log taken from the
//! guest, every text made acceptable to build2's parser, and the overall
//! status recomputed.

use std::collections::HashMap;

use manifests::guest::{MACHINE_OPERATION, WORKER_OPERATION};
use manifests::{sanitize_text, OperationResult, ResultManifest, ResultStatus, TaskManifest};

/// The log of an operation the guest did not report.
pub const MISSING_LOG: &str = "no result from the guest\n";

/// How many names of unexpected operations the `machine` note lists (the
/// rest are counted): a guest may send hundreds of thousands.
const LISTED_NAMES: usize = 10;

/// Longest name of an unexpected operation quoted in the note.
const QUOTED_NAME_CHARS: usize = 80;

/// The result to forward for `task`, given what its guest uploaded.
///
/// - Name, version and checksums are the task's; unknown fields are dropped.
/// - There is exactly one operation per board × commit of the task, in the
///   task's order; one the guest did not report is `abnormal` with
///   [`MISSING_LOG`].
/// - The guest's own failure report (one [`WORKER_OPERATION`]) is kept.
/// - Operations the task did not ask for, and second reports of one it did,
///   are dropped and listed in an `abnormal` [`MACHINE_OPERATION`]: a guest
///   that writes them broke the contract.
/// - Logs go through [`sanitize_text`]; the overall status is the worst
///   operation status.
pub fn vet_guest_result(task: &TaskManifest, guest: ResultManifest) -> ResultManifest {
    let commits = task.commits.len().max(1);
    let mut expected: Vec<(String, Option<OperationResult>)> =
        Vec::with_capacity(task.boards.len() * commits);
    for board in &task.boards {
        for upto in 0..commits {
            expected.push((TaskManifest::operation_name(board, upto), None));
        }
    }
    let index: HashMap<&str, usize> = expected
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.as_str(), i))
        .collect();
    // Names are looked up before anything is stored, so `index` can borrow
    // `expected`'s names: collect the decisions first.
    let mut placed: Vec<(usize, OperationResult)> = Vec::new();
    let mut worker: Option<OperationResult> = None;
    let mut unexpected = Unexpected::default();
    let mut seen = vec![false; expected.len()];
    for op in guest.operations {
        let clean = |op: OperationResult| OperationResult {
            log: op.log.as_deref().map(sanitize_text),
            ..op
        };
        match index.get(op.name.as_str()) {
            Some(&i) if !seen[i] => {
                seen[i] = true;
                placed.push((i, clean(op)));
            }
            Some(_) => unexpected.note(&op.name, "reported twice"),
            None if op.name == WORKER_OPERATION && worker.is_none() => worker = Some(clean(op)),
            None => unexpected.note(&op.name, "not asked for"),
        }
    }
    drop(index);
    for (i, op) in placed {
        expected[i].1 = Some(op);
    }

    let mut r = ResultManifest::new(task.name.clone(), task.version.clone());
    r.worker_checksum = task.worker_checksum.clone();
    r.dependency_checksum = task.dependency_checksum.clone();
    for (name, op) in expected {
        r.push_operation(op.unwrap_or(OperationResult {
            name,
            status: ResultStatus::Abnormal,
            log: Some(MISSING_LOG.to_string()),
        }));
    }
    if let Some(op) = worker {
        r.push_operation(op);
    }
    if let Some(note) = unexpected.into_note() {
        tracing::warn!("task {} {}: {}", task.name, task.version, note.trim_end());
        r.push_operation(OperationResult {
            name: MACHINE_OPERATION.to_string(),
            status: ResultStatus::Abnormal,
            log: Some(note),
        });
    }
    r
}

/// The operations of a guest's result that were dropped, summarised for a
/// person (bounded whatever the guest sent).
#[derive(Default)]
struct Unexpected {
    count: usize,
    listed: Vec<String>,
}

impl Unexpected {
    fn note(&mut self, name: &str, why: &str) {
        self.count += 1;
        if self.listed.len() < LISTED_NAMES {
            let mut shown: String = name.chars().take(QUOTED_NAME_CHARS).collect();
            if shown.len() < name.len() {
                shown.push_str("...");
            }
            self.listed.push(format!(
                "  '{}' ({why})\n",
                sanitize_text(&shown.escape_debug().to_string())
            ));
        }
    }

    fn into_note(self) -> Option<String> {
        if self.count == 0 {
            return None;
        }
        let mut note = format!(
            "the guest's result had {} operation(s) the task did not ask for; dropped:\n",
            self.count
        );
        for line in &self.listed {
            note.push_str(line);
        }
        if self.count > self.listed.len() {
            note.push_str(&format!("  and {} more\n", self.count - self.listed.len()));
        }
        Some(note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifests::Document;

    fn task(boards: &[&str], commits: usize) -> TaskManifest {
        let mut text = String::from(
            ": 1\nname: u-boot\nversion: 1.0\nrepository-url: https://example.org/u-boot.git\n\
             machine: m\ntarget: x86_64-linux-gnu\nworker-checksum: w1\ndependency-checksum: d1\n",
        );
        for c in 0..commits {
            text.push_str(&format!("commit: {:040x}\n", c + 1));
        }
        for b in boards {
            text.push_str(&format!("board: {b} arm\n"));
        }
        TaskManifest::parse(text.as_bytes(), "task").expect("task")
    }

    fn op(name: &str, status: ResultStatus, log: &str) -> OperationResult {
        OperationResult {
            name: name.into(),
            status,
            log: Some(log.into()),
        }
    }

    #[test]
    fn forged_and_missing_operations() {
        let t = task(&["sandbox", "qemu_arm64"], 2);
        let mut g = ResultManifest::new("evil", "6.6.6");
        g.status = ResultStatus::Success;
        g.worker_checksum = Some("forged".into());
        g.extra.push(("x-forged".into(), "1".into()));
        g.operations = vec![
            op("evil@0", ResultStatus::Success, "pwned"),
            op(
                "sandbox@0",
                ResultStatus::Success,
                "ok\r\nbom\u{feff} nel\u{85}",
            ),
            op("sandbox@0", ResultStatus::Success, "again"),
            op("sandbox@7", ResultStatus::Success, ""),
            op("qemu_arm64@1", ResultStatus::Warning, "w"),
        ];
        let r = vet_guest_result(&t, g);
        assert_eq!((r.name.as_str(), r.version.as_str()), ("u-boot", "1.0"));
        assert_eq!(r.worker_checksum.as_deref(), Some("w1"));
        assert_eq!(r.dependency_checksum.as_deref(), Some("d1"));
        assert!(r.extra.is_empty());
        let names: Vec<&str> = r.operations.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "sandbox@0",
                "sandbox@1",
                "qemu_arm64@0",
                "qemu_arm64@1",
                "machine"
            ]
        );
        assert_eq!(r.operations[0].status, ResultStatus::Success);
        assert_eq!(
            r.operations[0].log.as_deref(),
            Some("ok\nbom\\u{feff} nel\\u{0085}")
        );
        assert_eq!(r.operations[1].status, ResultStatus::Abnormal);
        assert_eq!(r.operations[1].log.as_deref(), Some(MISSING_LOG));
        assert_eq!(r.operations[3].status, ResultStatus::Warning);
        let note = r.operations[4].log.as_deref().unwrap_or("");
        assert!(note.contains("3 operation(s)"), "{note}");
        assert!(note.contains("'evil@0' (not asked for)"), "{note}");
        assert!(note.contains("'sandbox@0' (reported twice)"), "{note}");
        assert_eq!(r.status, ResultStatus::Abnormal);
        // What is forwarded is what build2 accepts.
        let text = r.to_text().expect("serializes");
        assert_eq!(
            ResultManifest::parse(text.as_bytes(), "r").expect("parses"),
            r
        );
    }

    #[test]
    fn an_honest_result_passes_through() {
        let t = task(&["sandbox"], 0);
        let mut g = ResultManifest::new("u-boot", "1.0");
        g.push_operation(op("sandbox@0", ResultStatus::Warning, "w\n"));
        g.worker_checksum = Some("w1".into());
        g.dependency_checksum = Some("d1".into());
        let r = vet_guest_result(&t, g.clone());
        assert_eq!(r, g);
    }

    #[test]
    fn the_guests_own_failure_report_is_kept_once() {
        let t = task(&["sandbox"], 1);
        let mut g = ResultManifest::new("u-boot", "1.0");
        g.push_operation(op(
            WORKER_OPERATION,
            ResultStatus::Abnormal,
            "clone failed\n",
        ));
        g.push_operation(op(WORKER_OPERATION, ResultStatus::Success, "second"));
        g.push_operation(op(MACHINE_OPERATION, ResultStatus::Success, "forged"));
        let r = vet_guest_result(&t, g);
        let names: Vec<&str> = r.operations.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["sandbox@0", "worker", "machine"]);
        assert_eq!(r.operations[1].log.as_deref(), Some("clone failed\n"));
        assert_eq!(r.operations[2].status, ResultStatus::Abnormal);
        assert!(r.operations[2]
            .log
            .as_deref()
            .unwrap_or("")
            .contains("'machine'"));
    }

    #[test]
    fn a_flood_of_operations_gives_a_bounded_note() {
        let t = task(&["sandbox"], 1);
        let mut g = ResultManifest::new("u-boot", "1.0");
        let long = "x".repeat(10_000);
        for i in 0..100_000 {
            let name = if i < 5 {
                format!("{long}{i}@0")
            } else {
                format!("b{i}@0")
            };
            g.operations.push(op(&name, ResultStatus::Success, ""));
        }
        let r = vet_guest_result(&t, g);
        let note = r
            .operation(MACHINE_OPERATION)
            .and_then(|o| o.log.as_deref())
            .unwrap_or("");
        assert!(note.len() < 2_000, "{} bytes", note.len());
        assert!(note.contains("and 99990 more"), "{note}");
        assert!(
            note.contains(&format!("'{}...' (not asked for)", &long[..80])),
            "{note}"
        );
    }
}
