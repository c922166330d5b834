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
