//! A control group per VM: QEMU runs with a memory limit, a process limit
//! and a CPU weight, and the agent can always find (and kill) everything a
//! VM started by its group's name.
//!
//! cgroup v2 where the host has it with the controllers we need (Debian 12
//! hosts), else the v1 `memory`, `pids` and `cpu` hierarchies (this CI
//! machine mounts v1, with an empty v2 tree at `/sys/fs/cgroup/unified`).
//! Groups are `bbot-agent/<name>` in each hierarchy; QEMU joins its group
//! between fork and exec, so not one page of the guest is allocated
//! outside it.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
/// The agent's subtree in each hierarchy.
const SUBTREE: &str = "bbot-agent";

/// What a VM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory of QEMU and everything it runs, guest RAM included.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u32,
    /// CPU weight, 1..=10000, 100 being the default share.
    pub cpu_weight: u32,
}

/// A group that could not be made or used.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {source}")]
pub struct CgroupError {
    /// The file or directory.
    pub path: PathBuf,
    /// What failed.
    pub source: io::Error,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError {
        path: path.to_path_buf(),
        source,
    }
}

/// Which cgroup version the host gives us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The unified hierarchy at `/sys/fs/cgroup` with memory, pids, cpu.
    V2,
    /// Separate `memory`, `pids` and `cpu` hierarchies.
    V1,
}

/// The host's cgroup version, or `None` when neither has the controllers.
pub fn detect() -> Option<Version> {
    let v2 = fs::read_to_string(Path::new(ROOT).join("cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| v2.split_whitespace().any(|w| w == c);
    if has("memory") && has("pids") && has("cpu") {
        return Some(Version::V2);
    }
    let v1 = ["memory", "pids", "cpu"]
        .iter()
        .all(|c| Path::new(ROOT).join(c).join("cgroup.procs").is_file());
    v1.then_some(Version::V1)
}

/// The group's directories: one (v2) or one per controller (v1).
fn dirs(version: Version, name: &str) -> Vec<PathBuf> {
    match version {
        Version::V2 => vec![Path::new(ROOT).join(SUBTREE).join(name)],
        Version::V1 => ["memory", "pids", "cpu"]
            .iter()
            .map(|c| Path::new(ROOT).join(c).join(SUBTREE).join(name))
            .collect(),
    }
}

/// One VM's group, removed when dropped (once its processes are gone).
#[derive(Debug)]
pub struct VmCgroup {
    version: Version,
    dirs: Vec<PathBuf>,
}

impl VmCgroup {
    /// Creates group `name` with `limits`.
    pub fn create(version: Version, name: &str, limits: Limits) -> Result<VmCgroup, CgroupError> {
        if version == Version::V2 {
            // Controllers must be enabled down to the agent's subtree.
            let sub = Path::new(ROOT).join(SUBTREE);
            fs::create_dir_all(&sub).map_err(err(&sub))?;
            for dir in [Path::new(ROOT), sub.as_path()] {
                let f = dir.join("cgroup.subtree_control");
                fs::write(&f, "+memory +pids +cpu").map_err(err(&f))?;
            }
        }
        let group = VmCgroup {
            version,
            dirs: dirs(version, name),
        };
        for d in &group.dirs {
            fs::create_dir_all(d).map_err(err(d))?;
        }
        let set = |file: &str, value: String| -> Result<(), CgroupError> {
            let f = group
                .dirs
                .iter()
                .map(|d| d.join(file))
                .find(|f| f.exists())
                .unwrap_or_else(|| group.dirs[0].join(file));
            fs::write(&f, value).map_err(err(&f))
        };
        match version {
            Version::V2 => {
                set("memory.max", limits.memory_bytes.to_string())?;
                set("memory.swap.max", "0".into()).or_else(|e| {
                    // Hosts without swap accounting have no such file.
                    if e.source.kind() == io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
                set("pids.max", limits.pids.to_string())?;
                set("cpu.weight", limits.cpu_weight.to_string())?;
            }
            Version::V1 => {
                set("memory.limit_in_bytes", limits.memory_bytes.to_string())?;
                set("pids.max", limits.pids.to_string())?;
                // v1 shares: 1024 is the default, as weight 100 is in v2.
                set(
                    "cpu.shares",
                    (u64::from(limits.cpu_weight) * 1024 / 100)
                        .max(2)
                        .to_string(),
                )?;
            }
        }
        Ok(group)
    }

    /// The group's directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Makes `cmd`'s process join the group before it executes (writing
    /// `0`, "myself", to each `cgroup.procs`).
    pub fn join_on_spawn(&self, cmd: &mut Command) -> Result<(), CgroupError> {
        let mut paths = Vec::new();
        for d in &self.dirs {
            let p = d.join("cgroup.procs");
            let c = CString::new(p.as_os_str().as_bytes()).map_err(|e| CgroupError {
                path: p.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, e),
            })?;
            paths.push(c);
        }
        // SAFETY: between fork and exec the closure only calls open, write
        // and close (async-signal-safe) on strings made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for p in &paths {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let e = io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 {
                        return Err(e);
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// The processes in the group.
    pub fn pids(&self) -> Vec<u32> {
        procs_of(&self.dirs[0])
    }
}

fn procs_of(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills what is left in the group's directories and removes them.
fn remove(version: Version, dirs: &[PathBuf]) -> Result<(), String> {
    let _ = version;
    let deadline = Instant::now() + Duration::from_secs(10);
    for d in dirs {
        loop {
            let left = procs_of(d);
            for pid in &left {
                if let Ok(pid) = i32::try_from(*pid) {
                    // SAFETY: kill(2) of a process in our own group.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("{}: {e}", d.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(())
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        if let Err(e) = remove(self.version, &self.dirs) {
            tracing::error!("cannot remove the VM's cgroup: {e}");
        }
    }
}

/// Removes groups named `<prefix><pid>-<n>` of other (dead) agents,
/// killing what is still in them; returns how many.
pub fn clean_leftovers(prefix: &str) -> usize {
    let Some(version) = detect() else {
        return 0;
    };
    let parent = dirs(version, "")[0].clone();
    let mut n = 0;
    for name in crate::base::fsutil::names_of_other_agents(&parent, prefix) {
        match remove(version, &dirs(version, &name)) {
            Ok(()) => {
                tracing::info!("removed leftover cgroup {name}");
                n += 1;
            }
            Err(e) => tracing::error!("cannot remove leftover cgroup {name}: {e}"),
        }
    }
    n
}
