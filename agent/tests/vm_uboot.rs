//! Real U-Boot through the whole VM path: Debian's U-Boot tree
//! (scripts/uboot-tree, Debian's patches as commits) served by git daemon,
//! the build machine made by machines/make-machine on a loop btrfs, a real
//! bootstrap and a real task in QEMU guests (TCG here), `worker-guest task`
//! in the guest cloning the tree and building `qemu_arm64` with the aarch64
//! cross compiler, and the result uploaded over TFTP to a bbot controller
//! on loopback.
//!
//! Slow under TCG on a 2-core machine (about 10 minutes for the build
//! alone), so it is `#[ignore]`d: `BBOT_REAL_UBOOT_VM=1 scripts/test` runs
//! it (see the README), and it is run before every change to the machine
//! recipe or the guest is resolved.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::agent::AgentProc;
use common::btrfs_loop::BtrfsLoop;
use common::controller::{Reply, TestController};
use common::vm::{self, MACHINE};
use manifests::{Document, ResultRequestManifest, ResultStatus};

/// The board built, its architecture, and the files whose sizes the log
/// must report.
const BOARD: (&str, &str) = ("qemu_arm64", "aarch64");

fn task_text(repository: &str, commit: &str, result_url: &str) -> String {
    format!(
        ": 1\nsession: uboot-1\nresult-url: {result_url}\n:\nname: u-boot\nversion: 2023.01\n\
         repository-url: {repository}\nmachine: {MACHINE}\ntarget: x86_64-linux-gnu\n\
         commit: {commit}\nboard: {} {}\n",
        BOARD.0, BOARD.1
    )
}

#[test]
#[ignore = "real U-Boot in a TCG guest takes 10+ minutes: BBOT_REAL_UBOOT_VM=1 scripts/test runs it"]
fn real_uboot_builds_in_a_real_guest() {
    assert!(
        common::btrfs_loop::is_root(),
        "this test needs root (loop btrfs, mounts); run it as root"
    );
    let fs = BtrfsLoop::with_size(vm::VM_FS_SIZE);
    vm::require_qemu();
    let work = tempfile::tempdir().expect("work dir");
    let t0 = Instant::now();
    let worker_guest = vm::worker_guest_binary();
    vm::make_machine(fs.path(), &worker_guest);
    let machine_made = t0.elapsed();

    let uboot = vm::serve_uboot_tree(work.path());
    let (commits, daemon) = (uboot.commits, uboot.daemon);
    let head = commits.last().expect("commits").clone();

    let tftp = work.path().join("tftp");
    let tc_dir = tftp.join("toolchain/uboot");
    std::fs::create_dir_all(&tc_dir).expect("toolchain dir");
    std::fs::copy(&worker_guest, tc_dir.join("worker-guest")).expect("worker-guest");

    // The host's URL: the agent mirrors it for the guest.
    let repository = format!("git://127.0.0.1:{}/u-boot.git#debian", daemon.port);
    let result_url: Arc<OnceLock<String>> = Arc::default();
    let slot = Arc::clone(&result_url);
    let handed = Arc::new(AtomicUsize::new(0));
    let handed2 = Arc::clone(&handed);
    let (repo2, head2) = (repository.clone(), head.clone());
    let ctl = TestController::start(move |req, _| {
        if req.path.starts_with("/result") {
            return Reply::ok("");
        }
        if handed2.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::ok(task_text(
                &repo2,
                &head2,
                slot.get().map_or("", String::as_str),
            ))
        } else {
            Reply::no_task()
        }
    });
    let _ = result_url.set(ctl.url("/result"));
    let state = work.path().join("state");
    let t_agent = Instant::now();
    let mut agent = AgentProc::spawn(&[
        "--machines",
        &fs.path().display().to_string(),
        "--tftp",
        &tftp.display().to_string(),
        "--state",
        &state.display().to_string(),
        "--toolchain-name",
        "uboot",
        "--accel",
        "tcg",
        "--cpu",
        "2",
        "--ram",
        "2097152",
        // Long enough for a busy host (TCG shares the cores with whatever
        // else runs: 10 minutes idle, over an hour seen under load), and
        // below the test's own wait, so a slow guest is reported by the
        // agent (an abort result with the guest's console) rather than by
        // the test giving up.
        "--build-timeout",
        "5400",
        "--idle-sleep",
        "1",
        "--verbose",
        "3",
        &ctl.url("/"),
    ]);
    let results = common::wait_for("the U-Boot result", Duration::from_secs(6000), || {
        let r = ctl.requests_to("/result");
        (!r.is_empty()).then_some(r)
    });
    let task_time = t_agent.elapsed();
    let log = agent.stop();
    let upload = ResultRequestManifest::parse(results[0].body.as_bytes(), "uploaded result")
        .unwrap_or_else(|e| panic!("{e}\n{}\nagent log:\n{log}", results[0].body));
    assert_eq!(upload.session, "uboot-1");
    let result = &upload.result;
    let name = format!("{}@0", BOARD.0);
    let op = result
        .operation(&name)
        .unwrap_or_else(|| panic!("no operation {name} in {result:?}\nagent log:\n{log}"));
    let op_log = op.log.clone().unwrap_or_default();
    // Built: success, or warning when the build printed warnings (as
    // buildman counts them). Debian 12's binutils 2.40 warns about U-Boot
    // 2023.01's RWX LOAD segment on arm64, a real warning of this tree.
    let (stderr, _) = op_log.split_once("sizes:\n").unwrap_or((&op_log, ""));
    match op.status {
        ResultStatus::Success => {}
        ResultStatus::Warning => assert!(
            stderr.contains("warning:") && !stderr.contains("error:"),
            "{name}: warning status without (only) warnings:\n{op_log}"
        ),
        other => panic!("{name}: {other:?}\n{op_log}\nagent log:\n{log}"),
    }
    assert_eq!(result.status, op.status, "{result:?}");
    // The sizes of the real ELF file, as buildman reports them: `size`'s
    // line (text data bss dec hex filename), then the .rodata size.
    let sizes = op_log
        .split_once("sizes:\n")
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no sizes in the log of {name}:\n{op_log}"));
    let uboot_line = sizes
        .lines()
        .find(|l| l.split_whitespace().nth(5) == Some("u-boot"))
        .unwrap_or_else(|| panic!("no size line for u-boot:\n{sizes}"));
    let text: u64 = uboot_line
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("size line without a text size: {uboot_line}"));
    assert!(
        text > 100_000,
        "u-boot's text is {text} bytes: not a real U-Boot"
    );

    // Nothing left behind.
    assert!(
        common::temporaries(fs.path()).is_empty(),
        "temporaries left:\n{log}"
    );
    assert!(vm::qemu_processes("uboot").is_empty(), "QEMU left running");
    eprintln!(
        "real U-Boot in a guest: machine made in {:.0?}, bootstrap + task in {:.0?}; {uboot_line}",
        machine_made, task_time
    );
}
