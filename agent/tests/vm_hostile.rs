//! A hostile guest, in a real QEMU guest next to a legitimate one: every
//! attack of the issue "the guest is hostile" is tried from inside the
//! guest in one run, and each is judged by what it achieved (listeners
//! that must see no connection, the other guest's servers that must see
//! no request, the result the controller gets, the console log on disk),
//! not by what the agent logged.
//!
//! Two agents (toolchains `tc-legit` and `tc-hostile`) share the scripted
//! machine. The legitimate guest fetches its source from its agent's
//! mirror and lingers; while it runs, the hostile guest attacks the host,
//! the legitimate guest's servers, the outside, its own TFTP session, the
//! console and the result.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::agent::AgentProc;
use common::controller::{task_response_from, Reply, TestController};
use common::vm::{self, TinyRepo, MACHINE};
use manifests::text::codepoint::is_build2_text;
use manifests::{Document, ResultRequestManifest, ResultStatus};

/// MiB the hostile guest writes to its console: the 200, twelve
/// times the 16 MiB cap. TCG's emulated UART carries about 0.6 MB/s here,
/// so the flood takes about five minutes of this test.
const CONSOLE_MIB: u64 = 200;

/// A controller that hands out one task once `release` is set (answering
/// "no task" before), with `extra` fields in the task; results to
/// `/result`.
fn controller(
    session: &'static str,
    repository: String,
    release: Arc<AtomicBool>,
    extra: Arc<Mutex<String>>,
) -> TestController {
    let result_url: Arc<OnceLock<String>> = Arc::default();
    let slot = Arc::clone(&result_url);
    let served = AtomicBool::new(false);
    let ctl = TestController::start(move |req, _| {
        if req.path.starts_with("/result") {
            return Reply::ok("");
        }
        if !release.load(Ordering::SeqCst) || served.swap(true, Ordering::SeqCst) {
            return Reply::no_task();
        }
        let mut task = task_response_from(
            MACHINE,
            slot.get().map_or("", String::as_str),
            session,
            &repository,
        );
        task.push_str(&extra.lock().expect("extra"));
        Reply::ok(task)
    });
    let _ = result_url.set(ctl.url("/result"));
    ctl
}

/// The host's address on its default route (an address outside the
/// guest's namespace that host services listen on).
fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "route", "get", "192.0.2.1"])
        .output()
        .expect("ip route get");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            if let Some(a) = words.next() {
                return a.to_string();
            }
        }
    }
    // No route out: the host's own loopback alias stands in (still not
    // the guest's loopback).
    "127.0.0.2".to_string()
}

