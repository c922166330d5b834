//! From build outcomes to the task's result manifest (PROTOCOLS.md
//! sections 2 and 6): one operation `<target>@<commit_upto>` per board and
//! commit, statuses decided the way buildman's summary decides them, logs
//! made safe for the manifest format, and the whole kept under the size
//! the agent accepts.

use manifests::{
    sanitize_text, Board, OperationResult, ResultManifest, ResultStatus, TaskManifest,
};

use crate::engine::BuildOutcome;
use crate::RETURN_CODE_NO_TOOLCHAIN;

pub use manifests::guest::{MAX_RESULT_BYTES, WORKER_OPERATION};

/// stderr lines buildman does not count as diagnostics of the build
/// (`FilterErrors` in buildman's builder.py).
fn ignored_stderr_line(line: &str) -> bool {
    (line.contains("make") && line.contains("Waiting for unfinished"))
        || line.contains("Segmentation fault")
}

/// Whether a successful build has warnings: buildman's summary counts a
/// build with return code 0 as "warning" when its stderr has any line
/// left after dropping make's own noise. Blank lines do not count.
pub fn has_warnings(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|l| !l.trim().is_empty() && !ignored_stderr_line(l))
}

/// The status of one board at one commit: 0 → success (warning when
/// stderr has diagnostics), the no-toolchain code 10 → abort (the build
/// could not be attempted: not the source's fault), anything else → error.
pub fn status_of(outcome: &BuildOutcome) -> ResultStatus {
    match outcome.return_code {
        0 if has_warnings(&outcome.stderr) => ResultStatus::Warning,
        0 => ResultStatus::Success,
        RETURN_CODE_NO_TOOLCHAIN => ResultStatus::Abort,
        _ => ResultStatus::Error,
    }
}

fn push_block(log: &mut String, text: &str) {
    if text.is_empty() {
        return;
    }
    log.push_str(text);
    if !text.ends_with('\n') {
        log.push('\n');
    }
}

/// The log of one board at one commit: stderr, then stdout, then a
/// `sizes:` line and the sizes when there are any; `None` when the build
/// said nothing at all.
pub fn log_of(outcome: &BuildOutcome) -> Option<String> {
    let mut log = String::new();
    push_block(&mut log, &outcome.stderr);
    push_block(&mut log, &outcome.stdout);
    if let Some(sizes) = outcome.sizes.as_deref().filter(|s| !s.trim().is_empty()) {
        log.push_str("sizes:\n");
        push_block(&mut log, sizes);
    }
    (!log.is_empty()).then(|| sanitize_text(&log))
}

/// An empty result carrying the task's identity (name, version and the
/// checksums the controller handed out).
pub fn result_for(task: &TaskManifest) -> ResultManifest {
    let mut r = ResultManifest::new(&task.name, &task.version);
    r.worker_checksum.clone_from(&task.worker_checksum);
    r.dependency_checksum.clone_from(&task.dependency_checksum);
    r
}

/// The result of a build: one operation per board (in task order) and
/// commit, in commit order. A (board, commit) the engine did not report is
/// `abnormal`, never silently missing.
pub fn build_result(
    task: &TaskManifest,
    boards: &[Board],
    commits: usize,
    outcomes: &[BuildOutcome],
) -> ResultManifest {
    let mut r = result_for(task);
    for board in boards {
        for upto in 0..commits.max(1) {
            let name = TaskManifest::operation_name(board, upto);
            let op = match outcomes
                .iter()
                .find(|o| o.board == board.target && o.commit_upto == upto)
            {
                Some(o) => OperationResult {
                    name,
                    status: status_of(o),
                    log: log_of(o),
                },
                None => OperationResult {
                    name,
                    status: ResultStatus::Abnormal,
                    log: Some("worker-guest: the build engine reported no result for this board at this commit (internal error)\n".to_string()),
                },
            };
            r.push_operation(op);
        }
    }
    r
}

