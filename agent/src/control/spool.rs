//! Results waiting for upload, kept under the state directory until a
//! controller takes them.
//!
//! Why: a build may take an hour; losing its result because the controller was
//! restarting at the moment of upload is not acceptable. Every result request is
//! written here *before* the first upload attempt and removed only after a
//! controller answered 2xx, so neither a failed upload nor a crash loses it.
//!
//! - File format: one manifest stream, written atomically: a header manifest
//!   whose `result-url` value is written by the manifest serializer (so a
//!   newline or any other character in it cannot corrupt the entry), then the
//!   result request manifest stream itself.
//! - Retries back off per entry (doubling from [`FIRST_BACKOFF`] up to
//!   [`MAX_BACKOFF`]), so one dead controller does not cost every round.
//! - A permanent refusal moves the entry to `rejected/` with the controller's
//!   answer beside it (logged once): kept for the admin, never retried.
//! - The spool is bounded ([`SpoolLimits`]): when full, a new result is refused
//!   loudly (the caller still tries to upload it once) and the older entries
//!   are kept.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use manifests::{parse_stream, serialize_stream, Document, Manifest, ResultRequestManifest};

use crate::base::fsutil;

const SUFFIX: &str = ".manifest";
const HEADER_NAME: &str = "result-url";
/// Folder (inside the spool) of results a controller refused for good.
pub const REJECTED_DIR: &str = "rejected";

/// First pause after a failed upload of an entry.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// Longest pause between two uploads of one entry.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);

/// How much the spool may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Most entries waiting.
    pub max_entries: usize,
    /// Most bytes waiting (sum of entry sizes).
    pub max_bytes: u64,
}

impl Default for SpoolLimits {
    /// 1000 results or 1 GiB: days of results of a busy host whose
    /// controllers are all gone, far more than any outage worth waiting for.
    fn default() -> Self {
        Self {
            max_entries: 1000,
            max_bytes: 1 << 30,
        }
    }
}

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
    /// The spool holds as much as it may.
    #[error("spool {dir} is full ({entries} results, {bytes} bytes; limits {max_entries} and {max_bytes})")]
    Full {
        /// The spool directory.
        dir: PathBuf,
        /// Entries waiting.
        entries: usize,
        /// Their bytes.
        bytes: u64,
        /// The entry limit.
        max_entries: usize,
        /// The byte limit.
        max_bytes: u64,
    },
}

/// One spooled result: where to send it and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// The spool file.
    pub path: PathBuf,
    /// The controller's `result-url`.
    pub url: String,
    /// The result request's session.
    pub session: String,
    /// The serialized result request manifest.
    pub body: String,
}

/// When an entry may be tried again.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    next: Instant,
}

/// The spool directory (`<state>/results`).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    /// Per entry file, its retry schedule (in memory: a restart retries
    /// everything at once, which is what a restart is for).
    backoff: Mutex<HashMap<PathBuf, Backoff>>,
}

