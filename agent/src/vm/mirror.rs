//! The host's bare mirror of each task repository: guests get their
//! source from here (served by [`crate::vm::source_server`]) rather than from
//! the internet, so a guest needs no route out and a big repository is
//! downloaded once per host, not once per VM.
//!
//! One mirror per repository URL under `<state>/mirrors/`, named by a hash
//! of the URL. Before each task the agent fetches into it, under an
//! exclusive `flock` of `<name>.lock` so that concurrent agents on one host
//! never fetch into the same repository at once (readers need no lock: git
//! updates refs atomically). The URL comes from a controller, so only
//! remote transports are allowed (https, http, git: never `file://`, a
//! local path or `ext::`), each fetch has a time limit, and a mirror that
//! grows past its size limit is an error.

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::base::cancel::Cancel;

/// Limits of the mirrors.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// `<state>/mirrors`.
    pub root: PathBuf,
    /// Longest a fetch may take.
    pub fetch_timeout: Duration,
    /// Largest a mirror may grow.
    pub max_bytes: u64,
}

impl MirrorConfig {
    /// The defaults under `state`: an hour per fetch (a first fetch of a
    /// large repository over a slow link), 16 GiB per mirror.
    pub fn under(state: &Path) -> Self {
        MirrorConfig {
            root: state.join("mirrors"),
            fetch_timeout: Duration::from_secs(3600),
            max_bytes: 16 << 30,
        }
    }
}

/// A mirror that could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The repository URL uses a transport the agent does not fetch from.
    #[error("repository '{url}': {reason}")]
    Url {
        /// The URL (escaped).
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file operation failed.
    #[error("mirror {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// git failed, timed out or was cancelled.
    #[error("mirror of '{url}': git {command}: {message}")]
    Git {
        /// The URL.
        url: String,
        /// The git subcommand.
        command: String,
        /// git's own words, or the time limit.
        message: String,
    },
    /// The mirror grew past the limit.
    #[error("mirror of '{url}' is {bytes} bytes, over the limit of {limit}")]
    TooBig {
        /// The URL.
        url: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The agent is stopping.
    #[error("interrupted")]
    Interrupted,
}

/// An up-to-date mirror.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// The bare repository.
    pub path: PathBuf,
}

/// Checks that `url` is a remote git URL the agent may fetch from.
pub fn check_url(url: &str) -> Result<(), MirrorError> {
    let refuse = |reason: &str| MirrorError::Url {
        url: url.escape_debug().to_string(),
        reason: reason.to_string(),
    };
    let lower = url.to_ascii_lowercase();
    let scheme_ok = ["https://", "http://", "git://"]
        .iter()
        .any(|s| lower.starts_with(s) && lower.len() > s.len());
    if !scheme_ok {
        return Err(refuse(
            "only https://, http:// and git:// repositories are mirrored",
        ));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(refuse("control characters or spaces in the URL"));
    }
    Ok(())
}

/// The mirror directory's name for `url`.
fn mirror_name(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("{hex}.git")
}

/// Brings the mirror of `url` up to date: every branch and tag, plus
/// `reference` (the task's `#<ref>`, when given) and any of `commits` not
/// reachable from those. Holds the mirror's lock while it fetches.
pub fn update(
    cfg: &MirrorConfig,
    url: &str,
    reference: Option<&str>,
    commits: &[String],
    cancel: &Cancel,
) -> Result<Mirror, MirrorError> {
    check_url(url)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MirrorError::Io { path, source }
    };
    fs::create_dir_all(&cfg.root).map_err(io(&cfg.root))?;
    let name = mirror_name(url);
    let path = cfg.root.join(&name);
    let lock_path = cfg.root.join(format!("{name}.lock"));
    let lock = File::create(&lock_path).map_err(io(&lock_path))?;
    lock_exclusive(&lock, cancel).map_err(|e| match e {
        None => MirrorError::Interrupted,
        Some(source) => MirrorError::Io {
            path: lock_path.clone(),
            source,
        },
    })?;
    let git = |args: &[&str], timeout: Duration| git(&path, url, args, timeout, cancel);
    if !path.join("HEAD").is_file() {
        // A half-made mirror of a dead agent is started again.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(io(&path))?;
        git(&["init", "-q", "--bare"], Duration::from_secs(60))?;
        fs::write(path.join("bbot-url"), format!("{url}\n")).map_err(io(&path))?;
    }
    tracing::info!("fetching {url} into the mirror {}", path.display());
    let started = Instant::now();
    git(
        &[
            "fetch",
            "-q",
            "--prune",
            "--no-auto-gc",
            url,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ],
        cfg.fetch_timeout,
    )?;
    if let Some(r) = reference.filter(|r| !is_known(&path, r, cancel)) {
        // A ref outside heads and tags (refs/pull/1/head, a commit).
        git(
            &[
                "fetch",
                "-q",
                "--no-auto-gc",
                url,
                &format!("+{r}:refs/bbot/task-ref"),
            ],
            cfg.fetch_timeout,
        )?;
    }
    let missing: Vec<&str> = commits
        .iter()
        .map(String::as_str)
        .filter(|c| !is_known(&path, &format!("{c}^{{commit}}"), cancel))
        .collect();
    if !missing.is_empty() {
        let mut args = vec!["fetch", "-q", "--no-auto-gc", url];
        args.extend(&missing);
        // Servers that refuse unadvertised commits make this fail; the
        // guest then reports the missing commit in its own words.
        if let Err(e) = git(&args, cfg.fetch_timeout) {
            tracing::warn!("{e}");
        }
    }
    let bytes = dir_size(&path);
    if bytes > cfg.max_bytes {
        return Err(MirrorError::TooBig {
            url: url.to_string(),
            bytes,
            limit: cfg.max_bytes,
        });
    }
    tracing::info!(
        "mirror of {url} up to date in {:.1?} ({} MiB)",
        started.elapsed(),
        bytes >> 20
    );
    Ok(Mirror { path })
}

