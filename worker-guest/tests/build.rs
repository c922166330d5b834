//! Build tests on the fixture tree: batch and demand-driven builds of
//! several boards × commits through the real binary, checking every result.

mod common;

use std::time::Duration;

use common::fixture::{Fixture, BOARDS, BROKEN_COMMIT};
use common::{results_by_key, TestDir, Worker};
use serde_json::{json, Value};

/// The commits the tests build: the last three of the fixture, so that
/// `commit_upto` 1 is the commit that breaks `sandbox_broken` and 2 the
/// one that changes Kconfig.
fn build_commits(fx: &Fixture) -> Vec<String> {
    fx.commits[1..].to_vec()
}

fn boards_json() -> Vec<Value> {
    BOARDS
        .iter()
        .map(|(b, a)| json!({"board": b, "arch": a}))
        .collect()
}

/// Check every (board, commit) result of a fixture build.
fn check_results(msgs: &[Value], ncommits: u64) {
    let results = results_by_key(msgs);
    assert_eq!(
        results.len(),
        BOARDS.len() * ncommits as usize,
        "{results:#?}"
    );
    for (board, _) in BOARDS {
        for upto in 0..ncommits {
            let r = &results[&(board.to_string(), upto)];
            let rc = r["return_code"].as_i64().expect("return_code");
            let stderr = r["stderr"].as_str().expect("stderr");
            let commit = upto as usize + 1;
            assert!(r["load_avg"].is_number(), "{r}");
            if board == "sandbox_broken" && commit == BROKEN_COMMIT {
                assert_ne!(rc, 0, "{board}@{upto} should fail: {r}");
                assert!(stderr.contains("error"), "{r}");
                // Paths are relative to the source tree, as buildman shows them.
                assert!(
                    stderr.contains("board/fixture/sandbox_broken/board.c"),
                    "{r}"
                );
                assert!(!stderr.contains(".bm-work"), "{r}");
                assert!(r.get("sizes").is_none(), "{r}");
                let config = r["config"][".config"].as_str().expect("config on failure");
                assert!(
                    config.contains("CONFIG_TARGET_SANDBOX_BROKEN=y"),
                    "{config}"
                );
                // Every config file reported is this board's, never one left
                // by another board built earlier in the same directory.
                for (name, text) in r["config"].as_object().expect("config map") {
                    let text = text.as_str().unwrap_or("");
                    assert!(text.contains("TARGET_SANDBOX_BROKEN"), "stale {name}: {r}");
                }
                continue;
            }
            assert_eq!(rc, 0, "{board}@{upto}: {r}");
            assert!(r.get("config").is_none(), "config only on failure: {r}");
            let sizes = r["sizes"]["raw"].as_str().expect("sizes on success");
            let fields: Vec<&str> = sizes.split_whitespace().collect();
            assert!(fields.len() >= 6 && fields[5] == "u-boot", "{sizes}");
            assert!(fields[0].parse::<u64>().expect("text size") > 0, "{sizes}");
            if board == "sandbox_warn" {
                assert!(
                    stderr.contains("warning: unused variable"),
                    "{board}@{upto}: {r}"
                );
            } else {
                assert_eq!(stderr, "", "{board}@{upto}: {r}");
            }
        }
    }
}

