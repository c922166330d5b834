//! The agent-facing protocol over real HTTP on loopback, with the wire
//! format written and read by the manifests crate exactly as the agent
//! does: no task, a task, a result, a stale session, refusals (content
//! type, malformed, method), and bounded bodies.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bbot_controller::views::{CellState, JobState};
use common::{ask, get, http, post_manifest, result_for, result_request, task_request, Controller};
use manifests::{Document, ResultStatus, TaskResponseManifest};
use serde_json::json;

const MACHINE: &str = "x86_64-debian_12-uboot";

fn job(boards_per_task: usize) -> serde_json::Value {
    json!({
        "repository": "https://example.org/u-boot.git",
        "ref": "master",
        "commits": ["aaaa1111", "bbbb2222"],
        "boards": ["sandbox sandbox", "qemu_arm64:aarch64", "qemu_arm arm"],
        "build_settings": ["no_lto=true"],
        "machine": "x86_64-*",
        "version": "2026.01",
        "boards_per_task": boards_per_task,
    })
}

#[test]
fn no_task_is_an_empty_session() {
    let mut c = Controller::start(&[]);
    let (status, body) = post_manifest(&c.task_url(), &task_request("h", &[MACHINE], None));
    assert_eq!(status, 200);
    assert_eq!(body, ": 1\nsession:\n", "exactly brep's 'no task' answer");
    // A job for other machines does not match what is offered.
    let mut j = job(2);
    j["machine"] = json!("aarch64-*");
    c.submit(j);
    let r = ask(&c, "h", &[MACHINE, "riscv64-debian_13"]);
    assert!(r.session.is_empty() && r.task.is_none());
    c.stop();
}

