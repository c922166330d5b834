//! Thin typed layer over `btrfsutil` for the handful of subvolume operations the
//! agent needs: snapshot, read-only flag, recursive delete, is-subvolume.
//!
//! Why a wrapper: the crate's errors carry neither the path nor the OS error, and
//! the agent's logs must say which subvolume failed and why (EEXIST during a
//! revision swap is routine, EPERM is an admin problem). Every function here names
//! the paths involved in its error.

use std::io;
use std::path::{Path, PathBuf};

use btrfsutil::error::LibError;
use btrfsutil::subvolume::{DeleteFlags, Subvolume};

/// Inode number of the root directory of every btrfs subvolume
/// (`BTRFS_FIRST_FREE_OBJECTID`); a cheap first filter before asking btrfsutil.
const SUBVOLUME_ROOT_INO: u64 = 256;

/// What went wrong with a subvolume operation, naming the paths involved so that a
/// log line is enough to find the culprit.
#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    /// The directory is not on btrfs at all: the agent cannot snapshot anything there.
    #[error("{path}: not on a btrfs filesystem (machines must live on btrfs)")]
    NotBtrfs {
        /// The directory that was checked.
        path: PathBuf,
    },
    /// The path is on btrfs but is a plain directory, not a subvolume.
    #[error("{path}: not a btrfs subvolume")]
    NotSubvolume {
        /// The offending path.
        path: PathBuf,
    },
    /// Creating a snapshot failed (the source vanished during a revision swap, the
    /// destination exists, no permission, ...).
    #[error("cannot snapshot {src} to {dst}: {reason}")]
    Snapshot {
        /// Subvolume that was to be snapshotted.
        src: PathBuf,
        /// Where the snapshot was to be created.
        dst: PathBuf,
        /// libbtrfsutil's error and the OS error behind it.
        reason: String,
    },
    /// Deleting a subvolume (or one nested in it) failed.
    #[error("cannot delete subvolume {path}: {reason}")]
    Delete {
        /// The subvolume that could not be deleted.
        path: PathBuf,
        /// libbtrfsutil's error and the OS error behind it.
        reason: String,
    },
    /// Creating a fresh subvolume failed.
    #[error("cannot create subvolume {path}: {reason}")]
    Create {
        /// Where the subvolume was to be created.
        path: PathBuf,
        /// libbtrfsutil's error and the OS error behind it.
        reason: String,
    },
    /// Reading or changing the read-only flag failed.
    #[error("cannot access read-only flag of {path}: {reason}")]
    ReadOnly {
        /// The subvolume concerned.
        path: PathBuf,
        /// libbtrfsutil's error and the OS error behind it.
        reason: String,
    },
    /// A plain filesystem operation (stat, readdir) failed.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Formats a libbtrfsutil error together with `errno`, which libbtrfsutil leaves
/// set but the crate drops. Must be called right after the failing call.
fn reason(e: &LibError) -> String {
    let os = io::Error::last_os_error();
    match os.raw_os_error() {
        Some(0) | None => e.to_string(),
        Some(_) => format!("{e}: {os}"),
    }
}

/// Checks that `dir` is on btrfs, so that a misconfigured `--machines` is reported
/// once, clearly, instead of as a failed snapshot per machine.
pub fn check_filesystem(dir: &Path) -> Result<(), BtrfsError> {
    let md = std::fs::metadata(dir).map_err(|source| BtrfsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !md.is_dir() {
        return Err(BtrfsError::Io {
            path: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    match Subvolume::is_subvolume(dir) {
        Ok(()) | Err(LibError::NotSubvolume) => Ok(()),
        Err(LibError::NotBtrfs) => Err(BtrfsError::NotBtrfs {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(BtrfsError::Io {
            path: dir.to_path_buf(),
            source: io::Error::other(reason(&e)),
        }),
    }
}

/// Tells whether `path` is the root of a subvolume (false for plain directories,
/// non-btrfs paths and paths that do not exist).
pub fn is_subvolume(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() && md.ino() == SUBVOLUME_ROOT_INO => {
            Subvolume::is_subvolume(path).is_ok()
        }
        _ => false,
    }
}

/// Creates an empty subvolume at `path`. Used by tests and tools that lay out
/// machines; the agent itself only snapshots.
pub fn create_subvolume(path: &Path) -> Result<(), BtrfsError> {
    Subvolume::create(path, None)
        .map(|_| ())
        .map_err(|e| BtrfsError::Create {
            path: path.to_path_buf(),
            reason: reason(&e),
        })
}

/// Snapshots subvolume `src` to `dst` (writable, not recursive), which is how the
/// agent takes an atomic copy of a machine revision or a bootstrapped machine.
pub fn snapshot(src: &Path, dst: &Path) -> Result<(), BtrfsError> {
    let err = |e: &LibError| BtrfsError::Snapshot {
        src: src.to_path_buf(),
        dst: dst.to_path_buf(),
        reason: reason(e),
    };
    let sv = Subvolume::get(src).map_err(|e| err(&e))?;
    sv.snapshot(dst, None, None)
        .map(|_| ())
        .map_err(|e| err(&e))
}

/// Reads the read-only flag of subvolume `path`.
pub fn is_read_only(path: &Path) -> Result<bool, BtrfsError> {
    let err = |e: &LibError| BtrfsError::ReadOnly {
        path: path.to_path_buf(),
        reason: reason(e),
    };
    Subvolume::get(path)
        .map_err(|e| err(&e))?
        .is_ro()
        .map_err(|e| err(&e))
}

/// Sets or clears the read-only flag of subvolume `path`; bootstrapped machines
/// are kept read-only so that nothing but a snapshot of them is ever booted.
pub fn set_read_only(path: &Path, ro: bool) -> Result<(), BtrfsError> {
    let err = |e: &LibError| BtrfsError::ReadOnly {
        path: path.to_path_buf(),
        reason: reason(e),
    };
    Subvolume::get(path)
        .map_err(|e| err(&e))?
        .set_ro(ro)
        .map_err(|e| err(&e))
}

/// Collects `dir` and every subvolume nested below it, parents before children.
/// Nested subvolumes show up as directories whose inode is the subvolume root
/// inode; symlinks are never followed.
fn collect_subvolumes(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BtrfsError> {
    let io_err = |source| BtrfsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let ft = entry.file_type().map_err(io_err)?;
        if !ft.is_dir() {
            continue;
        }
        let p = entry.path();
        if is_subvolume(&p) {
            out.push(p.clone());
        }
        collect_subvolumes(&p, out)?;
    }
    Ok(())
}

/// Deletes subvolume `path` together with any subvolumes nested in it, clearing
/// read-only flags first (a read-only parent would refuse the unlink of its
/// children). A path that does not exist is not an error: deletion is idempotent
/// so that cleanup paths can call it unconditionally.
pub fn delete(path: &Path) -> Result<(), BtrfsError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BtrfsError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(_) => {}
    }
    if !is_subvolume(path) {
        return Err(BtrfsError::NotSubvolume {
            path: path.to_path_buf(),
        });
    }
    let mut all = vec![path.to_path_buf()];
    collect_subvolumes(path, &mut all)?;
    for sv in &all {
        if is_read_only(sv)? {
            set_read_only(sv, false)?;
        }
    }
    let flags = if all.len() > 1 {
        Some(DeleteFlags::RECURSIVE)
    } else {
        None
    };
    let err = |e: &LibError| BtrfsError::Delete {
        path: path.to_path_buf(),
        reason: reason(e),
    };
    Subvolume::get(path)
        .map_err(|e| err(&e))?
        .delete(flags)
        .map_err(|e| err(&e))
}
