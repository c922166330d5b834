//! Getting the task's source: a git clone of `repository-url`, checked out
//! at the `#<ref>` fragment when there is one (PROTOCOLS.md section 6).
//!
//! A full clone (not shallow), because the task's `commit` list may reach
//! anywhere in the history and the engine checks each one out. git runs
//! with prompts disabled and stdin closed: a guest has nobody to type a
//! password, and a clone that waits for one would only end at the agent's
//! build timeout. For the same reason every command has a time limit
//! ([`CloneTimeouts`]): a remote that accepts the connection and then says
//! nothing ends in an error naming the command, not in a silent guest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::git::{self, GitError};

/// How long the git commands of a clone may take.
#[derive(Debug, Clone, Copy)]
pub struct CloneTimeouts {
    /// `git clone` and `git fetch`, which talk to the remote.
    pub network: Duration,
    /// Local commands (`checkout`, `rev-parse`).
    pub local: Duration,
}

impl Default for CloneTimeouts {
    fn default() -> Self {
        Self {
            network: git::NETWORK_TIMEOUT,
            local: git::LOCAL_TIMEOUT,
        }
    }
}

/// A clone or checkout that failed; the message carries git's own words.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    /// A git command failed, could not start or timed out.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The destination could not be prepared.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The ref exists neither as a branch, tag or commit of the clone nor
    /// on the remote.
    #[error("cannot check out '{reference}': {checkout}; fetching it failed too: {fetch}")]
    Ref {
        /// The ref asked for.
        reference: String,
        /// Why the checkout failed.
        checkout: Box<CloneError>,
        /// Why the fetch failed.
        fetch: Box<CloneError>,
    },
}

/// Runs git with `args` in `cwd` without prompts, within `timeout`,
/// returning its stdout.
fn git(cwd: &Path, args: &[&str], timeout: Duration) -> Result<String, CloneError> {
    let env = [
        ("GIT_TERMINAL_PROMPT", "0"),
        ("GIT_ASKPASS", "true"),
        ("LC_ALL", "C"),
    ];
    Ok(git::run(cwd, args, &env, timeout)?.trim().to_string())
}

/// Clones `url` into `dest` (which must not exist or be empty) and checks
/// out `reference` (a branch, tag or commit; a ref only the remote has,
/// such as `refs/pull/1/head`, is fetched). Returns the checked-out commit.
pub fn clone(
    url: &str,
    reference: Option<&str>,
    dest: &Path,
    timeouts: CloneTimeouts,
) -> Result<String, CloneError> {
    let dest = if dest.is_absolute() {
        dest.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| CloneError::Dir {
                path: dest.to_path_buf(),
                source,
            })?
            .join(dest)
    };
    let parent = dest.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(|source| CloneError::Dir {
        path: parent.to_path_buf(),
        source,
    })?;
    let dest_arg = dest.to_string_lossy();
    tracing::info!("cloning {url} into {}", dest.display());
    git(
        parent,
        &["clone", "-q", "--", url, &dest_arg],
        timeouts.network,
    )?;
    if let Some(reference) = reference {
        tracing::info!("checking out {reference}");
        if let Err(checkout) = git(&dest, &["checkout", "-q", "-f", reference], timeouts.local) {
            let fetched = git(
                &dest,
                &["fetch", "-q", "origin", reference],
                timeouts.network,
            )
            .and_then(|_| {
                git(
                    &dest,
                    &["checkout", "-q", "-f", "FETCH_HEAD"],
                    timeouts.local,
                )
            });
            if let Err(fetch) = fetched {
                return Err(CloneError::Ref {
                    reference: reference.to_string(),
                    checkout: Box::new(checkout),
                    fetch: Box::new(fetch),
                });
            }
        }
    }
    git(&dest, &["rev-parse", "HEAD"], timeouts.local)
}

/// Fetches from the agent's mirror (`source`, a `git://` URL served to
/// this guest only) just what the task needs into `dest`: the tip of
/// `reference` (or of the mirror's `HEAD`) and each of `commits`, each
/// with depth 1, so a task over a large history downloads a few trees
/// rather than the history. Checks out the reference's tip and returns it.
pub fn fetch_from_mirror(
    source: &str,
    reference: Option<&str>,
    commits: &[String],
    dest: &Path,
    timeouts: CloneTimeouts,
) -> Result<String, CloneError> {
    std::fs::create_dir_all(dest).map_err(|e| CloneError::Dir {
        path: dest.to_path_buf(),
        source: e,
    })?;
    git(dest, &["init", "-q"], timeouts.local)?;
    git(dest, &["remote", "add", "origin", source], timeouts.local)?;
    let tip = reference.unwrap_or("HEAD");
    tracing::info!(
        "fetching {tip} and {} commit(s) from the agent's mirror {source}",
        commits.len()
    );
    let mut args = vec!["fetch", "-q", "--depth=1", "--no-tags", "origin", tip];
    args.extend(commits.iter().map(String::as_str));
    git(dest, &args, timeouts.network)?;
    // FETCH_HEAD names the first thing fetched: the reference's tip.
    git(
        dest,
        &["checkout", "-q", "-f", "FETCH_HEAD"],
        timeouts.local,
    )?;
    git(dest, &["rev-parse", "HEAD"], timeouts.local)
}
