//! A control group per VM: QEMU runs with a memory limit, a process limit
//! and a CPU weight, and the agent can always find (and kill) everything a
//! VM started by its group's name.
//!
//! cgroup v2 where the host has it with the controllers we need (Debian 12
//! hosts), else the v1 `memory`, `pids` and `cpu` hierarchies (this CI
//! machine mounts v1, with an empty v2 tree at `/sys/fs/cgroup/unified`).
//! QEMU joins its group between fork and exec, so not one page of the
//! guest is allocated outside it.
//!
//! Where the groups go ([`Placement`]):
//! - under systemd (the unit has `Delegate=yes`, the agent
//!   `--cgroup-delegated`), inside the agent's own cgroup, which the
//!   service manager delegated to it: systemd then accounts the VMs to the
//!   unit, stops them with it and leaves the rest of the tree alone. On v2
//!   a group with children may hold no processes, so the agent first moves
//!   itself (and anything else in its group) into a leaf, `<own>/agent`,
//!   and enables the controllers for its children; the VMs are
//!   `<own>/<name>`.
//! - otherwise (a shell, a test, another supervisor) under a `bbot-agent`
//!   group at the top of each hierarchy, shared by the host's agents.

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

/// Where VM groups are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Under `bbot-agent` at the top of each hierarchy.
    Shared,
    /// Under the agent's own cgroup, delegated to it (systemd's
    /// `Delegate=yes`).
    Delegated,
}

/// The leaf the agent moves itself into under a delegated v2 group.
pub const AGENT_LEAF: &str = "agent";
/// The controllers a VM group limits.
pub const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The hierarchies VM groups are made in, as this agent uses them: the
/// version and, per hierarchy, the parent of the groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    version: Version,
    parents: Vec<PathBuf>,
}

impl Hierarchy {
    /// The host's hierarchies with groups placed as `placement` says;
    /// `Ok(None)` when the host has no usable controllers. A delegated
    /// v2 group is prepared here (the agent moved into its leaf, the
    /// controllers enabled), before the agent starts anything that would
    /// land in the wrong group.
    pub fn detect(placement: Placement) -> Result<Option<Hierarchy>, CgroupError> {
        let Some(version) = detect() else {
            return Ok(None);
        };
        let h = match placement {
            Placement::Shared => Hierarchy::shared(version)?,
            Placement::Delegated => {
                let own = fs::read_to_string("/proc/self/cgroup")
                    .map_err(err(Path::new("/proc/self/cgroup")))?;
                Hierarchy::delegated(version, Path::new(ROOT), &own)?
            }
        };
        Ok(Some(h))
    }

    fn shared(version: Version) -> Result<Hierarchy, CgroupError> {
        let parents = match version {
            Version::V2 => vec![Path::new(ROOT).join(SUBTREE)],
            Version::V1 => CONTROLLERS
                .iter()
                .map(|c| Path::new(ROOT).join(c).join(SUBTREE))
                .collect(),
        };
        if version == Version::V2 {
            // Controllers must be enabled down to the agents' subtree.
            let sub = &parents[0];
            fs::create_dir_all(sub).map_err(err(sub))?;
            for dir in [Path::new(ROOT), sub.as_path()] {
                enable_controllers(dir)?;
            }
        }
        Ok(Hierarchy { version, parents })
    }

    /// The agent's own groups, read from `proc_self_cgroup` (the text of
    /// `/proc/self/cgroup`), under `root`; on v2 prepared for children.
    fn delegated(
        version: Version,
        root: &Path,
        proc_self_cgroup: &str,
    ) -> Result<Hierarchy, CgroupError> {
        let not_delegated = |what: String| CgroupError {
            path: PathBuf::from("/proc/self/cgroup"),
            source: io::Error::new(io::ErrorKind::InvalidData, what),
        };
        let parents = match version {
            Version::V2 => {
                let own = own_group(proc_self_cgroup, None)
                    .ok_or_else(|| not_delegated("no cgroup v2 entry (0::)".into()))?;
                if own == "/" {
                    return Err(not_delegated(
                        "the agent runs in the root cgroup, which cannot be delegated \
                         (run it under systemd with Delegate=yes, or without --cgroup-delegated)"
                            .into(),
                    ));
                }
                let own_dir = root.join(own.trim_start_matches('/'));
                // The agent's own group gets children, so (v2's rule) it
                // may hold no processes itself: everything in it (the
                // agent, anything started alongside) moves to the leaf.
                let leaf = own_dir.join(AGENT_LEAF);
                fs::create_dir_all(&leaf).map_err(err(&leaf))?;
                for pid in procs_of(&own_dir) {
                    let f = leaf.join("cgroup.procs");
                    if let Err(e) = fs::write(&f, pid.to_string()) {
                        // A process that ended meanwhile is gone anyway.
                        if e.raw_os_error() != Some(libc::ESRCH) {
                            return Err(err(&f)(e));
                        }
                    }
                }
                enable_controllers(&own_dir)?;
                vec![own_dir]
            }
            Version::V1 => CONTROLLERS
                .iter()
                .map(|c| {
                    let own = own_group(proc_self_cgroup, Some(c))
                        .ok_or_else(|| not_delegated(format!("no cgroup v1 {c} entry")))?;
                    Ok(root.join(c).join(own.trim_start_matches('/')))
                })
                .collect::<Result<Vec<_>, CgroupError>>()?,
        };
        Ok(Hierarchy { version, parents })
    }

    /// The cgroup version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Where VM groups are made: one directory (v2) or one per controller
    /// (v1).
    pub fn parents(&self) -> &[PathBuf] {
        &self.parents
    }

