//! The guest's TFTP client against real servers: the `async-tftp` crate's
//! and tftpd-hpa's `in.tftpd`. GET and PUT at TFTP's own 512-byte blocks
//! and at larger negotiated ones, sizes at and around block multiples,
//! empty files, a transfer long enough to wrap the 16-bit block number,
//! missing files, and a server that never answers.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::tftp::{noise, wait_for_file, AsyncTftpServer, HpaServer};
use common::TestDir;
use worker_guest::tftp_client::{TftpClient, TftpError};

/// Sizes that hit every end-of-transfer case for block sizes 512 and 1428:
/// empty, short, exact multiples (a final empty block), one over.
const SIZES: [usize; 9] = [0, 1, 511, 512, 513, 1024, 1428, 1428 * 3, 100_003];

fn round_trips(server: SocketAddr, dir: &Path, blksize: u16) {
    let client = TftpClient::new(server)
        .with_blksize(blksize)
        .with_timeout(Duration::from_millis(500), 4);
    for (i, &size) in SIZES.iter().enumerate() {
        let data = noise(size, i as u32 + u32::from(blksize));
        let name = format!("get-{blksize}-{size}");
        std::fs::write(dir.join(&name), &data).expect("write served file");
        let got = client
            .get(&name)
            .unwrap_or_else(|e| panic!("GET {name}: {e}"));
        assert!(
            got == data,
            "GET {name}: {} bytes back, {size} served",
            got.len()
        );

        let name = format!("put-{blksize}-{size}");
        client
            .put(&name, &data)
            .unwrap_or_else(|e| panic!("PUT {name}: {e}"));
        wait_for_file(&dir.join(&name), Duration::from_secs(5), |b| b == data);
    }
}

fn not_found(server: SocketAddr) {
    let err = TftpClient::new(server)
        .with_timeout(Duration::from_millis(500), 4)
        .get("no-such-file")
        .expect_err("a missing file is an error");
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("GET no-such-file"), "{err}");
}

/// 65,600 blocks of 512 bytes: the block number passes 65535 and wraps.
fn wrapping(server: SocketAddr, dir: &Path) {
    let size = 65_600 * 512 + 17;
    let data = noise(size, 7);
    std::fs::write(dir.join("big"), &data).expect("write big file");
    let client = TftpClient::new(server)
        .with_blksize(512)
        .with_timeout(Duration::from_secs(1), 4);
    let got = client.get("big").expect("GET big");
    assert!(got == data, "GET big: {} bytes back of {size}", got.len());
    client.put("big-up", &data).expect("PUT big-up");
    wait_for_file(&dir.join("big-up"), Duration::from_secs(10), |b| b == data);
}

#[test]
fn async_tftp_server() {
    let dir = TestDir::new("tftp-async");
    let server = AsyncTftpServer::start(&dir.path);
    round_trips(server.addr, &dir.path, 512);
    round_trips(server.addr, &dir.path, 1428);
    round_trips(server.addr, &dir.path, 8192);
    not_found(server.addr);
}

#[test]
fn async_tftp_server_block_number_wrap() {
    let dir = TestDir::new("tftp-async-wrap");
    let server = AsyncTftpServer::start(&dir.path);
    wrapping(server.addr, &dir.path);
}

#[test]
fn tftpd_hpa() {
    let dir = TestDir::new("tftp-hpa");
    let server = HpaServer::start(&dir.path);
    round_trips(server.addr, &dir.path, 512);
    round_trips(server.addr, &dir.path, 1428);
    round_trips(server.addr, &dir.path, 8192);
    not_found(server.addr);
}

#[test]
fn tftpd_hpa_block_number_wrap() {
    let dir = TestDir::new("tftp-hpa-wrap");
    let server = HpaServer::start(&dir.path);
    wrapping(server.addr, &dir.path);
}

