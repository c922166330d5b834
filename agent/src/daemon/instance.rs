//! This process's instance (PROTOCOLS.md section 4a): its own state
//! directory, `<state>/instance-<N>`, locked for the process's life so
//! that two processes with one instance number never share a spool, run
//! directories, a TFTP directory or VM names.
//!
//! Also the one-time move of a pre-instance state directory: an agent of
//! an earlier version kept its spool and task in flight directly in
//! `<state>`; instance 1 takes them over, so no result is lost by the
//! upgrade.

use std::io;
use std::path::{Path, PathBuf};

use crate::host::locks::{LockError, LockFile};

/// What an earlier version kept directly in the state directory and is
/// now per instance.
const LEGACY_ENTRIES: [&str; 4] = ["results", "in-flight", "run", "logs"];

/// Why this instance cannot start.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another process runs this instance.
    #[error(
        "instance {instance} already runs ({lock} is locked); give each agent process of a \
         toolchain its own --instance"
    )]
    Running {
        /// The instance number.
        instance: u16,
        /// Its lock file.
        lock: PathBuf,
    },
    /// The instance directory cannot be made.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// Makes and locks `instance_dir`; the lock is released when the returned
/// value is dropped (or the process dies).
pub fn claim(state: &Path, instance_dir: &Path, instance: u16) -> Result<LockFile, InstanceError> {
    let io = |source| InstanceError::Io {
        path: instance_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(instance_dir).map_err(io)?;
    let lock_path = instance_dir.join("instance.lock");
    let lock = LockFile::try_acquire(&lock_path)?.ok_or(InstanceError::Running {
        instance,
        lock: lock_path,
    })?;
    if instance == 1 {
        adopt_legacy(state, instance_dir);
    }
    Ok(lock)
}

/// Moves an earlier version's per-process state into instance 1's
/// directory (only what instance 1 does not have yet).
fn adopt_legacy(state: &Path, instance_dir: &Path) {
    for name in LEGACY_ENTRIES {
        let (from, to) = (state.join(name), instance_dir.join(name));
        if !from.exists() || to.exists() {
            continue;
        }
        match std::fs::rename(&from, &to) {
            Ok(()) => tracing::info!("moved {} to {}", from.display(), to.display()),
            Err(e) => tracing::error!("cannot move {} to {}: {e}", from.display(), to.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_per_instance_and_legacy_state_adopted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("results/x")).unwrap();
        let one = d.path().join("instance-1");
        let held = claim(d.path(), &one, 1).expect("first");
        assert!(one.join("results/x").exists(), "legacy spool adopted");
        assert!(!d.path().join("results").exists());
        // flock is per open file description: a second claim in this
        // process is refused as another process's would be.
        let e = claim(d.path(), &one, 1).expect_err("second");
        assert!(e.to_string().contains("instance 1 already runs"), "{e}");
        let two = claim(d.path(), &d.path().join("instance-2"), 2);
        assert!(two.is_ok(), "another instance is independent");
        drop(held);
        assert!(claim(d.path(), &one, 1).is_ok(), "free once released");
    }
}
