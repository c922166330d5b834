//! The main job end to end with real parts: a loop btrfs, the machine made
//! by machines/make-machine, a real bootstrap and real tasks in QEMU guests
//! under TCG, the guest fetching its task and uploading its result over the
//! agent's TFTP server, real worker builds of the fixture firmware tree
//! (boards × commits, host gcc and the aarch64 cross compiler) inside the
//! guest, cloned from a git daemon, and a bbot controller on loopback
//! handing out the tasks and receiving the results.
//!
//! The per-board statuses must match a build of the same task outside the
//! VM (the same worker-guest binary on this host), and the second task must
//! reuse the bootstrapped machine.

#[path = "../../worker-guest/tests/common/fixture.rs"]
mod fixture;

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bbot_agent::vm::tftp::{Phase, SessionRules, TftpServer};
use common::agent::AgentProc;
use common::btrfs_loop::BtrfsLoop;
use common::controller::{Reply, TestController};
use common::vm::{self, GitDaemon, MACHINE};
use manifests::{Document, ResultManifest, ResultRequestManifest, ResultStatus};

const BOARDS: [(&str, &str); 4] = [
    ("sandbox", "sandbox"),
    ("sandbox_warn", "sandbox"),
    ("sandbox_broken", "sandbox"),
    ("qemu_arm64", "aarch64"),
];

/// The task for `repository` at two commits, the second one breaking
/// `sandbox_broken`.
fn task_text(repository: &str, commits: &[String], session: &str, result_url: &str) -> String {
    let mut t = format!(
        ": 1\nsession: {session}\nresult-url: {result_url}\n:\nname: fixture-firmware\n\
         version: 1.0.{session}\nrepository-url: {repository}\nmachine: {MACHINE}\n\
         target: x86_64-linux-gnu\n"
    );
    for c in commits {
        t.push_str(&format!("commit: {c}\n"));
    }
    for (b, a) in BOARDS {
        t.push_str(&format!("board: {b} {a}\n"));
    }
    t
}

/// Per-operation statuses of a result.
fn statuses(r: &ResultManifest) -> BTreeMap<String, ResultStatus> {
    r.operations
        .iter()
        .map(|o| (o.name.clone(), o.status))
        .collect()
}

/// Builds the same task with worker-guest on this host, served by the
/// agent's own TFTP server.
fn build_outside_the_vm(worker_guest: &Path, task: &str, work: &Path) -> ResultManifest {
    let get = work.join("ref-get");
    let put = work.join("ref-put");
    std::fs::create_dir_all(&get).expect("get dir");
    std::fs::create_dir_all(&put).expect("put dir");
    // Only the task manifest (the second manifest of the response).
    let task_only = task
        .split_once("\n:\n")
        .map(|(_, t)| format!(": 1\n{t}"))
        .expect("task");
    std::fs::write(get.join("manifest"), task_only).expect("task manifest");
    let server = TftpServer::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &get,
        &put,
        SessionRules::for_phase(Phase::Task),
    )
    .expect("TFTP server");
    let out = Command::new(worker_guest)
        .arg("task")
        .arg("--tftp")
        .arg(server.local_addr().to_string())
        .arg("--work-dir")
        .arg(work.join("ref-work"))
        .output()
        .expect("run worker-guest task");
    assert!(
        out.status.success(),
        "reference build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait_for("reference result", Duration::from_secs(10), || {
        std::fs::read(put.join("manifest")).ok()
    });
    let bytes = std::fs::read(put.join("manifest")).expect("reference result");
    ResultManifest::parse(&bytes, "reference result").expect("reference result parses")
}