#[test]
fn silent_server_times_out_in_bounded_time() {
    // Bound but never read: requests vanish, as with a dead agent.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let client = TftpClient::new(addr).with_timeout(Duration::from_millis(200), 3);
    let start = Instant::now();
    let err = client.get("manifest").expect_err("no answer");
    let took = start.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert!(
        matches!(err, TftpError::Timeout { retries: 3, .. }),
        "{err}"
    );
    // 4 waits of 200 ms, with slack for a loaded machine.
    assert!(
        took >= Duration::from_millis(750) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let err = client.put("manifest", b"x").expect_err("no answer");
    assert!(err.is_timeout(), "{err}");
}

#[test]
fn answers_from_a_foreign_port_are_refused() {
    // A server that answers the request from one port, then sends data
    // from another: the second is not our transfer and must not be taken.
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 600];
        let (_, client) = server.recv_from(&mut buf).expect("RRQ");
        let tid1 = UdpSocket::bind("127.0.0.1:0").expect("bind tid1");
        let tid2 = UdpSocket::bind("127.0.0.1:0").expect("bind tid2");
        // Options refused: plain DATA 1 of a 512-byte block.
        let mut block = vec![0, 3, 0, 1];
        block.resize(4 + 512, b'a');
        tid1.send_to(&block, client).expect("DATA 1");
        let (n, _) = tid1.recv_from(&mut buf).expect("ACK 1");
        assert_eq!(&buf[..n], &[0, 4, 0, 1]);
        // An impostor sends the last block first ...
        tid2.send_to(&[0, 3, 0, 2, b'X'], client)
            .expect("impostor DATA 2");
        let (n, _) = tid2.recv_from(&mut buf).expect("error to impostor");
        assert_eq!(
            &buf[..4],
            &[0, 5, 0, 5],
            "unknown transfer id error: {:?}",
            &buf[..n]
        );
        // ... then the real server does.
        tid1.send_to(&[0, 3, 0, 2, b'b'], client).expect("DATA 2");
        let (n, _) = tid1.recv_from(&mut buf).expect("ACK 2");
        assert_eq!(&buf[..n], &[0, 4, 0, 2]);
    });
    let got = TftpClient::new(addr)
        .with_timeout(Duration::from_secs(2), 2)
        .get("f")
        .expect("GET f");
    handle.join().expect("fake server");
    let mut want = vec![b'a'; 512];
    want.push(b'b');
    assert_eq!(got, want);
}

/// A hand-driven server socket for one transfer with a short read timeout.
fn fake_tid() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s
}

/// A scripted server: waits for one request on a port of its own, then
/// runs `script` with the request, the client's address and a fresh
/// transfer socket ([`fake_tid`]). Returns where requests go and the
/// script's thread, whose panics are the test's failures.
fn scripted_server(
    script: impl FnOnce(&[u8], SocketAddr, UdpSocket) + Send + 'static,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (n, client) = server.recv_from(&mut buf).expect("a request");
        script(&buf[..n], client, fake_tid());
    });
    (addr, handle)
}

/// The next packet the client sends to `tid` (ERROR on timeout).
fn next_from_client(tid: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let (n, _) = tid.recv_from(&mut buf).expect("a packet from the client");
    buf[..n].to_vec()
}

/// The request (RRQ or WRQ) asks for RFC 7440 windows of 4 blocks.
fn assert_asks_window_of_4(request: &[u8]) {
    assert!(
        request.windows(13).any(|w| w == b"windowsize\x004\x00"),
        "the request asks for the window: {request:?}"
    );
}

fn data_block(block: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0, 3];
    p.extend_from_slice(&block.to_be_bytes());
    p.resize(4 + len, (block % 251) as u8);
    p
}

#[test]
fn windowed_download_acks_once_per_window_and_repairs_a_gap_at_once() {
    // RFC 7440 with a window of 4: the client acknowledges block 4 only
    // (not 1-3); when block 6 is lost it acknowledges 5 as soon as 7
    // arrives (once, not again for 8), and counts its next window from 6.
    let (addr, handle) = scripted_server(|rrq, client, tid| {
        assert_asks_window_of_4(rrq);
        tid.send_to(b"\x00\x06blksize\x001024\x00windowsize\x004\x00", client)
            .expect("OACK");
        assert_eq!(next_from_client(&tid), [0, 4, 0, 0]);
        for b in 1..=4 {
            tid.send_to(&data_block(b, 1024), client).expect("DATA");
        }
        assert_eq!(next_from_client(&tid), [0, 4, 0, 4], "one ACK per window");
        for b in [5, 7, 8] {
            tid.send_to(&data_block(b, 1024), client).expect("DATA");
        }
        assert_eq!(next_from_client(&tid), [0, 4, 0, 5], "the gap, at once");
        tid.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut probe = [0u8; 16];
        assert!(
            tid.recv_from(&mut probe).is_err(),
            "a gap is reported once per window"
        );
        tid.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        for (b, len) in [(6, 1024), (7, 1024), (8, 1024), (9, 10)] {
            tid.send_to(&data_block(b, len), client).expect("DATA");
        }
        assert_eq!(
            next_from_client(&tid),
            [0, 4, 0, 9],
            "the new window ends at 9"
        );
    });
    let start = Instant::now();
    let got = TftpClient::new(addr)
        .with_blksize(1024)
        .with_windowsize(4)
        .with_timeout(Duration::from_secs(5), 2)
        .get("f")
        .expect("GET f");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    handle.join().expect("fake server");
    let want: Vec<u8> = (1u16..=9)
        .flat_map(|b| vec![(b % 251) as u8; if b == 9 { 10 } else { 1024 }])
        .collect();
    assert!(got == want, "{} bytes", got.len());
}

