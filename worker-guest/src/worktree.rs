//! Per-thread git worktrees under `<work_dir>/.bm-work/NN`.
//!
//! Each build thread checks out commits in its own worktree, sharing the
//! object store of the pushed repository. Worktrees are created once and
//! reused across builds (their `build/` directories make later builds
//! incremental); a worker killed mid-checkout leaves `index.lock` files and
//! dangling worktree records behind, which are cleaned up here first.
//! Every git command is bounded in time (see [`crate::git`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::git;
pub use crate::git::GitError;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> GitError + 'a {
    move |source| GitError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Run git in `cwd` with stdin closed, giving up after `timeout`; the
/// error carries git's stderr.
pub fn run_git(cwd: &Path, args: &[&str], timeout: Duration) -> Result<(), GitError> {
    git::run(cwd, args, &[], timeout).map(|_| ())
}

/// The directory of thread `n`: `<work_dir>/.bm-work/NN`.
pub fn thread_dir(work_dir: &Path, n: usize) -> PathBuf {
    work_dir.join(".bm-work").join(format!("{n:02}"))
}

/// Resolve a `.git` entry: a directory is the git directory; a worktree's
/// `.git` file names it (`gitdir: <path>`).
pub fn resolve_git_dir(dot_git: &Path) -> PathBuf {
    if dot_git.is_file() {
        if let Ok(text) = std::fs::read_to_string(dot_git) {
            if let Some(path) = text.lines().next().and_then(|l| l.strip_prefix("gitdir: ")) {
                let p = PathBuf::from(path.trim());
                return if p.is_absolute() {
                    p
                } else {
                    dot_git.parent().unwrap_or(Path::new(".")).join(p)
                };
            }
        }
    }
    dot_git.to_path_buf()
}

/// Remove an `index.lock` left by a git command that was killed; it would
/// make every later checkout fail.
pub fn remove_stale_lock(dot_git: &Path) {
    let lock = resolve_git_dir(dot_git).join("index.lock");
    match std::fs::remove_file(&lock) {
        Ok(()) => tracing::info!("removed stale {}", lock.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", lock.display()),
    }
}

/// Make sure threads `0..n` each have a valid worktree, creating missing
/// ones one after the other (so they do not fight over the repository's
/// lock) and calling `created(thread)` after each, for progress reports.
/// Each git command may take up to `timeout`.
pub fn setup_worktrees(
    work_dir: &Path,
    n: usize,
    timeout: Duration,
    mut created: impl FnMut(usize),
) -> Result<(), GitError> {
    let bm_work = work_dir.join(".bm-work");
    std::fs::create_dir_all(&bm_work).map_err(io_err("cannot create", &bm_work))?;
    let git_dir = work_dir.join(".git");
    let abs_git = std::fs::canonicalize(&git_dir).map_err(io_err("cannot find", &git_dir))?;
    remove_stale_lock(&git_dir);
    run_git(work_dir, &["worktree", "prune"], timeout)?;

    for i in 0..n {
        let dir = thread_dir(work_dir, i);
        let dot_git = dir.join(".git");
        let mut need = !dot_git.exists();
        if !need {
            if dot_git.is_dir() {
                // A full clone from an old buildman: replace it with a
                // worktree sharing the repository's objects.
                need = true;
            } else if !resolve_git_dir(&dot_git).is_dir() {
                // Its record was pruned (killed run): start again.
                need = true;
            }
        }
        if need {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io_err("cannot remove", &dir))?;
            }
            std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
            // Without a checkout: the build thread's first `checkout -f`
            // writes the tree anyway. A checkout here would be a second
            // full write of the tree (seconds each on a large tree, tens
            // of seconds on a busy machine), made one worktree after the
            // other while the command loop sends nothing; in the threads
            // it happens in parallel, with heartbeats.
            let git_arg = abs_git.to_string_lossy();
            run_git(
                &dir,
                &[
                    "--git-dir",
                    &git_arg,
                    "worktree",
                    "add",
                    "--no-checkout",
                    ".",
                    "--detach",
                ],
                timeout,
            )?;
        } else {
            remove_stale_lock(&dot_git);
        }
        created(i);
    }
    Ok(())
}

/// Make sure plain thread directories exist (builds of the checked-out
/// source need no worktree, only a place for their output).
pub fn setup_thread_dirs(work_dir: &Path, n: usize) -> Result<(), GitError> {
    for i in 0..n {
        let dir = thread_dir(work_dir, i);
        std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    }
    Ok(())
}

/// Check out `commit` in a thread's worktree, discarding local changes.
pub fn checkout(dir: &Path, commit: &str, timeout: Duration) -> Result<(), GitError> {
    remove_stale_lock(&dir.join(".git"));
    run_git(dir, &["checkout", "-q", "-f", commit], timeout)
}
