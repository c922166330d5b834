//! The agent against real HTTP controllers on loopback (tiny_http) speaking
//! bbot's protocol. Uses `--fake-machine` and `--fake-build`, so no root needed.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::agent::{AgentProc, Scratch, FAKE_MACHINE};
use common::controller::{one_task, refused_url, task_response, Reply, TestController};
use common::wait_for;
use manifests::{Document, ResultRequestManifest, ResultStatus, TaskRequestManifest};

const WAIT: Duration = Duration::from_secs(20);

fn parse_result(body: &str) -> ResultRequestManifest {
    ResultRequestManifest::parse(body.as_bytes(), "upload").expect("valid result request")
}

#[test]
fn no_task_then_hangup_then_stop() {
    let s = Scratch::new();
    let c = TestController::start(|_, _| Reply::no_task());
    let mut a = AgentProc::spawn(&s.args(&["--systemd-daemon", &c.url("/?build-task")]));
    wait_for("first task request", WAIT, || c.requests().first().cloned());
    let r = &c.requests()[0];
    assert_eq!(r.path, "/?build-task");
    assert_eq!(r.content_type.as_deref(), Some("text/manifest"));
    let req = TaskRequestManifest::parse(r.body.as_bytes(), "request").expect("task request");
    assert_eq!(req.toolchain_name, "default");
    assert!(!req.agent.is_empty());
    assert_eq!(req.machines.len(), 1);
    assert_eq!(req.machines[0].name, "linux");
    assert_eq!(req.machines[0].id, "linux-1");
    // Idle sleep is a minute; SIGHUP starts the next round at once.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.requests().len(), 1, "idle agent sleeps");
    // SIGHUP re-reads the --fake-machine file and starts the next round at once.
    std::fs::write(s.machine(), FAKE_MACHINE.replace("linux-1", "linux-2")).expect("machine");
    a.signal("HUP");
    let r = wait_for("round after SIGHUP", WAIT, || c.requests().get(1).cloned());
    let req = TaskRequestManifest::parse(r.body.as_bytes(), "request").expect("task request");
    assert_eq!(req.machines[0].id, "linux-2", "machine re-read on SIGHUP");
    let log = a.stop();
    for line in log.lines() {
        assert!(
            line.len() > 3 && line.starts_with('<') && line.as_bytes()[2] == b'>',
            "journald priority prefix missing: {line:?}"
        );
    }
    assert!(log.contains("<6>"), "{log}");
}

#[test]
fn task_is_run_and_result_uploaded() {
    let s = Scratch::new();
    let results = TestController::start(|_, _| Reply::ok(""));
    let result_url = results.url("/result");
    let tasks2 = one_task("linux", &result_url, "sess-1");
    let mut a = AgentProc::spawn(&s.args(&[
        "--fake-build-result",
        "success",
        "--trust",
        "AA:BB",
        &tasks2.url("/"),
    ]));
    let up = wait_for("result upload", WAIT, || {
        results.requests().first().cloned()
    });
    assert_eq!(up.content_type.as_deref(), Some("text/manifest"));
    let rr = parse_result(&up.body);
    assert_eq!(rr.session, "sess-1");
    assert_eq!(rr.result.name, "u-boot");
    assert_eq!(rr.result.version, "2026.01");
    assert_eq!(rr.result.status, ResultStatus::Success);
    let ops: Vec<&str> = rr
        .result
        .operations
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(ops, ["sandbox@0", "sandbox@1", "qemu_arm@0", "qemu_arm@1"]);
    // Loops at once after a task: the next request comes without the idle sleep.
    wait_for("next round", WAIT, || {
        (tasks2.requests().len() >= 2).then_some(())
    });
    a.stop();
    assert_eq!(results.requests().len(), 1);
    assert_eq!(s.spooled(), 0, "delivered result removed from the spool");
}

