//! A cgroup the test makes and removes, standing in for the group systemd
//! delegates to a unit (`Delegate=yes`): the agent is started inside it
//! and, with `--cgroup-delegated`, makes its VMs' groups under it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bbot_agent::vm::cgroup::{self, Version, CONTROLLERS};

const ROOT: &str = "/sys/fs/cgroup";

/// `bbot-test-<what>-<pid>` in the v2 tree, or in each of the v1
/// `memory`, `pids` and `cpu` hierarchies (this CI machine's).
pub struct TestCgroup {
    dirs: Vec<PathBuf>,
}

impl TestCgroup {
    /// Makes the group (as root).
    pub fn new(what: &str) -> TestCgroup {
        let name = format!("bbot-test-{what}-{}", std::process::id());
        let dirs: Vec<PathBuf> = match cgroup::detect().expect("cgroup memory, pids and cpu") {
            Version::V2 => {
                let f = Path::new(ROOT).join("cgroup.subtree_control");
                std::fs::write(&f, "+memory +pids +cpu").expect("enable controllers at the top");
                vec![Path::new(ROOT).join(&name)]
            }
            Version::V1 => CONTROLLERS
                .iter()
                .map(|c| Path::new(ROOT).join(c).join(&name))
                .collect(),
        };
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        }
        TestCgroup { dirs }
    }

    /// The group's path as `/proc/<pid>/cgroup` shows it, e.g.
    /// `/bbot-test-killed-123`.
    pub fn path(&self) -> String {
        let name = self.dirs[0].file_name().expect("name").to_string_lossy();
        format!("/{name}")
    }

    /// Makes `cmd`'s process join the group before it executes.
    pub fn join_on_spawn(&self, cmd: &mut Command) {
        cgroup::join_on_spawn(&self.dirs, cmd).expect("the test cgroup's paths");
    }

    /// The names of the groups directly under this one (in the first
    /// hierarchy) that start with `prefix`.
    pub fn children(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dirs[0])
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    }
}

/// Kills what is in `dir` and its subgroups, then removes them.
fn remove_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path());
        }
    }
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) of a process the test put in its own group.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > end => {
                eprintln!("cannot remove test cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            remove_tree(d);
        }
    }
}
