//! Stopping the agent with signals while a task runs: the VM (here the fake
//! build) is forced down, the task snapshot deleted, an `interrupt` result
//! delivered, and the agent exits 0. The btrfs part needs root.

mod common;

use std::time::Duration;

use common::agent::{AgentProc, FAKE_MACHINE};
use common::btrfs_loop::BtrfsLoop;
use common::controller::{task_response, Reply, TestController};
use common::{add_revision, set_link, temporaries, wait_for};
use manifests::{Document, ResultRequestManifest, ResultStatus};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn sigterm_during_task_interrupts_cleanly() {
    let fs = BtrfsLoop::new();
    let m = fs.path().join("machines");
    add_revision(&m, "v", "linux", 1, "l1", true);
    set_link(&m, "v", "linux", 1, true);
    let state = tempfile::tempdir().expect("state");
    let results = TestController::start(|_, _| Reply::ok(""));
    let ru = results.url("/result");
    let tasks = TestController::start(move |_, i| {
        if i == 0 {
            Reply::ok(task_response("linux", &ru, "int"))
        } else {
            Reply::no_task()
        }
    });
    let mut a = AgentProc::spawn(&[
        "--machines".as_ref(),
        m.as_os_str(),
        "--state".as_ref(),
        state.path().as_os_str(),
        "--fake-bootstrap".as_ref(),
        "--fake-build".as_ref(),
        "--fake-build-duration".as_ref(),
        "120".as_ref(),
        "--verbose".as_ref(),
        "2".as_ref(),
        tasks.url("/").as_ref(),
    ]);
    wait_for("task request", WAIT, || tasks.requests().first().cloned());
    // After the request the only temporary subvolume is the task's snapshot.
    let snap = wait_for("task snapshot", WAIT, || temporaries(&m).pop());
    assert!(bbot_agent::host::btrfs::is_subvolume(&snap));
    let started = std::time::Instant::now();
    let log = a.stop();
    assert!(started.elapsed() < Duration::from_secs(10), "prompt stop");
    assert!(
        temporaries(&m).is_empty(),
        "no temporary subvolume left:\n{log}"
    );
    assert!(m.join("v/linux/linux-default").exists(), "bootstrap kept");
    let ups = results.requests();
    assert_eq!(ups.len(), 1, "{log}");
    let rr = ResultRequestManifest::parse(ups[0].body.as_bytes(), "upload").expect("result");
    assert_eq!(rr.session, "int");
    assert_eq!(rr.result.status, ResultStatus::Interrupt);
    assert_eq!(tasks.requests().len(), 1, "no new round after the stop");
}

#[test]
fn sigint_while_idle_stops_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let fm = dir.path().join("machine");
    std::fs::write(&fm, FAKE_MACHINE).expect("machine");
    let c = TestController::start(|_, _| Reply::no_task());
    let mut a = AgentProc::spawn(&[
        "--fake-machine".as_ref(),
        fm.as_os_str(),
        "--state".as_ref(),
        dir.path().join("state").as_os_str(),
        c.url("/").as_ref(),
    ]);
    wait_for("task request", WAIT, || c.requests().first().cloned());
    a.signal("INT");
    let st = a.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", a.stderr());
}