#[test]
fn failing_controllers_are_skipped() {
    let s = Scratch::new();
    let results = TestController::start(|_, _| Reply::ok(""));
    let slow = TestController::start(|_, _| Reply {
        delay: Duration::from_secs(6),
        ..Reply::no_task()
    });
    let e500 = TestController::start(|_, _| Reply::status(500));
    let e404 = TestController::start(|_, _| Reply::status(404));
    let junk = TestController::start(|_, _| Reply::ok("this is not a manifest\n"));
    let no_session_task = TestController::start(|_, _| Reply::ok(": 1\nsession: abc\n"));
    let ru = results.url("/wrong");
    let unknown =
        TestController::start(move |_, _| Reply::ok(task_response("other-machine", &ru, "x")));
    let ru = results.url("/result");
    let good = one_task("linux", &ru, "good");
    let refused = refused_url();
    // The good controller is first on the command line but has the lowest
    // priority: every failing one is asked before it.
    let urls = [
        format!("1={}", good.url("/")),
        format!("5={refused}"),
        format!("5={}", slow.url("/slow")),
        format!("5={}", e500.url("/500")),
        format!("5={}", e404.url("/404")),
        format!("5={}", junk.url("/junk")),
        format!("5={}", no_session_task.url("/notask")),
        format!("5={}", unknown.url("/unknown")),
    ];
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();
    let mut a = AgentProc::spawn(&s.args(&args));
    let up = wait_for("result from the good controller", WAIT, || {
        results.requests_to("/result").first().cloned()
    });
    assert_eq!(parse_result(&up.body).session, "good");
    let log = a.stop();
    for c in [&slow, &e500, &e404, &junk, &no_session_task, &unknown] {
        assert!(!c.requests().is_empty(), "every controller was asked");
    }
    assert!(
        results.requests_to("/wrong").is_empty(),
        "unknown machine's task not run"
    );
    let expect = [
        (refused.clone(), "cannot connect"),
        (slow.url("/slow"), "no answer within"),
        (e500.url("/500"), "HTTP status 500"),
        (e404.url("/404"), "HTTP status 404"),
        (junk.url("/junk"), "malformed answer"),
        (no_session_task.url("/notask"), "malformed answer"),
        (unknown.url("/unknown"), "did not offer"),
    ];
    for (url, why) in expect {
        assert!(
            log.lines().any(|l| l.contains(&url) && l.contains(why)),
            "no log line naming {url} with '{why}':\n{log}"
        );
    }
}

#[test]
fn a_5xx_then_200_upload_is_delivered_once() {
    let s = Scratch::new();
    let first = Arc::new(AtomicBool::new(true));
    let f = Arc::clone(&first);
    let results = TestController::start(move |_, _| {
        if f.swap(false, Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok("")
        }
    });
    let ru = results.url("/result");
    let tasks = one_task("linux", &ru, "spooled");
    let mut a = AgentProc::spawn(&s.args_retrying(4, &[&tasks.url("/")]));
    wait_for("second upload attempt", WAIT, || {
        (results.requests().len() >= 2).then_some(())
    });
    wait_for("spool emptied", WAIT, || (s.spooled() == 0).then_some(()));
    std::thread::sleep(Duration::from_millis(300));
    let log = a.stop();
    let ups = results.requests();
    assert_eq!(
        ups.len(),
        2,
        "one failed attempt, one delivery, no more:\n{log}"
    );
    assert_eq!(
        ups[0].body, ups[1].body,
        "the same result request is retried"
    );
    assert_eq!(parse_result(&ups[1].body).session, "spooled");
    assert!(log.contains("result delivered to"), "{log}");
}

#[test]
fn spooled_result_survives_a_restart() {
    let s = Scratch::new();
    let accept = Arc::new(AtomicBool::new(false));
    let acc = Arc::clone(&accept);
    let results = TestController::start(move |_, _| {
        if acc.load(Ordering::SeqCst) {
            Reply::ok("")
        } else {
            Reply::status(500)
        }
    });
    let ru = results.url("/result");
    let tasks = one_task("linux", &ru, "restart");
    let mut a = AgentProc::spawn(&s.args(&[&tasks.url("/")]));
    wait_for("a failed upload", WAIT, || {
        (!results.requests().is_empty()).then_some(())
    });
    let log = a.stop();
    assert!(log.contains("next try in 10s"), "backing off:\n{log}");
    assert_eq!(s.spooled(), 1, "undelivered result kept on disk");

    accept.store(true, Ordering::SeqCst);
    let idle = TestController::start(|_, _| Reply::no_task());
    let mut b = AgentProc::spawn(&s.args(&[&idle.url("/")]));
    wait_for("spool delivered after restart", WAIT, || {
        (s.spooled() == 0).then_some(())
    });
    b.stop();
    let last = results.requests().pop().expect("upload");
    assert_eq!(parse_result(&last.body).session, "restart");
}

