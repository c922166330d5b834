//! The locks that let several agent instances share one host's machines
//! (PROTOCOLS.md section 4a), as bbot does it: `flock`ed files.
//!
//! - The *toolchain lock* serialises enumeration and bootstrap across the
//!   instances of one toolchain (and the diagnostic modes).
//! - A *machine lock* (`<machine-dir>/<name>-<toolchain>.lock`) is held
//!   while a machine is offered, bootstrapped or runs a task, and released
//!   only after its temporary snapshot is deleted. Its file records the
//!   holder ([`Holder`]), so that a priority monitor can pick a victim.
//! - The *instance lock* makes a second process with the same instance
//!   number refuse to start.
//!
//! Why `flock`: the kernel releases it when its holder dies, however it
//! dies, so a lock never outlives its owner and "the owner's lock is free"
//! is proof that a leftover is nobody's.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::base::cancel::Cancel;
use crate::base::priority::Priority;

/// A lock problem, naming the lock file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file cannot be created or locked.
    #[error("lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A stop was requested while waiting.
    #[error("interrupted while waiting for lock {0}")]
    Interrupted(PathBuf),
}

/// How often a waiting instance tries a held lock again.
const RETRY: Duration = Duration::from_millis(100);

/// Longest record accepted from a lock file (they are written by agents,
/// but a file on disk is read defensively).
const MAX_RECORD: u64 = 512;

/// An exclusive `flock` on a file, held until dropped.
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
    /// The file held a record when the lock was taken.
    inherited_record: bool,
}

fn open(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })
}

impl LockFile {
    /// Takes the lock if it is free; `None` when another process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<LockFile>, LockError> {
        let file = open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(LockFile {
                inherited_record: file.metadata().is_ok_and(|m| m.len() > 0),
                file,
                path: path.to_path_buf(),
            })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(LockError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Takes the lock, waiting as long as another process holds it (until
    /// `cancel`); `waiting` is called once if it has to wait, with what the
    /// file says about the holder.
    pub fn acquire(
        path: &Path,
        cancel: &Cancel,
        waiting: impl FnOnce(Option<Holder>),
    ) -> Result<LockFile, LockError> {
        Self::wait(path, None, cancel, waiting)?
            .ok_or_else(|| LockError::Interrupted(path.to_path_buf()))
    }

    /// Waits up to `limit` for the lock (until `cancel`); `None` when it
    /// stayed held.
    pub fn acquire_within(
        path: &Path,
        limit: Duration,
        cancel: &Cancel,
    ) -> Result<Option<LockFile>, LockError> {
        Self::wait(path, Some(limit), cancel, |_| {})
    }

    /// The one waiting loop: tries every [`RETRY`] until the lock is
    /// taken, `limit` (if any) has passed (`None`), or `cancel` is set.
    fn wait(
        path: &Path,
        limit: Option<Duration>,
        cancel: &Cancel,
        waiting: impl FnOnce(Option<Holder>),
    ) -> Result<Option<LockFile>, LockError> {
        let end = limit.map(|l| Instant::now() + l);
        let mut waiting = Some(waiting);
        loop {
            if let Some(l) = Self::try_acquire(path)? {
                return Ok(Some(l));
            }
            if end.is_some_and(|e| Instant::now() >= e) {
                return Ok(None);
            }
            if let Some(w) = waiting.take() {
                w(read_record(path));
            }
            if cancel.sleep(RETRY) {
                return Err(LockError::Interrupted(path.to_path_buf()));
            }
        }
    }

    /// Whether the previous holder died holding it: a holder empties its
    /// record before it lets go, so a record found on taking the lock was
    /// left by one that did not get to (SIGKILL, a crash), and whatever it
    /// was doing (a temporary snapshot) may be left too.
    pub fn holder_died(&self) -> bool {
        self.inherited_record
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records who holds the lock and why. The record has a fixed length,
    /// so rewriting it (a VM suspended) never shows a reader a torn one.
    pub fn record(&self, holder: &Holder) {
        let text = holder.to_record();
        let r = self
            .file
            .write_all_at(text.as_bytes(), 0)
            .and_then(|()| self.file.set_len(text.len() as u64));
        if let Err(e) = r {
            tracing::warn!(
                "lock {}: cannot record the holder: {e}",
                self.path.display()
            );
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Nobody may read a stale record as the next holder's: empty it
        // before the lock goes (the kernel drops the flock with the file).
        let _ = self.file.set_len(0);
        let _ = self.file.flush();
    }
}

/// Why a machine lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldFor {
    /// Offered to controllers while an instance polls.
    Offer,
    /// Being bootstrapped.
    Bootstrap,
    /// Running a task.
    Task,
}

impl HoldFor {
    fn as_str(self) -> &'static str {
        match self {
            HoldFor::Offer => "offer",
            HoldFor::Bootstrap => "bootstrap",
            HoldFor::Task => "task",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "offer" => HoldFor::Offer,
            "bootstrap" => HoldFor::Bootstrap,
            "task" => HoldFor::Task,
            _ => return None,
        })
    }
}

/// Who holds a machine lock, as recorded in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The holder's `--instance`.
    pub instance: u16,
    /// The holder's process id (a monitor signals it).
    pub pid: u32,
    /// Why it holds the lock.
    pub hold: HoldFor,
    /// The running task's controller priority.
    pub priority: Priority,
    /// Whether its VM is suspended after a missed deadline (never a victim).
    pub suspended: bool,
}