#[test]
fn windowed_downloads_from_the_agents_server_library() {
    // async-tftp grants the window; every end-of-transfer case and a
    // transfer that wraps the block number inside windows.
    let dir = TestDir::new("tftp-async-window");
    let server = AsyncTftpServer::start(&dir.path);
    for window in [2, 16, 64] {
        let client = TftpClient::new(server.addr)
            .with_blksize(512)
            .with_windowsize(window)
            .with_timeout(Duration::from_millis(500), 4);
        for (i, &size) in SIZES.iter().enumerate() {
            let data = noise(size, i as u32 + u32::from(window));
            let name = format!("win-{window}-{size}");
            std::fs::write(dir.path.join(&name), &data).expect("write served file");
            let got = client
                .get(&name)
                .unwrap_or_else(|e| panic!("GET {name}: {e}"));
            assert!(got == data, "GET {name}: {} bytes of {size}", got.len());
        }
    }
}

#[test]
fn lost_acks_are_repaired_at_once_on_duplicates() {
    // The server "loses" the client's ACK 0 and ACK 1 and resends the OACK
    // and DATA 1: the client must answer each duplicate immediately, not
    // after its own (here 5 s) timeout.
    let (addr, handle) = scripted_server(|_rrq, client, tid| {
        let mut buf = [0u8; 2048];
        let oack = b"\x00\x06blksize\x001024\x00";
        for _ in 0..2 {
            tid.send_to(oack, client).expect("OACK");
            let (n, _) = tid.recv_from(&mut buf).expect("ACK 0");
            assert_eq!(&buf[..n], &[0, 4, 0, 0]);
        }
        let mut block = vec![0, 3, 0, 1];
        block.resize(4 + 1024, b'z');
        for _ in 0..2 {
            tid.send_to(&block, client).expect("DATA 1");
            let (n, _) = tid.recv_from(&mut buf).expect("ACK 1");
            assert_eq!(&buf[..n], &[0, 4, 0, 1]);
        }
        tid.send_to(&[0, 3, 0, 2], client)
            .expect("DATA 2 (empty, last)");
        let (n, _) = tid.recv_from(&mut buf).expect("ACK 2");
        assert_eq!(&buf[..n], &[0, 4, 0, 2]);
    });
    let start = Instant::now();
    let got = TftpClient::new(addr)
        .with_blksize(1024)
        .with_timeout(Duration::from_secs(5), 2)
        .get("f")
        .expect("GET f");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    handle.join().expect("fake server");
    assert_eq!(got, vec![b'z'; 1024]);
}

#[test]
fn duplicate_acks_never_trigger_a_resend() {
    // Sorcerer's apprentice: a delayed duplicate ACK 1 must not make the
    // client send DATA 2 twice.
    let (addr, handle) = scripted_server(|_wrq, client, tid| {
        let mut buf = [0u8; 2048];
        tid.send_to(&[0, 4, 0, 0], client)
            .expect("ACK 0 (no options)");
        let (n, _) = tid.recv_from(&mut buf).expect("DATA 1");
        assert_eq!((n, &buf[..4]), (4 + 512, &[0u8, 3, 0, 1][..]));
        tid.send_to(&[0, 4, 0, 1], client).expect("ACK 1");
        tid.send_to(&[0, 4, 0, 1], client).expect("duplicate ACK 1");
        let (n, _) = tid.recv_from(&mut buf).expect("DATA 2");
        assert_eq!(&buf[..n], &[0, 3, 0, 2, b'y']);
        tid.send_to(&[0, 4, 0, 2], client).expect("ACK 2");
        // Nothing more may come: no second DATA 2.
        tid.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let extra = tid.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec());
        assert!(
            extra.is_err(),
            "unexpected packet after the last ACK: {extra:?}"
        );
    });
    let mut data = vec![b'x'; 512];
    data.push(b'y');
    TftpClient::new(addr)
        .with_blksize(512)
        .with_timeout(Duration::from_secs(5), 2)
        .put("f", &data)
        .expect("PUT f");
    handle.join().expect("fake server");
}

