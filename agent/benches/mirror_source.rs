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
const ROUNDS: usize = 3;
/// What worker-guest logs (info, on the console) when it has its task and
/// goes for the source: "task <name> <version>: 1 board(s) × ...".
const TASK_READ: &str = " board(s) × ";
/// What worker-guest logs (info, on the console) once the source is there.
const SOURCE_READY: &str = "source at ";

/// When, in one guest's life, the console showed what.
#[derive(Clone, Copy)]
struct Marks {
    /// The console log appeared: QEMU started.
    started: Instant,
    /// worker-guest had its task and started on the source.
    task: Instant,
    /// worker-guest had the source.
    ready: Instant,
}

impl Marks {
    /// Guest start to source ready.
    fn total(&self) -> Duration {
        self.ready - self.started
    }
    /// The source step alone: task read to source ready.
    fn fetch(&self) -> Duration {
        self.ready - self.task
    }
}

fn task_manifest(repository: &str, commit: &str) -> String {
    format!(
        ": 1\nname: u-boot\nversion: 2023.01\nrepository-url: {repository}\nmachine: {MACHINE}\n\
         target: x86_64-linux-gnu\ncommit: {commit}\nboard: bench_no_such_board aarch64\n"
    )
}

/// Polls `find` (a console log, every 50 ms) until it holds
/// [`SOURCE_READY`]; returns when the log first appeared (the guest's
/// start), showed [`TASK_READ`] and showed the source ready. `alive` ends
/// the wait (with a panic) when it says no.
fn watch_console(
    mut find: impl FnMut() -> Option<PathBuf>,
    mut alive: impl FnMut() -> bool,
) -> Marks {
    let deadline = Instant::now() + Duration::from_secs(3600);
    let (mut started, mut task) = (None, None);
    loop {
        assert!(Instant::now() < deadline, "no source after an hour");
        if let Some(log) = find() {
            let now = Instant::now();
            let started = *started.get_or_insert(now);
            let bytes = std::fs::read(&log).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            if text.contains(TASK_READ) {
                task.get_or_insert(now);
            }
            if text.contains(SOURCE_READY) {
                return Marks {
                    started,
                    task: task.unwrap_or(now),
                    ready: now,
                };
            }
        }
        assert!(alive(), "the guest ended before its source was ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One task through the agent (mirror, source server): agent start to
/// guest start, and the guest's marks.
fn through_agent(agent: &Path, machines: &Path, work: &Path, task: &str) -> (Duration, Marks) {
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
    let marks = watch_console(find, || child.try_wait().ok().flatten().is_none());
    // The source is all this bench wants: stop the task (the agent forces
    // the VM down and cleans up).
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (marks.started - t0, marks)
}

/// The guest cloning `repository-url` itself: the guest's marks.
fn guest_clones(machines: &Path, work: &Path, task: &str, n: usize) -> Marks {
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
    let marks = watch_console(
        || Some(console.clone()),
        || vm.qemu.try_wait().ok().flatten().is_none(),
    );
    vm.kill();
    vm.finish();
    marks
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
        "warm-up (bootstrap, cold mirror): agent start to guest start {:.1} s, source ready after {:.1} s (fetch {:.1} s)",
        cold_before.as_secs_f64(),
        cold.total().as_secs_f64(),
        cold.fetch().as_secs_f64()
    );
    let secs = |d: Duration| d.as_secs_f64();
    let mut before = Vec::new();
    let (mut mirror, mut mirror_fetch) = (Vec::new(), Vec::new());
    let (mut clone, mut clone_fetch) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let (b, m) = through_agent(&agent, fs.path(), work.path(), &host_task);
        let c = guest_clones(fs.path(), work.path(), &guest_task, round);
        println!(
            "round {round}: warm mirror: agent start to guest start {:.1} s, source after {:.1} s \
             (fetch {:.1} s); guest's own full clone: source after {:.1} s (clone {:.1} s)",
            secs(b),
            secs(m.total()),
            secs(m.fetch()),
            secs(c.total()),
            secs(c.fetch())
        );
        before.push(b);
        mirror.push(m.total());
        mirror_fetch.push(m.fetch());
        clone.push(c.total());
        clone_fetch.push(c.fetch());
    }
    let (m, mf) = (median(mirror), median(mirror_fetch));
    let (c, cf) = (median(clone), median(clone_fetch));
    println!(
        "median of {ROUNDS} (repository {pack_mib:.0} MiB bare, {} commits): guest start to source \
         ready: warm mirror {:.1} s, full clone {:.1} s (mirror / clone {:.2}); the source step \
         alone (task read to source ready): mirror fetch at depth 1 {:.1} s, full clone {:.1} s \
         ({:.2}); the agent's own start (enumeration, snapshot, mirror fetch) before the guest {:.1} s",
        commits.len(),
        secs(m),
        secs(c),
        secs(m) / secs(c),
        secs(mf),
        secs(cf),
        secs(mf) / secs(cf),
        secs(median(before))
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
