//! Real TFTP servers for the tests: the `async-tftp` crate's directory
//! server on a thread, and tftpd-hpa's `in.tftpd` as a child process, both
//! on loopback ephemeral ports.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use worker_guest::tftp_client::TftpClient;

/// An `async-tftp` read-write directory server serving `dir`. It runs until
/// the test process ends (the crate has no shutdown; the thread is cheap).
pub struct AsyncTftpServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl AsyncTftpServer {
    pub fn start(dir: &Path) -> AsyncTftpServer {
        std::fs::create_dir_all(dir).expect("create TFTP dir");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind TFTP server socket");
        let addr = socket.local_addr().expect("server address");
        let builder = async_tftp::server::TftpServerBuilder::with_dir_rw(dir)
            .expect("async-tftp dir handler")
            .std_socket(socket)
            .expect("async-tftp socket");
        std::thread::spawn(move || {
            futures_lite::future::block_on(async move {
                let server = builder.build().await.expect("build async-tftp server");
                if let Err(e) = server.serve().await {
                    eprintln!("async-tftp server stopped: {e}");
                }
            })
        });
        AsyncTftpServer {
            addr,
            dir: dir.to_path_buf(),
        }
    }
}

/// tftpd-hpa in the foreground on `127.0.0.1:<port>`, chrooted to `dir`,
/// allowed to create files. Killed when dropped.
pub struct HpaServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    child: Child,
}

pub const IN_TFTPD: &str = "/usr/sbin/in.tftpd";

impl HpaServer {
    /// Starts the server; panics with the package to install when
    /// tftpd-hpa is missing.
    pub fn start(dir: &Path) -> HpaServer {
        assert!(
            Path::new(IN_TFTPD).exists(),
            "{IN_TFTPD} missing: install the Debian package tftpd-hpa (worker-guest/ci-packages.txt)"
        );
        std::fs::create_dir_all(dir).expect("create TFTP dir");
        for _ in 0..10 {
            // An ephemeral port that was free a moment ago.
            let port = UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("probe port")
                .port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let child = Command::new(IN_TFTPD)
                .args([
                    "-L",
                    "-a",
                    &addr.to_string(),
                    "-s",
                    "-c",
                    "-p",
                    "-u",
                    "root",
                ])
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start in.tftpd");
            let mut server = HpaServer {
                addr,
                dir: dir.to_path_buf(),
                child,
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("in.tftpd did not come up");
    }

    /// Waits until the server answers (a GET of a missing file says "not
    /// found"); false if it exited (port taken).
    fn wait_ready(&mut self) -> bool {
        let client = TftpClient::new(self.addr).with_timeout(Duration::from_millis(100), 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            match client.get("readiness-probe-that-does-not-exist") {
                Err(e) if e.is_not_found() => return true,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        false
    }
}

impl Drop for HpaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` holds what `ok` accepts (a server may finish writing
/// an upload just after acknowledging its last block); returns its content.
pub fn wait_for_file(path: &Path, timeout: Duration, ok: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            if ok(&bytes) {
                return bytes;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear (complete) within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}
