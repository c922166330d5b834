//! Parse and serialize a 15 MiB result manifest (the controller's upload
//! cap): the largest manifest the agent handles. Target: over 100 MB/s in
//! both directions. Run with `cargo bench -p manifests`.

use manifests::{
    parse_stream, serialize_stream, Document, OperationResult, ResultManifest, ResultStatus,
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
}