#[test]
fn a_task_carries_what_section_6_says() {
    let mut c = Controller::start(&[]);
    let id = c.submit(job(2));
    let (status, body) = post_manifest(
        &c.task_url(),
        &task_request("host1", &["aarch64-other", MACHINE], None),
    );
    assert_eq!(status, 200);
    let r = TaskResponseManifest::parse(body.as_bytes(), "response").expect("response");
    assert_eq!(r.session.len(), 32, "random 128-bit session");
    assert!(r.session.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(r.challenge, None, "no challenge without --agent-keys");
    assert_eq!(r.result_url.as_deref(), Some(c.result_url().as_str()));
    let t = r.task.expect("task");
    assert_eq!((t.name.as_str(), t.version.as_str()), ("u-boot", "2026.01"));
    assert_eq!(t.repository_url, "https://example.org/u-boot.git#master");
    assert_eq!(t.machine, MACHINE, "the offered machine that matched");
    assert_eq!(t.target, "x86_64-linux-gnu");
    assert_eq!(t.commits, ["aaaa1111", "bbbb2222"], "every commit");
    let boards: Vec<String> = t.boards.iter().map(ToString::to_string).collect();
    assert_eq!(boards, ["sandbox sandbox", "qemu_arm64 aarch64"]);
    assert_eq!(t.build_settings[0].to_string(), "no_lto=true");
    // The rest of the job, then nothing; sessions are unique.
    let r2 = ask(&c, "host2", &[MACHINE]);
    let t2 = r2.task.expect("second task");
    assert_eq!(t2.boards.len(), 1);
    assert_eq!(t2.boards[0].target, "qemu_arm");
    assert_ne!(r2.session, r.session);
    assert!(ask(&c, "host3", &[MACHINE]).task.is_none());
    let j = c.job(id);
    assert!(j.cells.iter().all(|c| c.state == CellState::Building));
    assert_eq!(j.tasks.iter().filter(|t| t.state == "leased").count(), 2);
    c.stop();
}

#[test]
fn a_result_lands_in_the_job_table() {
    let mut c = Controller::start(&[]);
    let id = c.submit(job(3));
    let r = ask(&c, "host1", &[MACHINE]);
    let task = r.task.clone().expect("task");
    let result = result_for(&task, |b, upto, _| {
        Some(match (b, upto) {
            ("sandbox", _) => ResultStatus::Success,
            ("qemu_arm64", 0) => ResultStatus::Warning,
            _ => ResultStatus::Error,
        })
    });
    let (status, body) = post_manifest(
        r.result_url.as_deref().expect("url"),
        &result_request(&r.session, None, result),
    );
    assert_eq!((status, body.as_str()), (200, ""));
    let j = c.job(id);
    assert_eq!(j.state, JobState::Finished);
    let st = |b, k| j.cell(b, k).and_then(|c| c.status);
    assert_eq!(st(0, 1), Some(ResultStatus::Success));
    assert_eq!(st(1, 0), Some(ResultStatus::Warning));
    assert_eq!(st(2, 1), Some(ResultStatus::Error));
    assert_eq!(j.counts.get("error"), Some(&3));
    let (code, cell) = get(&format!("{}api/jobs/{id}/cells/1/1", c.url));
    assert_eq!(code, 200);
    assert!(
        cell.contains("built qemu_arm64 at bbbb2222: error"),
        "{cell}"
    );
    assert_eq!(
        c.metric("bbot_controller_results_total{outcome=\"accepted\"}"),
        Some(1.0)
    );
    assert_eq!(
        c.metric("bbot_controller_tasks_done{status=\"error\"}"),
        Some(1.0)
    );
    c.stop();
}

#[test]
fn a_stale_session_is_answered_200_and_ignored() {
    let mut c = Controller::start(&[]);
    let id = c.submit(job(3));
    let r = ask(&c, "host1", &[MACHINE]);
    let task = r.task.clone().expect("task");
    let ok = result_for(&task, |_, _, _| Some(ResultStatus::Success));
    let bad = result_for(&task, |_, _, _| Some(ResultStatus::Error));
    // Unknown session: 200 (brep's answer), nothing changes.
    let (status, _) = post_manifest(
        &c.result_url(),
        &result_request("0123456789abcdef", None, bad.clone()),
    );
    assert_eq!(status, 200);
    assert!(c.job(id).cells.iter().all(|c| c.status.is_none()));
    // The real report, then the same session again with other statuses.
    assert_eq!(
        post_manifest(&c.result_url(), &result_request(&r.session, None, ok)).0,
        200
    );
    assert_eq!(
        post_manifest(&c.result_url(), &result_request(&r.session, None, bad)).0,
        200
    );
    let j = c.job(id);
    assert!(
        j.cells
            .iter()
            .all(|c| c.status == Some(ResultStatus::Success)),
        "first report stays"
    );
    assert_eq!(
        c.metric("bbot_controller_results_total{outcome=\"stale\"}"),
        Some(2.0)
    );
    let log = c.stop();
    assert!(
        log.contains("unknown session") && log.contains("session already ended (result)"),
        "{log}"
    );
}

#[test]
fn bad_requests_are_refused_with_reasons() {
    let mut c = Controller::start(&[]);
    let req = task_request("h", &[MACHINE], None);
    let r = http()
        .post(c.task_url())
        .header("Content-Type", "text/plain")
        .body(req.clone())
        .send()
        .expect("post");
    assert_eq!(r.status().as_u16(), 415);
    let (status, body) = post_manifest(&c.task_url(), "agent: x\n");
    assert_eq!(status, 400);
    assert!(body.starts_with("task request:1:1: error:"), "{body}");
    let (status, body) = post_manifest(&c.task_url(), ": 1\nagent: x\n");
    assert_eq!(status, 400);
    assert!(body.contains("toolchain-name"), "{body}");
    let (status, body) = post_manifest(&c.result_url(), ": 1\nsession: x\n");
    assert_eq!(status, 400, "{body}");
    let r = http().get(c.task_url()).send().expect("get");
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        r.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    assert_eq!(get(&format!("{}nowhere", c.url)).0, 404);
    assert_eq!(get(&format!("{}api/jobs/99", c.url)).0, 404);
    let bad_job = http()
        .post(format!("{}api/jobs", c.url))
        .header("Content-Type", "application/json")
        .body(json!({"repository": "x", "boards": [], "machine": "*"}).to_string())
        .send()
        .expect("post");
    assert_eq!(bad_job.status().as_u16(), 400);
    assert!(bad_job
        .text()
        .unwrap_or_default()
        .contains("invalid boards: no boards"));
    c.stop();
}

/// Sends raw bytes, returns the first response's status line and how long
/// it took.
fn raw(c: &Controller, bytes: &[u8]) -> (String, Duration) {
    let addr = c.url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let start = Instant::now();
    s.write_all(bytes).expect("write");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).expect("read");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    (
        text.lines().next().unwrap_or_default().to_string(),
        start.elapsed(),
    )
}