#[test]
fn task_for_unknown_machine_is_refused() {
    let s = Scratch::new();
    let results = TestController::start(|_, _| Reply::ok(""));
    let ru = results.url("/result");
    let c = TestController::start(move |_, _| Reply::ok(task_response("nope", &ru, "s")));
    let mut a = AgentProc::spawn(&s.args(&["--idle-sleep", "1", &c.url("/")]));
    wait_for("two rounds", WAIT, || {
        (c.requests().len() >= 2).then_some(())
    });
    assert!(a.running(), "agent survives");
    let log = a.stop();
    assert!(
        results.requests().is_empty(),
        "task not run, nothing uploaded"
    );
    assert!(
        log.contains("task for machine 'nope' which this agent did not offer"),
        "{log}"
    );
}

fn run_once(args: &[String], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_bbot-agent"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.unwrap_or("").as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn fake_request_and_dumps() {
    let s = Scratch::new();
    let d = s.path();
    let req = write(
        d,
        "req",
        &task_response("linux", "http://127.0.0.1:9/none", "f"),
    );
    let m = s.machine().display().to_string();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--fake-machine", &m, "--fake-build", "--verbose", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // --dump-result: bbot's fake build, abort without operations, printed
    // instead of uploaded.
    let (code, out, err) = run_once(&base(&["--fake-request", &req, "--dump-result"]), None);
    assert_eq!(code, 0, "{err}");
    let r = manifests::ResultManifest::parse(out.as_bytes(), "stdout").expect("result manifest");
    assert_eq!((r.status, r.operations.len()), (ResultStatus::Abort, 0));
    // The testing aid: a made-up success per board and commit.
    let (code, out, err) = run_once(
        &base(&[
            "--fake-build-result",
            "success",
            "--fake-request",
            &req,
            "--dump-result",
        ]),
        None,
    );
    assert_eq!(code, 0, "{err}");
    let r = manifests::ResultManifest::parse(out.as_bytes(), "stdout").expect("result manifest");
    assert_eq!(
        (r.name.as_str(), r.status),
        ("u-boot", ResultStatus::Success)
    );
    assert_eq!(r.operations.len(), 4);
    assert!(r
        .operations
        .iter()
        .all(|o| o.status == ResultStatus::Success && o.log.is_some()));

    // A bare task manifest on stdin works too.
    let task_only = task_response("linux", "x", "y");
    let task_only = task_only
        .split_once("\n:\n")
        .map(|(_, t)| format!(": 1\n{t}"))
        .expect("split");
    let (code, out, err) = run_once(
        &base(&["--fake-request", "-", "--dump-task"]),
        Some(&task_only),
    );
    assert_eq!(code, 0, "{err}");
    let t = manifests::TaskManifest::parse(out.as_bytes(), "stdout").expect("task manifest");
    assert_eq!(t.machine, "linux");
    assert_eq!(t.commits, ["aaaa", "bbbb"]);

    // --dump-machines with --fake-machine: the header offered.
    let (code, out, err) = run_once(&base(&["--dump-machines"]), None);
    assert_eq!(code, 0, "{err}");
    let h = manifests::MachineHeader::parse(out.as_bytes(), "stdout").expect("header");
    assert_eq!((h.name.as_str(), h.id.as_str()), ("linux", "linux-1"));

    // A fake request for a machine we do not have is an error.
    let bad = write(d, "bad", &task_response("other", "x", "y"));
    let (code, _, err) = run_once(&base(&["--fake-request", &bad, "--dump-result"]), None);
    assert_eq!(code, 1);
    assert!(err.contains("did not offer"), "{err}");

    // Without --dump-result the result goes to the response's result-url, once.
    let results = TestController::start(|_, _| Reply::ok(""));
    let up = write(
        d,
        "up",
        &task_response("linux", &results.url("/r"), "fake-s"),
    );
    let state = s.state().display().to_string();
    let (code, _, err) = run_once(&base(&["--fake-request", &up, "--state", &state]), None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(results.requests().len(), 1);
    assert_eq!(parse_result(&results.requests()[0].body).session, "fake-s");
}

#[test]
fn command_line() {
    let (code, _, err) = run_once(&[], None);
    assert_eq!(code, 1);
    assert!(err.contains("error: controller url expected"), "{err}");
    assert!(err.contains("--help"), "hint expected: {err}");
    let (code, out, _) = run_once(&["--version".into()], None);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let (code, out, _) = run_once(&["--help".into()], None);
    assert_eq!(code, 0);
    for opt in [
        "--machines",
        "--toolchain-id",
        "--fake-request",
        "--dump-result",
        "--trust",
    ] {
        assert!(out.contains(opt), "{opt} missing from --help");
    }
    let (code, _, err) = run_once(&["--no-such-option".into()], None);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run_once(&["ftp://nope/".into()], None);
    assert_eq!(code, 1);
    assert!(err.contains("invalid controller url"), "{err}");
}