#[test]
fn windowed_upload_sends_windows_and_resends_from_what_was_acknowledged() {
    // RFC 7440 upload with a window of 4 and ten blocks: the client sends
    // 1-4 without waiting; ACK 2 (3 was lost) makes it send 3-6 at once;
    // ACK 6 brings 7-10; a duplicate ACK 6 (the block before the window:
    // the server has none of it) resends 7-10 once, a third one nothing;
    // ACK 10 ends the upload.
    let (addr, handle) = scripted_server(|wrq, client, tid| {
        assert_asks_window_of_4(wrq);
        tid.send_to(b"\x00\x06windowsize\x004\x00", client)
            .expect("OACK");
        let blocks = |tid: &UdpSocket, want: std::ops::RangeInclusive<u16>| {
            for b in want {
                let p = next_from_client(tid);
                assert_eq!(&p[..4], &[0, 3, 0, b as u8], "DATA {b}");
                let len = if b == 10 { 5 } else { 512 };
                assert_eq!(p.len(), 4 + len, "DATA {b}");
            }
        };
        blocks(&tid, 1..=4);
        tid.send_to(&[0, 4, 0, 2], client).expect("ACK 2");
        blocks(&tid, 3..=6);
        tid.send_to(&[0, 4, 0, 6], client).expect("ACK 6");
        blocks(&tid, 7..=10);
        tid.send_to(&[0, 4, 0, 6], client).expect("duplicate ACK 6");
        blocks(&tid, 7..=10);
        tid.send_to(&[0, 4, 0, 6], client).expect("third ACK 6");
        tid.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut probe = [0u8; 2048];
        let extra = tid.recv_from(&mut probe).map(|(n, _)| probe[..n].to_vec());
        assert!(
            extra.is_err(),
            "one resend per window, not one per duplicate: {extra:?}"
        );
        tid.send_to(&[0, 4, 0, 10], client).expect("ACK 10");
    });
    let data: Vec<u8> = (0..9 * 512 + 5).map(|i| (i % 253) as u8).collect();
    let start = Instant::now();
    TftpClient::new(addr)
        .with_blksize(512)
        .with_windowsize(4)
        .with_timeout(Duration::from_secs(5), 2)
        .put("f", &data)
        .expect("PUT f");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "no wait for a timeout: {:?}",
        start.elapsed()
    );
    handle.join().expect("fake server");
}

/// A server that answers every request with one ERROR packet.
fn refusing_server(code: u16, message: &'static str) -> SocketAddr {
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, client)) = server.recv_from(&mut buf) {
            let mut p = vec![0, 5];
            p.extend_from_slice(&code.to_be_bytes());
            p.extend_from_slice(message.as_bytes());
            p.push(0);
            let _ = fake_tid().send_to(&p, client);
        }
    });
    addr
}

#[test]
fn not_found_also_from_servers_that_only_send_code_0() {
    // The agent's own handler (async-tftp `Error::Msg`) refuses a missing
    // file with code 0 and a message, not code 1.
    let client = |addr| TftpClient::new(addr).with_timeout(Duration::from_secs(2), 1);
    let err = client(refusing_server(0, "worker-guest: no such file"))
        .get("worker-guest")
        .expect_err("refused");
    assert!(err.is_not_found(), "{err}");
    let err = client(refusing_server(0, "x: '..' is not allowed"))
        .get("x")
        .expect_err("refused");
    assert!(!err.is_not_found(), "{err}");
    let err = client(refusing_server(2, "File not found? no: access violation"))
        .get("x")
        .expect_err("refused");
    assert!(
        !err.is_not_found(),
        "only codes 0 and 1 can mean not found: {err}"
    );
    assert!(err.to_string().contains("(code 2)"), "{err}");
}
