//! The agent's TFTP server against real clients: tftp-hpa, busybox and
//! curl, for GET, PUT, the blksize option, and every way a guest might try
//! to leave its directories; and the guest's own client (worker-guest's)
//! with RFC 7440 windows, whose size the server caps.

use bbot_agent::vm::tftp::{Phase, SessionRules, TftpEvent, TftpServer};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

struct Setup {
    _tmp: tempfile::TempDir,
    get: std::path::PathBuf,
    put: std::path::PathBuf,
    outside: std::path::PathBuf,
    server: TftpServer,
}

/// Any file of the GET directory (the bootstrap phase's rule), uploads up
/// to `limit` bytes each.
fn setup(limit: u64) -> Setup {
    setup_with(SessionRules {
        max_file_bytes: limit,
        ..SessionRules::for_phase(Phase::Bootstrap)
    })
}

fn setup_with(rules: SessionRules) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let get = tmp.path().join("get");
    let put = tmp.path().join("put");
    let outside = tmp.path().join("outside");
    for d in [&get, &put, &outside] {
        fs::create_dir(d).unwrap();
    }
    fs::write(get.join("manifest"), ": 1\nname: task\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(get.join("big.bin"), &big).unwrap();
    fs::create_dir(get.join("sub")).unwrap();
    fs::write(get.join("sub/inner"), "inner").unwrap();
    fs::write(outside.join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), get.join("escape")).unwrap();
    std::os::unix::fs::symlink("manifest", get.join("alias")).unwrap();
    std::os::unix::fs::symlink(&outside, put.join("outlink")).unwrap();
    let server = TftpServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &get, &put, rules).unwrap();
    Setup {
        _tmp: tmp,
        get,
        put,
        outside,
        server,
    }
}

fn port(s: &Setup) -> u16 {
    let SocketAddr::V4(a) = s.server.local_addr() else {
        panic!()
    };
    a.port()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn events(s: &Setup) -> Vec<TftpEvent> {
    std::thread::sleep(Duration::from_millis(100));
    s.server.events().try_iter().collect()
}

/// Waits for the server to report `name` stored (the final ACK goes out
/// just before the rename, so a client may finish a moment earlier).
fn wait_stored(s: &Setup, name: &str) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(TftpEvent::Stored { name: n, bytes, .. }) =
            s.server.events().recv_timeout(Duration::from_millis(100))
        {
            if n == name {
                return bytes;
            }
        }
    }
    panic!("{name} was not stored");
}

fn no_upload_leftovers(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name();
        assert!(
            !name.to_string_lossy().starts_with(".bbot-upload-"),
            "temp file left: {name:?}"
        );
    }
}

#[test]
fn tftp_hpa_get_and_put() {
    let s = setup(1 << 20);
    let out = s._tmp.path().join("got");
    let o = run(Command::new("tftp")
        .args([
            "-m",
            "binary",
            "127.0.0.1",
            &port(&s).to_string(),
            "-c",
            "get",
            "/manifest",
        ])
        .arg(&out));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(fs::read_to_string(&out).unwrap(), ": 1\nname: task\n");
    let local = s._tmp.path().join("result");
    fs::write(&local, ": 1\nstatus: success\n").unwrap();
    let o = run(Command::new("tftp")
        .args([
            "-m",
            "binary",
            "127.0.0.1",
            &port(&s).to_string(),
            "-c",
            "put",
        ])
        .arg(&local)
        .arg("manifest"));
    assert!(o.status.success(), "{o:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        fs::read_to_string(s.put.join("manifest")).unwrap(),
        ": 1\nstatus: success\n"
    );
    let ev = events(&s);
    assert!(
        ev.contains(&TftpEvent::Get {
            name: "/manifest".into()
        }),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| matches!(e, TftpEvent::Stored { name, bytes: 20, .. } if name == "manifest")),
        "{ev:?}"
    );
    no_upload_leftovers(&s.put);
}

