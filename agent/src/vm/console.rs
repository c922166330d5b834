//! The guest's serial console, kept in the VM's `console.log` with a cap.
//!
//! QEMU does not write the file itself (`-serial file:` grows without
//! bound, and the guest decides how much it prints): its serial port is
//! one end of a socket pair the agent hands it as a file descriptor, and a
//! thread of the agent copies what arrives at the other end into the log,
//! up to [`guest::MAX_CONSOLE_LOG_BYTES`]. Past the cap it keeps reading
//! (so the guest never blocks on a full console) and drops the rest, and
//! when the guest is gone it appends how many bytes were dropped.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use manifests::guest;

/// A console being recorded; the recording ends when QEMU's end of the
/// socket pair is closed (QEMU exits).
pub struct ConsoleLog {
    thread: Option<JoinHandle<()>>,
}

impl ConsoleLog {
    /// Records what arrives on `from` into `log`, at most `cap` bytes of it.
    pub fn record(from: UnixStream, log: &Path, cap: u64) -> io::Result<ConsoleLog> {
        let file = File::create(log)?;
        let thread = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                if let Err(e) = copy_capped(from, file, cap) {
                    tracing::warn!("console log: {e}");
                }
            })?;
        Ok(ConsoleLog {
            thread: Some(thread),
        })
    }

    /// Waits until the log is complete (call once QEMU is gone and the
    /// agent's copy of QEMU's end is closed).
    pub fn finish(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` into `to` up to `cap` bytes, then drains and counts.
fn copy_capped(mut from: impl Read, mut to: File, cap: u64) -> io::Result<()> {
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
        let log = dir.path().join("console.log");
        let (agent_end, mut qemu_end) = UnixStream::pair().expect("pair");
        let c = ConsoleLog::record(agent_end, &log, 1000).expect("record");
        for _ in 0..100 {
            qemu_end.write_all(&[b'x'; 1000]).expect("write");
        }
        drop(qemu_end);
        c.finish();
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.starts_with(&"x".repeat(1000)), "{}", &text[..50]);
        assert!(text.contains("capped at 1000 bytes"), "{text}");
        assert!(
            text.contains("99000 bytes of console output dropped"),
            "{text}"
        );
        assert!(text.len() < 1200, "{}", text.len());
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