#[test]
fn oversized_bodies_are_refused_unread() {
    let mut c = Controller::start(&[]);
    // Declared far beyond any limit (a tiny_http server aborts on this).
    let (line, took) = raw(
        &c,
        b"POST /?build-result HTTP/1.1\r\nHost: x\r\nContent-Type: text/manifest\r\nContent-Length: 100000000000\r\n\r\nhello",
    );
    assert_eq!(line, "HTTP/1.1 413 Content Too Large");
    assert!(
        took < Duration::from_secs(1),
        "answered before the body: {took:?}"
    );
    // Expect: 100-continue over the limit: 413 at once, no 100 first.
    let (line, _) = raw(
        &c,
        b"POST /?build-task HTTP/1.1\r\nHost: x\r\nContent-Type: text/manifest\r\nExpect: 100-continue\r\nContent-Length: 1048577\r\n\r\n",
    );
    assert_eq!(line, "HTTP/1.1 413 Content Too Large");
    // A chunked body that grows past the limit.
    let mut chunked = b"POST /?build-task HTTP/1.1\r\nHost: x\r\nContent-Type: text/manifest\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(b"10000\r\n");
        chunked.extend(std::iter::repeat_n(b'#', 0x10000));
        chunked.extend_from_slice(b"\r\n");
    }
    assert_eq!(raw(&c, &chunked).0, "HTTP/1.1 413 Content Too Large");
    // A head that never ends.
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    head.extend(std::iter::repeat_n(b'a', 20_000));
    assert_eq!(
        raw(&c, &head).0,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Real clients over the limits: the agent's client reads the 413.
    let big = "#".repeat(1024 * 1024 + 1);
    assert_eq!(post_manifest(&c.task_url(), &big).0, 413);
    let huge = "#".repeat(16 * 1024 * 1024 + 1);
    assert_eq!(post_manifest(&c.result_url(), &huge).0, 413);
    // At the limit the body is read (and found not to be a manifest).
    let at_limit = format!(": 1\n{}", "#".repeat(1024 * 1024 - 4));
    assert_eq!(post_manifest(&c.task_url(), &at_limit).0, 400);
    // Still serving.
    assert_eq!(ask(&c, "h", &[MACHINE]).session, "");
    assert_eq!(
        c.metric("bbot_controller_http_requests_total{route=\"task\",code=\"413\"}"),
        Some(3.0)
    );
    c.stop();
}

#[test]
fn one_connection_serves_many_requests() {
    let mut c = Controller::start(&[]);
    let addr = c.url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = task_request("h", &[MACHINE], None);
    for _ in 0..3 {
        write!(
            s,
            "POST /?build-task HTTP/1.1\r\nHost: x\r\nContent-Type: text/manifest\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n: 1\nsession:\n"), "{text}");
        assert!(!text.contains("Connection: close"));
    }
    c.stop();
}

#[test]
fn metrics_cover_the_work() {
    let mut c = Controller::start(&[]);
    c.submit(job(1));
    assert!(common::take_and_report(
        &c,
        "a",
        MACHINE,
        ResultStatus::Success
    ));
    ask(&c, "b", &[MACHINE]);
    let m = c.metrics();
    for sample in [
        "bbot_controller_tasks{state=\"queued\"} 1",
        "bbot_controller_tasks{state=\"leased\"} 1",
        "bbot_controller_tasks{state=\"done\"} 1",
        "bbot_controller_tasks_done{status=\"success\"} 1",
        "bbot_controller_cells{status=\"pending\"} 4",
        "bbot_controller_cells{status=\"success\"} 2",
        "bbot_controller_lease_expiries_total 0",
        "bbot_controller_agents_seen 2",
        "bbot_controller_tasks_leased_total 2",
        "bbot_controller_jobs{state=\"running\"} 1",
        "bbot_controller_http_request_duration_seconds_count{route=\"task\"} 2",
        "# TYPE bbot_controller_http_request_duration_seconds histogram",
    ] {
        assert!(m.contains(sample), "{sample} missing:\n{m}");
    }
    c.stop();
    // A clean stop leaves one self-contained database file.
    let wal = c.data.join("controller.sqlite-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "WAL left behind"
    );
}
