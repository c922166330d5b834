//! Benchmark: tasks per hour with 1, 2 and 4 agent instances of one
//! toolchain on this host, in one run, with the same task: real agent
//! processes on a real loop btrfs with 4 machines, a controller on loopback
//! with an endless supply of tasks, fake bootstraps and fake builds of a
//! fixed length (`BENCH_BUILD_SECS`, default 2 s: the agent snapshots the
//! machine, holds its lock and waits, as for a guest).
//!
//! What it measures is what instances add or lose around the build: the
//! toolchain lock, machine locks, enumeration, polling, the result upload.
//! Goal: near-linear (N instances ≈ N × one instance's rate).
//!
//! Needs root (loop btrfs). Run: `cargo bench -p bbot-agent --bench
//! instances_throughput` (`BENCH_SECS`, default 30, per configuration).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::agent::AgentProc;
use common::btrfs_loop::BtrfsLoop;
use common::controller::{task_response, Reply, TestController};
use manifests::{Document, TaskRequestManifest};

const MACHINES: [&str; 4] = ["m1", "m2", "m3", "m4"];

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `n` instances for `secs` and returns the results received.
fn run(n: u16, build: u64, secs: u64) -> usize {
    let fs = BtrfsLoop::new();
    let work = tempfile::tempdir().expect("work");
    for m in MACHINES {
        common::add_revision(fs.path(), "v", m, 1, &format!("{m}-1"), true);
        common::set_link(fs.path(), "v", m, 1, true);
    }
    let results = Arc::new(AtomicUsize::new(0));
    let handed = Arc::new(AtomicUsize::new(0));
    let result_url: Arc<OnceLock<String>> = Arc::default();
    let (r, h, ru) = (
        Arc::clone(&results),
        Arc::clone(&handed),
        Arc::clone(&result_url),
    );
    let ctl = TestController::start(move |req, _| {
        if req.path.starts_with("/result") {
            r.fetch_add(1, Ordering::SeqCst);
            return Reply::ok("");
        }
        let Ok(q) = TaskRequestManifest::parse(req.body.as_bytes(), "request") else {
            return Reply::status(400);
        };
        let Some(m) = q.machines.first() else {
            return Reply::no_task();
        };
        let i = h.fetch_add(1, Ordering::SeqCst);
        let url = ru.get().cloned().unwrap_or_default();
        Reply::ok(task_response(&m.name, &url, &format!("s{i}")))
    });
    result_url.set(ctl.url("/result")).expect("once");
    let build = build.to_string();
    let mut agents: Vec<AgentProc> = (1..=n)
        .map(|i| {
            let i = i.to_string();
            let opts = [
                "--fake-bootstrap",
                "--fake-build",
                "--fake-build-result",
                "success",
                "--fake-build-duration",
                &build,
                "--instance",
                &i,
            ];
            AgentProc::spawn(&common::vm::agent_args(
                fs.path(),
                work.path(),
                "bench",
                &opts,
                &ctl.url("/task"),
            ))
        })
        .collect();
    // Counted from the first task on (bootstraps are not the point here).
    while handed.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let start_results = results.load(Ordering::SeqCst);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let done = results.load(Ordering::SeqCst) - start_results;
    let elapsed = t0.elapsed();
    for a in &mut agents {
        let log = a.stop();
        assert!(!log.contains(" ERROR "), "an instance failed:\n{log}");
    }
    let per_hour = done as f64 * 3600.0 / elapsed.as_secs_f64();
    println!(
        "{n} instance(s): {done} tasks in {:.1} s = {per_hour:.0} tasks/hour",
        elapsed.as_secs_f64()
    );
    done
}

fn main() {
    let build = env_secs("BENCH_BUILD_SECS", 2);
    let secs = env_secs("BENCH_SECS", 30);
    println!(
        "{} machines, fake builds of {build} s, {secs} s per configuration, {} hardware threads",
        MACHINES.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let ideal = secs as f64 / build as f64;
    let mut one = 0.0;
    for n in [1u16, 2, 4] {
        let done = run(n, build, secs) as f64;
        if n == 1 {
            one = done;
        }
        println!(
            "  vs {n} x one instance: {:.2}; vs the build time alone: {:.2}",
            done / (one * f64::from(n)),
            done / (ideal * f64::from(n))
        );
    }
}
