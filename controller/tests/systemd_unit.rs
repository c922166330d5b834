//! The controller's systemd unit: the settings the controller relies on
//! are there, and `systemd-analyze verify` accepts it (ExecStart pointed at
//! the binary under test, since /usr/local/bin is not installed here).

use std::process::Command;

const UNIT: &str = include_str!("../../systemd/bbot-controller.service");

#[test]
fn unit_has_the_settings_the_controller_relies_on() {
    for line in [
        "Type=notify",
        "StateDirectory=bbot-controller",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
        "EnvironmentFile=-/etc/bbot-controller.conf",
    ] {
        assert!(UNIT.lines().any(|l| l.trim() == line), "missing {line}");
    }
    let exec = UNIT
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    assert!(exec.contains(" serve --data /var/lib/bbot-controller $BBOT_CONTROLLER_OPTIONS"));
}

#[test]
fn systemd_analyze_verify() {
    let version = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "systemd-analyze is needed (Debian package systemd)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = UNIT.replace(
        "/usr/local/bin/bbot-controller",
        env!("CARGO_BIN_EXE_bbot-controller"),
    );
    let path = dir.path().join("bbot-controller.service");
    std::fs::write(&path, unit).expect("unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("bbot-controller"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}