/// Whether `rev` names an object of the mirror.
fn is_known(path: &Path, rev: &str, cancel: &Cancel) -> bool {
    git(
        path,
        "",
        &["rev-parse", "-q", "--verify", rev],
        Duration::from_secs(60),
        cancel,
    )
    .is_ok()
}

/// Total size of the files under `dir` (not following symlinks).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Takes an exclusive `flock` on `file`, waiting as long as another agent
/// holds it (`Err(None)`: cancelled while waiting).
fn lock_exclusive(file: &File, cancel: &Cancel) -> Result<(), Option<std::io::Error>> {
    loop {
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Some(e));
        }
        if cancel.sleep(Duration::from_millis(200)) {
            return Err(None);
        }
    }
}

/// Runs git in `dir` with only remote transports allowed, no prompts, its
/// output captured, killed (with its process group) after `timeout` or
/// when the agent stops.
fn git(
    dir: &Path,
    url: &str,
    args: &[&str],
    timeout: Duration,
    cancel: &Cancel,
) -> Result<String, MirrorError> {
    let fail = |message: String| MirrorError::Git {
        url: url.to_string(),
        command: args.first().copied().unwrap_or("").to_string(),
        message,
    };
    let mut cmd = Command::new("git");
    cmd.args([
        "-c",
        "protocol.allow=never",
        "-c",
        "protocol.https.allow=always",
        "-c",
        "protocol.http.allow=always",
        "-c",
        "protocol.git.allow=always",
    ])
    .args(args)
    .current_dir(dir)
    .env("GIT_TERMINAL_PROMPT", "0")
    .env("GIT_ASKPASS", "true")
    .env("LC_ALL", "C")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    crate::vm::lifecycle::die_with_agent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    let pid = child.id() as i32;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(fail("no pipes".into()));
    };
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = Vec::new();
        // Bounded: git's own output of a fetch is small; a flood is cut.
        let _ = (&mut out).take(1 << 20).read_to_end(&mut o);
        let _ = (&mut err).take(64 << 10).read_to_end(&mut e);
        let _ = tx.send((o, e));
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) => {}
            Err(e) => break Err(e.to_string()),
        }
        if cancel.is_cancelled() || Instant::now() >= deadline {
            // SAFETY: signalling the process group we created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            break Err(if cancel.is_cancelled() {
                "interrupted".to_string()
            } else {
                format!("no end after {}s", timeout.as_secs())
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (o, e) = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    let _ = reader.join();
    if cancel.is_cancelled() {
        return Err(MirrorError::Interrupted);
    }
    let status = status.map_err(fail)?;
    if status.success() {
        Ok(String::from_utf8_lossy(&o).trim().to_string())
    } else {
        Err(fail(
            String::from_utf8_lossy(&e)
                .trim()
                .escape_debug()
                .to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_remote_transports() {
        for bad in [
            "/srv/git/secret",
            "file:///etc",
            "ext::sh -c id",
            "ssh://host/x",
            "host:path",
            "https://",
            "https://x/a b",
            "git://x/\n",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?}");
        }
        for good in [
            "https://source.denx.de/u-boot/u-boot.git",
            "git://10.0.2.2:9418/x",
            "HTTP://x/y",
        ] {
            assert!(check_url(good).is_ok(), "{good:?}");
        }
        assert_ne!(mirror_name("https://a/x"), mirror_name("https://a/y"));
    }
}