#[test]
fn busybox_get_put_with_blksize() {
    let s = setup(1 << 20);
    let out = s._tmp.path().join("big");
    let p = port(&s).to_string();
    let o = run(Command::new("busybox")
        .args(["tftp", "-b", "1400", "-g", "-r", "big.bin", "-l"])
        .arg(&out)
        .args(["127.0.0.1", &p]));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(s.get.join("big.bin")).unwrap()
    );
    let local = s._tmp.path().join("upload");
    fs::write(&local, vec![b'x'; 100_000]).unwrap();
    // A subdirectory must exist already: refused, nothing created.
    let o = run(Command::new("busybox")
        .args(["tftp", "-b", "1024", "-p", "-l"])
        .arg(&local)
        .args(["-r", "sub/log", "127.0.0.1", &p]));
    assert!(!o.status.success(), "{o:?}");
    assert!(!s.put.join("sub").exists());
    fs::create_dir(s.put.join("sub")).unwrap();
    let o = run(Command::new("busybox")
        .args(["tftp", "-b", "1024", "-p", "-l"])
        .arg(&local)
        .args(["-r", "sub/log", "127.0.0.1", &p]));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(wait_stored(&s, "sub/log"), 100_000);
    assert_eq!(
        fs::read(s.put.join("sub/log")).unwrap(),
        fs::read(&local).unwrap()
    );
}

#[test]
fn curl_get_put_blksize() {
    let s = setup(1 << 20);
    let p = port(&s);
    let out = s._tmp.path().join("big");
    let o = run(Command::new("curl")
        .args(["-sS", "--tftp-blksize", "1468", "-o"])
        .arg(&out)
        .arg(format!("tftp://127.0.0.1:{p}/big.bin")));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(s.get.join("big.bin")).unwrap()
    );
    let o = run(Command::new("curl")
        .args(["-sS", "-o"])
        .arg(&out)
        .arg(format!("tftp://127.0.0.1:{p}/alias")));
    assert!(
        o.status.success(),
        "symlink inside the directory is served: {o:?}"
    );
    let local = s._tmp.path().join("up");
    fs::write(&local, vec![b'r'; 70_000]).unwrap();
    let o = run(Command::new("curl")
        .args(["-sS", "--tftp-blksize", "512", "-T"])
        .arg(&local)
        .arg(format!("tftp://127.0.0.1:{p}/manifest")));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(wait_stored(&s, "manifest"), 70_000);
    assert_eq!(
        fs::read(s.put.join("manifest")).unwrap(),
        fs::read(&local).unwrap()
    );
    no_upload_leftovers(&s.put);
}

#[test]
fn escapes_are_refused() {
    let s = setup(1 << 20);
    let p = port(&s);
    for name in [
        "../outside/secret",
        "/../outside/secret",
        "escape",
        "sub/../../outside/secret",
        "sub",
        "missing",
        "/etc/passwd",
    ] {
        let out = s._tmp.path().join("stolen");
        let _ = fs::remove_file(&out);
        let o = run(Command::new("curl")
            .args(["-sS", "--path-as-is", "-o"])
            .arg(&out)
            .arg(format!("tftp://127.0.0.1:{p}/{name}")));
        assert!(!o.status.success(), "GET {name} must fail");
        assert!(
            fs::read_to_string(&out).map_or(true, |t| !t.contains("secret")),
            "GET {name} leaked"
        );
    }
    let local = s._tmp.path().join("evil");
    fs::write(&local, "evil").unwrap();
    for name in [
        "../outside/evil",
        "outlink/evil",
        "/../evil",
        "sub/evil",
        ".bbot-upload-1-1",
    ] {
        let o = run(Command::new("busybox")
            .args(["tftp", "-p", "-l"])
            .arg(&local)
            .args(["-r", name, "127.0.0.1", &p.to_string()]));
        assert!(!o.status.success(), "PUT {name} must fail");
    }
    assert_eq!(
        fs::read_dir(&s.outside).unwrap().count(),
        1,
        "something was written outside"
    );
    assert!(
        !s._tmp.path().join("evil").exists()
            || fs::read_to_string(s._tmp.path().join("evil")).unwrap() == "evil"
    );
    let refused = events(&s)
        .into_iter()
        .filter(|e| matches!(e, TftpEvent::Refused { .. }))
        .count();
    assert!(refused >= 10, "every refusal is reported, got {refused}");
}