/// A result saying the guest itself failed: status `abnormal` with one
/// operation `worker` whose log states the error.
pub fn abnormal_result(mut base: ResultManifest, error: &str) -> ResultManifest {
    base.push_operation(OperationResult {
        name: WORKER_OPERATION.to_string(),
        status: ResultStatus::Abnormal,
        log: Some(sanitize_text(&format!("worker-guest: {error}\n"))),
    });
    base
}

/// `(name, version)` of a task manifest that did not parse as a task,
/// read from whatever `name:`/`version:` lines it has, so that even a
/// broken task's result names what it was about; `unknown` otherwise.
pub fn identity_of_raw(raw: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(raw);
    let mut name = None;
    let mut version = None;
    if let Ok(stream) = manifests::parse_stream(raw, "task") {
        if let Some(m) = stream.first() {
            for nv in &m.values {
                match nv.name.as_str() {
                    "name" if name.is_none() && !nv.value.is_empty() => {
                        name = Some(nv.value.clone())
                    }
                    "version" if version.is_none() && !nv.value.is_empty() => {
                        version = Some(nv.value.clone())
                    }
                    _ => {}
                }
            }
        }
    }
    // Not even a manifest: take the simple `name: value` lines.
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = sanitize_text(v.trim());
        if v.is_empty() || v.contains('\\') {
            continue;
        }
        match k.trim() {
            "name" if name.is_none() => name = Some(v),
            "version" if version.is_none() => version = Some(v),
            _ => {}
        }
    }
    (
        name.unwrap_or_else(|| "unknown".to_string()),
        version.unwrap_or_else(|| "unknown".to_string()),
    )
}

