//! Per-thread git worktrees under `<work_dir>/.bm-work/NN`.
//!
//! Each build thread checks out commits in its own worktree, sharing the
//! object store of the pushed repository. Worktrees are created once and
//! reused across builds (their `build/` directories make later builds
//! incremental); a worker killed mid-checkout leaves `index.lock` files and
//! dangling worktree records behind, which are cleaned up here first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A git operation on the work directory failed.
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
    #[error("git {args} failed: {stderr}")]
    Failed {
        /// The git arguments.
        args: String,
        /// What git said.
        stderr: String,
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

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> GitError + 'a {
    move |source| GitError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Run git in `cwd` with stdin closed; return an error carrying git's
/// stderr if it fails.
pub fn run_git(cwd: &Path, args: &[&str]) -> Result<(), GitError> {
    let out = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| GitError::Spawn {
            args: args.join(" "),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(GitError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
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
pub fn setup_worktrees(
    work_dir: &Path,
    n: usize,
    mut created: impl FnMut(usize),
) -> Result<(), GitError> {
    let bm_work = work_dir.join(".bm-work");
    std::fs::create_dir_all(&bm_work).map_err(io_err("cannot create", &bm_work))?;
    let git_dir = work_dir.join(".git");
    let abs_git = std::fs::canonicalize(&git_dir).map_err(io_err("cannot find", &git_dir))?;
    remove_stale_lock(&git_dir);
    run_git(work_dir, &["worktree", "prune"])?;

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
            let git_arg = abs_git.to_string_lossy();
            run_git(
                &dir,
                &["--git-dir", &git_arg, "worktree", "add", ".", "--detach"],
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

/// The files (paths relative to the top of the tree) that differ between
/// two commits, from `git diff --name-only`.
pub fn changed_files(dir: &Path, from: &str, to: &str) -> Result<Vec<String>, GitError> {
    let args = ["diff", "--name-only", "--no-renames", from, to];
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| GitError::Spawn {
            args: args.join(" "),
            source,
        })?;
    if !out.status.success() {
        return Err(GitError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Check out `commit` in a thread's worktree, discarding local changes.
pub fn checkout(dir: &Path, commit: &str) -> Result<(), GitError> {
    remove_stale_lock(&dir.join(".git"));
    run_git(dir, &["checkout", "-q", "-f", commit])
}
