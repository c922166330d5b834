//! Bootstrap mode (PROTOCOLS.md sections 2 and 5): bring the machine's
//! `worker-guest` up to the version the agent's toolchain directory holds,
//! then report what the machine was bootstrapped with.
//!
//! The served binary is only installed once it has shown it runs and is a
//! worker-guest (`--version`), and it replaces the old one by a rename, so
//! a bad download or a power cut never leaves a machine without a working
//! worker. The bootstrap manifest's `worker-guest-version` comes from the
//! installed binary itself, not from what this process is, because that is
//! what later tasks will run. The tool versions are informative: they tell
//! the controller's users what the machine compiles with.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use manifests::bbot::WORKER_GUEST_PACKAGE;
use manifests::{BootstrapManifest, Document};

use crate::tftp_client::{TftpClient, TftpError};

pub use manifests::guest::{MANIFEST_FILE as MANIFEST, WORKER_FILE};
/// How long a `--version` may take before the program counts as broken.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(30);

/// The tools whose versions are reported (when the machine has them):
/// `(package name in the manifest, program, arguments)`. gcc is asked for
/// `-dumpfullversion`, which prints the bare version.
pub const TOOLS: [(&str, &str, &[&str]); 4] = [
    ("git", "git", &["--version"]),
    ("make", "make", &["--version"]),
    ("gcc", "gcc", &["-dumpfullversion"]),
    (
        "aarch64-linux-gnu-gcc",
        "aarch64-linux-gnu-gcc",
        &["-dumpfullversion"],
    ),
];

/// Why a bootstrap failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The worker could not be fetched (other than "not found").
    #[error("cannot fetch {WORKER_FILE}: {0}")]
    Fetch(TftpError),
    /// A file operation of the installation failed.
    #[error("cannot {what} {path}: {source}")]
    Install {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A program's version could not be had: the served worker does not
    /// run, or is not a worker-guest.
    #[error("{path}: {message}")]
    Version {
        /// The program.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The manifest could not be written.
    #[error("cannot write the bootstrap manifest: {0}")]
    Serialize(manifests::Error),
    /// The manifest could not be uploaded.
    #[error("cannot upload the bootstrap manifest: {0}")]
    Upload(TftpError),
}

/// What a bootstrap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapReport {
    /// Whether a served worker was installed (false: the current one kept).
    pub installed: bool,
    /// The manifest as uploaded.
    pub manifest: BootstrapManifest,
}

/// The version in a program's version output: the last word of its first
/// non-blank line that starts with a digit (`git version 2.39.2`, `GNU
/// Make 4.3`, `worker-guest 0.1.0`, `gcc (Debian 12.2.0-14) 12.2.0`).
pub fn parse_version(output: &str) -> Option<String> {
    let line = output.lines().find(|l| !l.trim().is_empty())?;
    line.split_whitespace()
        .rev()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .map(|w| w.trim_end_matches([')', ',', ';']).to_string())
}

/// Runs `program args`, giving up (and killing it) after `timeout`.
/// Returns stdout on success; the error says what went wrong.
pub fn run_output(program: &Path, args: &[&str], timeout: Duration) -> Result<String, String> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return Err(format!("cannot run: {e}")),
    };
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(Ok(out)) => Err(format!(
            "{} {}: {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Err(e)) => Err(format!("cannot wait for it: {e}")),
        Err(_) => {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) on our own child's pid; it has not been
                // reaped (the waiting thread is still blocked on it).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Err(format!("no answer within {timeout:?}"))
        }
    }
}

/// The version a worker-guest binary reports (`worker-guest X.Y.Z`).
pub fn worker_version(binary: &Path) -> Result<String, BootstrapError> {
    let err = |message: String| BootstrapError::Version {
        path: binary.to_path_buf(),
        message,
    };
    let out = run_output(binary, &["--version"], VERSION_TIMEOUT).map_err(err)?;
    let first = out.lines().next().unwrap_or_default();
    if first.split_whitespace().next() != Some(WORKER_GUEST_PACKAGE) {
        return Err(err(format!(
            "'--version' printed '{}', not a worker-guest version",
            first.trim()
        )));
    }
    parse_version(first).ok_or_else(|| err(format!("no version in '{}'", first.trim())))
}

