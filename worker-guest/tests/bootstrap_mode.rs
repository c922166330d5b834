//! `worker-guest bootstrap` against a real TFTP server (the `async-tftp`
//! crate's) standing in for the agent's toolchain directory: the served
//! worker is installed only when it runs, the current one is kept when
//! none is served, and the bootstrap manifest names the installed
//! binary's version.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::tftp::{wait_for_file, AsyncTftpServer};
use common::{worker_bin, TestDir};
use manifests::{BootstrapManifest, Document};

fn run_bootstrap(server: &str, install: &Path) -> Output {
    run_bootstrap_with(server, install, &[])
}

fn run_bootstrap_with(server: &str, install: &Path, extra: &[&str]) -> Output {
    Command::new(worker_bin())
        .args(["bootstrap", "--tftp", server, "--install"])
        .arg(install)
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .expect("run worker-guest bootstrap")
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    )
}

fn uploaded(dir: &Path) -> BootstrapManifest {
    let bytes = wait_for_file(&dir.join("manifest"), Duration::from_secs(10), |b| {
        BootstrapManifest::parse(b, "bootstrap").is_ok()
    });
    BootstrapManifest::parse(&bytes, "bootstrap").expect("bootstrap manifest")
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A stand-in for an older installed worker.
fn old_worker(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    let install = bin.join("worker-guest");
    script(&install, "echo 'worker-guest 0.0.1'");
    install
}

#[test]
fn installs_the_served_worker_and_reports_its_version() {
    let dir = TestDir::new("bootstrap-install");
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    let served = std::fs::read(worker_bin()).expect("read built worker");
    std::fs::write(tftp.join("worker-guest"), &served).expect("serve worker");
    let install = old_worker(&dir.path);

    // Large blocks: the binary is big, and the option must work.
    let out = run_bootstrap_with(
        &server.addr.to_string(),
        &install,
        &["--tftp-blksize", "65464"],
    );
    assert!(out.status.success(), "{}", show(&out));
    let installed = std::fs::read(&install).expect("read installed");
    assert!(
        installed == served,
        "the served binary is installed byte for byte"
    );
    let mode = std::fs::metadata(&install)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let m = uploaded(&tftp);
    assert_eq!(
        m.version_of("worker-guest"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    // This host has these tools; their versions are informative.
    for tool in ["git", "make", "gcc", "aarch64-linux-gnu-gcc"] {
        let v = m
            .version_of(tool)
            .unwrap_or_else(|| panic!("no {tool}-version in {m:?}"));
        assert!(v.starts_with(|c: char| c.is_ascii_digit()), "{tool}: {v}");
    }
    // No temporary file left next to the installed binary.
    let left: Vec<_> = std::fs::read_dir(dir.path.join("bin"))
        .expect("list bin")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["worker-guest"]);
}

#[test]
fn the_version_comes_from_the_installed_binary() {
    let dir = TestDir::new("bootstrap-version");
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    script(&tftp.join("worker-guest"), "echo 'worker-guest 9.9.9'");
    let install = old_worker(&dir.path);
    let out = run_bootstrap(&server.addr.to_string(), &install);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(uploaded(&tftp).version_of("worker-guest"), Some("9.9.9"));
}

#[test]
fn keeps_the_current_worker_when_none_is_served() {
    let dir = TestDir::new("bootstrap-keep");
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    let install = old_worker(&dir.path);
    let before = std::fs::read(&install).expect("read");
    let out = run_bootstrap(&server.addr.to_string(), &install);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read(&install).expect("read"), before);
    assert_eq!(uploaded(&tftp).version_of("worker-guest"), Some("0.0.1"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keeping"), "{stderr}");
}

#[test]
fn a_served_worker_that_does_not_run_is_not_installed() {
    let dir = TestDir::new("bootstrap-broken");
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    script(
        &tftp.join("worker-guest"),
        "echo 'Segmentation fault' >&2; exit 139",
    );
    let install = old_worker(&dir.path);
    let before = std::fs::read(&install).expect("read");
    let out = run_bootstrap(&server.addr.to_string(), &install);
    assert!(!out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Segmentation fault"), "{stderr}");
    assert_eq!(
        std::fs::read(&install).expect("read"),
        before,
        "old worker kept"
    );
    assert!(
        !tftp.join("manifest").exists(),
        "no bootstrap manifest uploaded"
    );
    let left = std::fs::read_dir(dir.path.join("bin"))
        .expect("list")
        .count();
    assert_eq!(left, 1, "no temporary file left");
}