/// Cuts `log` to `keep` bytes (at character boundaries): its start and its
/// end, where a build log's first and last errors are, with a marker in the
/// middle saying how much went.
fn truncate_log(log: &str, keep: usize) -> String {
    if log.len() <= keep {
        return log.to_string();
    }
    let head_end = floor_char_boundary(log, keep / 2);
    let tail_start = ceil_char_boundary(log, log.len() - (keep - keep / 2));
    let cut = tail_start - head_end;
    format!(
        "{}\n[... worker-guest cut {cut} bytes of this log here: the result manifest must stay under 15 MiB ...]\n{}",
        &log[..head_end],
        &log[tail_start..]
    )
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Serializes `result`, first cutting its largest logs (all to one common
/// length, the largest that fits) when the text would exceed `max` bytes.
pub fn to_text_within(result: &mut ResultManifest, max: usize) -> Result<String, manifests::Error> {
    use manifests::Document;
    let mut text = result.to_text()?;
    let mut budget = max;
    for _ in 0..16 {
        if text.len() <= max {
            return Ok(text);
        }
        let logs: Vec<usize> = result
            .operations
            .iter()
            .map(|o| o.log.as_ref().map_or(0, String::len))
            .collect();
        let total: usize = logs.iter().sum();
        // What is not log text (names, statuses, escapes, line breaks).
        let overhead = text.len().saturating_sub(total) + 256 * logs.len();
        let room = budget.saturating_sub(overhead);
        // The largest per-log cap whose logs fit in `room`.
        let (mut lo, mut hi) = (0usize, logs.iter().copied().max().unwrap_or(0));
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let used: usize = logs.iter().map(|&l| l.min(mid)).sum();
            if used <= room {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        for op in &mut result.operations {
            if let Some(log) = &op.log {
                if log.len() > lo {
                    op.log = Some(truncate_log(log, lo));
                }
            }
        }
        text = result.to_text()?;
        // Escapes may have grown the text: aim lower next time.
        budget = budget.saturating_sub(max / 10);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(rc: i32, stderr: &str, sizes: Option<&str>) -> BuildOutcome {
        BuildOutcome {
            board: "b".into(),
            commit_upto: 0,
            return_code: rc,
            stderr: stderr.into(),
            stdout: "  CC  x.o\n".into(),
            sizes: sizes.map(str::to_string),
            config: Default::default(),
            lines: None,
        }
    }

    #[test]
    fn statuses_follow_buildman() {
        assert_eq!(status_of(&outcome(0, "", None)), ResultStatus::Success);
        assert_eq!(status_of(&outcome(0, " \n", None)), ResultStatus::Success);
        assert_eq!(
            status_of(&outcome(
                0,
                "make[1]: *** Waiting for unfinished jobs....\n",
                None
            )),
            ResultStatus::Success
        );
        assert_eq!(
            status_of(&outcome(0, "a.c:1: warning: x\n", None)),
            ResultStatus::Warning
        );
        assert_eq!(status_of(&outcome(2, "", None)), ResultStatus::Error);
        assert_eq!(
            status_of(&outcome(10, "Tool chain error", None)),
            ResultStatus::Abort
        );
    }

    #[test]
    fn log_is_stderr_stdout_sizes() {
        let log = log_of(&outcome(
            0,
            "w\x1b",
            Some("   text  data  bss  dec  hex filename\n"),
        ))
        .unwrap();
        assert_eq!(
            log,
            "w\\x1b\n  CC  x.o\nsizes:\n   text  data  bss  dec  hex filename\n"
        );
    }

    #[test]
    fn raw_identity() {
        assert_eq!(
            identity_of_raw(b": 1\nname: u-boot\nversion: 2026.01\nbogus\n"),
            ("u-boot".into(), "2026.01".into())
        );
        assert_eq!(
            identity_of_raw(b"\xff\xfe"),
            ("unknown".into(), "unknown".into())
        );
    }

    #[test]
    fn big_results_are_cut_to_fit() {
        let mut r = ResultManifest::new("n", "v");
        for (i, len) in [100usize, 3000, 50_000].into_iter().enumerate() {
            let log: String = (0..len)
                .map(|j| if j % 80 == 79 { '\n' } else { 'x' })
                .collect();
            r.push_operation(OperationResult {
                name: format!("b@{i}"),
                status: ResultStatus::Success,
                log: Some(format!("FIRST\n{log}LAST\n")),
            });
        }
        let text = to_text_within(&mut r, 20_000).unwrap();
        assert!(text.len() <= 20_000, "{}", text.len());
        use manifests::Document;
        let back = ResultManifest::parse(text.as_bytes(), "r").unwrap();
        let small = back.operation("b@0").unwrap().log.as_deref().unwrap();
        assert!(!small.contains("cut"), "the small log is kept whole");
        let big = back.operation("b@2").unwrap().log.as_deref().unwrap();
        assert!(
            big.starts_with("FIRST\n") && big.ends_with("LAST\n"),
            "{big:.100}"
        );
        assert!(big.contains("worker-guest cut"), "marker present");
    }

    #[test]
    fn a_huge_log_fits_the_real_cap() {
        // 20 MiB of 200-column lines with control characters (escaped,
        // so the text grows when serialized).
        let line: String = "\x01".to_string() + &"y".repeat(199) + "\n";
        let log = line.repeat(20 * 1024 * 1024 / 200);
        let mut r = ResultManifest::new("n", "v");
        r.push_operation(OperationResult {
            name: "big@0".into(),
            status: ResultStatus::Error,
            log: Some(sanitize_text(&log)),
        });
        r.push_operation(OperationResult {
            name: "small@0".into(),
            status: ResultStatus::Success,
            log: Some("fine\n".into()),
        });
        let text = to_text_within(&mut r, MAX_RESULT_BYTES).unwrap();
        assert!(text.len() <= MAX_RESULT_BYTES, "{}", text.len());
        assert!(
            text.len() > MAX_RESULT_BYTES / 2,
            "not cut more than needed: {}",
            text.len()
        );
        assert_eq!(
            r.operation("small@0").unwrap().log.as_deref(),
            Some("fine\n")
        );
    }
}
