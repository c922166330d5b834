//! Small filesystem helpers shared by the modules that write state.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `data` to `path` through a temporary file in the same directory and a
/// rename, so that a reader (or a restarted agent) never sees half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = tmp_sibling(path);
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// `<path>.tmp-<pid>`: the temporary name [`write_atomic`] uses.
fn tmp_sibling(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Reads a file given as `FILE` or `-` (stdin), as the `--fake-*` options allow.
pub fn read_file_or_stdin(path: &Path) -> io::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut v = Vec::new();
        io::Read::read_to_end(&mut io::stdin(), &mut v)?;
        Ok(v)
    } else {
        std::fs::read(path)
    }
}

/// The name used for `path` in manifest error messages (`<stdin>` for `-`).
pub fn source_name(path: &Path) -> String {
    if path == Path::new("-") {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    }
}

/// Tells whether a process with this pid exists and runs an executable named
/// `comm` (pid reuse after a reboot must not keep a leftover alive forever).
pub fn process_alive(pid: u32, comm: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(c) => c.trim_end() == comm,
        Err(_) => false,
    }
}

/// The names of the entries of `dir` (none if it cannot be read).
fn entry_names(dir: &Path) -> impl Iterator<Item = String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// Whether `s` is a non-empty run of ASCII digits.
fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The names in `dir` that are `prefix` followed by a number: how a dead
/// agent's taps are found (named `<instance prefix><n>`).
pub fn numbered_names(dir: &Path, prefix: &str) -> Vec<String> {
    entry_names(dir)
        .filter(|name| name.strip_prefix(prefix).is_some_and(is_number))
        .collect()
}

/// The names in `dir` that are `prefix` followed by `<pid>-<n>` for a pid
/// other than this process's: another agent's VMs' namespaces and cgroups
/// (at start-up, a dead one's; the caller checks no other agent of the
/// instance lives).
pub fn names_of_other_agents(dir: &Path, prefix: &str) -> Vec<String> {
    let me = std::process::id();
    entry_names(dir)
        .filter(|name| {
            let Some((pid, n)) = name.strip_prefix(prefix).and_then(|r| r.split_once('-')) else {
                return false;
            };
            is_number(n) && is_number(pid) && pid.parse::<u32>().is_ok_and(|p| p != me)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_names_are_found_by_prefix_number_and_owner() {
        let dir = tempfile::tempdir().expect("dir");
        let me = std::process::id();
        for n in [
            "bbot1t0".to_string(),
            "bbot1t12".into(),
            "bbot1tx".into(),
            "bbot1t".into(),
            "bbot-tc-1-4242-0".into(),
            format!("bbot-tc-1-{me}-3"),
            "bbot-tc-1-4242-".into(),
            "bbot-tc-12-4242-0".into(),
        ] {
            std::fs::create_dir(dir.path().join(n)).expect("entry");
        }
        let mut taps = numbered_names(dir.path(), "bbot1t");
        taps.sort();
        assert_eq!(taps, ["bbot1t0", "bbot1t12"]);
        assert_eq!(
            names_of_other_agents(dir.path(), "bbot-tc-1-"),
            ["bbot-tc-1-4242-0"]
        );
    }
}
