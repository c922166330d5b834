//! The agent talks to systemd's notification socket: READY once it enumerated,
//! STATUS as it goes, WATCHDOG pings when asked for them, STOPPING on SIGTERM.
//! A datagram socket stands in for systemd.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::agent::FAKE_MACHINE;
use common::controller::{Reply, TestController};
use common::wait_for;

#[test]
fn ready_status_watchdog_stopping() {
    let dir = tempfile::tempdir().expect("dir");
    let fm = dir.path().join("machine");
    std::fs::write(&fm, FAKE_MACHINE).expect("machine");
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let c = TestController::start(|_, _| Reply::no_task());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bbot-agent"))
        .arg("--fake-machine")
        .arg(&fm)
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--systemd-daemon")
        .arg(c.url("/"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv = |got: &mut Vec<String>| {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    wait_for("READY and watchdog pings", Duration::from_secs(20), || {
        recv(&mut got);
        let pings = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        (got.iter().any(|m| m.contains("READY=1")) && pings >= 3).then_some(())
    });
    assert!(got.iter().any(|m| m.starts_with("STATUS=")), "{got:?}");
    let st = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(st.success());
    wait_for("STOPPING", Duration::from_secs(20), || {
        recv(&mut got);
        got.iter().any(|m| m.contains("STOPPING=1")).then_some(())
    });
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

/// Collects every datagram sent to a notify socket, with its arrival time.
struct NotifySocket {
    path: std::path::PathBuf,
    got: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> Self {
        let path = dir.join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind");
        let got: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>> =
            Default::default();
        let sink = std::sync::Arc::clone(&got);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock()
                    .expect("lock")
                    .push((std::time::Instant::now(), msg));
            }
        });
        Self { path, got }
    }

    fn messages(&self) -> Vec<(std::time::Instant, String)> {
        self.got.lock().expect("lock").clone()
    }

    /// Index of the first message containing `what` at or after `from`.
    fn find(&self, what: &str, from: usize) -> Option<usize> {
        self.messages()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, (_, m))| m.contains(what))
            .map(|(i, _)| i)
    }
}

/// The messages with their times, for failure messages.
fn show(msgs: &[(std::time::Instant, String)]) -> String {
    let Some((t0, _)) = msgs.first() else {
        return String::new();
    };
    msgs.iter()
        .enumerate()
        .map(|(i, (t, m))| format!("{i:3} {:>8.3?} {}", *t - *t0, m.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Longest pause between two `WATCHDOG=1` in `msgs`.
fn longest_ping_gap(msgs: &[(std::time::Instant, String)]) -> Duration {
    let pings: Vec<std::time::Instant> = msgs
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// The watchdog over a real notify socket: pings keep coming through a
/// build several times the stall limit long, stop while the main thread is
/// stuck (a test hook blocks it without polling), and the stop announces
/// itself and extends systemd's stop timeout while it uploads slowly.
#[test]
fn watchdog_follows_progress() {
    let dir = tempfile::tempdir().expect("dir");
    let fm = dir.path().join("machine");
    std::fs::write(&fm, FAKE_MACHINE).expect("machine");
    let notify = NotifySocket::bind(dir.path());
    let results = TestController::start(|_, _| Reply {
        delay: Duration::from_secs(3),
        ..Reply::ok("")
    });
    let ru = results.url("/result");
    // Round 1: task A; round 2: nothing; round 3 (stalled first): task B.
    let tasks = TestController::start(move |_, i| match i {
        0 => Reply::ok(common::controller::task_response("linux", &ru, "a")),
        2 => Reply::ok(common::controller::task_response("linux", &ru, "b")),
        _ => Reply::no_task(),
    });
    let stall_limit = Duration::from_secs(2);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bbot-agent"))
        .args(["--fake-machine", &fm.display().to_string()])
        .args(["--fake-build", "--fake-build-duration", "6"])
        .args(["--state", &dir.path().join("state").display().to_string()])
        .args(["--idle-sleep", "1", "--request-timeout", "10"])
        .args(["--watchdog-stall", &stall_limit.as_secs().to_string()])
        .args(["--systemd-daemon", "--verbose", "2", &tasks.url("/")])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000")
        .env("BBOT_AGENT_TEST_STALL", "3:8")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    // Task B building: stop the agent; its interrupt result uploads slowly.
    let b = wait_for("task B building", Duration::from_secs(60), || {
        let a = notify.find("STATUS=building", 0)?;
        notify.find("STATUS=building", a + 1)
    });
    std::thread::sleep(Duration::from_millis(500));
    let st = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(st.success());
    let status = child.wait().expect("wait");
    let mut log = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut log);
    }
    assert_eq!(status.code(), Some(0), "{log}");
    std::thread::sleep(Duration::from_millis(200));
    let msgs = notify.messages();
    let pos = |what: &str, from: usize| notify.find(what, from);

    // READY, then STATUS; A's build from its status to its upload.
    let ready = pos("READY=1", 0).expect("READY");
    let building_a = pos("STATUS=building", 0).expect("A");
    assert!(ready < building_a, "{msgs:?}");
    let uploading_a = pos("STATUS=uploading", building_a).expect("A's upload");
    let build = msgs[uploading_a].0 - msgs[building_a].0;
    assert!(build >= stall_limit * 2, "the build lasted {build:?}");
    let gap = longest_ping_gap(&msgs[building_a..=uploading_a]);
    assert!(
        gap < Duration::from_secs(1),
        "pings paused {gap:?} during a build that makes progress:\n{log}"
    );
    // The stuck round (between A's upload and B's build): pings stop, and
    // resume with B's build.
    let resumed = pos("WATCHDOG=1", b).expect("pings again");
    let gap = longest_ping_gap(&msgs[uploading_a..=resumed]);
    assert!(
        gap >= Duration::from_secs(5),
        "pings went on ({gap:?} longest pause) while the main thread was stuck \
         (messages {uploading_a}..={b}):\n{}\n{log}",
        show(&msgs)
    );
    assert!(log.contains("letting the watchdog fire"), "{log}");
    // The stop: STOPPING, then EXTEND_TIMEOUT_USEC while the interrupt
    // result uploads (3 s), in that order.
    let stopping = pos("STOPPING=1", b).expect("STOPPING");
    let extend = pos("EXTEND_TIMEOUT_USEC=", stopping).expect("EXTEND_TIMEOUT_USEC");
    assert!(
        msgs[extend].1.contains("EXTEND_TIMEOUT_USEC=70000000"),
        "{msgs:?}"
    );
    let up = results.requests();
    assert_eq!(up.len(), 2, "A's result and B's interrupt");
    assert!(up[1].body.contains("status: interrupt"), "{}", up[1].body);
}