impl Holder {
    /// This process as the holder.
    pub fn me(instance: u16, hold: HoldFor, priority: Priority) -> Self {
        Self {
            instance,
            pid: std::process::id(),
            hold,
            priority,
            suspended: false,
        }
    }

    /// Fixed-width text: `bbot-lock i=NN pid=NNNNNNNNNN hold=XXXXXXXXX p=NNNN s=N\n`.
    fn to_record(self) -> String {
        format!(
            "bbot-lock i={:02} pid={:010} hold={:<9} p={:04} s={}\n",
            self.instance,
            self.pid,
            self.hold.as_str(),
            self.priority.0.min(9999),
            u8::from(self.suspended)
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let mut it = text.strip_suffix('\n')?.split_ascii_whitespace();
        if it.next()? != "bbot-lock" {
            return None;
        }
        let mut field = |key: &str| it.next()?.strip_prefix(key).map(str::to_string);
        let instance = field("i=")?.parse().ok()?;
        let pid = field("pid=")?.parse().ok()?;
        let hold = HoldFor::parse(field("hold=")?.as_str())?;
        let priority = Priority(field("p=")?.parse().ok()?);
        let suspended = match field("s=")?.as_str() {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        Some(Self {
            instance,
            pid,
            hold,
            priority,
            suspended,
        })
    }
}

/// The record in a lock file, if it is well-formed (whether the lock is
/// held is not checked: see [`holder`]).
pub fn read_record(path: &Path) -> Option<Holder> {
    let f = File::open(path).ok()?;
    let mut text = String::new();
    f.take(MAX_RECORD).read_to_string(&mut text).ok()?;
    Holder::parse(&text)
}

/// Who holds the lock at `path` now: `None` when it is free (or its record
/// is not readable yet). A holder empties the record before it lets go, so
/// an empty file is a free lock and is not touched; a record is confirmed
/// by trying the lock for an instant (a holder killed with SIGKILL leaves
/// its record behind), which can make another instance's try see it held,
/// once.
pub fn holder(path: &Path) -> Option<Holder> {
    let recorded = read_record(path)?;
    match LockFile::try_acquire(path) {
        // Free: dropping it empties the record its dead holder left.
        Ok(Some(_free)) => None,
        Ok(None) => Some(recorded),
        Err(e) => {
            tracing::debug!("{e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_a_held_lock_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m-tc.lock");
        let l = LockFile::try_acquire(&p).unwrap().expect("free");
        let mut h = Holder::me(3, HoldFor::Task, Priority(120));
        l.record(&h);
        let first = std::fs::read_to_string(&p).unwrap();
        h.suspended = true;
        l.record(&h);
        assert_eq!(std::fs::read_to_string(&p).unwrap().len(), first.len());
        assert_eq!(holder(&p), Some(h));
        assert!(LockFile::try_acquire(&p).unwrap().is_none(), "held");
        assert!(!l.holder_died(), "a fresh lock file has no record");
        drop(l);
        assert_eq!(holder(&p), None, "free once dropped");
        assert_eq!(read_record(&p), None, "its record is gone with it");
        assert!(LockFile::try_acquire(&p).unwrap().is_some());
    }

    #[test]
    fn a_record_left_behind_tells_of_a_dead_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m-tc.lock");
        // A holder killed with SIGKILL: it wrote its record and never
        // emptied it; the kernel dropped its lock with its descriptor.
        let dead = open(&p).unwrap();
        dead.try_lock().unwrap();
        let record = Holder::me(1, HoldFor::Task, Priority(0)).to_record();
        dead.write_all_at(record.as_bytes(), 0).unwrap();
        drop(dead);
        let next = LockFile::try_acquire(&p).unwrap().expect("free again");
        assert!(next.holder_died());
        drop(next);
        let after = LockFile::try_acquire(&p).unwrap().expect("free");
        assert!(!after.holder_died(), "a clean release leaves no record");
    }

    #[test]
    fn garbage_is_no_record() {
        for bad in [
            "",
            "bbot-lock i=1\n",
            "bbot-lock i=01 pid=x hold=task p=0000 s=0\n",
            "bbot-lock i=01 pid=1 hold=steal p=0000 s=0\n",
            "bbot-lock i=01 pid=1 hold=task p=0000 s=2\n",
            "bbot-lock i=01 pid=1 hold=task p=0000 s=0",
        ] {
            assert_eq!(Holder::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn waiting_is_cancellable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.lock");
        let _held = LockFile::try_acquire(&p).unwrap().expect("free");
        // flock is per open file description: a second open in this
        // process waits like another process would.
        let cancel = Cancel::new();
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c2.cancel();
        });
        let mut saw_wait = false;
        let r = LockFile::acquire(&p, &cancel, |_| saw_wait = true);
        t.join().unwrap();
        assert!(matches!(r, Err(LockError::Interrupted(_))), "{r:?}");
        assert!(saw_wait);
        assert!(
            LockFile::acquire_within(&p, Duration::from_millis(200), &Cancel::new())
                .unwrap()
                .is_none()
        );
    }
}
