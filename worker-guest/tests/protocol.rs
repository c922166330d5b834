//! Protocol tests: spawn `worker-guest --worker` and talk to it over pipes,
//! covering every command, every error path and process clean-up.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fixture::Fixture;
use common::{processes_under, TestDir, Worker};
use serde_json::json;

fn pgrp_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

#[test]
fn ready_setup_configure_quit() {
    let dir = TestDir::new("proto-basic");
    let work = dir.path.join("work");
    let mut w = Worker::start(&dir.path, &dir.path, &["-T", "3"], &[]);
    assert_eq!(
        w.recv(),
        json!({"resp": "ready", "nthreads": 3, "slots": 3})
    );
    // The worker leads its own process group.
    assert_eq!(pgrp_of(w.child.id()), Some(w.child.id()));

    w.send(json!({"cmd": "setup", "work_dir": work}));
    let done = w.recv();
    assert_eq!(done["resp"], "setup_done", "{done}");
    assert_eq!(done["work_dir"], json!(work));
    assert_eq!(done["git_dir"], json!(work.join(".git")));
    assert!(work.join(".git").is_dir());

    // Without a work_dir, a temporary one is made, and removed on quit.
    w.send(json!({"cmd": "setup"}));
    let done = w.recv();
    assert_eq!(done["resp"], "setup_done", "{done}");
    let tmp = done["work_dir"].as_str().expect("work_dir").to_string();
    assert!(Path::new(&tmp).join(".git").is_dir());

    w.send(json!({"cmd": "configure", "settings": {"no_lto": true}, "toolchains": {"sandbox": "/usr/bin/gcc"}}));
    assert_eq!(w.recv(), json!({"resp": "configure_done"}));
    w.send(json!({"cmd": "configure", "settings": {}}));
    assert_eq!(w.recv(), json!({"resp": "configure_done"}));

    w.send(json!({"cmd": "quit"}));
    assert_eq!(w.recv(), json!({"resp": "quit_ack"}));
    // stdout is closed after quit_ack, and the worker exits 0.
    assert_eq!(w.recv_timeout(Duration::from_secs(10)), None);
    assert_eq!(w.wait(Duration::from_secs(10)).code(), Some(0));
    assert!(!Path::new(&tmp).exists(), "temporary work dir left behind");
    assert!(w.stray.is_empty(), "{:?}", w.stray);
}