    /// Group `name`'s directories.
    fn dirs(&self, name: &str) -> Vec<PathBuf> {
        self.parents.iter().map(|p| p.join(name)).collect()
    }
}

/// The path of this process's group in the v2 hierarchy (`controller`
/// `None`: the `0::` line) or in the v1 hierarchy of `controller`, from the
/// text of `/proc/self/cgroup` (`id:controllers:path` lines).
fn own_group<'t>(proc_self_cgroup: &'t str, controller: Option<&str>) -> Option<&'t str> {
    proc_self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            None => id == "0" && controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        hit.then_some(path)
    })
}

/// Lets `dir`'s children use the memory, pids and cpu controllers (v2).
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let f = dir.join("cgroup.subtree_control");
    fs::write(&f, "+memory +pids +cpu").map_err(err(&f))
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

/// One VM's group, removed when dropped (once its processes are gone).
#[derive(Debug)]
pub struct VmCgroup {
    version: Version,
    dirs: Vec<PathBuf>,
}

impl VmCgroup {
    /// Creates group `name` with `limits` in `hierarchy`.
    pub fn create(
        hierarchy: &Hierarchy,
        name: &str,
        limits: Limits,
    ) -> Result<VmCgroup, CgroupError> {
        let version = hierarchy.version;
        let group = VmCgroup {
            version,
            dirs: hierarchy.dirs(name),
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

    /// Makes `cmd`'s process join the group before it executes.
    pub fn join_on_spawn(&self, cmd: &mut Command) -> Result<(), CgroupError> {
        join_on_spawn(&self.dirs, cmd)
    }

    /// The processes in the group.
    pub fn pids(&self) -> Vec<u32> {
        procs_of(&self.dirs[0])
    }
}

/// Makes `cmd`'s process join the groups `dirs` (one per hierarchy)
/// before it executes, writing `0`, "myself", to each `cgroup.procs`.
pub fn join_on_spawn(dirs: &[PathBuf], cmd: &mut Command) -> Result<(), CgroupError> {
    let mut paths = Vec::new();
    for d in dirs {
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

/// Removes groups named `<prefix><pid>-<n>` of other (dead) agents in
/// `hierarchy`, killing what is still in them; returns how many.
pub fn clean_leftovers(hierarchy: &Hierarchy, prefix: &str) -> usize {
    let version = hierarchy.version;
    let mut n = 0;
    for name in crate::base::fsutil::names_of_other_agents(&hierarchy.parents[0], prefix) {
        match remove(version, &hierarchy.dirs(&name)) {
            Ok(()) => {
                tracing::info!("removed leftover cgroup {name}");
                n += 1;
            }
            Err(e) => tracing::error!("cannot remove leftover cgroup {name}: {e}"),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "12:pids:/system.slice/bbot-agent@gcc-1.service\n\
                      4:cpu,cpuacct:/system.slice/bbot-agent@gcc-1.service\n\
                      3:memory:/system.slice/bbot-agent@gcc-1.service\n\
                      1:name=systemd:/system.slice/bbot-agent@gcc-1.service\n\
                      0::/system.slice/bbot-agent@gcc-1.service\n";

    #[test]
    fn own_groups_are_read_per_hierarchy() {
        let unit = "/system.slice/bbot-agent@gcc-1.service";
        assert_eq!(own_group(V1, Some("cpu")), Some(unit));
        assert_eq!(own_group(V1, Some("memory")), Some(unit));
        assert_eq!(own_group(V1, Some("cpuacct")), Some(unit));
        assert_eq!(own_group(V1, Some("blkio")), None);
        assert_eq!(own_group(V1, None), Some(unit));
        assert_eq!(own_group("0::/\n", None), Some("/"));
        assert_eq!(own_group("garbage\n", None), None);
    }

    #[test]
    fn delegated_v1_groups_go_under_the_agents_own() {
        let root = Path::new("/nonexistent-cgroup-root");
        let h = Hierarchy::delegated(Version::V1, root, V1).expect("v1");
        let unit = "system.slice/bbot-agent@gcc-1.service";
        assert_eq!(
            h.dirs("bbot-gcc-1-1-7-0"),
            CONTROLLERS
                .iter()
                .map(|c| root.join(c).join(unit).join("bbot-gcc-1-1-7-0"))
                .collect::<Vec<_>>()
        );
        let missing = Hierarchy::delegated(Version::V1, root, "0::/x\n");
        assert!(missing.is_err(), "{missing:?}");
    }

    #[test]
    fn a_delegated_v2_group_moves_its_processes_to_a_leaf() {
        // A stand-in v2 tree (plain files; the kernel's would move the
        // pids out of cgroup.procs itself).
        let tmp = tempfile::tempdir().expect("tmp");
        let own = tmp.path().join("system.slice/bbot-agent@gcc-1.service");
        fs::create_dir_all(&own).expect("own");
        fs::write(own.join("cgroup.procs"), "4242\n").expect("procs");
        let h = Hierarchy::delegated(Version::V2, tmp.path(), V1).expect("v2");
        assert_eq!(h.parents(), std::slice::from_ref(&own));
        assert_eq!(
            fs::read_to_string(own.join(AGENT_LEAF).join("cgroup.procs")).expect("leaf procs"),
            "4242"
        );
        assert_eq!(
            fs::read_to_string(own.join("cgroup.subtree_control")).expect("subtree_control"),
            "+memory +pids +cpu"
        );
        let root = Hierarchy::delegated(Version::V2, tmp.path(), "0::/\n");
        assert!(
            root.as_ref()
                .is_err_and(|e| e.to_string().contains("root cgroup")),
            "{root:?}"
        );
    }
}
