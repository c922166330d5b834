//! The systemd template unit: the settings the agent relies on are there, and
//! `systemd-analyze verify` accepts it (with ExecStart pointed at the binary
//! under test, since /usr/local/bin/bbot-agent is not installed here).

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../../systemd/bbot-agent@.service");

#[test]
fn unit_has_the_settings_the_agent_relies_on() {
    for line in [
        "Type=notify",
        "KillMode=mixed",
        "Restart=on-failure",
        "EnvironmentFile=/etc/bbot-agent/%i.conf",
        "StateDirectory=bbot-agent",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Delegate=yes",
    ] {
        assert!(UNIT.lines().any(|l| l.trim() == line), "missing {line}");
    }
    let exec = UNIT
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    assert!(exec.contains("--systemd-daemon") && exec.contains("--systemd-instance %i"));
    // The VMs' cgroups go in the delegated unit group.
    assert!(exec.contains("--cgroup-delegated"), "{exec}");
}

#[test]
fn systemd_analyze_verify() {
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze (Debian package systemd, scripts/install-deps installs it)");
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = UNIT.replace(
        "/usr/local/bin/bbot-agent",
        env!("CARGO_BIN_EXE_bbot-agent"),
    );
    std::fs::write(dir.path().join("bbot-agent@.service"), unit).expect("unit");
    let conf = dir.path().join("gcc-12-1.conf");
    std::fs::write(&conf, include_str!("../../systemd/bbot-agent.conf.example")).expect("conf");
    let unit_path = dir.path().join("bbot-agent@gcc-12-1.service");
    let text = std::fs::read_to_string(dir.path().join("bbot-agent@.service")).expect("read");
    std::fs::write(
        &unit_path,
        text.replace("/etc/bbot-agent/%i.conf", &conf.display().to_string()),
    )
    .expect("instance");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    // Only complaints about our unit count (the host's own units may be odd).
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("bbot-agent")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{err}"
    );
    assert!(Path::new(&unit_path).exists());
}

#[test]
fn worker_guest_unit_verifies() {
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze (Debian package systemd, scripts/install-deps installs it)");
    assert!(out.status.success());
    let unit = include_str!("../../systemd/worker-guest.service");
    // The guest's binary is not on the host: point at one that is.
    let unit = unit.replace(
        "/usr/local/bin/worker-guest",
        env!("CARGO_BIN_EXE_bbot-agent"),
    );
    assert!(unit.contains("ExecStopPost=/bin/systemctl --no-block poweroff"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("worker-guest.service");
    std::fs::write(&path, unit).expect("unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("worker-guest")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}
