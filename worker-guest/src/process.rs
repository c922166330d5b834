//! Process hygiene: the worker leads its own process group so that, when the
//! boss goes away, every make and compiler it started can be killed at once.
//!
//! A boss that disconnects (stdin EOF), a dropped ssh connection (SIGHUP) or
//! an operator (SIGTERM, SIGINT) must not leave builds running on the
//! machine: those keep the CPUs busy and hold worktree locks. Children
//! inherit our process group, so one `killpg(SIGKILL)` reaches all of them,
//! including grandchildren that were re-parented.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Errors setting up process handling.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Our process group, and whether we lead it (only then is killing the
/// whole group safe: otherwise it would include our parent).
#[derive(Debug, Clone, Copy)]
pub struct ProcessGroup {
    leader: bool,
    pgid: libc::pid_t,
}

impl ProcessGroup {
    /// Make this process the leader of a new process group.
    ///
    /// When started by sshd we already lead a session and `setpgid` fails
    /// with EPERM; that is fine, since we then lead our group anyway.
    pub fn become_leader() -> Self {
        // SAFETY: setpgid/getpid/getpgrp take plain integers and have no
        // memory-safety preconditions.
        let (pid, pgid) = unsafe {
            libc::setpgid(0, 0);
            (libc::getpid(), libc::getpgrp())
        };
        Self {
            leader: pid == pgid,
            pgid,
        }
    }

    /// Whether we lead our process group.
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// Kill every process of the group, this one included, with SIGKILL.
    /// Used when the boss is gone: nothing is left to report to.
    pub fn kill_all_and_exit(&self) -> ! {
        kill_child_groups();
        if self.leader {
            // SAFETY: killpg takes plain integers.
            unsafe {
                libc::killpg(self.pgid, libc::SIGKILL);
            }
        } else {
            self.kill_others();
        }
        std::process::exit(1)
    }

    /// Kill every other process of the group (or, if we do not lead it, all
    /// our descendants) with SIGKILL, and keep at it until none is left, so
    /// that a make that was forking does not leave a compiler behind. Used
    /// by `quit`, after which we exit normally.
    pub fn kill_others(&self) {
        kill_child_groups();
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        for _ in 0..100 {
            let victims = self.others(me);
            if victims.is_empty() {
                return;
            }
            for pid in victims {
                // SAFETY: kill takes plain integers.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Live (non-zombie) processes to kill: group members when we lead the
    /// group, else our descendants.
    fn others(&self, me: libc::pid_t) -> Vec<libc::pid_t> {
        let procs = list_processes();
        if self.leader {
            return procs
                .iter()
                .filter(|p| p.pgrp == self.pgid && p.pid != me && p.state != 'Z')
                .map(|p| p.pid)
                .collect();
        }
        let mut tree = vec![me];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(procs.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
            i += 1;
        }
        procs
            .iter()
            .filter(|p| p.pid != me && p.state != 'Z' && tree.contains(&p.pid))
            .map(|p| p.pid)
            .collect()
    }
}

/// Process groups of our own children that left our group (git commands
/// run in a group of their own so a timeout can kill all of them): they
/// must die with the worker too.
static CHILD_GROUPS: Mutex<BTreeSet<libc::pid_t>> = Mutex::new(BTreeSet::new());

/// A child process group registered for killing while it runs; dropping
/// the guard (once the child is reaped) unregisters it.
#[derive(Debug)]
pub struct ChildGroup(libc::pid_t);

impl ChildGroup {
    /// Register the group led by our child `pid` (spawned with its own
    /// process group).
    pub fn register(pid: u32) -> Self {
        let pgid = libc::pid_t::try_from(pid).unwrap_or(0);
        if pgid > 0 {
            CHILD_GROUPS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(pgid);
        }
        Self(pgid)
    }

    /// Kill every process of the group with SIGKILL.
    pub fn kill(&self) {
        if self.0 > 0 {
            // SAFETY: killpg takes plain integers. The group's leader is
            // our child, unreaped when its time ran out; that it is reaped
            // and its id reused in the moment between is not a practical
            // concern.
            unsafe {
                libc::killpg(self.0, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ChildGroup {
    fn drop(&mut self) {
        CHILD_GROUPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// Kill every registered child group (see [`ChildGroup`]).
fn kill_child_groups() {
    let groups: Vec<libc::pid_t> = CHILD_GROUPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    for pgid in groups {
        // SAFETY: killpg takes plain integers.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

struct ProcInfo {
    pid: libc::pid_t,
    ppid: libc::pid_t,
    pgrp: libc::pid_t,
    state: char,
}

/// Read pid, parent, group and state of every process from `/proc`.
fn list_processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may contain spaces and parentheses: the
            // fields we want follow the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let mut fields = rest.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid = fields.next()?.parse().ok()?;
            let pgrp = fields.next()?.parse().ok()?;
            Some(ProcInfo {
                pid,
                ppid,
                pgrp,
                state,
            })
        })
        .collect()
}

/// On SIGHUP, SIGTERM or SIGINT, kill the whole group at once and exit.
/// The handling runs on a dedicated thread (signal-hook's iterator), so it
/// is not limited to async-signal-safe code.
pub fn kill_group_on_signals(group: ProcessGroup) -> Result<(), ProcessError> {
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT]).map_err(ProcessError::Signals)?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!("signal {sig}: killing the process group");
                group.kill_all_and_exit();
            }
        })
        .map_err(ProcessError::Signals)?;
    Ok(())
}

/// The 1-minute load average from `/proc/loadavg` (0.0 if unreadable),
/// which the boss logs per worker.
pub fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
