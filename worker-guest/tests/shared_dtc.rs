//! The `shared_dtc` setting: dtc and pylibfdt are built once per version
//! of `scripts/dtc` (in `<work>/.bm-work/.dtc/<hash>`, the hash being
//! buildman's `dtcache.hash_src_tree`) and every board builds with
//! `DTC=<that dtc>` instead of building its own; and the shared build of
//! real U-Boot's dtc works.

mod common;

use std::collections::HashMap;
use std::ffi::OsString;

use common::boss::buildman_dtc_hash;
use common::fixture::Fixture;
use common::{results_by_key, uboot, TestDir, Worker};
use serde_json::json;
use worker_guest::dtc_cache::{hash_src_tree, DtcCache};

#[test]
fn boards_build_with_the_shared_dtc() {
    let dir = TestDir::new("shared-dtc");
    let fx = Fixture::create(&dir.path.join("src"));
    let work = dir.path.join("work");
    fx.push_to(&work);
    let mut w = Worker::start(&work, &dir.path, &["-T", "2"], &[]);
    w.handshake(json!({"shared_dtc": true}));
    let boards = json!([{"board": "sandbox", "arch": "sandbox"}, {"board": "qemu_arm64", "arch": "aarch64"}]);
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": &fx.commits[1..3]}));
    let msgs = w.recv_until("build_done");
    // Named by buildman's own hash of the dtc sources.
    let hash = buildman_dtc_hash(&fx.dir);
    assert_eq!(hash_src_tree(&fx.dir).as_deref(), Some(hash.as_str()));
    let shared = std::fs::canonicalize(work.join(".bm-work/.dtc"))
        .expect("shared dtc directory")
        .join(&hash[..16])
        .join("scripts/dtc/dtc");
    assert!(shared.is_file(), "{}", shared.display());
    for r in results_by_key(&msgs).values() {
        assert_eq!(r["return_code"], 0, "{r}");
        if r["commit_upto"] == 0 {
            let out = r["stdout"].as_str().unwrap_or("");
            assert!(
                out.contains(&format!("DTC     {}", shared.display())),
                "not built with the shared dtc: {r}"
            );
        }
    }
    // No board built a dtc of its own.
    for t in ["00", "01"] {
        let own = work.join(".bm-work").join(t).join("build/scripts/dtc/dtc");
        assert!(!own.exists(), "{}", own.display());
    }

    // Without the setting, each board builds its own.
    w.send(json!({"cmd": "configure", "settings": {}, "toolchains": common::toolchains()}));
    assert_eq!(w.recv()["resp"], "configure_done");
    let boards = json!([{"board": "sandbox", "arch": "sandbox"}]);
    w.send(json!({"cmd": "build_boards", "boards": boards, "commits": [fx.commits[3]]}));
    let msgs = w.recv_until("build_done");
    let r = &results_by_key(&msgs)[&("sandbox".to_string(), 0)];
    assert!(
        r["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("DTC     build/scripts/dtc/dtc"),
        "{r}"
    );
}

#[test]
fn shared_dtc_of_real_uboot() {
    uboot::require_prerequisites();
    let dir = TestDir::new("shared-dtc-uboot");
    let src = uboot::debian_tree(&dir.path);
    let hash = buildman_dtc_hash(&src);
    assert_eq!(hash_src_tree(&src).as_deref(), Some(hash.as_str()));
    let cache = DtcCache::new(dir.path.join(".dtc"), 2);
    // Debian's /usr/bin first: pylibfdt's build runs python3.
    let mut env: HashMap<OsString, OsString> = std::env::vars_os().collect();
    env.insert("PATH".into(), uboot::build_path());
    let t = std::time::Instant::now();
    let (dtc, pylibfdt) = cache
        .obtain(&src, &env)
        .expect("shared dtc build of U-Boot (needs swig, python3-dev)");
    eprintln!("shared dtc built in {:.1?}", t.elapsed());
    assert!(dtc.is_file() && dtc.starts_with(dir.path.join(".dtc").join(&hash[..16])));
    let version = std::process::Command::new(&dtc)
        .arg("--version")
        .output()
        .expect("run the shared dtc");
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("DTC"),
        "{version:?}"
    );
    assert!(std::fs::read_dir(&pylibfdt)
        .expect("pylibfdt dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("_libfdt")));
    // A second board at the same dtc version: no second build.
    let t = std::time::Instant::now();
    assert_eq!(cache.obtain(&src, &env), Some((dtc, pylibfdt)));
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
}