impl Spool {
    /// Opens (creating it if needed) the spool under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, SpoolError> {
        Self::open_with(state_dir, SpoolLimits::default())
    }

    /// [`Spool::open`] with other limits.
    pub fn open_with(state_dir: &Path, limits: SpoolLimits) -> Result<Self, SpoolError> {
        let dir = state_dir.join("results");
        std::fs::create_dir_all(&dir).map_err(|source| SpoolError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            dir,
            limits,
            backoff: Mutex::new(HashMap::new()),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a result request for `url`; returns the spooled entry.
    pub fn add(&self, url: &str, req: &ResultRequestManifest) -> Result<Spooled, SpoolError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let body = req.to_text()?;
        let mut header = Manifest::new("spool");
        header.push(HEADER_NAME, url);
        let mut stream = vec![header];
        stream.extend(req.to_stream());
        let text = serialize_stream(&stream).map_err(manifests::Error::from)?;
        let (entries, bytes) = self.usage()?;
        if entries >= self.limits.max_entries
            || bytes.saturating_add(text.len() as u64) > self.limits.max_bytes
        {
            return Err(SpoolError::Full {
                dir: self.dir.clone(),
                entries,
                bytes,
                max_entries: self.limits.max_entries,
                max_bytes: self.limits.max_bytes,
            });
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{nanos:024}-{}-{n}{SUFFIX}", std::process::id()));
        fsutil::write_atomic(&path, text.as_bytes()).map_err(|source| SpoolError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Spooled {
            path,
            url: url.to_string(),
            session: req.session.clone(),
            body,
        })
    }

    /// Entry files, oldest first.
    fn entry_paths(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|source| SpoolError::Io {
                path: self.dir.clone(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_str().is_some_and(|s| s.ends_with(SUFFIX)))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Entries waiting and their bytes.
    fn usage(&self) -> Result<(usize, u64), SpoolError> {
        let paths = self.entry_paths()?;
        let bytes = paths
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok((paths.len(), bytes))
    }

    /// Spooled results, oldest first. Unreadable entries are renamed to
    /// `*.corrupt` (kept for the admin) and skipped.
    pub fn pending(&self) -> Result<Vec<Spooled>, SpoolError> {
        let mut out = Vec::new();
        for path in self.entry_paths()? {
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

    /// The pending entries whose backoff has run out.
    pub fn due(&self) -> Result<Vec<Spooled>, SpoolError> {
        let now = Instant::now();
        let backoff = self.backoff_map();
        Ok(self
            .pending()?
            .into_iter()
            .filter(|s| backoff.get(&s.path).is_none_or(|b| b.next <= now))
            .collect())
    }

    /// Records a failed upload of `s`; returns when it will be tried again.
    pub fn failed(&self, s: &Spooled) -> Duration {
        let mut map = self.backoff_map();
        let failures = map.get(&s.path).map_or(0, |b| b.failures) + 1;
        let delay = FIRST_BACKOFF
            .saturating_mul(1u32 << (failures - 1).min(16))
            .min(MAX_BACKOFF);
        map.insert(
            s.path.clone(),
            Backoff {
                failures,
                next: Instant::now() + delay,
            },
        );
        delay
    }

    fn backoff_map(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Backoff>> {
        self.backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn load(path: &Path) -> Result<Spooled, String> {
        let text = std::fs::read(path).map_err(|e| e.to_string())?;
        let source = path.display().to_string();
        let stream = parse_stream(&text, &source).map_err(|e| e.to_string())?;
        let (header, rest) = stream.split_first().ok_or("empty")?;
        let url = header
            .get(HEADER_NAME)
            .ok_or("missing result-url header")?
            .to_string();
        let req = ResultRequestManifest::from_stream(rest, &source).map_err(|e| e.to_string())?;
        let body = req.to_text().map_err(|e| e.to_string())?;
        Ok(Spooled {
            path: path.to_path_buf(),
            url,
            session: req.session.clone(),
            body,
        })
    }

    /// Removes an entry once a controller took it.
    pub fn remove(&self, s: &Spooled) -> Result<(), SpoolError> {
        self.backoff_map().remove(&s.path);
        std::fs::remove_file(&s.path).map_err(|source| SpoolError::Io {
            path: s.path.clone(),
            source,
        })
    }

    /// Moves an entry the controller refused for good to `rejected/`, with
    /// `answer` (what the controller said) in `<entry>.answer` beside it.
    /// Returns the new path.
    pub fn reject(&self, s: &Spooled, answer: &str) -> Result<PathBuf, SpoolError> {
        let dir = self.dir.join(REJECTED_DIR);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let name = s.path.file_name().unwrap_or_default();
        let to = dir.join(name);
        let mut answer_path = to.clone().into_os_string();
        answer_path.push(".answer");
        let answer_path = PathBuf::from(answer_path);
        fsutil::write_atomic(&answer_path, format!("{answer}\n").as_bytes())
            .map_err(io_err(&answer_path))?;
        std::fs::rename(&s.path, &to).map_err(io_err(&s.path))?;
        self.backoff_map().remove(&s.path);
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifests::{ResultManifest, ResultStatus};

    fn request(session: &str) -> ResultRequestManifest {
        let mut result = ResultManifest::new("pkg", "1.0");
        result.status = ResultStatus::Error;
        ResultRequestManifest {
            session: session.into(),
            challenge: None,
            agent_checksum: None,
            result,
            extra: Vec::new(),
        }
    }

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("bbot-agent-spool-{tag}-{}", std::process::id()))
    }

    #[test]
    fn round_trip_and_corrupt_entries() -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp("rt");
        let spool = Spool::open(&dir)?;
        let req = request("s1");
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

    #[test]
    fn a_url_with_newlines_cannot_corrupt_the_entry() -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp("nl");
        let spool = Spool::open(&dir)?;
        let url = "http://c/?result\nsession: forged\n: 1\nx: y";
        let req = request("s2");
        spool.add(url, &req)?;
        let pending = spool.pending()?;
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].url, url);
        assert_eq!(
            ResultRequestManifest::parse(pending[0].body.as_bytes(), "spool")?,
            req
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn backoff_doubles_and_rejects_move_aside() -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp("bo");
        let spool = Spool::open(&dir)?;
        let a = spool.add("http://c/", &request("s3"))?;
        assert_eq!(spool.due()?.len(), 1);
        assert_eq!(spool.failed(&a), FIRST_BACKOFF);
        assert_eq!(spool.failed(&a), FIRST_BACKOFF * 2);
        assert!(spool.due()?.is_empty(), "backing off");
        assert_eq!(spool.pending()?.len(), 1, "but kept");
        for _ in 0..40 {
            spool.failed(&a);
        }
        assert_eq!(spool.failed(&a), MAX_BACKOFF);
        let to = spool.reject(&a, "HTTP status 403: forbidden")?;
        assert!(to.starts_with(dir.join("results").join(REJECTED_DIR)));
        assert!(spool.pending()?.is_empty());
        let answer = std::fs::read_to_string(format!("{}.answer", to.display()))?;
        assert_eq!(answer, "HTTP status 403: forbidden\n");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn a_full_spool_refuses_new_entries_and_keeps_old_ones(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp("full");
        let spool = Spool::open_with(
            &dir,
            SpoolLimits {
                max_entries: 2,
                max_bytes: 1 << 20,
            },
        )?;
        let a = spool.add("http://c/", &request("1"))?;
        let b = spool.add("http://c/", &request("2"))?;
        let e = spool.add("http://c/", &request("3"));
        assert!(
            matches!(e, Err(SpoolError::Full { entries: 2, .. })),
            "{e:?}"
        );
        assert_eq!(spool.pending()?, [a, b]);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
