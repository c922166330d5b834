//! Results waiting for upload, kept under the state directory until a
//! controller takes them.
//!
//! Why: a build may take an hour; losing its result because the controller was
//! restarting at the moment of upload is not acceptable. Every result request is
//! written here *before* the first upload attempt and removed only after a
//! controller answered 2xx, so neither a failed upload nor a crash loses it.
//!
//! File format: a one-pair header manifest `result-url: <url>` followed by the
//! result request manifest stream, i.e. the whole file is a valid manifest stream.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use manifests::{Document, ResultRequestManifest};

use crate::fsutil;

const SUFFIX: &str = ".manifest";
const HEADER_NAME: &str = "result-url";

/// A spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Reading or writing the spool directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The result request cannot be serialized.
    #[error("cannot serialize result request: {0}")]
    Serialize(#[from] manifests::Error),
}

/// One spooled result: where to send it and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// The spool file.
    pub path: PathBuf,
    /// The controller's `result-url`.
    pub url: String,
    /// The serialized result request manifest.
    pub body: String,
}

/// The spool directory (`<state>/results`).
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens (creating it if needed) the spool under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, SpoolError> {
        let dir = state_dir.join("results");
        std::fs::create_dir_all(&dir).map_err(|source| SpoolError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a result request for `url`; returns the spooled entry.
    pub fn add(&self, url: &str, req: &ResultRequestManifest) -> Result<Spooled, SpoolError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let body = req.to_text()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{nanos:024}-{}-{n}{SUFFIX}", std::process::id()));
        let text = format!(": 1\n{HEADER_NAME}: {url}\n{body}");
        fsutil::write_atomic(&path, text.as_bytes()).map_err(|source| SpoolError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Spooled {
            path,
            url: url.to_string(),
            body,
        })
    }

    /// Spooled results, oldest first. Unreadable entries are renamed to
    /// `*.corrupt` (kept for the admin) and skipped.
    pub fn pending(&self) -> Result<Vec<Spooled>, SpoolError> {
        let io_err = |source| SpoolError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io_err)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_str().is_some_and(|s| s.ends_with(SUFFIX)))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for path in names {
            match Self::load(&path) {
                Ok(s) => out.push(s),
                Err(why) => {
                    tracing::error!("{}: unusable spooled result: {why}", path.display());
                    let mut bad = path.clone().into_os_string();
                    bad.push(".corrupt");
                    if let Err(e) = std::fs::rename(&path, &bad) {
                        tracing::error!("{}: {e}", path.display());
                    }
                }
            }
        }
        Ok(out)
    }

    fn load(path: &Path) -> Result<Spooled, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let rest = text
            .strip_prefix(": 1\n")
            .and_then(|r| r.strip_prefix(HEADER_NAME))
            .and_then(|r| r.strip_prefix(':'))
            .ok_or("missing result-url header")?;
        let (url, body) = rest.split_once('\n').ok_or("truncated")?;
        ResultRequestManifest::parse(body.as_bytes(), &path.display().to_string())
            .map_err(|e| e.to_string())?;
        Ok(Spooled {
            path: path.to_path_buf(),
            url: url.trim().to_string(),
            body: body.to_string(),
        })
    }

    /// Removes an entry once a controller took it.
    pub fn remove(&self, s: &Spooled) -> Result<(), SpoolError> {
        std::fs::remove_file(&s.path).map_err(|source| SpoolError::Io {
            path: s.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifests::{ResultManifest, ResultStatus};

    #[test]
    fn round_trip_and_corrupt_entries() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("bbot-agent-spool-{}", std::process::id()));
        let spool = Spool::open(&dir)?;
        let mut result = ResultManifest::new("pkg", "1.0");
        result.status = ResultStatus::Error;
        let req = ResultRequestManifest {
            session: "s1".into(),
            challenge: None,
            agent_checksum: None,
            result,
            extra: Vec::new(),
        };
        let a = spool.add("http://c/?result", &req)?;
        let b = spool.add("http://d/", &req)?;
        std::fs::write(spool.dir().join("0-junk.manifest"), "not a spool entry")?;
        let pending = spool.pending()?;
        assert_eq!(
            pending,
            [a.clone(), b.clone()],
            "oldest first, junk skipped"
        );
        assert_eq!(pending[0].url, "http://c/?result");
        let back = ResultRequestManifest::parse(pending[0].body.as_bytes(), "spool")?;
        assert_eq!(back, req);
        assert!(spool.dir().join("0-junk.manifest.corrupt").exists());
        spool.remove(&a)?;
        assert_eq!(spool.pending()?, [b]);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
