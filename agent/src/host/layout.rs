//! The on-disk layout of PROTOCOLS.md section 4: volumes, machine directories,
//! the `<name>-<P>` link, the bootstrapped `<name>-<toolchain>` subvolume and
//! the agent's temporary snapshots.
//!
//! Why a module of its own: naming is where two agent instances (one per
//! toolchain) sharing a machines directory could trip over each other, so all
//! names are made and recognised here and nowhere else.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::base::version::BOOTSTRAP_PROTOCOL;

/// Marker inside temporary snapshot names:
/// `<name>-<toolchain>-bbot-tmp-<instance>-<pid>-<n>`. Whose they are is
/// for people; whether one is a leftover is decided by the machine lock
/// (free lock: nobody's).
pub const TEMP_MARKER: &str = "-bbot-tmp-";

/// Name of the manifest file inside machine subvolumes.
pub const MANIFEST_FILE: &str = "manifest";

/// A layout problem with one path.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Reading a directory or a link failed.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `<name>-<P>` exists but is not a symbolic link.
    #[error("{0}: expected a symbolic link to the current machine revision")]
    NotALink(PathBuf),
}

/// One machine directory `<machines>/<volume>/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineDir {
    /// The volume directory's name.
    pub volume: String,
    /// The machine name (the directory's name).
    pub name: String,
    /// The directory itself.
    pub dir: PathBuf,
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Visible subdirectories of `dir` (hidden `.x` entries and non-directories are
/// ignored; symlinks to directories are followed), sorted by name.
fn visible_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, LayoutError> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!("{}: ignoring non-UTF-8 name", entry.path().display());
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let p = entry.path();
        let is_dir = match entry.file_type() {
            Ok(ft) if ft.is_dir() => true,
            Ok(ft) if ft.is_symlink() => std::fs::metadata(&p).map(|m| m.is_dir()).unwrap_or(false),
            _ => false,
        };
        if is_dir {
            v.push((name, p));
        }
    }
    v.sort();
    Ok(v)
}

/// All machine directories under `machines`, volume by volume.
pub fn machine_dirs(machines: &Path) -> Result<Vec<MachineDir>, LayoutError> {
    let mut out = Vec::new();
    for (volume, vdir) in visible_dirs(machines)? {
        for (name, dir) in visible_dirs(&vdir)? {
            out.push(MachineDir {
                volume: volume.clone(),
                name,
                dir,
            });
        }
    }
    Ok(out)
}

impl MachineDir {
    /// `<dir>/<name>-<P>`: the admin's link to the current revision.
    pub fn link(&self) -> PathBuf {
        self.dir
            .join(format!("{}-{}", self.name, BOOTSTRAP_PROTOCOL))
    }

    /// `<dir>/<name>-<toolchain>`: the bootstrapped machine.
    pub fn bootstrapped(&self, toolchain: &str) -> PathBuf {
        self.dir.join(format!("{}-{}", self.name, toolchain))
    }

    /// Resolves the `<name>-<P>` link: `None` when there is no link; relative
    /// targets are taken relative to the machine directory.
    pub fn resolve_link(&self) -> Result<Option<PathBuf>, LayoutError> {
        let link = self.link();
        match std::fs::symlink_metadata(&link) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&link)(e)),
            Ok(md) if !md.file_type().is_symlink() => return Err(LayoutError::NotALink(link)),
            Ok(_) => {}
        }
        let target = std::fs::read_link(&link).map_err(io_err(&link))?;
        Ok(Some(if target.is_absolute() {
            target
        } else {
            self.dir.join(target)
        }))
    }

    /// `<dir>/<name>-<toolchain>.lock`: the machine lock of section 4a.
    pub fn lock_file(&self, toolchain: &str) -> PathBuf {
        self.dir.join(format!("{}-{}.lock", self.name, toolchain))
    }

    /// A fresh temporary snapshot path
    /// `<name>-<toolchain>-bbot-tmp-<instance>-<pid>-<n>`.
    pub fn temp(&self, toolchain: &str, instance: u16) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(
            "{}-{}{}{}-{}-{}",
            self.name,
            toolchain,
            TEMP_MARKER,
            instance,
            std::process::id(),
            n
        ))
    }

    /// Temporary snapshots of this toolchain in this directory, whoever
    /// made them (the caller holds the machine lock, so they are
    /// leftovers). Other toolchains' snapshots are not ours to touch: the
    /// rest of the name must be the marker's numbers.
    pub fn temporaries(&self, toolchain: &str) -> Result<Vec<PathBuf>, LayoutError> {
        let prefix = format!("{}-{}{}", self.name, toolchain, TEMP_MARKER);
        let mut v = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if rest.is_empty()
                || !rest
                    .split('-')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            v.push(entry.path());
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let md = MachineDir {
            volume: "v".into(),
            name: "m".into(),
            dir: PathBuf::from("/x/v/m"),
        };
        assert_eq!(
            md.link(),
            PathBuf::from(format!("/x/v/m/m-{BOOTSTRAP_PROTOCOL}"))
        );
        assert_eq!(md.bootstrapped("gcc"), PathBuf::from("/x/v/m/m-gcc"));
        assert_eq!(md.lock_file("gcc"), PathBuf::from("/x/v/m/m-gcc.lock"));
        let t = md.temp("gcc", 3);
        let s = t.file_name().and_then(|s| s.to_str()).unwrap_or_default();
        assert!(
            s.starts_with(&format!("m-gcc-bbot-tmp-3-{}-", std::process::id())),
            "{s}"
        );
    }
}
