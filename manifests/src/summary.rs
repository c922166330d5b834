//! A board × commit table of a result, for people: what the main job
//! prints at the end and what `bbot-manifest --summary` shows.

use crate::bbot::ResultManifest;
use crate::status::ResultStatus;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Splits a board-build operation name `<target>@<commit_upto>`.
fn board_commit(op: &str) -> Option<(&str, usize)> {
    let (board, upto) = op.rsplit_once('@')?;
    Some((board, upto.parse().ok()?)).filter(|(b, _)| !b.is_empty())
}

fn cell(status: ResultStatus) -> String {
    match status {
        ResultStatus::Success | ResultStatus::Skip => status.as_str().to_string(),
        other => other.as_str().to_uppercase(),
    }
}

/// Renders `result` as one line per board and one column per commit
/// (`@0`, `@1`, ...), failures upper-cased so they stand out; operations
/// that are not board builds (e.g. `machine`) follow with their logs'
/// first lines.
pub fn board_summary(result: &ResultManifest) -> String {
    let mut boards: Vec<&str> = Vec::new();
    let mut cells: BTreeMap<(&str, usize), ResultStatus> = BTreeMap::new();
    let mut commits = 0;
    let mut others = Vec::new();
    for op in &result.operations {
        match board_commit(&op.name) {
            Some((board, upto)) => {
                if !boards.contains(&board) {
                    boards.push(board);
                }
                commits = commits.max(upto + 1);
                cells.insert((board, upto), op.status);
            }
            None => others.push(op),
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}: {} ({} boards x {} commits)",
        result.name,
        result.version,
        cell(result.status),
        boards.len(),
        commits
    );
    if !boards.is_empty() {
        let width = boards.iter().map(|b| b.len()).max().unwrap_or(5).max(5);
        let _ = write!(out, "{:width$}", "board");
        for c in 0..commits {
            let _ = write!(out, "  {:<9}", format!("@{c}"));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        for board in &boards {
            let _ = write!(out, "{board:width$}");
            for c in 0..commits {
                let s = cells
                    .get(&(*board, c))
                    .map_or("-".to_string(), |s| cell(*s));
                let _ = write!(out, "  {s:<9}");
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        }
    }
    for op in others {
        let first = op
            .log
            .as_deref()
            .and_then(|l| l.lines().find(|l| !l.trim().is_empty()))
            .unwrap_or("");
        let _ = writeln!(out, "{}: {}  {first}", op.name, cell(op.status));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bbot::OperationResult;

    #[test]
    fn table_has_a_row_per_board_and_a_column_per_commit() {
        let mut r = ResultManifest::new("u-boot", "1");
        for (name, st) in [
            ("sandbox@0", ResultStatus::Success),
            ("sandbox@1", ResultStatus::Error),
            ("qemu_arm64@0", ResultStatus::Warning),
            ("machine", ResultStatus::Abnormal),
        ] {
            r.push_operation(OperationResult {
                name: name.into(),
                status: st,
                log: Some("\nguest crashed\nmore".into()),
            });
        }
        let s = board_summary(&r);
        assert_eq!(
            s,
            "u-boot 1: ABNORMAL (2 boards x 2 commits)\n\
             board       @0         @1\n\
             sandbox     success    ERROR\n\
             qemu_arm64  WARNING    -\n\
             machine: ABNORMAL  guest crashed\n"
        );
    }
}
