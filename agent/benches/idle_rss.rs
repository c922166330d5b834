//! Benchmark: resident memory of an idle agent (a controller that never has a
//! task, `--fake-machine`). Target: under 20 MiB. Reads VmRSS/VmHWM from
//! /proc/PID/status after a few polling rounds.
//!
//! Run: `cargo bench -p bbot-agent --bench idle_rss`

#[path = "../tests/common/controller.rs"]
#[allow(dead_code)]
mod controller;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use controller::{Reply, TestController};

const TARGET_KIB: u64 = 20 * 1024;

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("field")
}

fn main() {
    let dir = std::env::temp_dir().join(format!("bbot-agent-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let fm = dir.join("machine");
    std::fs::write(&fm, ": 1\nid: m-1\nname: m\nsummary: idle benchmark\n").expect("machine");
    let c = TestController::start(|_, _| Reply::no_task());
    let mut child = Command::new(env!("CARGO_BIN_EXE_bbot-agent"))
        .arg("--fake-machine")
        .arg(&fm)
        .arg("--state")
        .arg(dir.join("state"))
        .args(["--idle-sleep", "1", "--verbose", "0"])
        .arg(c.url("/"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent");
    let pid = child.id();
    let end = Instant::now() + Duration::from_secs(30);
    while c.requests().len() < 4 {
        assert!(Instant::now() < end, "agent did not poll");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss = status_kib(pid, "VmRSS:");
    let hwm = status_kib(pid, "VmHWM:");
    let threads = status_kib(pid, "Threads:");
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "idle agent after {} polls: VmRSS {rss} KiB, VmHWM {hwm} KiB, {threads} threads",
        c.requests().len()
    );
    println!(
        "target VmRSS < {TARGET_KIB} KiB: {}",
        if rss < TARGET_KIB { "PASS" } else { "FAIL" }
    );
    assert!(rss < TARGET_KIB, "idle RSS too high");
}
