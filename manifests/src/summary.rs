//! A board × commit table of a result, for people: what the main job
//! prints at the end and what `bbot-manifest --summary` shows.

use crate::bbot::{OperationResult, ResultManifest};
use crate::status::ResultStatus;
use std::collections::hash_map::{Entry, HashMap};
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

/// Narrowest column: every status fits (`INTERRUPT`), so normal tables line
/// up; a wider commit label (`@100000000`) widens its own column only.
const COLUMN_WIDTH: usize = 9;

/// Widest the board column is padded to. Longer names still print whole,
/// they just push their row out of line: padding every row to one hostile
/// multi-megabyte name would make the output quadratic.
const MAX_BOARD_WIDTH: usize = 64;

/// Most empty cells (`-`) a table may show beyond a fixed allowance, as a
/// multiple of its real cells. Past that the result is too sparse for a
/// grid (a guest can name 350,000 boards each at its own commit: a
/// 350,000 × 350,000 grid), and each board's line lists only its cells.
const MAX_SPARSENESS: usize = 4;
const SPARSE_ALLOWANCE: usize = 1 << 16;

/// One board's row: its cells as `(commit, status)`, in commit order.
struct Row<'a> {
    board: &'a str,
    cells: Vec<(usize, ResultStatus)>,
}

/// Renders `result` as one line per board and one column per commit index
/// that occurs (`@0`, `@1`, ...), failures upper-cased so they stand out;
/// operations that are not board builds (e.g. `machine`) follow with their
/// logs' first lines. The first line counts the boards and the commit
/// indices that occur.
///
/// The result may come from a hostile guest, so the work and the output
/// are linear in the number of operations: columns are the indices that
/// occur, not `0..=max` (`sandbox@100000000` is one column labelled
/// `@100000000`), boards are found through a map, and a table that would
/// be mostly empty cells lists each board's cells on its line instead
/// (`sandbox  @0 success  @7 ERROR`).
pub fn board_summary(result: &ResultManifest) -> String {
    let mut rows: Vec<Row<'_>> = Vec::new();
    let mut row_of: HashMap<&str, usize> = HashMap::new();
    let mut others: Vec<&OperationResult> = Vec::new();
    let mut cell_count = 0usize;
    for op in &result.operations {
        let Some((board, upto)) = board_commit(&op.name) else {
            others.push(op);
            continue;
        };
        let row = match row_of.entry(board) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                rows.push(Row {
                    board,
                    cells: Vec::new(),
                });
                *e.insert(rows.len() - 1)
            }
        };
        if let Some(row) = rows.get_mut(row) {
            row.cells.push((upto, op.status));
            cell_count += 1;
        }
    }
    let mut commits: Vec<usize> = Vec::with_capacity(cell_count);
    for row in &mut rows {
        // Commit order; of two operations for one cell (`b@1`, `b@01`) the
        // later one wins, as it always has.
        row.cells.sort_by_key(|&(c, _)| c);
        row.cells.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = later.1;
            }
            same
        });
        commits.extend(row.cells.iter().map(|&(c, _)| c));
    }
    commits.sort_unstable();
    commits.dedup();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}: {} ({} boards x {} commits)",
        result.name,
        result.version,
        cell(result.status),
        rows.len(),
        commits.len()
    );
    if !rows.is_empty() {
        let width = rows
            .iter()
            .map(|r| r.board.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(5, MAX_BOARD_WIDTH);
        let grid = rows.len().saturating_mul(commits.len());
        let filled: usize = rows.iter().map(|r| r.cells.len()).sum();
        if grid <= filled.saturating_mul(MAX_SPARSENESS) + SPARSE_ALLOWANCE {
            write_grid(&mut out, &rows, &commits, width);
        } else {
            write_lists(&mut out, &rows, width);
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

/// The table: a header of commit labels, then per board one cell per
/// column, `-` where the board has no operation at that commit.
fn write_grid(out: &mut String, rows: &[Row<'_>], commits: &[usize], width: usize) {
    let labels: Vec<String> = commits.iter().map(|c| format!("@{c}")).collect();
    let _ = write!(out, "{:width$}", "board");
    for label in &labels {
        let _ = write!(out, "  {label:<COLUMN_WIDTH$}");
    }
    end_line(out);
    for row in rows {
        let _ = write!(out, "{:width$}", row.board);
        // Both in commit order: one merge-like pass per row.
        let mut cells = row.cells.iter().peekable();
        for (&commit, label) in commits.iter().zip(&labels) {
            let s = match cells.next_if(|&&(c, _)| c == commit) {
                Some(&(_, status)) => cell(status),
                None => "-".to_string(),
            };
            let column = label.len().max(COLUMN_WIDTH);
            let _ = write!(out, "  {s:<column$}");
        }
        end_line(out);
    }
}

/// A too-sparse table: per board only the cells it has, `@<commit> <status>`.
fn write_lists(out: &mut String, rows: &[Row<'_>], width: usize) {
    for row in rows {
        let _ = write!(out, "{:width$}", row.board);
        for &(commit, status) in &row.cells {
            let _ = write!(out, "  @{commit} {}", cell(status));
        }
        end_line(out);
    }
}

/// Ends a line without the padding of its last cell.
fn end_line(out: &mut String) {
    out.truncate(out.trim_end_matches(' ').len());
    out.push('\n');
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

    fn result_of(ops: &[(&str, ResultStatus)]) -> ResultManifest {
        let mut r = ResultManifest::new("u-boot", "1");
        for &(name, status) in ops {
            r.push_operation(OperationResult {
                name: name.into(),
                status,
                log: None,
            });
        }
        r
    }

    #[test]
    fn a_huge_commit_index_is_a_column_label() {
        // Used to write 100,000,001 columns per line: gigabytes, then abort.
        let r = result_of(&[
            ("sandbox@0", ResultStatus::Success),
            ("sandbox@100000000", ResultStatus::Error),
        ]);
        assert_eq!(
            board_summary(&r),
            "u-boot 1: ERROR (1 boards x 2 commits)\n\
             board    @0         @100000000\n\
             sandbox  success    ERROR\n"
        );
    }

    #[test]
    fn the_largest_commit_index_does_not_wrap() {
        // `max + 1` used to wrap to "0 commits" (or overflow in debug).
        let r = result_of(&[
            ("sandbox@18446744073709551615", ResultStatus::Warning),
            ("qemu_arm64@3", ResultStatus::Success),
        ]);
        assert_eq!(
            board_summary(&r),
            "u-boot 1: WARNING (2 boards x 2 commits)\n\
             board       @3         @18446744073709551615\n\
             sandbox     -          WARNING\n\
             qemu_arm64  success    -\n"
        );
    }

    #[test]
    fn columns_are_the_commits_that_occur_in_order() {
        let r = result_of(&[
            ("sandbox@7", ResultStatus::Error),
            ("sandbox@2", ResultStatus::Success),
            ("sandbox@02", ResultStatus::Warning),
        ]);
        assert_eq!(
            board_summary(&r),
            "u-boot 1: ERROR (1 boards x 2 commits)\n\
             board    @2         @7\n\
             sandbox  WARNING    ERROR\n"
        );
    }

    #[test]
    fn a_sparse_result_lists_cells_per_board() {
        // n boards each at its own commit: an n × n grid of dashes. Listed
        // instead, so the output stays linear in the operations.
        let n = 20_000;
        let names: Vec<String> = (0..n).map(|i| format!("b{i}@{i}")).collect();
        let ops: Vec<(&str, ResultStatus)> = names
            .iter()
            .map(|n| (n.as_str(), ResultStatus::Success))
            .collect();
        let s = board_summary(&result_of(&ops));
        assert!(s.starts_with("u-boot 1: success (20000 boards x 20000 commits)\n"));
        assert!(s.contains("\nb19999  @19999 success\n"), "{}", &s[..200]);
        assert!(s.len() < 40 * n, "{} bytes", s.len());
    }

    #[test]
    fn a_long_board_name_does_not_pad_every_row() {
        let long = format!("{}@0", "x".repeat(1 << 20));
        let names: Vec<String> = (0..1000).map(|i| format!("b{i}@0")).collect();
        let mut ops = vec![(long.as_str(), ResultStatus::Success)];
        ops.extend(names.iter().map(|n| (n.as_str(), ResultStatus::Success)));
        let s = board_summary(&result_of(&ops));
        assert!(s.len() < (1 << 20) + 100_000, "{} bytes", s.len());
        assert!(s.ends_with(&format!("b999{}  success\n", " ".repeat(60))));
    }
}