/// Installs `bytes` as `install`: written to a temporary file next to it,
/// made executable, checked with `--version`, then renamed over it.
/// Returns the new binary's version.
pub fn install(bytes: &[u8], install: &Path) -> Result<String, BootstrapError> {
    use std::os::unix::fs::PermissionsExt;
    let io_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| BootstrapError::Install { what, path, source }
    };
    let dir = install
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = install
        .file_name()
        .map_or_else(|| WORKER_FILE.into(), OsStr::to_os_string);
    let mut tmp_name = OsStr::new(".").to_os_string();
    tmp_name.push(&file_name);
    tmp_name.push(format!(".new-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        std::fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("make executable", &tmp))?;
        let version = worker_version(&tmp)?;
        std::fs::rename(&tmp, install).map_err(io_err("install", install))?;
        Ok(version)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Versions of the [`TOOLS`] found on `search_path`, in that order.
pub fn tool_versions(search_path: &OsStr) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (package, program, args) in TOOLS {
        let Some(path) = std::env::split_paths(search_path)
            .map(|d| d.join(program))
            .find(|p| crate::toolchain::is_executable(p))
        else {
            tracing::info!("{program}: not installed");
            continue;
        };
        match run_output(&path, args, VERSION_TIMEOUT) {
            Ok(out_text) => match parse_version(&out_text) {
                Some(v) => out.push((package.to_string(), v)),
                None => tracing::warn!("{program}: no version in '{}'", out_text.trim()),
            },
            Err(e) => tracing::warn!("{program}: {e}"),
        }
    }
    out
}

/// Runs a bootstrap: install the served worker (or keep the current one
/// when the server has none), upload the bootstrap manifest, and flush the
/// file system so the image is whole when the VM powers off.
pub fn run_bootstrap(
    client: &TftpClient,
    install_path: &Path,
    search_path: &OsStr,
) -> Result<BootstrapReport, BootstrapError> {
    let (installed, version) = match client.get(WORKER_FILE) {
        Ok(bytes) => {
            let v = install(&bytes, install_path)?;
            tracing::info!("installed worker-guest {v} as {}", install_path.display());
            (true, v)
        }
        Err(e) if e.is_not_found() => {
            tracing::info!(
                "the toolchain directory has no {WORKER_FILE}: keeping {}",
                install_path.display()
            );
            (false, worker_version(install_path)?)
        }
        Err(e) => return Err(BootstrapError::Fetch(e)),
    };
    let mut manifest = BootstrapManifest::default();
    manifest.set_version(WORKER_GUEST_PACKAGE, &version);
    for (package, v) in tool_versions(search_path) {
        manifest.set_version(&package, &v);
    }
    let text = manifest.to_text().map_err(BootstrapError::Serialize)?;
    // Flush the installed binary before anyone may power us off: the
    // agent does so as soon as the manifest has arrived.
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    client
        .put(MANIFEST, text.as_bytes())
        .map_err(BootstrapError::Upload)?;
    // SAFETY: as above.
    unsafe { libc::sync() };
    Ok(BootstrapReport {
        installed,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_tool_output() {
        assert_eq!(
            parse_version("git version 2.39.2\n").as_deref(),
            Some("2.39.2")
        );
        assert_eq!(
            parse_version("GNU Make 4.3\nBuilt for x\n").as_deref(),
            Some("4.3")
        );
        assert_eq!(
            parse_version("gcc (Debian 12.2.0-14) 12.2.0\n").as_deref(),
            Some("12.2.0")
        );
        assert_eq!(parse_version("12\n").as_deref(), Some("12"));
        assert_eq!(
            parse_version("worker-guest 0.1.0").as_deref(),
            Some("0.1.0")
        );
        assert_eq!(parse_version("no digits here"), None);
        assert_eq!(parse_version(""), None);
    }
}
