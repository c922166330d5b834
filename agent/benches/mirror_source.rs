//! Benchmark: how long a real U-Boot guest waits for its source, from the
//! moment its QEMU starts to worker-guest's "source at <commit>", in one
//! run, alternately:
//! - through the agent with a warm mirror: the agent brings its mirror of
//!   the task's repository up to date (before the VM starts: reported
//!   apart), the guest fetches the task's commit at depth 1 from the
//!   agent's source server in its namespace;
//! - the guest cloning the whole repository itself, as it did before the
//!   mirror: the same machine "by hand" (QEMU with the agent's command
//!   line, `vm::qemu_args`, plain user networking so the guest reaches the
//!   host's git daemon as 10.0.2.2) and no source address, so worker-guest
//!   clones `repository-url`.
//!
//! The repository is Debian's U-Boot tree of the real-U-Boot issue
//! (scripts/uboot-tree: the release tarball and Debian's patches as
//! commits) served by `git daemon` on the host's loopback: the stand-in
//! for the internet, without its latency and bandwidth, so the figures
//! favour the full clone. The task names a board that does not exist, so
//! the guest stops right after the source (its result is not the point).
//!
//! Needs root, QEMU and the recipe's packages; runs under TCG.
//! Run: `cargo bench -p bbot-agent --bench mirror_source`

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::hand_vm::HandTask;
use common::vm::{self, MACHINE};

const TOOLCHAIN: &str = "uboot";
const ROUNDS: usize = 2;
/// What worker-guest logs (info, on the console) once the source is there.
const SOURCE_READY: &str = "source at ";

fn task_manifest(repository: &str, commit: &str) -> String {
    format!(
        ": 1\nname: u-boot\nversion: 2023.01\nrepository-url: {repository}\nmachine: {MACHINE}\n\
         target: x86_64-linux-gnu\ncommit: {commit}\nboard: bench_no_such_board aarch64\n"
    )
}

