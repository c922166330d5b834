//! The `lines` setting: our source-lines manifest is buildman's, checked
//! against buildman 0.2.0's own `_scan_lines` (run from the virtualenv) on
//! the same real build, and sent by the worker for successful builds only.

mod common;

use std::process::Command;

use common::boss::buildman_scan_lines;
use common::fixture::Fixture;
use common::{results_by_key, TestDir, Worker};
use serde_json::json;

#[test]
fn manifest_matches_buildmans_scan_with_spl_and_tpl() {
    let dir = TestDir::new("lines-scan");
    let fx = Fixture::create(&dir.path.join("src"));
    // A real build with debug info, SPL and TPL (qemu_arm64 of the fixture).
    for args in [
        &["O=build", "qemu_arm64_defconfig"][..],
        &["O=build", "-j2", "CROSS_COMPILE=aarch64-linux-gnu-"],
    ] {
        let st = Command::new("make")
            .args(args)
            .current_dir(&fx.dir)
            .status()
            .expect("run make");
        assert!(st.success(), "make {args:?}");
    }
    let src = std::fs::canonicalize(&fx.dir).expect("canonical src");
    let out = src.join("build");
    let ours = worker_guest::lines::scan(&out, &src, 2);
    let theirs = buildman_scan_lines(&out, &src);
    assert_eq!(ours, theirs, "ours first, buildman's second");
    for key in [
        "common/main.c: ",
        "spl:common/main.c: ",
        "tpl:lib/string.c: ",
    ] {
        assert!(ours.lines().any(|l| l.starts_with(key)), "{key}: {ours}");
    }
}

#[test]
fn worker_sends_the_manifest_of_successful_builds() {
    let dir = TestDir::new("lines-worker");
    let fx = Fixture::create(&dir.path.join("src"));
    let work = dir.path.join("work");
    fx.push_to(&work);
    let mut w = Worker::start(&work, &dir.path, &["-T", "2"], &[]);
    w.handshake(json!({"lines": true}));
    let boards = json!([{"board": "qemu_arm64", "arch": "aarch64"}, {"board": "sandbox_broken", "arch": "sandbox"}]);
    let commits = &fx.commits[1..3];
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": commits}));
    let msgs = w.recv_until("build_done");
    let r = results_by_key(&msgs);
    let arm = &r[&("qemu_arm64".to_string(), 1)];
    let lines = arm["lines"].as_str().unwrap_or_default();
    assert!(
        lines.contains("lib/string.c: ") && lines.contains("spl:"),
        "{arm}"
    );
    // A failed build sends none (its objects are incomplete).
    let broken = &r[&("sandbox_broken".to_string(), 1)];
    assert_ne!(broken["return_code"], 0);
    assert!(broken.get("lines").is_none(), "{broken}");
    // The manifest is that of the build at that commit: compare with
    // buildman's scan of the worktree left at the last commit.
    let last = &r[&("qemu_arm64".to_string(), 1)];
    let tdir = ["00", "01"]
        .iter()
        .map(|t| work.join(".bm-work").join(t))
        .find(|t| {
            std::fs::read_to_string(t.join("build/.config")).is_ok_and(|c| c.contains("QEMU_ARM64"))
        })
        .expect("qemu_arm64's worktree");
    let tdir = std::fs::canonicalize(&tdir).expect("canonical");
    let theirs = buildman_scan_lines(&tdir.join("build"), &tdir);
    assert_eq!(last["lines"].as_str().unwrap_or_default(), theirs);
}
