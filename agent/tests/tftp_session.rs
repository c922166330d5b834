//! The per-session rules of the agent's TFTP server against real clients
//! (curl) and raw packets: a hostile guest gets its task and can hand in
//! one result, within quotas, and nobody else is served.

use bbot_agent::vm::tftp::{Phase, SessionRules, TftpEvent, TftpServer};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

struct Session {
    tmp: tempfile::TempDir,
    put: PathBuf,
    server: TftpServer,
}

fn session(rules: SessionRules) -> Session {
    let tmp = tempfile::tempdir().expect("temp dir");
    let get = tmp.path().join("get");
    let put = tmp.path().join("put");
    fs::create_dir(&get).expect("get dir");
    fs::create_dir(&put).expect("put dir");
    fs::write(get.join("manifest"), ": 1\nname: task\n").expect("task");
    fs::write(get.join("other-task"), ": 1\nname: someone else's\n").expect("other");
    let server =
        TftpServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &get, &put, rules).expect("TFTP server");
    Session { tmp, put, server }
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl")
}

fn url(s: &Session, name: &str) -> String {
    format!("tftp://127.0.0.1:{}/{name}", s.server.local_addr().port())
}

fn get(s: &Session, name: &str) -> Output {
    let out = s.tmp.path().join("got");
    let _ = fs::remove_file(&out);
    curl(&["-o", &out.to_string_lossy(), &url(s, name)])
}

fn put(s: &Session, local: &Path, name: &str) -> Output {
    curl(&["-T", &local.to_string_lossy(), &url(s, name)])
}

fn file(s: &Session, name: &str, bytes: &[u8]) -> PathBuf {
    let p = s.tmp.path().join(format!("local-{name}"));
    fs::write(&p, bytes).expect("local file");
    p
}

fn refusals(s: &Session) -> Vec<(String, String)> {
    std::thread::sleep(Duration::from_millis(200));
    s.server
        .events()
        .try_iter()
        .filter_map(|e| match e {
            TftpEvent::Refused { name, reason, .. } => Some((name, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_task_session_serves_only_its_manifest_and_takes_one_result() {
    let s = session(SessionRules::for_phase(Phase::Task));
    let o = get(&s, "manifest");
    assert!(o.status.success(), "{o:?}");
    // curl 68: TFTP error 1 (not found): the file exists but is not this
    // session's to read.
    assert_eq!(get(&s, "other-task").status.code(), Some(68));

    let first = file(&s, "first", b": 1\nname: first\n");
    let second = file(&s, "second", b": 1\nname: forged\n");
    let o = put(&s, &first, "manifest");
    assert!(o.status.success(), "{o:?}");
    let o = put(&s, &second, "/manifest");
    assert!(!o.status.success(), "a second result upload was accepted");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        fs::read_to_string(s.put.join("manifest")).expect("result"),
        ": 1\nname: first\n",
        "the first result was replaced"
    );
    let r = refusals(&s);
    assert!(
        r.iter()
            .any(|(n, why)| n == "/manifest" && why.contains("one upload only")),
        "{r:?}"
    );
}

#[test]
fn a_broken_off_result_upload_can_be_retried() {
    let s = session(SessionRules {
        max_file_bytes: 1000,
        ..SessionRules::for_phase(Phase::Task)
    });
    let big = file(&s, "big", &[b'x'; 5000]);
    assert!(!put(&s, &big, "manifest").status.success());
    let ok = file(&s, "ok", b": 1\nname: ok\n");
    let o = put(&s, &ok, "manifest");
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn uploads_past_the_session_quota_are_refused_and_the_server_goes_on() {
    let rules = SessionRules::for_phase(Phase::Task);
    let max = rules.max_files as usize;
    let s = session(rules);
    let local = file(&s, "small", b"x");
    let mut stored = 0;
    for i in 0..max + 8 {
        if put(&s, &local, &format!("f{i}")).status.success() {
            stored += 1;
        }
    }
    assert_eq!(stored, max);
    let on_disk = fs::read_dir(&s.put).expect("put dir").count();
    assert_eq!(on_disk, max);
    // The flood cannot crowd out the result: it is outside the quotas.
    let result = file(&s, "result", b": 1\n");
    let o = put(&s, &result, "manifest");
    assert!(o.status.success(), "{o:?}");
    assert!(
        get(&s, "manifest").status.success(),
        "the server stopped serving"
    );
    let r = refusals(&s);
    assert!(r.iter().any(|(_, why)| why.contains("uploads")), "{r:?}");
}

#[test]
fn bytes_past_the_session_quota_are_refused() {
    let s = session(SessionRules {
        max_bytes: 10_000,
        ..SessionRules::for_phase(Phase::Task)
    });
    let chunk = file(&s, "chunk", &[b'y'; 4000]);
    assert!(put(&s, &chunk, "a").status.success());
    assert!(put(&s, &chunk, "b").status.success());
    assert!(!put(&s, &chunk, "c").status.success());
    assert!(!s.put.join("c").exists());
    assert!(
        put(&s, &chunk, "manifest").status.success(),
        "the result has room"
    );
    let r = refusals(&s);
    assert!(
        r.iter()
            .any(|(n, why)| n == "c" && why.contains("10000 bytes")),
        "{r:?}"
    );
}

/// A TFTP read request for `name`, octet mode.
fn rrq(name: &str) -> Vec<u8> {
    let mut p = vec![0, 1];
    p.extend_from_slice(name.as_bytes());
    p.push(0);
    p.extend_from_slice(b"octet");
    p.push(0);
    p
}

#[test]
fn once_the_guest_is_heard_from_other_addresses_are_refused() {
    let s = session(SessionRules::for_phase(Phase::Task));
    assert!(get(&s, "manifest").status.success());
    let other = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    other
        .send_to(&rrq("manifest"), s.server.local_addr())
        .expect("send");
    let mut buf = [0u8; 600];
    let (n, _) = other.recv_from(&mut buf).expect("an answer");
    // ERROR (5), code 2: access violation; never DATA (3).
    assert_eq!(&buf[..4], &[0, 5, 0, 2], "{:?}", &buf[..n]);
    let r = refusals(&s);
    assert!(
        r.iter()
            .any(|(_, why)| why.contains("127.0.0.2 is not this session's guest")),
        "{r:?}"
    );
}
