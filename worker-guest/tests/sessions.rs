//! One worker process, several builds, and builds that go wrong inside
//! the worker: consecutive sessions each finish promptly, a panicking
//! build thread still answers every commit, and a git that hangs is
//! killed after `--git-timeout` with a result that says so.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fixture::{Fixture, BROKEN_COMMIT};
use common::{processes_under, results_by_key, TestDir, Worker};
use serde_json::{json, Value};

/// Every message must come within this: a build of the fixture takes well
/// under a second, so a worker silent for this long is stuck.
const PROMPT: Duration = Duration::from_secs(30);

/// Messages up to and including `name`, each within [`PROMPT`]; any
/// `error` fails the test.
fn recv_until(w: &mut Worker, name: &str, what: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let Some(m) = w.recv_timeout(PROMPT) else {
            panic!(
                "{what}: worker closed stdout; so far {got:?}\n{}",
                w.stderr()
            );
        };
        assert_ne!(m["resp"], "error", "{what}: {m}; so far {got:?}");
        let done = m["resp"] == name;
        got.push(m);
        if done {
            return got;
        }
    }
}

const BOARDS: [(&str, &str); 2] = [("sandbox", "sandbox"), ("sandbox_broken", "sandbox")];

/// A demand-driven session over `commits` with the two boards (one of
/// which fails at the fixture's broken commit); checks the prepare
/// messages and one result per board and commit.
fn prepare_session(w: &mut Worker, commits: &[String], threads: usize, what: &str) -> Vec<Value> {
    let t = Instant::now();
    w.send(json!({"cmd": "build_prepare", "commits": commits, "max_boards": 2}));
    let prep = recv_until(w, "build_prepare_done", what);
    let mut want = vec![json!({"resp": "build_started", "num_threads": threads})];
    want.extend((0..threads).map(|t| json!({"resp": "worktree_created", "thread": t})));
    want.push(json!({"resp": "build_prepare_done"}));
    assert_eq!(prep, want, "{what}");
    for (board, arch) in BOARDS {
        w.send(json!({"cmd": "build_board", "board": board, "arch": arch}));
    }
    w.send(json!({"cmd": "build_done"}));
    let msgs = recv_until(w, "build_done", what);
    assert_eq!(
        msgs.last(),
        Some(&json!({"resp": "build_done", "exceptions": 0}))
    );
    let results = results_by_key(&msgs);
    assert_eq!(
        results.len(),
        BOARDS.len() * commits.len(),
        "{what}: {results:#?}"
    );
    eprintln!("{what}: {:.1?}", t.elapsed());
    msgs
}

fn setup(name: &str) -> (TestDir, Fixture, std::path::PathBuf) {
    let dir = TestDir::new(name);
    let fx = Fixture::create(&dir.path.join("src"));
    let work = dir.path.join("work");
    fx.push_to(&work);
    (dir, fx, work)
}

/// The broken board fails at the broken commit (index `BROKEN_COMMIT - 1`
/// of `commits[1..]`).
fn check_failure(msgs: &[Value]) {
    let r = results_by_key(msgs);
    let broken = &r[&("sandbox_broken".to_string(), (BROKEN_COMMIT - 1) as u64)];
    assert_ne!(broken["return_code"], 0, "{broken}");
    assert_eq!(r[&("sandbox".to_string(), 0)]["return_code"], 0);
}

#[test]
fn consecutive_prepare_sessions_with_failing_boards_finish_promptly() {
    let (dir, fx, work) = setup("sessions-prepare");
    let mut w = Worker::start(&work, &dir.path, &["-T", "2"], &[]);
    w.handshake(json!({}));
    let commits = fx.commits[1..].to_vec();
    for n in 1..=3 {
        let msgs = prepare_session(&mut w, &commits, 2, &format!("session {n}"));
        check_failure(&msgs);
    }
    w.send(json!({"cmd": "quit"}));
    assert_eq!(w.recv()["resp"], "quit_ack");
    assert!(w.wait(Duration::from_secs(10)).success());
}

#[test]
fn build_boards_then_prepare_sessions_finish_promptly() {
    let (dir, fx, work) = setup("sessions-batch");
    let mut w = Worker::start(&work, &dir.path, &["-T", "2"], &[]);
    w.handshake(json!({}));
    let commits = fx.commits[1..].to_vec();
    let boards: Vec<Value> = BOARDS
        .iter()
        .map(|(b, a)| json!({"board": b, "arch": a}))
        .collect();
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": commits}));
    let msgs = recv_until(&mut w, "build_done", "batch");
    assert_eq!(results_by_key(&msgs).len(), 2 * commits.len());
    check_failure(&msgs);
    for n in 1..=2 {
        let msgs = prepare_session(&mut w, &commits, 2, &format!("prepare after batch {n}"));
        check_failure(&msgs);
    }
    // And a batch again after demand-driven sessions.
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": commits}));
    let msgs = recv_until(&mut w, "build_done", "second batch");
    check_failure(&msgs);
    w.send(json!({"cmd": "quit"}));
    assert_eq!(w.recv()["resp"], "quit_ack");
}

