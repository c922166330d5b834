//! `worker-guest task` end to end on the host, without a VM: a real TFTP
//! server (the `async-tftp` crate's) serves the task manifest, the binary
//! clones the generated fixture repository, builds boards × commits with
//! the toolchains it finds on PATH, and uploads the result manifest; plus
//! the error paths that must still upload a result (or fail in bounded
//! time when there is nobody to upload to).

mod common;

use std::time::{Duration, Instant};

use common::fixture::{Fixture, BROKEN_COMMIT};
use common::task::{run_task, show, uploaded_result};
use common::tftp::AsyncTftpServer;
use common::TestDir;
use manifests::ResultStatus;

#[test]
fn builds_boards_at_every_commit_and_uploads_the_result() {
    let dir = TestDir::new("task-e2e");
    let fx = Fixture::create(&dir.path.join("src"));
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    // Commits 1..=3 of the fixture: commit_upto 1 is the broken one.
    let commits = &fx.commits[1..];
    assert_eq!(BROKEN_COMMIT - 1, 1);
    let mut task = format!(
        ": 1\nname: u-boot-fixture\nversion: 2026.01-rc1\nrepository-url: {}#{}\n\
         machine: debian-12-x86_64\ntarget: x86_64-linux-gnu\n\
         worker-checksum: wc-123\ndependency-checksum: dc-456\n",
        fx.dir.display(),
        fx.branch
    );
    for c in commits {
        task.push_str(&format!("commit: {c}\n"));
    }
    for b in [
        "sandbox sandbox",
        "sandbox_warn sandbox",
        "sandbox_broken sandbox",
        "qemu_arm64 aarch64",
        "m68k_board m68k",
    ] {
        task.push_str(&format!("board: {b}\n"));
    }
    task.push_str("build-setting: no_lto=true\n");
    std::fs::write(tftp.join("manifest"), &task).expect("write task");

    let out = run_task(
        &server.addr.to_string(),
        &dir.path.join("work"),
        &dir.path,
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let r = uploaded_result(&tftp);

    assert_eq!(
        (r.name.as_str(), r.version.as_str()),
        ("u-boot-fixture", "2026.01-rc1")
    );
    assert_eq!(r.worker_checksum.as_deref(), Some("wc-123"));
    assert_eq!(r.dependency_checksum.as_deref(), Some("dc-456"));
    assert_eq!(r.operations.len(), 5 * commits.len(), "{r:#?}");
    // The missing m68k toolchain is the worst: abort.
    assert_eq!(r.status, ResultStatus::Abort);
    let op = |name: &str| {
        r.operation(name)
            .unwrap_or_else(|| panic!("no operation {name} in {r:#?}"))
    };
    let log = |name: &str| op(name).log.clone().unwrap_or_default();
    for upto in 0..commits.len() {
        for board in ["sandbox", "qemu_arm64"] {
            let name = format!("{board}@{upto}");
            assert_eq!(
                op(&name).status,
                ResultStatus::Success,
                "{name}: {}",
                log(&name)
            );
            let l = log(&name);
            let sizes = l.split_once("sizes:\n").map(|(_, s)| s).unwrap_or_default();
            // `size` output without its header: text data bss dec hex file.
            let words: Vec<&str> = sizes.split_whitespace().collect();
            assert!(
                words.len() >= 6
                    && words[..4].iter().all(|w| w.parse::<u64>().is_ok())
                    && words[5] == "u-boot",
                "{name}: {l}"
            );
        }
        let name = format!("sandbox_warn@{upto}");
        assert_eq!(
            op(&name).status,
            ResultStatus::Warning,
            "{name}: {}",
            log(&name)
        );
        assert!(
            log(&name).contains("warning: unused variable"),
            "{}",
            log(&name)
        );
        assert!(log(&name).contains("sizes:\n"), "{}", log(&name));
        let name = format!("m68k_board@{upto}");
        assert_eq!(op(&name).status, ResultStatus::Abort, "{name}");
        assert!(
            log(&name).contains("No tool chain found for arch 'm68k'"),
            "{}",
            log(&name)
        );
        let name = format!("sandbox_broken@{upto}");
        if upto == 1 {
            assert_eq!(
                op(&name).status,
                ResultStatus::Error,
                "{name}: {}",
                log(&name)
            );
            let l = log(&name);
            assert!(
                l.contains("board/fixture/sandbox_broken/board.c") && l.contains("error"),
                "{l}"
            );
            assert!(!l.contains("sizes:"), "a failed build has no sizes: {l}");
        } else {
            assert_eq!(
                op(&name).status,
                ResultStatus::Success,
                "{name}: {}",
                log(&name)
            );
        }
    }
    // The aarch64 board really was cross-built (the fixture Makefile
    // refuses a compiler that does not target aarch64).
    assert!(!log("qemu_arm64@0").contains("does not build for aarch64"));
}

#[test]
fn head_of_the_ref_is_built_once_without_commits() {
    let dir = TestDir::new("task-head");
    let fx = Fixture::create(&dir.path.join("src"));
    // A branch at commit 2 (broken sandbox_broken): `#<ref>` must pick it.
    common::fixture::git(
        &fx.dir,
        &["branch", "at-broken", &fx.commits[BROKEN_COMMIT]],
    );
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    let task = format!(
        ": 1\nname: fx\nversion: 1\nrepository-url: file://{}#at-broken\nmachine: m\n\
         target: t\nboard: sandbox_broken sandbox\nboard: sandbox sandbox\n",
        fx.dir.display()
    );
    std::fs::write(tftp.join("manifest"), task).expect("write task");
    let out = run_task(
        &server.addr.to_string(),
        &dir.path.join("work"),
        &dir.path,
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let r = uploaded_result(&tftp);
    let names: Vec<&str> = r.operations.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["sandbox_broken@0", "sandbox@0"]);
    assert_eq!(r.operations[0].status, ResultStatus::Error, "{r:#?}");
    assert_eq!(r.operations[1].status, ResultStatus::Success, "{r:#?}");
    assert_eq!(r.status, ResultStatus::Error);
}

#[test]
fn bad_task_manifests_give_an_abnormal_result() {
    let dir = TestDir::new("task-bad-manifest");
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);

    // Well-formed text, invalid task: a commit that is no hash (line 7).
    let task = ": 1\nname: fx\nversion: 1.2\nrepository-url: file:///nowhere\nmachine: m\n\
                target: t\ncommit: not-a-hash\nboard: sandbox sandbox\n";
    std::fs::write(tftp.join("manifest"), task).expect("write task");
    let out = run_task(
        &server.addr.to_string(),
        &dir.path.join("w1"),
        &dir.path,
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let r = uploaded_result(&tftp);
    assert_eq!(r.status, ResultStatus::Abnormal);
    assert_eq!((r.name.as_str(), r.version.as_str()), ("fx", "1.2"));
    let log = r
        .operation("worker")
        .and_then(|o| o.log.clone())
        .unwrap_or_default();
    assert!(log.contains("manifest:7:"), "{log}");
    assert!(log.contains("invalid 'commit' value"), "{log}");

    // Not a manifest at all.
    std::fs::write(tftp.join("manifest"), "\u{1}garbage\n").expect("write task");
    let out = run_task(
        &server.addr.to_string(),
        &dir.path.join("w2"),
        &dir.path,
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let r = uploaded_result(&tftp);
    assert_eq!(r.status, ResultStatus::Abnormal);
    assert_eq!(
        (r.name.as_str(), r.version.as_str()),
        ("unknown", "unknown")
    );
    let log = r
        .operation("worker")
        .and_then(|o| o.log.clone())
        .unwrap_or_default();
    assert!(log.contains("invalid task manifest: manifest:1:"), "{log}");
}

#[test]
fn unreachable_repository_gives_an_abnormal_result_with_gits_error() {
    let dir = TestDir::new("task-no-repo");
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    let missing = dir.path.join("no-such-repo.git");
    let task = format!(
        ": 1\nname: fx\nversion: 3\nrepository-url: {}\nmachine: m\ntarget: t\n\
         board: sandbox sandbox\nworker-checksum: w\n",
        missing.display()
    );
    std::fs::write(tftp.join("manifest"), task).expect("write task");
    let out = run_task(
        &server.addr.to_string(),
        &dir.path.join("work"),
        &dir.path,
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let r = uploaded_result(&tftp);
    assert_eq!(r.status, ResultStatus::Abnormal);
    assert_eq!((r.name.as_str(), r.version.as_str()), ("fx", "3"));
    assert_eq!(r.worker_checksum.as_deref(), Some("w"));
    let log = r
        .operation("worker")
        .and_then(|o| o.log.clone())
        .unwrap_or_default();
    assert!(log.contains("cannot get the source: git clone"), "{log}");
    assert!(
        log.contains("fatal:") && log.contains("no-such-repo.git"),
        "{log}"
    );
}

#[test]
fn a_git_server_that_never_answers_times_out_into_an_abnormal_result() {
    let dir = TestDir::new("task-silent-git");
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    // A git daemon's port that accepts connections and never says a word:
    // git clone waits for the server's first packet forever.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let conns: Vec<_> = listener.incoming().take(1).flatten().collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(conns);
    });
    let task = format!(
        ": 1\nname: fx\nversion: 4\nrepository-url: git://127.0.0.1:{port}/repo.git\n\
         machine: m\ntarget: t\nboard: sandbox sandbox\n"
    );
    std::fs::write(tftp.join("manifest"), task).expect("write task");
    let start = Instant::now();
    let out = run_task(
        &server.addr.to_string(),
        &dir.path.join("work"),
        &dir.path,
        &["--clone-timeout", "2"],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    let r = uploaded_result(&tftp);
    assert_eq!(r.status, ResultStatus::Abnormal);
    let log = r
        .operation("worker")
        .and_then(|o| o.log.clone())
        .unwrap_or_default();
    assert!(
        log.contains("cannot get the source: git clone") && log.contains("timed out after 2 s"),
        "{log}"
    );
    drop(held);
}

#[test]
fn no_server_means_failure_in_bounded_time() {
    let dir = TestDir::new("task-no-server");
    // A port that is bound but never read: requests go nowhere.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let start = Instant::now();
    let out = run_task(
        &addr,
        &dir.path.join("work"),
        &dir.path,
        &["--tftp-timeout", "0.3", "--tftp-retries", "2"],
    );
    let took = start.elapsed();
    assert!(!out.status.success(), "{}", show(&out));
    assert!(took < Duration::from_secs(10), "{took:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no answer after 2 retries"), "{stderr}");
    assert!(
        !dir.path.join("work").exists(),
        "nothing cloned without a task"
    );
}

#[test]
fn a_missing_settings_file_still_gives_a_result() {
    let dir = TestDir::new("task-no-settings");
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    let task = ": 1\nname: fx\nversion: 4\nrepository-url: file:///x\nmachine: m\ntarget: t\n\
                board: sandbox sandbox\ndependency-checksum: d\n";
    std::fs::write(tftp.join("manifest"), task).expect("write task");
    let missing = dir.path.join("no.buildman");
    let out = run_task(
        &server.addr.to_string(),
        &dir.path.join("work"),
        &dir.path,
        &["-G", &missing.to_string_lossy()],
    );
    assert!(out.status.success(), "{}", show(&out));
    let r = uploaded_result(&tftp);
    assert_eq!(r.status, ResultStatus::Abnormal);
    assert_eq!((r.name.as_str(), r.version.as_str()), ("fx", "4"));
    assert_eq!(r.dependency_checksum.as_deref(), Some("d"));
    let log = r
        .operation("worker")
        .and_then(|o| o.log.clone())
        .unwrap_or_default();
    assert!(log.contains("no.buildman does not exist"), "{log}");
}

#[test]
fn a_buildman_settings_file_replaces_autodetection() {
    let dir = TestDir::new("task-buildman-file");
    let fx = Fixture::create(&dir.path.join("src"));
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    // ~/.buildman names the host compiler only: the aarch64 board has no
    // toolchain although aarch64-linux-gnu-gcc is on PATH.
    let hostcc = dir.path.join("hostcc");
    std::fs::create_dir_all(&hostcc).expect("mkdir hostcc");
    std::os::unix::fs::symlink("/usr/bin/gcc", hostcc.join("gcc")).expect("link gcc");
    std::fs::write(
        dir.path.join(".buildman"),
        format!("[toolchain]\nhost = {}\n", hostcc.display()),
    )
    .expect("write .buildman");
    let task = format!(
        ": 1\nname: fx\nversion: 5\nrepository-url: {}\nmachine: m\ntarget: t\n\
         commit: {}\nboard: sandbox sandbox\nboard: rpi_arm64 aarch64\n",
        fx.dir.display(),
        fx.commits[0]
    );
    std::fs::write(tftp.join("manifest"), task).expect("write task");
    let out = run_task(
        &server.addr.to_string(),
        &dir.path.join("work"),
        &dir.path,
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    let r = uploaded_result(&tftp);
    let status = |n: &str| r.operation(n).map(|o| o.status);
    assert_eq!(status("sandbox@0"), Some(ResultStatus::Success), "{r:#?}");
    assert_eq!(status("rpi_arm64@0"), Some(ResultStatus::Abort), "{r:#?}");
}

/// `git daemon` on loopback serving `base` the way the agent serves its
/// mirror (any commit may be asked for by hash); killed with its group.
struct MirrorDaemon {
    child: std::process::Child,
    port: u16,
}

impl MirrorDaemon {
    fn start(base: &std::path::Path) -> Self {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let child = std::process::Command::new("git")
            .args(["-c", "uploadpack.allowAnySHA1InWant=true", "daemon"])
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("git daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        MirrorDaemon { child, port }
    }
}

impl Drop for MirrorDaemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// With the agent's mirror named (`--source`, as fw_cfg names it in a
/// guest), the guest fetches only the task's commits from it, shallow,
/// and never touches `repository-url` (here an address nobody serves).
#[test]
fn the_agents_mirror_gives_just_the_tasks_commits() {
    let dir = TestDir::new("task-mirror");
    let fx = Fixture::create(&dir.path.join("src"));
    let base = dir.path.join("mirrors");
    std::fs::create_dir_all(&base).expect("mirrors");
    common::fixture::git(
        &base,
        &[
            "clone",
            "-q",
            "--bare",
            &fx.dir.to_string_lossy(),
            "source.git",
        ],
    );
    let daemon = MirrorDaemon::start(&base);
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    let commits = &fx.commits[1..];
    let mut task = format!(
        ": 1\nname: fx\nversion: 1\nrepository-url: git://127.0.0.1:1/nowhere.git#{}\n\
         machine: m\ntarget: t\nboard: sandbox sandbox\n",
        fx.branch
    );
    for c in commits {
        task.push_str(&format!("commit: {c}\n"));
    }
    std::fs::write(tftp.join("manifest"), task).expect("write task");
    let work = dir.path.join("work");
    let source = format!("git://127.0.0.1:{}/source.git", daemon.port);
    let out = run_task(
        &server.addr.to_string(),
        &work,
        &dir.path,
        &["--source", &source],
    );
    assert!(out.status.success(), "{}", show(&out));
    let r = uploaded_result(&tftp);
    let names: Vec<&str> = r.operations.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["sandbox@0", "sandbox@1", "sandbox@2"], "{r:#?}");
    for op in &r.operations {
        assert_eq!(op.status, ResultStatus::Success, "{r:#?}");
    }
    let git = |args: &[&str]| {
        let o = std::process::Command::new("git")
            .arg("-C")
            .arg(&work)
            .args(args)
            .output()
            .expect("git");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(git(&["rev-parse", "--is-shallow-repository"]), "true");
    // The first fixture commit was not asked for and was not fetched.
    assert_eq!(
        git(&["cat-file", "-t", &fx.commits[0]]),
        "",
        "the whole history was fetched"
    );
}
