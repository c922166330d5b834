//! One directory walk for the three places that need Python's `os.walk`
//! rules (buildman's): the dtc source hash, the objects of the `lines`
//! scan and the Kconfig check. A directory, or a symbolic link to one, is
//! never visited as a file; symbolic links to directories are not entered;
//! unreadable directories are skipped.

use std::fs::DirEntry;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// Walks `root`, entering each subdirectory whose name `enter` accepts,
/// and calls `visit(directory, entry)` for every entry that is not a
/// directory. Stops as soon as `visit` breaks, and says so. The order is
/// unspecified: callers that need one sort.
pub fn walk(
    root: &Path,
    enter: impl Fn(&str) -> bool,
    mut visit: impl FnMut(&Path, &DirEntry) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            // d_type first; only a symbolic link costs a stat.
            if ft.is_dir() {
                if enter(&e.file_name().to_string_lossy()) {
                    stack.push(e.path());
                }
            } else if !(ft.is_symlink() && e.path().is_dir()) {
                visit(&dir, &e)?;
            }
        }
    }
    ControlFlow::Continue(())
}
