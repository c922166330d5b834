//! The worker's own configuration file, in buildman's `~/.buildman` format.
//!
//! Users of buildman already describe their toolchains there (`[toolchain]`,
//! `[toolchain-prefix]`, `[toolchain-alias]`, `[toolchain-wrapper]`,
//! `[make-flags]`), so the worker reads the same file rather than inventing
//! a new one. Only the INI subset buildman's files use is understood:
//! `[section]` headers, `key = value` / `key: value` / bare `key` lines and
//! `#`/`;` comments.

use std::path::{Path, PathBuf};

/// Why the configuration file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A parsed buildman settings file: sections of ordered key/value pairs.
#[derive(Debug, Clone, Default)]
pub struct BuildmanSettings {
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl BuildmanSettings {
    /// Parse settings text. Never fails: lines that are not understood are
    /// skipped, as a hand-edited file should not stop a build.
    pub fn parse(text: &str) -> Self {
        let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                sections.push((name.trim().to_string(), Vec::new()));
                continue;
            }
            let Some((_, items)) = sections.last_mut() else {
                continue;
            };
            let split = line.find(['=', ':']);
            let (key, value) = match split {
                Some(pos) => (line[..pos].trim(), line[pos + 1..].trim()),
                None => (line, ""),
            };
            items.push((key.to_string(), value.to_string()));
        }
        Self { sections }
    }

    /// Read a settings file; a missing file gives empty settings.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(SettingsError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The default location, `~/.buildman`, as buildman uses it.
    pub fn default_path() -> Option<PathBuf> {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".buildman"))
    }

    /// Key/value pairs of a section (all sections of that name, in order).
    pub fn items(&self, section: &str) -> Vec<(String, String)> {
        self.sections
            .iter()
            .filter(|(name, _)| name == section)
            .flat_map(|(_, items)| items.iter().cloned())
            .collect()
    }
}

/// Expand a leading `~` the way Python's `os.path.expanduser` does for the
/// current user, since buildman configs and the boss's toolchain paths use it.
pub fn expand_user(path: &str) -> PathBuf {
    if path == "~" || path.starts_with("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            let mut p = PathBuf::from(home);
            if path.len() > 2 {
                p.push(&path[2..]);
            }
            return p;
        }
    }
    PathBuf::from(path)
}

/// Match `name` against a pattern where `*` matches any run of characters
/// and `?` one character (the subset of glob buildman configs use).
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard_match(&pattern[1..], name)
                || (!name.is_empty() && wildcard_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => wildcard_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Expand a path with `*`/`?` wildcards into the existing paths it names,
/// sorted. A path without wildcards is returned as is (existing or not).
pub fn glob(path: &Path) -> Vec<PathBuf> {
    let text = path.to_string_lossy();
    if !text.contains(['*', '?']) {
        return vec![path.to_path_buf()];
    }
    let mut found = vec![PathBuf::new()];
    for comp in path.components() {
        let comp_text = comp.as_os_str().to_string_lossy();
        let mut next = Vec::new();
        for base in &found {
            if comp_text.contains(['*', '?']) {
                let dir = if base.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    base.as_path()
                };
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                let mut names: Vec<_> = entries
                    .flatten()
                    .map(|e| e.file_name())
                    .filter(|n| {
                        let n = n.to_string_lossy();
                        (!n.starts_with('.') || comp_text.starts_with('.'))
                            && wildcard_match(comp_text.as_bytes(), n.as_bytes())
                    })
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| base.join(n)));
            } else {
                let p = base.join(comp.as_os_str());
                next.push(p);
            }
        }
        found = next;
    }
    found.retain(|p| p.exists());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections() {
        let s = BuildmanSettings::parse(
            "# c\n[toolchain]\nroot = /\nhost: ~/cc\n[machines]\nohau\n[toolchain]\nx=/y\n",
        );
        assert_eq!(
            s.items("toolchain"),
            vec![
                ("root".to_string(), "/".to_string()),
                ("host".to_string(), "~/cc".to_string()),
                ("x".to_string(), "/y".to_string())
            ]
        );
        assert_eq!(
            s.items("machines"),
            vec![("ohau".to_string(), String::new())]
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"*gcc", b"aarch64-linux-gnu-gcc"));
        assert!(!wildcard_match(b"*gcc", b"gcc-ar"));
        assert!(wildcard_match(b"gcc-?", b"gcc-9"));
    }
}
