//! Headless Chromium (Debian package `chromium`), run as root can: a fresh
//! profile, no sandbox, no network chatter.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's headless Chromium.
fn chromium() -> PathBuf {
    for c in ["chromium", "chromium-browser"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return PathBuf::from(c);
        }
    }
    panic!("headless Chromium is needed (Debian package `chromium`: apt-get install chromium)");
}

/// Runs headless Chromium as root can: `mode` is `--dump-dom` or
/// `--screenshot=FILE`; returns stdout.
pub fn browse(url: &str, mode: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(mode)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {mode} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file for people to look at, under the target directory.
pub fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("controller-web");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir.join(name)
}