#[test]
fn oversized_upload_is_refused_and_leaves_nothing() {
    let s = setup(64 * 1024);
    let p = port(&s);
    let local = s._tmp.path().join("huge");
    fs::write(&local, vec![b'h'; 200_000]).unwrap();
    let o = run(Command::new("curl")
        .args(["-sS", "-T"])
        .arg(&local)
        .arg(format!("tftp://127.0.0.1:{p}/manifest")));
    assert!(!o.status.success(), "{o:?}");
    assert!(!s.put.join("manifest").exists());
    no_upload_leftovers(&s.put);
    let _ = &s.get;
}

#[test]
fn refusals_carry_the_right_tftp_error_codes() {
    let s = setup(1 << 20);
    let p = port(&s);
    let code = |name: &str| {
        let out = s._tmp.path().join("x");
        let o = run(Command::new("curl")
            .args(["-sS", "--path-as-is", "-o"])
            .arg(&out)
            .arg(format!("tftp://127.0.0.1:{p}/{name}")));
        o.status.code()
    };
    // curl: 68 = TFTP "file not found" (code 1), 69 = "access violation" (code 2).
    assert_eq!(code("missing"), Some(68), "a missing file is error 1");
    assert_eq!(code("sub/missing"), Some(68));
    assert_eq!(code("../outside/secret"), Some(69), "an escape is error 2");
    assert_eq!(code("escape"), Some(69), "a symlink out is error 2");
    assert_eq!(code("sub"), Some(69), "a directory is error 2");
}

#[test]
fn guest_client_downloads_in_windows() {
    let s = setup(1 << 20);
    let big = fs::read(s.get.join("big.bin")).unwrap();
    for (blksize, window) in [(1428, 16), (512, 64), (65464, 4)] {
        let got =
            worker_guest::tftp_client::TftpClient::new((Ipv4Addr::LOCALHOST, port(&s)).into())
                .with_blksize(blksize)
                .with_windowsize(window)
                .with_timeout(Duration::from_millis(500), 4)
                .get("big.bin")
                .unwrap_or_else(|e| panic!("GET at {blksize}, window {window}: {e}"));
        assert!(got == big, "{} bytes of {}", got.len(), big.len());
    }
}

#[test]
fn a_guest_asking_for_a_huge_window_gets_the_cap() {
    // A window is buffered whole by the server: 65535 blocks of 64 KiB
    // would be 4 GiB. The OACK grants WINDOW_SIZE_LIMIT.
    let s = setup(1 << 20);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(b"big.bin\x00octet\x00blksize\x0065464\x00windowsize\x0065535\x00");
    sock.send_to(&rrq, ("127.0.0.1", port(&s))).unwrap();
    let mut buf = [0u8; 1024];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    let oack = &buf[..n];
    assert_eq!(&oack[..2], &[0, 6], "an OACK: {oack:?}");
    let want = format!("windowsize\0{}\0", bbot_agent::vm::tftp::WINDOW_SIZE_LIMIT);
    assert!(
        oack.windows(want.len()).any(|w| w == want.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(oack)
    );
    // Abort the transfer politely.
    sock.send_to(b"\x00\x05\x00\x00done\x00", from).unwrap();
}

#[test]
fn guest_client_uploads_in_windows() {
    // The server's write side grants RFC 7440 windows too (its async-tftp
    // carries a patch for it): every end-of-transfer case (short, exact
    // multiple with a final empty block, one over) arrives whole.
    let s = setup(1 << 22);
    for (blksize, window) in [(1428, 16), (512, 64), (65464, 4)] {
        let client =
            worker_guest::tftp_client::TftpClient::new((Ipv4Addr::LOCALHOST, port(&s)).into())
                .with_blksize(blksize)
                .with_windowsize(window)
                .with_timeout(Duration::from_millis(500), 4);
        let b = usize::from(blksize);
        for size in [1, b * usize::from(window) * 3, b * 20 + 1] {
            let data: Vec<u8> = (0..size).map(|i| (i * 13 % 241) as u8).collect();
            let name = format!("up-{blksize}-{window}-{size}");
            client
                .put(&name, &data)
                .unwrap_or_else(|e| panic!("PUT {name}: {e}"));
            wait_stored(&s, &name);
            let got = fs::read(s.put.join(&name)).unwrap();
            assert!(got == data, "{name}: {} bytes of {size}", got.len());
        }
    }
}

/// A hand-driven client: `wrq` sent to the server; returns the socket and
/// the server's first answer with its transfer address.
fn raw_write_request(s: &Setup, wrq: &[u8]) -> (std::net::UdpSocket, Vec<u8>, SocketAddr) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(wrq, ("127.0.0.1", port(s))).unwrap();
    let mut buf = [0u8; 1024];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    (sock, buf[..n].to_vec(), from)
}

