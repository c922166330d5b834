//! Every git command the guest runs, each with a bounded time.
//!
//! A git that never returns (a hook waiting for input, a remote that
//! accepts the connection and says nothing, a stuck file system) would
//! otherwise hold a build thread, or the whole command loop while
//! worktrees are set up, until the boss or the agent gives up on the
//! machine. So each git runs in a process group of its own: when its time
//! is up the whole group (git, its hooks, its helpers) is killed at once
//! and the caller gets an error that says which command and how long.
//! The group is registered with [`crate::process`], so a worker that is
//! told to stop kills running gits along with its own group.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::process;

/// Time allowed to a git command that only touches local repositories
/// (checkout, worktree set-up, rev-parse ...): far more than any of them
/// takes on a large tree on a slow disk, yet well inside the boss's 300 s
/// silence timeout.
pub const LOCAL_TIMEOUT: Duration = Duration::from_secs(120);

/// Time allowed to a git command that talks to a remote (clone, fetch):
/// a full clone of a large project over a slow link.
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(1800);

/// How long to wait for git's output to close after its group was killed
/// (a helper that left the group could keep a pipe open).
const REAP_GRACE: Duration = Duration::from_secs(5);

/// A git command (or a file operation around one) that failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// git could not be started.
    #[error("cannot run git {args}: {source}")]
    Spawn {
        /// The git arguments.
        args: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// git ran and failed.
    #[error("git {args} failed (exit status {status}): {stderr}")]
    Failed {
        /// The git arguments.
        args: String,
        /// Its exit status (`killed` for a signal).
        status: String,
        /// What git said.
        stderr: String,
    },
    /// git did not finish in time; its process group was killed.
    #[error("git {args} timed out after {} s in {}; killed it", .timeout.as_secs_f64(), .cwd.display())]
    Timeout {
        /// The git arguments.
        args: String,
        /// Where it ran.
        cwd: PathBuf,
        /// The time it was given.
        timeout: Duration,
    },
    /// A file system operation on the worktree area failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl GitError {
    /// Whether git was killed for taking too long.
    pub fn is_timeout(&self) -> bool {
        matches!(self, GitError::Timeout { .. })
    }
}

/// Runs `git args` in `cwd` with stdin closed and `env` added, killing its
/// process group after `timeout`. Returns stdout on success (trimmed of
/// trailing whitespace); on failure the error carries git's stderr.
pub fn run(
    cwd: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<String, GitError> {
    let joined = args.join(" ");
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_bounded(cmd, timeout).map_err(|e| match e {
        Bounded::Spawn(source) => GitError::Spawn {
            args: joined.clone(),
            source,
        },
        Bounded::Timeout => GitError::Timeout {
            args: joined.clone(),
            cwd: cwd.to_path_buf(),
            timeout,
        },
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string());
    }
    Err(GitError::Failed {
        args: joined,
        status: out
            .status
            .code()
            .map_or_else(|| "killed".to_string(), |c| c.to_string()),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Why [`run_bounded`] gave no output.
enum Bounded {
    Spawn(std::io::Error),
    Timeout,
}

/// Spawn `cmd` as the leader of a new process group, collect its output,
/// and kill the group if it takes longer than `timeout`.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output, Bounded> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let child = cmd.spawn().map_err(Bounded::Spawn)?;
    // Registered until it is reaped, so that a worker being stopped kills
    // it too (it is not in the worker's own process group).
    let group = process::ChildGroup::register(child.id());
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::Builder::new()
        .name("git-wait".into())
        .spawn(move || {
            let _ = tx.send(child.wait_with_output());
        })
        .map_err(Bounded::Spawn)?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => {
            let _ = waiter.join();
            Ok(out)
        }
        Ok(Err(e)) => Err(Bounded::Spawn(e)),
        Err(_) => {
            group.kill();
            // Reap it, unless something outside the group holds its pipes
            // open; then the waiting thread is left to finish on its own.
            if rx.recv_timeout(REAP_GRACE).is_ok() {
                let _ = waiter.join();
            }
            Err(Bounded::Timeout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_failure() {
        let dir = std::env::temp_dir();
        let v = run(&dir, &["--version"], &[], LOCAL_TIMEOUT).expect("git --version");
        assert!(v.starts_with("git version"), "{v}");
        let e = run(&dir, &["no-such-subcommand"], &[], LOCAL_TIMEOUT).unwrap_err();
        assert!(
            e.to_string().starts_with("git no-such-subcommand failed"),
            "{e}"
        );
    }

    #[test]
    fn a_hanging_git_is_killed_with_its_group() {
        // A real git running a real alias that never ends: `!sleep 600`
        // runs through the shell, a child of git in git's process group.
        let dir = std::env::temp_dir();
        let t = std::time::Instant::now();
        let e = run(
            &dir,
            &["-c", "alias.hang=!sleep 600", "hang"],
            &[],
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(e.to_string().contains("timed out after 0.3 s"), "{e}");
        // `sleep` holds git's output pipes: had it survived the kill, the
        // wait for them to close would have taken the 5 s grace.
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
}
