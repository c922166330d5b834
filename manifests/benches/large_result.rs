//! Parse and serialize a 15 MiB result manifest (the controller's upload
//! cap): the largest manifest the agent handles. Target: over 100 MB/s in
//! both directions. Run with `cargo bench -p manifests`.
//!
//! A second case is the hostile guest's result: 700,000 tiny operations
//! (`<board>@<n>-status` and `-log` pairs, 18 MiB: a little more than the
//! cap can carry), parsed as the agent parses an upload, on its only
//! control thread. Any per-pair lookup that is not O(1) shows here as
//! seconds or minutes. Target: under 1 s for text and typed parsing
//! together. `BENCH_OPS=100000` changes the operation count (to measure a
//! quadratic parser without waiting for it).

use manifests::{
    parse_stream, serialize_stream, summary, Document, OperationResult, ResultManifest,
    ResultRequestManifest, ResultStatus,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

const TARGET_BYTES: usize = 15 * 1024 * 1024;

/// A build log shaped like real compiler output: long and short lines,
/// indentation, `#`, backslashes, a few non-ASCII characters.
fn log_chunk(i: usize) -> String {
    let mut s = String::new();
    for j in 0..60 {
        match j % 6 {
            0 => s.push_str(&format!("  CC      drivers/net/phy/phy_{i}_{j}.o\n")),
            1 => s.push_str(&format!(
                "drivers/net/phy/phy_{i}.c:{j}:5: warning: unused variable 'x{j}' [-Wunused-variable]\n"
            )),
            2 => s.push_str("   12 |     int x; /* # not a comment, a \\ backslash */\n"),
            3 => s.push_str("      |         ^\n"),
            4 => s.push_str(&format!("  LD      u-boot — größe {j} {}\n", "x".repeat(90))),
            _ => s.push('\n'),
        }
    }
    s
}

fn build() -> ResultManifest {
    let mut r = ResultManifest::new("u-boot", "2026.01.0");
    let mut size = 0;
    let mut i = 0;
    while size < TARGET_BYTES {
        let log = log_chunk(i);
        size += log.len() + 40;
        r.push_operation(OperationResult {
            name: format!("board_{i}@{}", i % 3),
            status: if i % 7 == 0 {
                ResultStatus::Warning
            } else {
                ResultStatus::Success
            },
            log: Some(log),
        });
        i += 1;
    }
    r
}

/// Operations in the many-operations case: about as many as a guest fits
/// in the upload cap with one-line statuses (the statuses alone of 700,000
/// operations take 16 MB).
const MANY_OPS: usize = 700_000;

/// A result request (session header + result) with `ops` operations named
/// `<board>@<commit>`, 676 two-letter boards at consecutive commits, as a
/// board × commit build reports them; warnings and errors carry a one-line
/// log.
fn many_operations_request(ops: usize) -> ResultRequestManifest {
    let mut result = ResultManifest::new("u-boot", "2026.01.0");
    for i in 0..ops {
        let board = [b'a' + (i % 26) as u8, b'a' + (i / 26 % 26) as u8];
        let board = std::str::from_utf8(&board).unwrap_or("xx");
        // Deterministic, uneven mix: mostly success, some warnings and errors.
        let (status, log) = match (i * 7919) % 10 {
            0 => (ResultStatus::Error, Some("E: ld")),
            1 | 2 => (ResultStatus::Warning, Some("W")),
            _ => (ResultStatus::Success, None),
        };
        result.push_operation(OperationResult {
            name: format!("{board}@{}", i / 676),
            status,
            log: log.map(str::to_string),
        });
    }
    ResultRequestManifest {
        session: "e2b6f1c0-3a5d-4c8e-9f7a-1b2c3d4e5f60".into(),
        challenge: Some("c2lnbmF0dXJl".into()),
        agent_checksum: None,
        result,
        extra: Vec::new(),
    }
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn report(what: &str, bytes: usize, d: Duration) {
    let mbps = bytes as f64 / 1e6 / d.as_secs_f64();
    println!(
        "{what:<34} {:>8.2} ms  {mbps:>8.0} MB/s",
        d.as_secs_f64() * 1e3
    );
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; stay quick then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs = if quick { 1 } else { 7 };
    let result = build();
    let stream = result.to_stream();
    let text = serialize_stream(&stream).expect("serializable");
    let n = text.len();
    println!(
        "result manifest: {} operations, {:.1} MiB",
        result.operations.len(),
        n as f64 / 1048576.0
    );

    report(
        "text serialize",
        n,
        best_of(runs, || serialize_stream(&stream).unwrap()),
    );
    report(
        "text parse",
        n,
        best_of(runs, || parse_stream(text.as_bytes(), "bench").unwrap()),
    );
    report(
        "typed serialize (to_text)",
        n,
        best_of(runs, || result.to_text().unwrap()),
    );
    report(
        "typed parse (ResultManifest)",
        n,
        best_of(runs, || {
            ResultManifest::parse(text.as_bytes(), "bench").unwrap()
        }),
    );

    many_operations(runs, if quick { 20_000 } else { MANY_OPS });
}

/// The hostile guest's case: many tiny operations (`default_ops` unless
/// `BENCH_OPS` says otherwise).
fn many_operations(runs: usize, default_ops: usize) {
    let ops = std::env::var("BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_ops);
    let request = many_operations_request(ops);
    let text = request.to_text().expect("serializable");
    let n = text.len();
    println!(
        "result request: {} operations ({} logs), {:.1} MiB",
        request.result.operations.len(),
        request
            .result
            .operations
            .iter()
            .filter(|o| o.log.is_some())
            .count(),
        n as f64 / 1048576.0
    );
    // Fewer runs: before the fix one run took minutes.
    let runs = runs.min(3);
    let stream = parse_stream(text.as_bytes(), "bench").unwrap();
    report(
        "text parse (parse_stream)",
        n,
        best_of(runs, || parse_stream(text.as_bytes(), "bench").unwrap()),
    );
    report(
        "typed (ResultRequest from_stream)",
        n,
        best_of(runs, || {
            ResultRequestManifest::from_stream(&stream, "bench").unwrap()
        }),
    );
    report(
        "typed (ResultManifest from_stream)",
        n,
        best_of(runs, || {
            ResultManifest::from_stream(&stream[1..], "bench").unwrap()
        }),
    );
    let whole = best_of(runs, || {
        ResultRequestManifest::parse(text.as_bytes(), "bench").unwrap()
    });
    report("text + typed (ResultRequest parse)", n, whole);
    if ops >= MANY_OPS && whole >= Duration::from_secs(1) {
        println!("  MISSED the target: under 1 s");
    }
    report(
        "summary::board_summary",
        n,
        best_of(runs, || summary::board_summary(&request.result)),
    );
}