#[test]
fn a_panicking_build_thread_still_answers_every_commit() {
    let (dir, fx, work) = setup("sessions-panic");
    // One thread: the board after the panic is built by the same thread.
    let mut w = Worker::start(
        &work,
        &dir.path,
        &["-T", "1"],
        &[("WORKER_GUEST_TEST_PANIC", "sandbox@1")],
    );
    w.handshake(json!({}));
    let commits = fx.commits[1..].to_vec();
    w.send(json!({"cmd": "build_prepare", "commits": commits, "max_boards": 1}));
    recv_until(&mut w, "build_prepare_done", "prepare");
    for (board, arch) in [("sandbox", "sandbox"), ("qemu_arm64", "aarch64")] {
        w.send(json!({"cmd": "build_board", "board": board, "arch": arch}));
    }
    w.send(json!({"cmd": "build_done"}));
    let msgs = recv_until(&mut w, "build_done", "build");
    // The panic is counted, as buildman counts a thread exception.
    assert_eq!(
        msgs.last(),
        Some(&json!({"resp": "build_done", "exceptions": 1}))
    );
    let r = results_by_key(&msgs);
    assert_eq!(r.len(), 2 * commits.len(), "{r:#?}");
    assert_eq!(r[&("sandbox".to_string(), 0)]["return_code"], 0);
    for upto in 1..commits.len() as u64 {
        let p = &r[&("sandbox".to_string(), upto)];
        assert_eq!(p["return_code"], 1, "{p}");
        let err = p["stderr"].as_str().unwrap_or("");
        assert!(
            err.contains("build thread panicked")
                && err.contains("WORKER_GUEST_TEST_PANIC at sandbox@1"),
            "{p}"
        );
    }
    for upto in 0..commits.len() as u64 {
        let q = &r[&("qemu_arm64".to_string(), upto)];
        assert_eq!(q["return_code"], 0, "the thread goes on after a panic: {q}");
    }
    // The worker still serves.
    w.send(json!({"cmd": "quit"}));
    assert_eq!(w.recv()["resp"], "quit_ack");
}

/// A `post-checkout` hook that hangs while `hang` exists in `flag_dir`.
fn install_hanging_hook(work: &Path, flag_dir: &Path) {
    let hook = work.join(".git/hooks/post-checkout");
    std::fs::create_dir_all(work.join(".git/hooks")).expect("hooks dir");
    let script = format!(
        "#!/bin/sh\nif [ -e '{}/hang' ]; then exec sleep 600; fi\n",
        flag_dir.display()
    );
    std::fs::write(&hook, script).expect("write hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod hook");
}

#[test]
fn a_hanging_git_checkout_is_killed_and_reported() {
    let (dir, fx, work) = setup("sessions-git-timeout");
    install_hanging_hook(&work, &dir.path);
    let mut w = Worker::start(&work, &dir.path, &["-T", "1", "--git-timeout", "2"], &[]);
    w.handshake(json!({}));
    let commits = fx.commits[2..].to_vec();
    // The worktree is made while git does not hang...
    w.send(json!({"cmd": "build_prepare", "commits": commits, "max_boards": 1}));
    recv_until(&mut w, "build_prepare_done", "prepare");
    // ...then every checkout's hook hangs.
    std::fs::write(dir.path.join("hang"), "").expect("flag");
    let t = Instant::now();
    w.send(json!({"cmd": "build_board", "board": "sandbox", "arch": "sandbox"}));
    w.send(json!({"cmd": "build_done"}));
    let msgs = recv_until(&mut w, "build_done", "build");
    let elapsed = t.elapsed();
    let r = results_by_key(&msgs);
    assert_eq!(r.len(), commits.len());
    for (upto, commit) in commits.iter().enumerate() {
        let res = &r[&("sandbox".to_string(), upto as u64)];
        assert_eq!(res["return_code"], 1, "{res}");
        let err = res["stderr"].as_str().unwrap_or("");
        assert!(
            err.contains(&format!("git checkout -q -f {commit} timed out after 2 s")),
            "{res}"
        );
    }
    // Two checkouts of 2 s each, not 600 s.
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    // The hook's sleep died with git's process group.
    let left: Vec<_> = processes_under(&work)
        .into_iter()
        .filter(|(_, c)| c.contains("sleep"))
        .collect();
    assert!(left.is_empty(), "hook processes survived: {left:?}");
    // Once git behaves again, so does the worker.
    std::fs::remove_file(dir.path.join("hang")).expect("unflag");
    w.send(json!({"cmd": "build_prepare", "commits": commits, "max_boards": 1}));
    recv_until(&mut w, "build_prepare_done", "prepare again");
    w.send(json!({"cmd": "build_board", "board": "sandbox", "arch": "sandbox"}));
    w.send(json!({"cmd": "build_done"}));
    let msgs = recv_until(&mut w, "build_done", "build again");
    for r in results_by_key(&msgs).values() {
        assert_eq!(r["return_code"], 0, "{r}");
    }
    w.send(json!({"cmd": "quit"}));
    assert_eq!(w.recv()["resp"], "quit_ack");
}
