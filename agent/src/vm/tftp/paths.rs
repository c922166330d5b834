//! Mapping a name a guest asks for to a file inside its directory: the
//! security boundary of the TFTP server (no `..`, no absolute paths, no
//! symlink leading out, reserved temporary names refused).

use std::fs;
use std::path::{Component, Path, PathBuf};

/// Why a requested name was refused; the kind picks the TFTP error code
/// the guest sees (a guest's bootstrap treats "file not found" as "nothing
/// to install", everything else as an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String, pub RefusalKind);

/// The TFTP error class of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Error 1: no such file or directory.
    NotFound,
    /// Error 2: access violation (escapes, reserved names, not a file).
    Denied,
}

impl Refusal {
    pub(super) fn not_found(why: &str) -> Self {
        Refusal(why.to_string(), RefusalKind::NotFound)
    }
    pub(super) fn denied(why: &str) -> Self {
        Refusal(why.to_string(), RefusalKind::Denied)
    }
}

/// Checks a requested name: relative (one leading `/` allowed), only plain
/// components. Returns the components.
fn plain_components(name: &str) -> Result<Vec<&str>, Refusal> {
    let trimmed = name.strip_prefix('/').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(Refusal::denied("empty file name"));
    }
    let mut out = Vec::new();
    for c in Path::new(trimmed).components() {
        match c {
            Component::Normal(s) => match s.to_str() {
                Some(s) if !s.starts_with(".bbot-upload-") => out.push(s),
                Some(_) => return Err(Refusal::denied("reserved file name")),
                None => return Err(Refusal::denied("file name is not UTF-8")),
            },
            Component::ParentDir => return Err(Refusal::denied("'..' is not allowed")),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(Refusal::denied("absolute paths are not allowed"))
            }
        }
    }
    if out.is_empty() {
        return Err(Refusal::denied("empty file name"));
    }
    Ok(out)
}

/// Maps a GET name to a regular file inside `dir` (canonical), following
/// symlinks only as long as they stay inside.
pub fn resolve_get(dir: &Path, name: &str) -> Result<PathBuf, Refusal> {
    let parts = plain_components(name)?;
    let joined = parts.iter().fold(dir.to_path_buf(), |p, c| p.join(c));
    let real = fs::canonicalize(&joined).map_err(|_| Refusal::not_found("no such file"))?;
    if !real.starts_with(dir) {
        return Err(Refusal::denied("leads outside the guest's directory"));
    }
    if !real.is_file() {
        return Err(Refusal::denied("not a regular file"));
    }
    Ok(real)
}

/// Maps a PUT name to its final path inside `dir` (canonical): the parent
/// directory must already exist inside `dir`, and the name must not be a
/// directory.
pub fn resolve_put(dir: &Path, name: &str) -> Result<PathBuf, Refusal> {
    let parts = plain_components(name)?;
    let (file, parents) = parts
        .split_last()
        .ok_or_else(|| Refusal::denied("empty file name"))?;
    let parent = parents.iter().fold(dir.to_path_buf(), |p, c| p.join(c));
    let real_parent =
        fs::canonicalize(&parent).map_err(|_| Refusal::not_found("no such directory"))?;
    if !real_parent.starts_with(dir) {
        return Err(Refusal::denied("leads outside the guest's directory"));
    }
    let target = real_parent.join(file);
    if target.is_dir() {
        return Err(Refusal::denied("is a directory"));
    }
    Ok(target)
}
