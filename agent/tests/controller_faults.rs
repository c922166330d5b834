//! Controllers that misbehave, against the real agent binary on loopback
//! (`--fake-machine`/`--fake-build`, no root): one that black-holes
//! connections, one that accepts and never answers, one that sends 100 MiB
//! of garbage, one that refuses a result for good (403), and one whose
//! `result-url` carries a newline. Each costs only itself, quickly, and no
//! result is lost.

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::agent::{AgentProc, Scratch};
use common::controller::{one_task, task_response, Reply, TestController};
use common::wait_for;
use manifests::{Document, ResultRequestManifest};

const WAIT: Duration = Duration::from_secs(30);

/// A loopback address whose listener never accepts and whose accept queue
/// is full, so that the kernel drops further SYNs: connecting hangs, as to
/// a black-holed host. Returns the URL and what must stay alive.
fn black_hole() -> (String, TcpListener, Vec<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let mut held = Vec::new();
    for _ in 0..4096 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(_) => return (format!("http://{addr}/hole"), l, held),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

/// A listener that accepts connections, reads nothing and never answers.
fn silent() -> (String, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/silent", l.local_addr().expect("addr"));
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept() {
            held.push(s);
            if held.len() > 64 {
                return;
            }
        }
    });
    (url, t)
}

#[test]
fn a_black_holed_controller_costs_the_connect_timeout() {
    let s = Scratch::new();
    let (hole, _listener, _held) = black_hole();
    let results = TestController::start(|_, _| Reply::ok(""));
    let ru = results.url("/result");
    let good = one_task("linux", &ru, "good");
    // The hole is asked first. With a 30 s request timeout, a connection
    // attempt bounded only by it would hold the round for 30 s.
    let urls = [format!("9={hole}"), format!("1={}", good.url("/"))];
    let mut extra = vec!["--connect-timeout", "1"];
    extra.extend(urls.iter().map(String::as_str));
    let t0 = Instant::now();
    let mut a = AgentProc::spawn(&s.args_with(30, 0, &extra));
    wait_for("the good controller's result", WAIT, || {
        results.requests().first().cloned()
    });
    let took = t0.elapsed();
    let log = a.stop();
    assert!(
        took < Duration::from_secs(10),
        "round took {took:?}:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(&hole) && l.contains("cannot connect")),
        "no log line naming {hole} with 'cannot connect':\n{log}"
    );
}

#[test]
fn silent_and_flooding_controllers_cost_only_themselves() {
    let s = Scratch::new();
    let (quiet, _t) = silent();
    let flood = TestController::start(|_, _| Reply::ok("x".repeat(100 << 20)));
    let results = TestController::start(|_, _| Reply::ok(""));
    let ru = results.url("/result");
    let good = one_task("linux", &ru, "good");
    let urls = [
        format!("9={quiet}"),
        format!("8={}", flood.url("/flood")),
        format!("1={}", good.url("/")),
    ];
    let extra: Vec<&str> = urls.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let mut a = AgentProc::spawn(&s.args(&extra));
    wait_for("the good controller's result", WAIT, || {
        results.requests().first().cloned()
    });
    let took = t0.elapsed();
    let log = a.stop();
    // 2 s (request timeout) + reading 4 MiB of the flood, not 100 MiB.
    assert!(
        took < Duration::from_secs(15),
        "round took {took:?}:\n{log}"
    );
    for (url, why) in [
        (quiet.as_str(), "no answer within"),
        (&flood.url("/flood"), "answer longer than"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(url) && l.contains(why)),
            "no log line naming {url} with '{why}':\n{log}"
        );
    }
}

#[test]
fn a_result_refused_for_good_is_moved_aside_not_retried() {
    let s = Scratch::new();
    let results = TestController::start(|_, _| Reply::status(403));
    let ru = results.url("/result");
    let tasks = one_task("linux", &ru, "refused");
    let mut a = AgentProc::spawn(&s.args_retrying(4, &["--idle-sleep", "1", &tasks.url("/")]));
    let rejected = s.instance_state().join("results/rejected");
    wait_for("the entry moved to rejected/", WAIT, || {
        std::fs::read_dir(&rejected)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".manifest"))
    });
    // Several more rounds: nothing is sent again.
    wait_for("three more rounds", WAIT, || {
        (tasks.requests().len() >= 4).then_some(())
    });
    let log = a.stop();
    assert_eq!(results.requests().len(), 1, "no retry of a 403:\n{log}");
    assert_eq!(s.spooled(), 0);
    let mut answer = None;
    let mut kept = None;
    for e in std::fs::read_dir(&rejected).expect("rejected/").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(e.path()).expect("read");
        if name.ends_with(".answer") {
            answer = Some(text);
        } else {
            kept = Some(text);
        }
    }
    let answer = answer.expect("the controller's answer is kept");
    assert!(answer.contains("HTTP status 403"), "{answer}");
    let kept = kept.expect("the result is kept");
    let stream = manifests::parse_stream(kept.as_bytes(), "rejected").expect("manifest stream");
    let req = ResultRequestManifest::from_stream(&stream[1..], "rejected").expect("request");
    assert_eq!(req.session, "refused");
    assert_eq!(
        log.matches("refused for good").count(),
        1,
        "logged once:\n{log}"
    );
}

#[test]
fn a_result_url_with_a_newline_is_refused_before_building() {
    let s = Scratch::new();
    let results = TestController::start(|_, _| Reply::ok(""));
    // A multi-line manifest value: the URL, a newline, a forged pair.
    let ru = format!("\\\n{}\nsession: forged\n\\", results.url("/result"));
    let tasks = TestController::start(move |_, _| Reply::ok(task_response("linux", &ru, "nl")));
    let mut a = AgentProc::spawn(&s.args(&["--idle-sleep", "1", &tasks.url("/")]));
    wait_for("two rounds", WAIT, || {
        (tasks.requests().len() >= 2).then_some(())
    });
    let log = a.stop();
    assert!(results.requests().is_empty(), "nothing built or sent");
    assert!(
        log.contains("result-url contains control characters"),
        "{log}"
    );
}
