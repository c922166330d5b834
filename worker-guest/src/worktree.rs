//! Per-thread git worktrees under `<work_dir>/.bm-work/NN`.
//!
//! Each build thread checks out commits in its own worktree, sharing the
//! object store of the pushed repository. Worktrees are created once and
//! reused across builds (their `build/` directories make later builds
//! incremental); a worker killed mid-checkout leaves `index.lock` files and
//! dangling worktree records behind, which are cleaned up here first.
//! Every git command is bounded in time (see [`crate::git`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

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
/// The first checkout of a worktree (made without one, so it has no
/// index yet) writes the whole tree; its index is then dated as
/// [`settle_first_index`] explains.
pub fn checkout(dir: &Path, commit: &str, timeout: Duration) -> Result<(), GitError> {
    let dot_git = dir.join(".git");
    remove_stale_lock(&dot_git);
    let index = resolve_git_dir(&dot_git).join("index");
    let first = !index.exists();
    run_git(dir, &["checkout", "-q", "-f", commit], timeout)?;
    if first {
        settle_first_index(&index);
    }
    Ok(())
}

/// Move the modification time of a worktree's first index to the start of
/// the next second.
///
/// git trusts an index entry's recorded stat data only for files last
/// modified before the second in which the index was written (its "racy
/// git" rule, at whole seconds in Debian's git); it re-reads and hashes
/// every other file each time it looks at the tree. A first checkout
/// writes the whole tree (about 19 000 files for U-Boot) and then the
/// index, mostly within one second, so nearly every entry is racy. Left
/// so, U-Boot's `setlocalversion` (`git status`, in every make) hashed the
/// whole tree during the first build (0.4 s), and the next commit's
/// checkout hashed it again before writing a fresh index (0.75 s per
/// thread, where buildman's worker takes 0.03 s: its `worktree add` with a
/// checkout followed by the first commit's checkout paid this before the
/// first build).
///
/// Dating the index one second on says what is true here: every file was
/// written by this checkout, before the index. The one case git's rule
/// protects against, a tracked file changed again within that same second
/// without changing its size, cannot come from the build, which writes
/// only its output directory. A failure costs only time, so it is logged.
fn settle_first_index(index: &Path) {
    let settle = || -> std::io::Result<()> {
        let file = std::fs::File::open(index)?;
        let written = file.metadata()?.modified()?;
        let secs = written
            .duration_since(UNIX_EPOCH)
            .map_err(std::io::Error::other)?
            .as_secs();
        file.set_modified(UNIX_EPOCH + Duration::from_secs(secs + 1))
    };
    if let Err(e) = settle() {
        tracing::debug!("cannot re-date {}: {e}", index.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_in(dir: &Path, args: &[&str]) -> String {
        let env = [
            ("GIT_AUTHOR_NAME", "t"),
            ("GIT_AUTHOR_EMAIL", "t@example.org"),
            ("GIT_COMMITTER_NAME", "t"),
            ("GIT_COMMITTER_EMAIL", "t@example.org"),
        ];
        git::run(dir, args, &env, Duration::from_secs(60)).expect("git")
    }

    fn secs(p: &Path) -> u64 {
        let t = std::fs::metadata(p).and_then(|m| m.modified()).unwrap();
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    /// After the first checkout of a new worktree, no file shares the
    /// index's second (git would hash it at every look), and git still
    /// sees the changes of later checkouts and of edits.
    #[test]
    fn first_checkout_leaves_no_racy_entries() {
        let work = std::env::temp_dir().join(format!("wt-racy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("src")).unwrap();
        git_in(&work, &["init", "-q"]);
        for i in 0..200 {
            std::fs::write(work.join(format!("src/f{i}.c")), format!("int f{i};\n")).unwrap();
        }
        git_in(&work, &["add", "-A"]);
        git_in(&work, &["commit", "-q", "-m", "one"]);
        let one = git_in(&work, &["rev-parse", "HEAD"]);
        std::fs::write(work.join("src/f7.c"), "int f7 = 7;\n").unwrap();
        git_in(&work, &["commit", "-q", "-am", "two"]);
        let two = git_in(&work, &["rev-parse", "HEAD"]);

        setup_worktrees(&work, 1, Duration::from_secs(60), |_| {}).unwrap();
        let tdir = thread_dir(&work, 0);
        let index = resolve_git_dir(&tdir.join(".git")).join("index");
        assert!(!index.exists(), "a new worktree has no index yet");
        checkout(&tdir, &one, Duration::from_secs(60)).unwrap();
        let idx = secs(&index);
        for i in 0..200 {
            let f = tdir.join(format!("src/f{i}.c"));
            assert!(secs(&f) < idx, "{} is racy", f.display());
        }
        assert_eq!(git_in(&tdir, &["status", "--porcelain", "-uno"]), "");

        // Later checkouts are git's own and still see every change.
        checkout(&tdir, &two, Duration::from_secs(60)).unwrap();
        let f7 = std::fs::read_to_string(tdir.join("src/f7.c")).unwrap();
        assert_eq!(f7, "int f7 = 7;\n");
        std::fs::write(tdir.join("src/f8.c"), "changed, longer\n").unwrap();
        assert_eq!(
            git_in(&tdir, &["status", "--porcelain", "-uno"]),
            " M src/f8.c"
        );
        let _ = std::fs::remove_dir_all(&work);
    }
}