/// Whether `l` (non-blocking) has had a connection.
fn was_reached(l: &TcpListener) -> bool {
    match l.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

/// `port` from the agent's "TFTP at 10.0.2.2:<port>" / "source at
/// git://10.0.2.2:<port>/" log line.
fn logged_port(log: &str, after: &str) -> Option<u16> {
    let line = log
        .lines()
        .find(|l| l.contains("guest started") && l.contains(after))?;
    let rest = &line[line.find(after)? + after.len()..];
    let rest = rest.strip_prefix("10.0.2.2:")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_hostile_guest_reaches_nothing_and_forges_nothing() {
    let (fs, work) = vm::scripted_machine();
    let repo = TinyRepo::serve(work.path(), None);
    let master = String::from_utf8_lossy(
        &Command::new("git")
            .args(["-C"])
            .arg(work.path().join("tiny-git/tiny.git"))
            .args(["rev-parse", "master"])
            .output()
            .expect("git rev-parse")
            .stdout,
    )
    .trim()
    .to_string();

    // Host services no guest may reach.
    let on_loopback = TcpListener::bind("127.0.0.1:0").expect("listener");
    let on_all = TcpListener::bind("0.0.0.0:0").expect("listener");
    on_loopback.set_nonblocking(true).expect("nonblocking");
    on_all.set_nonblocking(true).expect("nonblocking");
    let host_port = on_loopback.local_addr().expect("addr").port();
    let any_port = on_all.local_addr().expect("addr").port();

    let tftp = work.path().join("tftp");
    for (tc, behaviour) in [("tc-legit", "legit"), ("tc-hostile", "hostile")] {
        let dir = tftp.join("toolchain").join(tc);
        std::fs::create_dir_all(&dir).expect("toolchain dir");
        std::fs::write(dir.join("behaviour"), format!("{behaviour}\n")).expect("behaviour");
    }
    let (go_legit, go_hostile) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let legit_extra = Arc::new(Mutex::new(format!(
        "x-host-port: {host_port}\nx-linger: 240\nx-secret: victim-secret-4711\n"
    )));
    let hostile_extra = Arc::new(Mutex::new(String::new()));
    let legit_ctl = controller(
        "legit-1",
        repo.url.clone(),
        Arc::clone(&go_legit),
        legit_extra,
    );
    let hostile_ctl = controller(
        "hostile-1",
        repo.url.clone(),
        Arc::clone(&go_hostile),
        Arc::clone(&hostile_extra),
    );
    let mut legit = AgentProc::spawn(&vm::agent_args(
        fs.path(),
        work.path(),
        "tc-legit",
        &[],
        &legit_ctl.url("/"),
    ));
    let mut hostile = AgentProc::spawn(&vm::agent_args(
        fs.path(),
        work.path(),
        "tc-hostile",
        &["--build-timeout", "1500"],
        &hostile_ctl.url("/"),
    ));
    // Both bootstrapped and asking.
    common::wait_for("both agents bootstrapped", Duration::from_secs(900), || {
        (legit.stderr().contains("status: asking controllers")
            && hostile.stderr().contains("status: asking controllers"))
        .then_some(())
    });

    // The legitimate guest starts; its servers are the hostile one's
    // targets.
    go_legit.store(true, Ordering::SeqCst);
    let (victim_tftp, victim_source) = common::wait_for(
        "the legitimate guest's servers",
        Duration::from_secs(300),
        || {
            let log = legit.stderr();
            Some((
                logged_port(&log, "TFTP at ")?,
                logged_port(&log, "source at git://")?,
            ))
        },
    );
    common::wait_for(
        "the legitimate guest's fetch",
        Duration::from_secs(300),
        || {
            legit
                .stderr()
                .contains("source server: serving the mirror")
                .then_some(())
        },
    );
    // QEMU is confined: not root, seccomp on, in the VM's own cgroup and
    // network namespace (read from /proc, not from the agent's word).
    let qemu = vm::qemu_processes("tc-legit");
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    let pid: u32 = qemu[0]
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("QEMU pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let qemu_uid = String::from_utf8_lossy(
        &Command::new("id")
            .args(["-u", "bbot-qemu"])
            .output()
            .expect("id")
            .stdout,
    )
    .trim()
    .to_string();
    let uid_line = field("Uid:");
    let uids: Vec<&str> = uid_line.split_whitespace().collect();
    assert_eq!(uids, [qemu_uid.as_str(); 4], "QEMU's uids: {status}");
    assert_eq!(field("Seccomp:"), "2", "QEMU's seccomp filter: {status}");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert!(
        cgroups.contains("/bbot-agent/bbot-tc-legit-1-"),
        "QEMU's cgroups:\n{cgroups}"
    );
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("netns");
    let own = std::fs::read_link("/proc/self/ns/net").expect("netns");
    assert_ne!(ns, own, "QEMU shares the host's network namespace");

    let served_before = legit.stderr().matches("source server:").count();
    let gets_before = legit.stderr().matches("TFTP GET").count();
    assert!(
        gets_before >= 1,
        "the agent logs TFTP requests at --verbose 3"
    );
    *hostile_extra.lock().expect("extra") = format!(
        "x-host-port: {host_port}\nx-host-ip: {}\nx-any-port: {any_port}\n\
         x-victim-tftp-port: {victim_tftp}\nx-victim-source-port: {victim_source}\n\
         x-console-mib: {CONSOLE_MIB}\n",
        host_address()
    );
    // The bootstrap's upload is in the log already; the task's is not.
    let uploads_before = legit
        .stderr()
        .matches("guest uploaded its manifest")
        .count();
    go_hostile.store(true, Ordering::SeqCst);

    // The legitimate guest must still be there when the hostile one has
    // tried to reach it: the hostile guest marks that on its console.
    let hostile_run = work.path().join("state-tc-hostile/instance-1/run");
    common::wait_for(
        "the hostile guest's network attacks",
        Duration::from_secs(600),
        || {
            std::fs::read_dir(&hostile_run)
                .ok()?
                .flatten()
                .map(|e| e.path().join("console.log"))
                .filter_map(|p| std::fs::read(p).ok())
                .any(|c| String::from_utf8_lossy(&c).contains("bbot-hostile: network attacks done"))
                .then_some(())
        },
    );
    assert_eq!(
        legit
            .stderr()
            .matches("guest uploaded its manifest")
            .count(),
        uploads_before,
        "the legitimate guest ended before the attacks:\n{}",
        legit.stderr()
    );

    // The hostile guest's result arrives, and the legitimate one's.
    let hostile_body = common::wait_for("the hostile result", Duration::from_secs(1800), || {
        hostile_ctl
            .requests_to("/result")
            .into_iter()
            .next()
            .map(|r| r.body)
    });
    let legit_body = common::wait_for("the legitimate result", Duration::from_secs(600), || {
        legit_ctl
            .requests_to("/result")
            .into_iter()
            .next()
            .map(|r| r.body)
    });
    let hostile_log = hostile.stop();
    let legit_log = legit.stop();

    // Nothing reached the host's services or the other guest's servers.
    assert!(
        !was_reached(&on_loopback),
        "a guest reached the host's loopback"
    );
    assert!(!was_reached(&on_all), "a guest reached a host address");
    assert_eq!(
        legit_log.matches("source server:").count(),
        served_before,
        "the hostile guest reached the other guest's source server:\n{legit_log}"
    );
    assert_eq!(
        legit_log.matches("TFTP GET").count(),
        gets_before,
        "the hostile guest reached the other guest's TFTP server:\n{legit_log}"
    );

    // The legitimate guest got its source from the mirror and nothing else.
    let legit_result = ResultRequestManifest::parse(legit_body.as_bytes(), "legit result")
        .unwrap_or_else(|e| panic!("{e}\n{legit_body}"));
    assert_eq!(
        legit_result.result.status,
        ResultStatus::Success,
        "{legit_log}"
    );
    let legit_report = legit_result
        .result
        .operation("sandbox@0")
        .and_then(|o| o.log.clone())
        .unwrap_or_default();
    assert!(
        legit_report.contains(&format!("fetched {master}")),
        "{legit_report}"
    );
    assert!(
        legit_report.contains("tcp host loopback: refused"),
        "{legit_report}"
    );

    // The hostile result: forged operations dropped, the missing ones
    // abnormal, text made acceptable to build2, the second upload refused.
    let r = ResultRequestManifest::parse(hostile_body.as_bytes(), "hostile result")
        .unwrap_or_else(|e| panic!("{e}\n{hostile_body}"));
    assert!(
        hostile_body
            .chars()
            .all(|c| c == '\n' || c == '\t' || is_build2_text(c))
            && !hostile_body.contains('\r'),
        "text build2 refuses:\n{hostile_body}"
    );
    let res = &r.result;
    assert_eq!(
        (res.name.as_str(), res.version.as_str()),
        ("u-boot", "2026.01")
    );
    assert_eq!(res.status, ResultStatus::Abnormal, "{hostile_body}");
    assert!(res.extra.is_empty(), "{:?}", res.extra);
    let names: Vec<&str> = res.operations.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sandbox@0",
            "sandbox@1",
            "qemu_arm@0",
            "qemu_arm@1",
            "machine"
        ],
        "{hostile_body}"
    );
    for op in &res.operations[1..4] {
        assert_eq!(op.status, ResultStatus::Abnormal, "{}", op.name);
        assert_eq!(op.log.as_deref(), Some("no result from the guest\n"));
    }
    let machine = res.operations[4].log.clone().unwrap_or_default();
    assert!(machine.contains("'evil@0' (not asked for)"), "{machine}");
    assert!(machine.contains("'sandbox@7' (not asked for)"), "{machine}");
    let report = res.operations[0].log.clone().unwrap_or_default();
    assert!(
        report.contains("bom\\u{feff} nel\\u{0085} cr\nend"),
        "{report}"
    );
    for line in [
        "tcp host loopback: refused",
        "tcp host address: refused",
        "tcp outside: refused",
        "tcp victim source: refused",
        "udp victim tftp: refused",
        "uploads stored: 16 of 1000",
    ] {
        assert!(report.contains(line), "{line}:\n{report}");
    }
    assert!(!report.contains("victim-secret"), "{report}");
    assert!(hostile_log.matches("over the session's 16 uploads").count() >= 984);

    // The console log stayed at its cap, and says so.
    let logs = work.path().join("state-tc-hostile/instance-1/logs");
    let console = std::fs::read_dir(&logs)
        .expect("console logs")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-task.console.log"))
        .expect("the task's console log");
    let size = std::fs::metadata(&console).expect("console log").len();
    let cap = manifests::guest::MAX_CONSOLE_LOG_BYTES;
    assert!(size <= cap + 4096, "{size} bytes");
    let tail = {
        let bytes = std::fs::read(&console).expect("console log");
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(4096)..]).into_owned()
    };
    assert!(tail.contains("bytes of console output dropped"), "{tail}");
    assert!(
        hostile_log.contains("refused: already uploaded in this session"),
        "the second result was not refused:\n{hostile_log}"
    );

    // Nothing of either VM is left.
    for tc in ["tc-legit", "tc-hostile"] {
        assert!(vm::qemu_processes(tc).is_empty(), "QEMU of {tc} left");
        assert_eq!(
            vm::netns_of(tc),
            Vec::<String>::new(),
            "namespace of {tc} left"
        );
        assert_eq!(
            vm::cgroups_of(tc),
            Vec::<String>::new(),
            "cgroup of {tc} left"
        );
    }
    assert!(common::temporaries(fs.path()).is_empty());
}