/// Polls `find` (a console log) until it holds [`SOURCE_READY`]; returns
/// when the log first appeared (the guest's start) and when the source was
/// ready. `alive` ends the wait (with a panic) when it says no.
fn watch_console(
    mut find: impl FnMut() -> Option<PathBuf>,
    mut alive: impl FnMut() -> bool,
) -> (Instant, Instant) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut started = None;
    loop {
        assert!(Instant::now() < deadline, "no source after an hour");
        if let Some(log) = find() {
            let started = *started.get_or_insert_with(Instant::now);
            let text = std::fs::read(&log).unwrap_or_default();
            if String::from_utf8_lossy(&text).contains(SOURCE_READY) {
                return (started, Instant::now());
            }
        }
        assert!(alive(), "the guest ended before its source was ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One task through the agent (mirror, source server): (agent start to
/// guest start, guest start to source ready).
fn through_agent(agent: &Path, machines: &Path, work: &Path, task: &str) -> (Duration, Duration) {
    let task_file = work.join("task.manifest");
    std::fs::write(&task_file, task).expect("task");
    let state = work.join("state");
    let run = state.join("instance-1").join("run");
    let t0 = Instant::now();
    let mut child: Child = Command::new(agent)
        .arg("--machines")
        .arg(machines)
        .arg("--tftp")
        .arg(work.join("tftp"))
        .arg("--state")
        .arg(&state)
        .args([
            "--toolchain-name",
            TOOLCHAIN,
            "--accel",
            "tcg",
            "--cpu",
            "2",
        ])
        .args([
            "--ram",
            "2097152",
            "--build-timeout",
            "5400",
            "--verbose",
            "2",
        ])
        .arg("--fake-request")
        .arg(&task_file)
        .arg("--dump-result")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bbot-agent");
    let find = || {
        std::fs::read_dir(&run)
            .ok()?
            .flatten()
            .map(|e| e.path().join("console.log"))
            .find(|p| p.is_file())
    };
    let (started, ready) = watch_console(find, || child.try_wait().ok().flatten().is_none());
    // The source is all this bench wants: stop the task (the agent forces
    // the VM down and cleans up).
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (started - t0, ready - started)
}

/// The guest cloning `repository-url` itself: guest start to source ready.
fn guest_clones(machines: &Path, work: &Path, task: &str, n: usize) -> Duration {
    let machine_dir = machines.join("default").join(MACHINE);
    let mut vm = HandTask {
        machine_dir: &machine_dir,
        bootstrapped: &format!("{MACHINE}-{TOOLCHAIN}"),
        task,
        work,
        n,
        cpus: 2,
        ram_mib: 2048,
    }
    .start();
    let console = vm.console_path.clone();
    let (started, ready) = watch_console(
        || Some(console.clone()),
        || vm.qemu.try_wait().ok().flatten().is_none(),
    );
    vm.kill();
    vm.finish();
    ready - started
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --benches` builds and starts benches; this one boots
        // VMs for many minutes, so it only runs under `cargo bench`.
        return;
    }
    assert!(common::btrfs_loop::is_root(), "this bench needs root");
    vm::require_qemu();
    let fs = common::btrfs_loop::BtrfsLoop::with_size(vm::VM_FS_SIZE);
    let work = tempfile::tempdir().expect("work dir");
    let worker_guest = vm::worker_guest_binary();
    vm::make_machine(fs.path(), &worker_guest);
    let uboot = vm::serve_uboot_tree(work.path());
    let (commits, daemon) = (uboot.commits, uboot.daemon);
    let head = commits.last().expect("commits").clone();
    let pack_mib = dir_bytes(&uboot.bare) as f64 / f64::from(1 << 20);
    let tc_dir = work.path().join("tftp/toolchain").join(TOOLCHAIN);
    std::fs::create_dir_all(&tc_dir).expect("toolchain dir");
    std::fs::copy(&worker_guest, tc_dir.join("worker-guest")).expect("worker-guest");

    let host_task = task_manifest(
        &format!("git://127.0.0.1:{}/u-boot.git#debian", daemon.port),
        &head,
    );
    let guest_task = task_manifest(
        &format!("git://10.0.2.2:{}/u-boot.git#debian", daemon.port),
        &head,
    );
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_bbot-agent"));
    // Warm-up: bootstraps the machine and makes the mirror (a cold one).
    let (cold_before, cold) = through_agent(&agent, fs.path(), work.path(), &host_task);
    println!(
        "warm-up (bootstrap, cold mirror): agent start to guest start {:.1} s, source ready after {:.1} s",
        cold_before.as_secs_f64(),
        cold.as_secs_f64()
    );
    let (mut before, mut mirror, mut clone) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let (b, m) = through_agent(&agent, fs.path(), work.path(), &host_task);
        let c = guest_clones(fs.path(), work.path(), &guest_task, round);
        println!(
            "round {round}: warm mirror: agent start to guest start {:.1} s, source after {:.1} s; \
             guest's own full clone: source after {:.1} s",
            b.as_secs_f64(),
            m.as_secs_f64(),
            c.as_secs_f64()
        );
        before.push(b);
        mirror.push(m);
        clone.push(c);
    }
    let (b, m, c) = (median(before), median(mirror), median(clone));
    println!(
        "median (repository {pack_mib:.0} MiB bare, {} commits): guest start to source ready: \
         warm mirror {:.1} s, full clone {:.1} s (mirror / clone {:.2}); the agent's own start \
         (enumeration, snapshot, mirror fetch) before the guest {:.1} s",
        commits.len(),
        m.as_secs_f64(),
        c.as_secs_f64(),
        m.as_secs_f64() / c.as_secs_f64(),
        b.as_secs_f64()
    );
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => n += dir_bytes(&p),
            Ok(_) => n += e.metadata().map_or(0, |m| m.len()),
            Err(_) => {}
        }
    }
    n
}
