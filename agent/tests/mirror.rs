//! The host's mirrors against a real git daemon: a task's repository is
//! fetched once into a bare mirror, brought up to date before each task,
//! safe against two agents fetching at once, and served to the guest
//! (here: a plain git client on loopback) by the source server, only to
//! the session's peer and only the mirror.

mod common;

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bbot_agent::base::cancel::Cancel;
use bbot_agent::vm::mirror::{self, MirrorConfig, MirrorError};
use bbot_agent::vm::source_server::SourceServer;
use common::vm::GitDaemon;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A served repository with `n` commits on `master`; returns the daemon,
/// the work tree and the URL.
fn served_repo(base: &Path, n: usize) -> (GitDaemon, std::path::PathBuf, String) {
    let src = base.join("src");
    std::fs::create_dir_all(&src).expect("src");
    git(&src, &["init", "-q", "-b", "master"]);
    for i in 0..n {
        std::fs::write(src.join("f"), format!("{i}\n")).expect("f");
        git(&src, &["add", "f"]);
        git(&src, &["commit", "-q", "-m", &format!("c{i}")]);
    }
    let served = base.join("served");
    std::fs::create_dir_all(&served).expect("served");
    git(base, &["clone", "-q", "--bare", "src", "served/repo.git"]);
    let daemon = GitDaemon::start(&served);
    let url = format!("git://127.0.0.1:{}/repo.git", daemon.port);
    (daemon, src, url)
}

#[test]
fn a_mirror_is_made_once_kept_up_to_date_and_shared_safely() {
    let work = tempfile::tempdir().expect("work");
    let (_daemon, src, url) = served_repo(work.path(), 2);
    let cfg = MirrorConfig::under(&work.path().join("state"));
    let cancel = Cancel::new();
    let m = mirror::update(&cfg, &url, Some("master"), &[], &cancel).expect("first fetch");
    let head = git(&src, &["rev-parse", "HEAD"]);
    assert_eq!(git(&m.path, &["rev-parse", "master"]), head);

    // New commits upstream: the next update brings them, same mirror.
    std::fs::write(src.join("f"), "new\n").expect("f");
    git(&src, &["commit", "-q", "-am", "c-new"]);
    let new = git(&src, &["rev-parse", "HEAD"]);
    git(&src, &["push", "-q", "../served/repo.git", "master"]);
    // Two agents at once: the lock serialises them, both succeed.
    let both: Vec<_> = (0..2)
        .map(|_| {
            let (cfg, url, cancel) = (cfg.clone(), url.clone(), cancel.clone());
            std::thread::spawn(move || mirror::update(&cfg, &url, None, &[], &cancel))
        })
        .collect();
    for t in both {
        let m2 = t.join().expect("thread").expect("concurrent fetch");
        assert_eq!(m2.path, m.path);
    }
    assert_eq!(git(&m.path, &["rev-parse", "master"]), new);
    let mirrors: Vec<_> = std::fs::read_dir(&cfg.root)
        .expect("mirrors")
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(mirrors.len(), 1, "one mirror per URL");
}

#[test]
fn local_and_odd_urls_are_refused_and_limits_hold() {
    let work = tempfile::tempdir().expect("work");
    let cfg = MirrorConfig::under(&work.path().join("state"));
    let cancel = Cancel::new();
    for url in ["/etc", "file:///etc", "ext::sh -c id", "ssh://localhost/x"] {
        let e = mirror::update(&cfg, url, None, &[], &cancel).expect_err(url);
        assert!(matches!(e, MirrorError::Url { .. }), "{url}: {e}");
    }
    // Over the size limit.
    let (_daemon, _src, url) = served_repo(work.path(), 3);
    let tiny = MirrorConfig {
        max_bytes: 1000,
        ..cfg.clone()
    };
    let e = mirror::update(&tiny, &url, None, &[], &cancel).expect_err("too big");
    assert!(matches!(e, MirrorError::TooBig { .. }), "{e}");
    // A server that accepts and never answers: the time limit.
    let silent = TcpListener::bind("127.0.0.1:0").expect("listener");
    let url = format!(
        "git://127.0.0.1:{}/x.git",
        silent.local_addr().expect("addr").port()
    );
    let quick = MirrorConfig {
        fetch_timeout: Duration::from_secs(2),
        ..cfg
    };
    let t = std::time::Instant::now();
    let e = mirror::update(&quick, &url, None, &[], &cancel).expect_err("silent");
    assert!(e.to_string().contains("no end after 2s"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn the_source_server_serves_the_mirror_to_its_guest_only() {
    let work = tempfile::tempdir().expect("work");
    let (_daemon, src, url) = served_repo(work.path(), 3);
    let cfg = MirrorConfig::under(&work.path().join("state"));
    let m = mirror::update(&cfg, &url, None, &[], &Cancel::new()).expect("mirror");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let allowed = Arc::new(Mutex::new(None));
    let server = SourceServer::start(
        listener,
        &m.path,
        &work.path().join("base"),
        Arc::clone(&allowed),
    )
    .expect("source server");
    let source = format!("git://127.0.0.1:{port}/source.git");
    let fetch = |dir: &str, what: &str| {
        let d = work.path().join(dir);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        git(&d, &["init", "-q"]);
        Command::new("git")
            .args(["fetch", "-q", "--depth=1", &source, what])
            .current_dir(&d)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .expect("git fetch")
    };
    // Before the guest is known (no TFTP request yet): nobody.
    assert!(!fetch("early", "master").status.success());
    // The guest (127.0.0.1 here) gets any commit by hash, shallow.
    *allowed.lock().expect("peer") = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let first = git(&src, &["rev-list", "--max-parents=0", "HEAD"]);
    let out = fetch("guest", &first);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another address is not the guest.
    *allowed.lock().expect("peer") = Some(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)));
    assert!(!fetch("other", "master").status.success());
    // Nothing but the mirror can be named, and nothing can be pushed.
    *allowed.lock().expect("peer") = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let d = work.path().join("guest");
    let out = Command::new("git")
        .args([
            "ls-remote",
            &format!("git://127.0.0.1:{port}/../served/repo.git"),
        ])
        .current_dir(&d)
        .output()
        .expect("ls-remote");
    assert!(!out.status.success());
    let out = Command::new("git")
        .args(["push", &source, "FETCH_HEAD:refs/heads/evil"])
        .current_dir(&d)
        .output()
        .expect("push");
    assert!(!out.status.success());
    assert!(Command::new("git")
        .args(["rev-parse", "-q", "--verify", "refs/heads/evil"])
        .current_dir(&m.path)
        .output()
        .expect("rev-parse")
        .stdout
        .is_empty());
    drop(server);
    assert!(!work.path().join("base").exists());
}
