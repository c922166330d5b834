//! `bbot-controller status JOB`: the job's board × commit table in the
//! layout of `bbot-manifest --summary` (manifests::summary), so that a job
//! run through the controller reads like a result run by hand.
//!
//! Not a call into `board_summary` itself: that reads one result manifest
//! and sizes the table from the operations present, so columns with no
//! finished cell yet would vanish. This keeps every column, with `-` for
//! cells still pending exactly as the summary shows missing ones, and adds
//! below the table what a job has and a result does not (commits, progress).

use std::fmt::Write;

use manifests::ResultStatus;

use crate::views::{CellState, JobState, JobView};

fn cell(status: ResultStatus) -> String {
    match status {
        ResultStatus::Success | ResultStatus::Skip => status.as_str().to_string(),
        other => other.as_str().to_uppercase(),
    }
}

/// The table, then the commits and the progress.
pub fn render(job: &JobView) -> String {
    let worst = job
        .cells
        .iter()
        .filter_map(|c| c.status)
        .fold(ResultStatus::Skip, ResultStatus::merge);
    let columns = job.columns();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}: {} ({} boards x {} commits)",
        job.name,
        job.version,
        cell(worst),
        job.boards.len(),
        columns
    );
    let width = job
        .boards
        .iter()
        .map(|b| b.target.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = write!(out, "{:width$}", "board");
    for c in 0..columns {
        let _ = write!(out, "  {:<9}", format!("@{c}"));
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    for (b, board) in job.boards.iter().enumerate() {
        let _ = write!(out, "{:width$}", board.target);
        for c in 0..columns {
            let s = job
                .cell(b, c)
                .and_then(|x| x.status)
                .map_or("-".to_string(), cell);
            let _ = write!(out, "  {s:<9}");
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out.push_str(&footer(job));
    out
}

fn footer(job: &JobView) -> String {
    let mut out = String::new();
    if job.commits.is_empty() {
        let _ = writeln!(
            out,
            "@0 = head of {}",
            job.reference.as_deref().unwrap_or("the default branch")
        );
    } else {
        for (i, c) in job.commits.iter().enumerate() {
            let _ = writeln!(out, "@{i} = {c}");
        }
    }
    let done = job
        .cells
        .iter()
        .filter(|c| c.state == CellState::Done)
        .count();
    let building = job
        .cells
        .iter()
        .filter(|c| c.state == CellState::Building)
        .count();
    let _ = write!(
        out,
        "job {}: {}, {done} of {} cells done",
        job.id,
        job.state.as_str(),
        job.cells.len()
    );
    if job.state == JobState::Running {
        let _ = write!(
            out,
            " ({building} building, {} queued)",
            job.cells.len() - done - building
        );
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::CellView;
    use manifests::{Board, OperationResult, ResultManifest};
    use std::collections::BTreeMap;

    fn job(statuses: &[&[Option<ResultStatus>]]) -> JobView {
        let boards = ["sandbox", "qemu_arm64"];
        JobView {
            id: 7,
            name: "u-boot".into(),
            version: "1".into(),
            repository: "r".into(),
            reference: Some("master".into()),
            target: "t".into(),
            machine: "m".into(),
            boards: boards
                .iter()
                .map(|b| Board {
                    target: b.to_string(),
                    arch: "x".into(),
                })
                .collect(),
            commits: vec!["aaaa".into(), "bbbb".into()],
            build_settings: Vec::new(),
            boards_per_task: 1,
            max_attempts: 3,
            state: JobState::Finished,
            created: 0.0,
            finished: None,
            counts: BTreeMap::new(),
            cells: statuses
                .iter()
                .enumerate()
                .flat_map(|(b, row)| {
                    row.iter().enumerate().map(move |(c, st)| CellView {
                        board: b,
                        commit: c,
                        status: *st,
                        state: if st.is_some() {
                            CellState::Done
                        } else {
                            CellState::Queued
                        },
                        task: None,
                        log_bytes: 0,
                    })
                })
                .collect(),
            tasks: Vec::new(),
        }
    }

    #[test]
    fn same_layout_as_the_manifest_summary() {
        use ResultStatus::*;
        let j = job(&[
            &[Some(Success), Some(Error)],
            &[Some(Warning), Some(Success)],
        ]);
        let mut r = ResultManifest::new("u-boot", "1");
        for (name, st) in [
            ("sandbox@0", Success),
            ("sandbox@1", Error),
            ("qemu_arm64@0", Warning),
            ("qemu_arm64@1", Success),
        ] {
            r.push_operation(OperationResult {
                name: name.into(),
                status: st,
                log: None,
            });
        }
        let ours = render(&j);
        let theirs = manifests::summary::board_summary(&r);
        assert!(
            ours.starts_with(&theirs),
            "ours:\n{ours}\ntheirs:\n{theirs}"
        );
        assert!(
            ours.ends_with("@1 = bbbb\njob 7: finished, 4 of 4 cells done\n"),
            "{ours}"
        );
    }

    #[test]
    fn pending_cells_show_as_dashes_and_columns_stay() {
        let mut j = job(&[&[Some(ResultStatus::Success), None], &[None, None]]);
        j.state = JobState::Running;
        let s = render(&j);
        assert!(s.contains("board       @0         @1\n"), "{s}");
        assert!(s.contains("sandbox     success    -\n"), "{s}");
        assert!(s.contains("qemu_arm64  -          -\n"), "{s}");
        assert!(
            s.contains("1 of 4 cells done (0 building, 3 queued)"),
            "{s}"
        );
    }
}
