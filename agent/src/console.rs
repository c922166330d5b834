//! The guest's serial console, kept in the VM's `console.log` with a cap.
//!
//! QEMU does not write the file itself (`-serial file:` grows without
//! bound, and the guest decides how much it prints): it connects its serial
//! port to a unix socket the agent listens on, and a thread of the agent
//! copies what arrives into the log, up to [`guest::MAX_CONSOLE_LOG_BYTES`].
//! Past the cap it keeps reading (so the guest never blocks on a full
//! console) and drops the rest, and when the guest is gone it appends how
//! many bytes were dropped.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use manifests::guest;

/// A console being recorded; the recording ends when the guest's side
/// closes (QEMU exits) or when this is dropped.
pub struct ConsoleLog {
    socket: PathBuf,
    listener_fd: i32,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The QEMU arguments that connect the guest's first serial port to
/// `socket` (listened on by [`ConsoleLog::listen`] before QEMU starts).
pub fn qemu_args(socket: &Path) -> [String; 4] {
    [
        "-chardev".into(),
        format!("socket,id=console,path={},server=off", socket.display()),
        "-serial".into(),
        "chardev:console".into(),
    ]
}

impl ConsoleLog {
    /// Listens on `socket` and records what the guest prints into `log`,
    /// at most `cap` bytes of it.
    pub fn listen(socket: &Path, log: &Path, cap: u64) -> io::Result<ConsoleLog> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let file = File::create(log)?;
        let listener_fd = listener.as_raw_fd();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                let conn = listener.accept();
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                match conn {
                    Ok((stream, _)) => {
                        if let Err(e) = record(stream, file, cap) {
                            tracing::warn!("console log: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("console log: accept: {e}"),
                }
            })?;
        Ok(ConsoleLog {
            socket: socket.to_path_buf(),
            listener_fd,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits until the guest's side has closed and the log is complete
    /// (call once QEMU is gone).
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes an accept() still waiting (QEMU never connected).
        // SAFETY: the descriptor stays open until the thread ends.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for ConsoleLog {
    fn drop(&mut self) {
        self.end();
    }
}

/// Copies `from` into `to` up to `cap` bytes, then drains and counts.
fn record(mut from: impl Read, mut to: File, cap: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut kept: u64 = 0;
    let mut dropped: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A reset by a killed QEMU ends the log like an EOF.
            Err(_) => break,
        };
        let room = cap.saturating_sub(kept) as usize;
        let keep = n.min(room);
        if keep > 0 {
            to.write_all(&buf[..keep])?;
            kept += keep as u64;
        }
        if keep < n {
            if dropped == 0 {
                writeln!(
                    to,
                    "\n[bbot-agent: the console log is capped at {cap} bytes; the rest is dropped]"
                )?;
            }
            dropped += (n - keep) as u64;
        }
    }
    if dropped > 0 {
        writeln!(
            to,
            "[bbot-agent: {dropped} bytes of console output dropped]"
        )?;
    }
    Ok(())
}

/// The cap the agent applies to every guest.
pub const CAP: u64 = guest::MAX_CONSOLE_LOG_BYTES;

/// How many console logs the log directory keeps (at most
/// `guest::MAX_CONSOLE_LOG_BYTES` each).
pub const KEPT_LOGS: usize = 100;

/// Deletes the oldest `*.console.log` files of `dir` beyond the newest
/// `keep`.
pub fn rotate(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".console.log"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if logs.len() <= keep {
        return;
    }
    logs.sort();
    for (_, old) in &logs[..logs.len() - keep] {
        match fs::remove_file(old) {
            Ok(()) => tracing::debug!("rotated out {}", old.display()),
            Err(e) => tracing::warn!("cannot remove old console log {}: {e}", old.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_stops_at_the_cap_and_says_how_much_was_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("console.sock");
        let log = dir.path().join("console.log");
        let c = ConsoleLog::listen(&sock, &log, 1000).expect("listen");
        let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
        for _ in 0..100 {
            s.write_all(&[b'x'; 1000]).expect("write");
        }
        drop(s);
        c.finish();
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.starts_with(&"x".repeat(1000)), "{}", &text[..50]);
        assert!(text.contains("capped at 1000 bytes"), "{text}");
        assert!(
            text.contains("99000 bytes of console output dropped"),
            "{text}"
        );
        assert!(text.len() < 1200, "{}", text.len());
        assert!(!sock.exists());
    }

    #[test]
    fn a_guest_that_never_connects_does_not_hang_the_agent() {
        let dir = tempfile::tempdir().expect("dir");
        let c =
            ConsoleLog::listen(&dir.path().join("s"), &dir.path().join("l"), 10).expect("listen");
        c.finish();
    }

    #[test]
    fn rotation_keeps_the_newest() {
        let dir = tempfile::tempdir().expect("dir");
        for i in 0..5 {
            let p = dir.path().join(format!("vm-{i}-task.console.log"));
            std::fs::write(&p, "x").expect("log");
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i);
            File::options()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(t))
                .expect("mtime");
        }
        std::fs::write(dir.path().join("other.txt"), "keep").expect("other");
        rotate(dir.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "other.txt",
                "vm-3-task.console.log",
                "vm-4-task.console.log"
            ]
        );
    }
}
