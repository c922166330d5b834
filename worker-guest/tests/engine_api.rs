//! The engine as a library (what the task mode will use): boards × commits
//! in-process, one outcome per (board, commit); and toolchains from the
//! worker's own buildman-style config file.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fixture::Fixture;
use common::{results_by_key, TestDir, Worker};
use serde_json::json;
use worker_guest::build_settings::{BuildSettings, MakeFlags};
use worker_guest::engine::{build_boards, EngineConfig};
use worker_guest::protocol::BoardSpec;
use worker_guest::toolchain::Toolchains;

#[test]
fn build_boards_in_process() {
    let dir = TestDir::new("engine-api");
    let fx = Fixture::create(&dir.path.join("src"));
    let work = dir.path.join("work");
    fx.push_to(&work);
    let mut toolchains = Toolchains::new();
    assert!(toolchains.add_from_boss("sandbox", "/usr/bin/gcc"));
    assert!(toolchains.add_from_boss("aarch64", "/usr/bin/aarch64-linux-gnu-gcc"));
    let cfg = Arc::new(EngineConfig {
        work_dir: work.clone(),
        nthreads: 2,
        settings: BuildSettings::default(),
        toolchains,
        make_flags: MakeFlags::default(),
        heartbeat_interval: Duration::from_secs(30),
        git_timeout: worker_guest::git::LOCAL_TIMEOUT,
    });
    let boards = [
        BoardSpec {
            board: "sandbox_broken".into(),
            arch: "sandbox".into(),
        },
        BoardSpec {
            board: "rpi_arm64".into(),
            arch: "aarch64".into(),
        },
        BoardSpec {
            board: "nowhere".into(),
            arch: "riscv".into(),
        },
    ];
    let out = build_boards(cfg, &boards, Some(fx.commits[1..].to_vec())).expect("build");
    assert_eq!(out.len(), 9, "{out:#?}");
    for r in &out {
        match r.board.as_str() {
            "sandbox_broken" if r.commit_upto == 1 => {
                assert_ne!(r.return_code, 0, "{r:?}");
                assert!(r.config.contains_key(".config"), "{r:?}");
            }
            "nowhere" => {
                assert_eq!(r.return_code, worker_guest::RETURN_CODE_NO_TOOLCHAIN);
                assert_eq!(
                    r.stderr,
                    "Tool chain error for riscv: No tool chain found for arch 'riscv'"
                );
            }
            _ => {
                assert_eq!(r.return_code, 0, "{r:?}");
                assert!(
                    r.sizes.as_deref().is_some_and(|s| s.contains("u-boot")),
                    "{r:?}"
                );
            }
        }
    }
}

#[test]
fn toolchains_from_the_worker_config_file() {
    let dir = TestDir::new("config-file");
    let fx = Fixture::create(&dir.path.join("src"));
    let work = dir.path.join("work");
    fx.push_to(&work);
    // The worker's HOME is dir.path in these tests: ~/.buildman is read.
    std::fs::write(
        dir.path.join(".buildman"),
        "[toolchain]\nhost = /usr\n\n[toolchain-prefix]\naarch64 = /usr/bin/aarch64-linux-gnu-\n",
    )
    .expect("write .buildman");
    let mut w = Worker::start(&work, &dir.path, &["-T", "2"], &[]);
    assert_eq!(w.recv()["resp"], "ready");
    // No toolchains from the boss: only the config file's.
    w.send(json!({"cmd": "configure", "settings": {}}));
    assert_eq!(w.recv()["resp"], "configure_done");
    let boards = json!([
        {"board": "sandbox", "arch": "sandbox"},
        {"board": "qemu_arm64", "arch": "aarch64"},
        {"board": "m68k_thing", "arch": "m68k"}
    ]);
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": [fx.commits[3]]}));
    let msgs = w.recv_until("build_done");
    let results = results_by_key(&msgs);
    assert_eq!(
        results[&("sandbox".to_string(), 0)]["return_code"],
        0,
        "{results:?}"
    );
    assert_eq!(
        results[&("qemu_arm64".to_string(), 0)]["return_code"],
        0,
        "{results:?}"
    );
    assert_eq!(
        results[&("m68k_thing".to_string(), 0)]["return_code"],
        10,
        "{results:?}"
    );
    w.send(json!({"cmd": "quit"}));
    assert_eq!(w.recv()["resp"], "quit_ack");
    assert!(w.wait(Duration::from_secs(10)).success());

    // An explicit -G file wins over ~/.buildman: with no aarch64 toolchain
    // in it, the arm board cannot build.
    let other = dir.path.join("other.buildman");
    std::fs::write(&other, "[toolchain]\nhost = /nonexistent\n").expect("write config");
    let other_arg = other.to_string_lossy().into_owned();
    let mut w = Worker::start(&work, &dir.path, &["-T", "1", "-G", &other_arg], &[]);
    assert_eq!(w.recv()["resp"], "ready");
    let boards = json!([{"board": "qemu_arm64", "arch": "aarch64"}]);
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": [fx.commits[3]]}));
    let msgs = w.recv_until("build_done");
    let r = &results_by_key(&msgs)[&("qemu_arm64".to_string(), 0)];
    assert_eq!(r["return_code"], 10, "{r}");
}
