//! The `shared_dtc` setting: build U-Boot's dtc and pylibfdt once per
//! version of their sources and let every board use that build (through
//! `DTC` and `PYTHONPATH`) instead of building its own, as buildman's
//! `dtcache.DtcCache` does.
//!
//! A build is keyed by a hash of `scripts/dtc` in the tree being built, so
//! a commit that changes dtc gets a build of its own, and kept in
//! `<work_dir>/.bm-work/.dtc/<hash>` across runs. When the shared build
//! fails, boards build their own dtc as usual (with one warning).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha1::{Digest, Sha1};

/// Where dtc's sources live in a U-Boot tree.
const DTC_SUBPATH: &str = "scripts/dtc";
/// Hex digits of the hash used for a build's directory name.
const HASH_LEN: usize = 16;

/// Paths of a shared build: the `dtc` binary and the pylibfdt directory.
pub type DtcPaths = (PathBuf, PathBuf);

/// One version's build: its lock (held while building), then `Some` of
/// the outcome once tried (`None` inside: the build failed).
type BuildSlot = Arc<Mutex<Option<Option<DtcPaths>>>>;

/// Shared dtc builds, one per version of the dtc sources. Thread-safe: the
/// first thread needing a version builds it while the others needing the
/// same version wait; different versions build in parallel.
#[derive(Debug)]
pub struct DtcCache {
    base_dir: PathBuf,
    num_jobs: usize,
    /// Per key (hash of the dtc sources), its build.
    builds: Mutex<HashMap<String, BuildSlot>>,
    warned: AtomicBool,
}

impl DtcCache {
    /// Builds go under `base_dir`, with `make -j num_jobs`.
    pub fn new(base_dir: PathBuf, num_jobs: usize) -> Self {
        Self {
            base_dir,
            num_jobs: num_jobs.max(1),
            builds: Mutex::new(HashMap::new()),
            warned: AtomicBool::new(false),
        }
    }

    /// The shared build for the tree at `src_dir` (checked out at the
    /// commit being built), building it first if needed; `None` if it
    /// cannot be had (no `scripts/dtc`, or the build failed), in which case
    /// the board builds its own. `env` is the worker's environment (the
    /// shared build does not use a board's toolchain).
    pub fn obtain(&self, src_dir: &Path, env: &HashMap<OsString, OsString>) -> Option<DtcPaths> {
        let key = hash_src_tree(src_dir)?;
        let slot = {
            let mut builds = self
                .builds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            builds.entry(key.clone()).or_default().clone()
        };
        let mut slot = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(self.build(&key, src_dir, env));
        }
        slot.clone().flatten()
    }

    /// A usable earlier build in `out_dir`, if any.
    fn existing(out_dir: &Path) -> Option<DtcPaths> {
        let dtc = out_dir.join(DTC_SUBPATH).join("dtc");
        let pylibfdt = out_dir.join(DTC_SUBPATH).join("pylibfdt");
        let has_lib = std::fs::read_dir(&pylibfdt).ok()?.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("_libfdt") && name.ends_with(".so")
        });
        (dtc.exists() && has_lib).then_some((dtc, pylibfdt))
    }

    /// Configure for sandbox (which enables pylibfdt) and build the
    /// `scripts_dtc` target into the key's directory.
    fn build(
        &self,
        key: &str,
        src_dir: &Path,
        env: &HashMap<OsString, OsString>,
    ) -> Option<DtcPaths> {
        let out_dir = self.base_dir.join(&key[..HASH_LEN.min(key.len())]);
        if let Some(found) = Self::existing(&out_dir) {
            return Some(found);
        }
        if let Err(e) = std::fs::create_dir_all(&out_dir) {
            self.warn_once(&format!("cannot create {}: {e}", out_dir.display()));
            return None;
        }
        let mut env = env.clone();
        env.remove(&OsString::from("DTC"));
        let jobs = self.num_jobs.to_string();
        for target in ["sandbox_defconfig", "scripts_dtc"] {
            let out = Command::new("make")
                .arg(format!("O={}", out_dir.display()))
                .args(["-s", "-j", &jobs, target])
                .current_dir(src_dir)
                .env_clear()
                .envs(&env)
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    self.warn_once(&String::from_utf8_lossy(&out.stderr));
                    return None;
                }
                Err(e) => {
                    self.warn_once(&format!("make failed to start: {e}"));
                    return None;
                }
            }
        }
        let found = Self::existing(&out_dir);
        if found.is_none() {
            self.warn_once("build did not produce dtc/pylibfdt");
        }
        found
    }

    fn warn_once(&self, msg: &str) {
        if !self.warned.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "shared dtc build failed, boards will build their own dtc: {}",
                msg.trim()
            );
        }
    }
}

/// buildman's `hash_src_tree`: SHA-1 over every file of `scripts/dtc`
/// (directories in sorted order, files sorted within each), each as its
/// relative name, a NUL, its contents and a NUL. `None` without
/// `scripts/dtc`.
pub fn hash_src_tree(src_dir: &Path) -> Option<String> {
    let dtc_dir = src_dir.join(DTC_SUBPATH);
    if !dtc_dir.is_dir() {
        return None;
    }
    // os.walk, then sorted by directory and by name within each.
    let mut dirs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let _ = crate::fswalk::walk(
        &dtc_dir,
        |_| true,
        |dir, e| {
            dirs.entry(dir.to_string_lossy().into_owned())
                .or_default()
                .push(e.file_name().to_string_lossy().into_owned());
            std::ops::ControlFlow::Continue(())
        },
    );
    for files in dirs.values_mut() {
        files.sort();
    }
    let mut hasher = Sha1::new();
    for (dir, files) in &dirs {
        for name in files {
            let path = Path::new(dir).join(name);
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            let rel = path.strip_prefix(&dtc_dir).unwrap_or(&path);
            hasher.update(rel.to_string_lossy().as_bytes());
            hasher.update(b"\0");
            hasher.update(&data);
            hasher.update(b"\0");
        }
    }
    Some(hex(&hasher.finalize()))
}

/// Lower-case hex, as Python's `hexdigest()`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_follows_the_sources() {
        let dir = std::env::temp_dir().join(format!("dtc-hash-{}", std::process::id()));
        let dtc = dir.join(DTC_SUBPATH);
        std::fs::create_dir_all(dtc.join("pylibfdt")).unwrap();
        assert_eq!(hash_src_tree(&dir.join("nowhere")), None);
        std::fs::write(dtc.join("dtc.c"), "int main;\n").unwrap();
        std::fs::write(dtc.join("pylibfdt/libfdt.i"), "x\n").unwrap();
        let a = hash_src_tree(&dir).unwrap();
        assert_eq!(a.len(), 40);
        assert_eq!(hash_src_tree(&dir).unwrap(), a);
        // What buildman's Python computes for these two files:
        // sha1(b"dtc.c\0int main;\n\0" b"pylibfdt/libfdt.i\0x\n\0").
        let mut h = Sha1::new();
        h.update(b"dtc.c\0int main;\n\0pylibfdt/libfdt.i\0x\n\0");
        assert_eq!(a, hex(&h.finalize()));
        // The same, as Python's hashlib prints it.
        assert_eq!(
            hex(&Sha1::digest(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        std::fs::write(dtc.join("dtc.c"), "int main2;\n").unwrap();
        assert_ne!(hash_src_tree(&dir).unwrap(), a);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
