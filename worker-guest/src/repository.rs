//! Getting the task's source: a git clone of `repository-url`, checked out
//! at the `#<ref>` fragment when there is one (PROTOCOLS.md section 6).
//!
//! A full clone (not shallow), because the task's `commit` list may reach
//! anywhere in the history and the engine checks each one out. git runs
//! with prompts disabled and stdin closed: a guest has nobody to type a
//! password, and a clone that waits for one would only end at the agent's
//! build timeout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A clone or checkout that failed; the message carries git's own words.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    /// git could not be started.
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    /// A git command failed.
    #[error("git {args} failed (exit status {status}): {stderr}")]
    Git {
        /// The arguments.
        args: String,
        /// Its exit status.
        status: String,
        /// What git said.
        stderr: String,
    },
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

/// Runs git with `args` in `cwd`, returning its stdout.
fn git(cwd: &Path, args: &[&str]) -> Result<String, CloneError> {
    let out = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(CloneError::Spawn)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    Err(CloneError::Git {
        args: args.join(" "),
        status: out
            .status
            .code()
            .map_or_else(|| "killed".to_string(), |c| c.to_string()),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Clones `url` into `dest` (which must not exist or be empty) and checks
/// out `reference` (a branch, tag or commit; a ref only the remote has,
/// such as `refs/pull/1/head`, is fetched). Returns the checked-out commit.
pub fn clone(url: &str, reference: Option<&str>, dest: &Path) -> Result<String, CloneError> {
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
    git(parent, &["clone", "-q", "--", url, &dest_arg])?;
    if let Some(reference) = reference {
        tracing::info!("checking out {reference}");
        if let Err(checkout) = git(&dest, &["checkout", "-q", "-f", reference]) {
            let fetched = git(&dest, &["fetch", "-q", "origin", reference])
                .and_then(|_| git(&dest, &["checkout", "-q", "-f", "FETCH_HEAD"]));
            if let Err(fetch) = fetched {
                return Err(CloneError::Ref {
                    reference: reference.to_string(),
                    checkout: Box::new(checkout),
                    fetch: Box::new(fetch),
                });
            }
        }
    }
    git(&dest, &["rev-parse", "HEAD"])
}