fn raw_data(block: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0, 3];
    p.extend_from_slice(&block.to_be_bytes());
    p.resize(4 + len, (block % 251) as u8);
    p
}

/// The packets that arrive on `sock` within `wait`.
fn raw_answers(sock: &std::net::UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    out
}

#[test]
fn a_windowed_upload_is_acknowledged_per_window_and_repaired_at_once() {
    // Window of 4 blocks of 512: one ACK per window; a gap (block 7 lost)
    // is acknowledged as soon as block 8 shows it, once, well before the
    // server's 3 s timeout; a resent window of blocks already stored gets
    // one ACK, not one per block; the short block ends the upload at once.
    let s = setup(1 << 20);
    let (sock, oack, tid) = raw_write_request(
        &s,
        b"\x00\x02win.bin\x00octet\x00windowsize\x004\x00tsize\x005125\x00",
    );
    assert_eq!(&oack[..2], &[0, 6], "an OACK: {oack:?}");
    assert!(
        oack.windows(13).any(|w| w == b"windowsize\x004\x00"),
        "window granted: {:?}",
        String::from_utf8_lossy(&oack)
    );
    let short = Duration::from_millis(400);
    let send = |blocks: &[u16]| {
        for &b in blocks {
            sock.send_to(&raw_data(b, 512), tid).unwrap();
        }
    };
    send(&[1, 2, 3, 4]);
    assert_eq!(
        raw_answers(&sock, short),
        [vec![0, 4, 0, 4]],
        "one ACK per window"
    );
    send(&[5, 6, 8]);
    assert_eq!(
        raw_answers(&sock, short),
        [vec![0, 4, 0, 6]],
        "the gap, once, at once"
    );
    // As if ACK 6 had been lost: the client resends its window 5-8.
    send(&[5, 6, 7, 8]);
    assert_eq!(
        raw_answers(&sock, short),
        [vec![0, 4, 0, 6]],
        "duplicates 5 and 6 are answered once; 7 and 8 start a window"
    );
    send(&[9, 10]);
    sock.send_to(&raw_data(11, 5), tid).unwrap();
    assert_eq!(
        raw_answers(&sock, short),
        [vec![0, 4, 0, 10], vec![0, 4, 0, 11]],
        "window 7-10, then the last block"
    );
    assert_eq!(wait_stored(&s, "win.bin"), 10 * 512 + 5);
    let want: Vec<u8> = (1u16..=11)
        .flat_map(|b| vec![(b % 251) as u8; if b == 11 { 5 } else { 512 }])
        .collect();
    assert!(fs::read(s.put.join("win.bin")).unwrap() == want);
}

#[test]
fn an_upload_without_the_option_stays_one_block_per_ack() {
    // RFC 1350 clients (tftp-hpa, busybox, curl) ask no window: every
    // block is acknowledged, and a duplicate block is acknowledged again.
    let s = setup(1 << 20);
    let (sock, ack0, tid) = raw_write_request(&s, b"\x00\x02plain.bin\x00octet\x00");
    assert_eq!(ack0, [0, 4, 0, 0]);
    let short = Duration::from_millis(300);
    sock.send_to(&raw_data(1, 512), tid).unwrap();
    assert_eq!(raw_answers(&sock, short), [vec![0, 4, 0, 1]]);
    sock.send_to(&raw_data(1, 512), tid).unwrap();
    assert_eq!(
        raw_answers(&sock, short),
        [vec![0, 4, 0, 1]],
        "duplicate re-acknowledged"
    );
    sock.send_to(&raw_data(2, 3), tid).unwrap();
    assert_eq!(raw_answers(&sock, short), [vec![0, 4, 0, 2]]);
    assert_eq!(wait_stored(&s, "plain.bin"), 515);
}