#[test]
fn errors_keep_the_worker_serving() {
    let dir = TestDir::new("proto-errors");
    let mut w = Worker::start(&dir.path, &dir.path, &["-T", "1"], &[]);
    w.recv();
    let expect_error = |w: &mut Worker, line: &str, want: &str, exact: bool| {
        w.send_raw(line);
        let m = w.recv();
        assert_eq!(m["resp"], "error", "{line}: {m}");
        let msg = m["msg"].as_str().expect("msg");
        if exact {
            assert_eq!(msg, want, "{line}");
        } else {
            assert!(msg.starts_with(want), "{line}: {msg}");
        }
    };
    expect_error(&mut w, "{not json", "invalid JSON: ", false);
    expect_error(&mut w, "[1, 2]", "invalid JSON: ", false);
    expect_error(
        &mut w,
        r#"{"cmd": "frobnicate"}"#,
        "unknown command: frobnicate",
        true,
    );
    expect_error(&mut w, r#"{"nocmd": 1}"#, "unknown command: ", true);
    expect_error(
        &mut w,
        r#"{"cmd": "build_board", "board": "sandbox", "arch": "sandbox"}"#,
        "no builder (send build_prepare first)",
        true,
    );
    expect_error(
        &mut w,
        r#"{"cmd": "build_done"}"#,
        "no builder (send build_prepare first)",
        true,
    );
    expect_error(
        &mut w,
        r#"{"cmd": "build_boards", "boards": [], "commits": [null]}"#,
        "no boards specified",
        true,
    );
    expect_error(
        &mut w,
        r#"{"cmd": "build_board"}"#,
        "invalid build_board command: missing field `board`",
        true,
    );
    expect_error(
        &mut w,
        r#"{"cmd": "build_prepare", "commits": "abc"}"#,
        "invalid build_prepare command: ",
        false,
    );
    // build_prepare on a directory without a repository: worktree set-up fails.
    w.send(json!({"cmd": "build_prepare", "commits": ["0123456789abcdef"], "max_boards": 1}));
    let started = w.recv();
    assert_eq!(started["resp"], "build_started", "{started}");
    let m = w.recv();
    assert_eq!(m["resp"], "error", "{m}");
    assert!(
        m["msg"]
            .as_str()
            .unwrap_or("")
            .starts_with("worktree setup failed"),
        "{m}"
    );

    // Still serving.
    w.send(json!({"cmd": "configure", "settings": {}}));
    assert_eq!(w.recv(), json!({"resp": "configure_done"}));
    w.send(json!({"cmd": "quit"}));
    assert_eq!(w.recv(), json!({"resp": "quit_ack"}));
    assert_eq!(w.wait(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn build_in_progress_is_an_error() {
    let dir = TestDir::new("proto-busy");
    let fx = Fixture::create(&dir.path.join("src"));
    let work = dir.path.join("work");
    fx.push_to(&work);
    let mut w = Worker::start(&work, &dir.path, &["-T", "1"], &[]);
    w.handshake(json!({}));
    w.send(json!({"cmd": "build_prepare", "commits": [fx.commits[0]], "max_boards": 1}));
    w.recv_until("build_prepare_done");
    w.send(json!({"cmd": "build_prepare", "commits": [fx.commits[0]], "max_boards": 1}));
    assert_eq!(
        w.recv(),
        json!({"resp": "error", "msg": "build in progress (send build_done first)"})
    );
    w.send(json!({"cmd": "build_boards", "boards": [{"board": "sandbox", "arch": "sandbox"}], "commits": [fx.commits[0]]}));
    assert_eq!(
        w.recv(),
        json!({"resp": "error", "msg": "build in progress (send build_done first)"})
    );
    w.send(json!({"cmd": "build_done"}));
    assert_eq!(w.recv(), json!({"resp": "build_done", "exceptions": 0}));
    w.send(json!({"cmd": "quit"}));
    assert_eq!(w.recv(), json!({"resp": "quit_ack"}));
}

/// Start a slow build and wait until make (and its sleep) are running in
/// the worktree.
fn start_slow_build(name: &str) -> (TestDir, Worker) {
    let dir = TestDir::new(name);
    let fx = Fixture::create(&dir.path.join("src"));
    let work = dir.path.join("work");
    fx.push_to(&work);
    let mut w = Worker::start(&work, &dir.path, &["-T", "2"], &[("FIXTURE_SLEEP", "60")]);
    w.handshake(json!({}));
    let boards = json!([{"board": "sandbox", "arch": "sandbox"}, {"board": "qemu_arm64", "arch": "aarch64"}]);
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": [fx.commits[0]]}));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let procs = processes_under(&dir.path.join("work"));
        let sleeps = procs.iter().filter(|(_, c)| c.starts_with("sleep")).count();
        let makes = procs.iter().filter(|(_, c)| c.starts_with("make")).count();
        if sleeps >= 2 && makes >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "builds did not start: {procs:?}\n{}",
            w.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (dir, w)
}

fn assert_no_survivors(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = processes_under(dir);
        if procs.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes survived: {procs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stdin_eof_kills_every_make() {
    let (dir, mut w) = start_slow_build("proto-eof");
    w.close_stdin();
    let status = w.wait(Duration::from_secs(10));
    assert!(!status.success(), "{status:?}");
    assert_no_survivors(&dir.path);
}

#[test]
fn sigterm_and_sighup_kill_every_make() {
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        let (dir, mut w) = start_slow_build("proto-signal");
        // SAFETY: kill takes plain integers; the pid is our child's.
        unsafe {
            libc::kill(w.child.id() as libc::pid_t, sig);
        }
        let status = w.wait(Duration::from_secs(10));
        assert!(!status.success(), "signal {sig}: {status:?}");
        assert_no_survivors(&dir.path);
    }
}

#[test]
fn quit_during_a_build_kills_make_and_exits_zero() {
    let (dir, mut w) = start_slow_build("proto-quit");
    w.send(json!({"cmd": "quit"}));
    loop {
        let m = w.recv();
        if m["resp"] == "quit_ack" {
            break;
        }
        assert!(
            ["heartbeat", "build_started", "worktree_created"]
                .contains(&m["resp"].as_str().unwrap_or("")),
            "{m}"
        );
    }
    assert_eq!(
        w.recv_timeout(Duration::from_secs(10)),
        None,
        "output after quit_ack"
    );
    assert_eq!(w.wait(Duration::from_secs(10)).code(), Some(0));
    assert_no_survivors(&dir.path);
}

#[test]
fn quit_just_before_eof_is_answered() {
    // The boss's Ctrl-C path sends quit and then closes the connection.
    let dir = TestDir::new("proto-quit-eof");
    let mut w = Worker::start(&dir.path, &dir.path, &["-T", "1"], &[]);
    w.send(json!({"cmd": "configure", "settings": {}}));
    w.send(json!({"cmd": "quit"}));
    w.close_stdin();
    assert_eq!(w.recv()["resp"], "ready");
    assert_eq!(w.recv(), json!({"resp": "configure_done"}));
    assert_eq!(w.recv(), json!({"resp": "quit_ack"}));
    assert_eq!(w.wait(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn help_and_version() {
    let out = std::process::Command::new(common::worker_bin())
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--worker") && help.contains("worker"),
        "{help}"
    );
    let out = std::process::Command::new(common::worker_bin())
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("worker-guest "));
}