/// Incremental builds: the second commit only recompiles what changed, the
/// Kconfig change reconfigures and so rebuilds everything.
fn check_incremental(msgs: &[Value]) {
    let results = results_by_key(msgs);
    for board in ["sandbox", "qemu_arm64"] {
        let out = |upto: u64| {
            results[&(board.to_string(), upto)]["stdout"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        let first = out(0);
        assert!(
            first.contains("CC      common/main.o"),
            "{board}@0: {first}"
        );
        let second = out(1);
        assert!(
            second.contains("CC      lib/string.o"),
            "{board}@1: {second}"
        );
        assert!(
            !second.contains("common/main.o"),
            "{board}@1 rebuilt main.o: {second}"
        );
        assert!(!second.contains("common/version.o"), "{board}@1: {second}");
        let third = out(2);
        assert!(
            third.contains("CC      common/main.o"),
            "{board}@2 not reconfigured: {third}"
        );
    }
}

fn setup(name: &str) -> (TestDir, Fixture, std::path::PathBuf) {
    let dir = TestDir::new(name);
    let fx = Fixture::create(&dir.path.join("src"));
    let work = dir.path.join("work");
    fx.push_to(&work);
    (dir, fx, work)
}

#[test]
fn batch_build_boards_by_commits() {
    let (dir, fx, work) = setup("batch");
    let mut w = Worker::start(&work, &dir.path, &["-T", "2"], &[]);
    w.handshake(json!({}));
    let commits = build_commits(&fx);
    w.send(json!({"cmd": "build_boards", "boards": boards_json(), "commits": commits}));
    let msgs = w.recv_until("build_done");
    assert_eq!(msgs[0], json!({"resp": "build_started", "num_threads": 2}));
    assert_eq!(msgs[1], json!({"resp": "worktree_created", "thread": 0}));
    assert_eq!(msgs[2], json!({"resp": "worktree_created", "thread": 1}));
    assert_eq!(
        msgs.last(),
        Some(&json!({"resp": "build_done", "exceptions": 0}))
    );
    check_results(&msgs, 3);
    check_incremental(&msgs);
    // Batch split: 2 threads for 5 boards, -j max(1, 2/2) = 1.
    let results = results_by_key(&msgs);
    let out = results[&("sandbox".to_string(), 0)]["stdout"]
        .as_str()
        .unwrap_or("");
    assert!(out.contains("(NPROC 1)"), "{out}");
    // Worktrees are real worktrees of the pushed repository.
    assert!(work.join(".bm-work/00/.git").is_file());
    assert!(work.join(".bm-work/01/build").is_dir());
    // Heartbeat when each board starts.
    let beats = msgs.iter().filter(|m| m["resp"] == "heartbeat").count();
    assert!(beats >= BOARDS.len(), "{beats} heartbeats");

    w.send(json!({"cmd": "quit"}));
    assert_eq!(w.recv()["resp"], "quit_ack");
    assert!(w.wait(Duration::from_secs(10)).success());
    assert!(w.stray.is_empty(), "stray stdout: {:?}", w.stray);
}

#[test]
fn demand_driven_build_and_missing_toolchain() {
    let (dir, fx, work) = setup("demand");
    let mut w = Worker::start(&work, &dir.path, &["-T", "2"], &[]);
    w.handshake(json!({}));
    let commits = build_commits(&fx);
    w.send(json!({"cmd": "build_prepare", "commits": commits, "max_boards": 2}));
    let prep = w.recv_until("build_prepare_done");
    assert_eq!(
        prep,
        vec![
            json!({"resp": "build_started", "num_threads": 2}),
            json!({"resp": "worktree_created", "thread": 0}),
            json!({"resp": "worktree_created", "thread": 1}),
            json!({"resp": "build_prepare_done"}),
        ]
    );
    for b in boards_json() {
        let mut cmd = b.clone();
        cmd["cmd"] = json!("build_board");
        w.send(cmd);
    }
    w.send(json!({"cmd": "build_board", "board": "m68k_board", "arch": "m68k"}));
    w.send(json!({"cmd": "build_done"}));
    let msgs = w.recv_until("build_done");
    assert_eq!(
        msgs.last(),
        Some(&json!({"resp": "build_done", "exceptions": 0}))
    );
    let mut without_m68k: Vec<Value> = msgs.clone();
    without_m68k.retain(|m| m["board"] != "m68k_board");
    check_results(&without_m68k, 3);
    check_incremental(&without_m68k);
    let results = results_by_key(&msgs);
    for upto in 0..3 {
        let r = &results[&("m68k_board".to_string(), upto)];
        assert_eq!(r["return_code"], 10, "{r}");
        assert_eq!(
            r["stderr"], "Tool chain error for m68k: No tool chain found for arch 'm68k'",
            "{r}"
        );
        assert!(r.get("config").is_none(), "{r}");
    }
    // A second demand-driven build in the same worker reuses the worktrees.
    w.send(json!({"cmd": "build_prepare", "commits": [fx.commits[3]], "max_boards": 2}));
    w.recv_until("build_prepare_done");
    w.send(json!({"cmd": "build_board", "board": "sandbox", "arch": "sandbox"}));
    w.send(json!({"cmd": "build_done"}));
    let msgs = w.recv_until("build_done");
    let r = &results_by_key(&msgs)[&("sandbox".to_string(), 0)];
    assert_eq!(r["return_code"], 0, "{r}");
    // One board active of max_boards 2: the tail gets -j 2*2/1 = 4.
    assert!(
        r["stdout"].as_str().unwrap_or("").contains("(NPROC 4)"),
        "{r}"
    );
    w.send(json!({"cmd": "quit"}));
    assert_eq!(w.recv()["resp"], "quit_ack");
    assert!(w.wait(Duration::from_secs(10)).success());
}

#[test]
fn settings_change_make_arguments() {
    let (dir, fx, work) = setup("settings");
    let mut w = Worker::start(&work, &dir.path, &["-T", "2"], &[]);
    w.handshake(json!({"warnings_as_errors": true, "verbose_build": true}));
    let commits = vec![fx.commits[3].clone()];
    let boards = json!([{"board": "sandbox_warn", "arch": "sandbox"}, {"board": "qemu_arm64", "arch": "aarch64"}]);
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": commits}));
    let msgs = w.recv_until("build_done");
    let results = results_by_key(&msgs);
    let warn = &results[&("sandbox_warn".to_string(), 0)];
    assert_ne!(warn["return_code"], 0, "-Werror must fail: {warn}");
    assert!(
        warn["stderr"]
            .as_str()
            .unwrap_or("")
            .contains("[-Werror=unused"),
        "{warn}"
    );
    let arm = &results[&("qemu_arm64".to_string(), 0)];
    assert_eq!(arm["return_code"], 0, "{arm}");
    let out = arm["stdout"].as_str().unwrap_or("");
    // V=1 shows the commands: the cross compiler comes from CROSS_COMPILE.
    assert!(out.contains("aarch64-linux-gnu-gcc"), "{out}");
    assert!(out.contains("-Werror"), "{out}");

    // config_only: only the cfg target is built, so there is no image.
    w.send(json!({"cmd": "configure", "settings": {"config_only": true}, "toolchains": common::toolchains()}));
    assert_eq!(w.recv()["resp"], "configure_done");
    let boards = json!([{"board": "sandbox", "arch": "sandbox"}]);
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": commits}));
    let msgs = w.recv_until("build_done");
    let r = &results_by_key(&msgs)[&("sandbox".to_string(), 0)];
    assert_eq!(r["return_code"], 0, "{r}");
    assert!(r.get("sizes").is_none(), "config_only built an image: {r}");
    assert!(work.join(".bm-work/00/build/u-boot.cfg").is_file());
}

#[test]
fn failed_incremental_build_is_retried_after_reconfigure() {
    let (dir, fx, work) = setup("retry");
    let mut w = Worker::start(&work, &dir.path, &["-T", "1"], &[]);
    // verbose_build keeps the defconfig step's output ("CONF") in stdout.
    w.handshake(json!({"verbose_build": true}));
    let boards = json!([{"board": "sandbox", "arch": "sandbox"}, {"board": "sandbox_broken", "arch": "sandbox"}]);
    let commits = &fx.commits[1..3];
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": commits}));
    let msgs = w.recv_until("build_done");
    let results = results_by_key(&msgs);
    let out = |b: &str, upto: u64| {
        results[&(b.to_string(), upto)]["stdout"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    for b in ["sandbox", "sandbox_broken"] {
        assert!(
            out(b, 0).contains("CONF    "),
            "{b}@0 not configured: {}",
            out(b, 0)
        );
    }
    // A good incremental build does not reconfigure...
    assert!(
        !out("sandbox", 1).contains("CONF    "),
        "{}",
        out("sandbox", 1)
    );
    // ...a failed one is retried once after reconfiguring.
    let broken = &results[&("sandbox_broken".to_string(), 1)];
    assert_ne!(broken["return_code"], 0, "{broken}");
    let text = out("sandbox_broken", 1);
    assert_eq!(
        text.matches("CONF    sandbox_broken_defconfig").count(),
        1,
        "{text}"
    );
}

#[test]
fn failed_defconfig_reports_no_stale_config() {
    let (dir, fx, work) = setup("stale-config");
    // One thread: no_such_board builds in the directory sandbox just used.
    let mut w = Worker::start(&work, &dir.path, &["-T", "1"], &[]);
    w.handshake(json!({}));
    let boards = json!([{"board": "sandbox", "arch": "sandbox"}, {"board": "no_such_board", "arch": "sandbox"}]);
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": [fx.commits[3]]}));
    let msgs = w.recv_until("build_done");
    let results = results_by_key(&msgs);
    assert_eq!(results[&("sandbox".to_string(), 0)]["return_code"], 0);
    let r = &results[&("no_such_board".to_string(), 0)];
    assert_ne!(r["return_code"], 0, "{r}");
    assert!(
        r["stderr"]
            .as_str()
            .unwrap_or("")
            .contains("Can't find default configuration"),
        "{r}"
    );
    assert!(
        r.get("config").is_none(),
        "another board's config reported: {r}"
    );
    assert!(
        r.get("sizes").is_none(),
        "another board's image reported: {r}"
    );
}

#[test]
fn builds_checked_out_source_without_commits() {
    let (dir, _fx, work) = setup("current");
    let mut w = Worker::start(&work, &dir.path, &["-T", "2"], &[]);
    w.handshake(json!({}));
    let boards =
        json!([{"board": "sandbox", "arch": "sandbox"}, {"board": "rpi_arm64", "arch": "aarch64"}]);
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": [null]}));
    let msgs = w.recv_until("build_done");
    assert!(
        msgs.iter().all(|m| m["resp"] != "worktree_created"),
        "{msgs:?}"
    );
    let results = results_by_key(&msgs);
    assert_eq!(results.len(), 2, "{results:?}");
    for r in results.values() {
        assert_eq!(r["commit_upto"], 0);
        assert_eq!(r["return_code"], 0, "{r}");
        assert!(r["sizes"]["raw"].is_string(), "{r}");
    }
    // The source tree itself stays clean: output went to the thread dirs.
    assert!(!work.join("u-boot").exists());
}

#[test]
fn heartbeats_while_a_board_builds() {
    let (dir, fx, work) = setup("heartbeat");
    let mut w = Worker::start(
        &work,
        &dir.path,
        &["-T", "1", "--heartbeat-interval", "0.5"],
        &[("FIXTURE_SLEEP", "2")],
    );
    w.handshake(json!({}));
    let boards = json!([{"board": "sandbox", "arch": "sandbox"}]);
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": [fx.commits[0]]}));
    let msgs = w.recv_until("build_done");
    let beats: Vec<&Value> = msgs.iter().filter(|m| m["resp"] == "heartbeat").collect();
    assert!(beats.len() >= 3, "{msgs:?}");
    assert!(
        beats
            .iter()
            .all(|b| b["board"] == "sandbox" && b["thread"] == 0),
        "{beats:?}"
    );
    // Heartbeats stop with the build.
    std::thread::sleep(Duration::from_millis(1200));
    w.send(json!({"cmd": "quit"}));
    assert_eq!(w.recv()["resp"], "quit_ack");
}
