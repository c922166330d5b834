//! Benchmark: what the agent adds to a task. In one run, alternately:
//! - a task through `bbot-agent --fake-request ... --dump-result` (process
//!   start, machine enumeration, snapshot, TFTP, QEMU, QMP, result,
//!   clean-up), on an already bootstrapped machine;
//! - the same guest "by hand": a btrfs snapshot, a TFTP server, QEMU with
//!   the very command line the agent builds (`vm::qemu_args`), waiting for
//!   the guest to power off, deleting the snapshot.
//!
//! The guest does the same fixed work both times (benches/guests/
//! bench-worker-guest; it fetches no source). The agent still brings its
//! mirror of the task's repository (a tiny one, served by `git daemon` on
//! loopback) up to date and serves it, as for every task: that is part of
//! what it adds. Target: the agent adds under 5 % and under 300 ms.
//!
//! Needs root, QEMU and the recipe's packages; runs under TCG.
//! Run: `cargo bench -p bbot-agent --bench task_overhead`

#[path = "../tests/common/mod.rs"]
mod common;

use common::{btrfs_loop, hand_vm};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MACHINE: &str = "x86_64-debian_12-uboot";
const TOOLCHAIN: &str = "bench";
const ROUNDS: usize = 3;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn agent_binary() -> PathBuf {
    // Cargo builds the package's binaries for its benches.
    PathBuf::from(env!("CARGO_BIN_EXE_bbot-agent"))
}

fn task_manifest(repository: &str) -> String {
    format!(
        ": 1\nname: bench\nversion: 1\nrepository-url: {repository}\nmachine: {MACHINE}\n\
         target: x86_64-linux-gnu\nboard: work sandbox\n"
    )
}

/// One task through the agent; its wall time.
fn through_agent(agent: &Path, machines: &Path, work: &Path, repository: &str) -> Duration {
    let task = work.join("task.manifest");
    std::fs::write(&task, task_manifest(repository)).expect("task");
    let t = Instant::now();
    let out = Command::new(agent)
        .arg("--machines")
        .arg(machines)
        .arg("--tftp")
        .arg(work.join("tftp"))
        .arg("--state")
        .arg(work.join("state"))
        .args([
            "--toolchain-name",
            TOOLCHAIN,
            "--accel",
            "tcg",
            "--cpu",
            "1",
        ])
        .args(["--ram", "1048576", "--verbose", "0", "--fake-request"])
        .arg(&task)
        .arg("--dump-result")
        .stderr(Stdio::piped())
        .output()
        .expect("bbot-agent");
    let elapsed = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("work@0-status: success"),
        "agent run failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// The same guest by hand; its wall time.
fn by_hand(machines: &Path, work: &Path, n: usize, repository: &str) -> Duration {
    let machine_dir = machines.join("default").join(MACHINE);
    let task = task_manifest(repository);
    let t = Instant::now();
    let mut vm = hand_vm::HandTask {
        machine_dir: &machine_dir,
        bootstrapped: &format!("{MACHINE}-{TOOLCHAIN}"),
        task: &task,
        work,
        n,
        cpus: 1,
        ram_mib: 1024,
    }
    .start();
    assert!(vm.wait().success(), "QEMU failed");
    let put = vm.put.clone();
    vm.finish();
    let elapsed = t.elapsed();
    let result = std::fs::read_to_string(put.join("manifest")).expect("guest result");
    assert!(result.contains("work@0-status: success"), "{result}");
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --benches` builds and starts benches; this one boots
        // VMs for minutes, so it only runs under `cargo bench`.
        return;
    }
    let fs = btrfs_loop::BtrfsLoop::with_size(8 << 30);
    let work = tempfile::tempdir().expect("work dir");
    let agent = agent_binary();
    let out = Command::new(workspace().join("machines/make-machine"))
        .arg("--machines")
        .arg(fs.path())
        .arg("--worker-guest")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/guests/bench-worker-guest"))
        .arg("--cache")
        .arg(workspace().join("target/machine-cache"))
        .output()
        .expect("make-machine");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(work.path().join(format!("tftp/toolchain/{TOOLCHAIN}"))).expect("tc");

    let repo = common::vm::TinyRepo::serve(work.path(), None);
    let repository = repo.url.as_str();

    // Warm-up: bootstraps the machine, makes the mirror, and warms the
    // page cache for both.
    through_agent(&agent, fs.path(), work.path(), repository);
    by_hand(fs.path(), work.path(), 0, repository);

    let (mut agent_times, mut hand_times) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let a = through_agent(&agent, fs.path(), work.path(), repository);
        let h = by_hand(fs.path(), work.path(), round, repository);
        println!(
            "round {round}: agent {:.2} s, by hand {:.2} s",
            a.as_secs_f64(),
            h.as_secs_f64()
        );
        agent_times.push(a);
        hand_times.push(h);
    }
    let (a, h) = (median(agent_times), median(hand_times));
    let added = a.as_secs_f64() - h.as_secs_f64();
    println!(
        "median: agent {:.2} s, by hand {:.2} s: the agent adds {:.0} ms ({:.1} %); target < 300 ms and < 5 %",
        a.as_secs_f64(),
        h.as_secs_f64(),
        added * 1e3,
        added / h.as_secs_f64() * 100.0
    );
}