#[test]
fn tasks_build_boards_in_real_guests() {
    let fs = BtrfsLoop::with_size(vm::VM_FS_SIZE);
    vm::require_qemu();
    let work = tempfile::tempdir().expect("work dir");
    let worker_guest = vm::worker_guest_binary();
    vm::make_machine(fs.path(), &worker_guest);

    // The source: the fixture firmware tree, served by git daemon.
    let fx = fixture::Fixture::create(&work.path().join("src"));
    let git_base = work.path().join("git");
    std::fs::create_dir_all(&git_base).expect("git base");
    let bare = git_base.join("fixture.git");
    let st = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&fx.dir)
        .arg(&bare)
        .status()
        .expect("git clone --bare");
    assert!(st.success());
    let daemon = GitDaemon::start(&git_base);
    let commits = vec![
        fx.commits[1].clone(),
        fx.commits[fixture::BROKEN_COMMIT].clone(),
    ];

    // The toolchain directory offers this build's worker-guest.
    let tftp = work.path().join("tftp");
    let tc_dir = tftp.join("toolchain/uboot");
    std::fs::create_dir_all(&tc_dir).expect("toolchain dir");
    std::fs::copy(&worker_guest, tc_dir.join("worker-guest")).expect("worker-guest");

    // A controller with two tasks, then none.
    // The host's URL: the agent mirrors it and serves the mirror to the
    // guest, which has no route to the host's git daemon.
    let guest_repo = format!("git://127.0.0.1:{}/fixture.git#{}", daemon.port, fx.branch);
    let result_url: Arc<OnceLock<String>> = Arc::default();
    let slot = Arc::clone(&result_url);
    let handed = Arc::new(AtomicUsize::new(0));
    let handed2 = Arc::clone(&handed);
    let (repo2, commits2) = (guest_repo.clone(), commits.clone());
    let ctl = TestController::start(move |req, _| {
        if req.path.starts_with("/result") {
            return Reply::ok("");
        }
        match handed2.fetch_add(1, Ordering::SeqCst) {
            n @ (0 | 1) => Reply::ok(task_text(
                &repo2,
                &commits2,
                &format!("s{n}"),
                slot.get().map_or("", String::as_str),
            )),
            _ => Reply::no_task(),
        }
    });
    let _ = result_url.set(ctl.url("/result"));
    let state = work.path().join("state");
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
        "--idle-sleep",
        "1",
        "--verbose",
        "3",
        &ctl.url("/"),
    ]);
    let results = common::wait_for("two results", Duration::from_secs(1500), || {
        let r = ctl.requests_to("/result");
        (r.len() >= 2).then_some(r)
    });
    let log = agent.stop();
    let parsed: Vec<ResultRequestManifest> = results
        .iter()
        .map(|r| {
            ResultRequestManifest::parse(r.body.as_bytes(), "uploaded result")
                .unwrap_or_else(|e| panic!("{e}\n{}\nagent log:\n{log}", r.body))
        })
        .collect();
    assert_eq!(parsed[0].session, "s0");
    assert_eq!(parsed[1].session, "s1");

    // One bootstrap, two tasks.
    assert_eq!(log.matches("bootstrapping ").count(), 1, "{log}");
    assert!(
        common::temporaries(fs.path()).is_empty(),
        "temporaries left:\n{log}"
    );
    assert!(vm::qemu_processes("uboot").is_empty(), "QEMU left running");
    assert!(
        !tftp.join("build/uboot/1").exists(),
        "instance 1's TFTP build directory left"
    );

    // Every board × commit, with the expected statuses, and the same as a
    // build of the same task outside the VM.
    let r = &parsed[0].result;
    let st = statuses(r);
    assert_eq!(st.len(), BOARDS.len() * commits.len(), "{st:?}\n{log}");
    assert_eq!(st["sandbox@0"], ResultStatus::Success, "{r:?}");
    assert_eq!(st["sandbox_warn@0"], ResultStatus::Warning, "{r:?}");
    assert_eq!(st["sandbox_broken@0"], ResultStatus::Success, "{r:?}");
    assert_eq!(st["sandbox_broken@1"], ResultStatus::Error, "{r:?}");
    assert_eq!(st["qemu_arm64@1"], ResultStatus::Success, "{r:?}");
    assert_eq!(r.status, ResultStatus::Error);
    let sandbox_log = r
        .operation("sandbox@0")
        .and_then(|o| o.log.clone())
        .unwrap_or_default();
    assert!(sandbox_log.contains("sizes:"), "{sandbox_log}");
    assert_eq!(
        statuses(&parsed[1].result),
        st,
        "the second task builds the same"
    );

    let host_repo = format!("git://127.0.0.1:{}/fixture.git#{}", daemon.port, fx.branch);
    let reference = build_outside_the_vm(
        &worker_guest,
        &task_text(&host_repo, &commits, "ref", "http://unused/"),
        work.path(),
    );
    assert_eq!(statuses(&reference), st, "VM and host builds disagree");
}
