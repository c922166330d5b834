//! What a dead agent's VMs leave behind, found and removed at start-up,
//! before the first round (each removal logged).
//!
//! Why here and not only in `Drop`: SIGKILL, a panic that aborts or the
//! watchdog's SIGABRT skip every destructor. QEMU itself dies with the
//! agent (`PR_SET_PDEATHSIG`, see `vm`), but its run directory (QMP socket,
//! console log), its tap and the task's TFTP directory stay, and a QEMU that
//! was started by an agent of an older version (or that survived for any
//! other reason) must not keep running on a snapshot the restarted agent
//! deletes. Temporary snapshots are `machines::Machines::clean_leftovers`'s.
//!
//! Ownership is by name, and every name carries the instance (PROTOCOLS.md
//! section 4a): a run directory is `<machine>-<agent pid>-<n>` under this
//! instance's state directory, a tap is `bbot<toolchain-num>i<instance>t<n>`,
//! a guest's network namespace and cgroup
//! `bbot-<toolchain>-<num>-<instance>-<pid>-<n>`, the TFTP directory
//! `build/<toolchain-name>/<instance>`. Only this instance's names are
//! looked at, and only while it holds its instance lock, so nothing of a
//! live agent is touched; within them, anything of a pid that is not a live
//! `bbot-agent` is a leftover.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::base::fsutil;

/// Where one agent instance keeps its VMs' things.
#[derive(Debug, Clone)]
pub struct VmLeftovers {
    /// Run directories' parent (`<state>/run`).
    pub run_root: PathBuf,
    /// Where console logs are kept (`<state>/logs`).
    pub log_dir: PathBuf,
    /// The task's TFTP directory (`<tftp>/build/<toolchain-name>/<instance>`).
    pub tftp_build_dir: PathBuf,
    /// Tap name prefix (`bbot<toolchain-num>i<instance>t`) when VMs use `--bridge`.
    pub tap_prefix: Option<String>,
    /// Name prefix of the VMs' network namespaces and cgroups
    /// (`bbot-<toolchain>-<num>-<instance>-`).
    pub vm_prefix: String,
    /// Where the VMs' cgroups are (`None`: the host has none).
    pub cgroups: Option<crate::vm::cgroup::Hierarchy>,
}

/// How long a killed QEMU gets to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl VmLeftovers {
    /// Removes everything a dead agent of this instance left; returns how
    /// many things were removed.
    pub fn clean(&self) -> usize {
        let (mut n, others_alive) = self.clean_run_dirs();
        if others_alive {
            // Another live agent of this instance (a misconfiguration the
            // instance lock prevents): its tap and TFTP directory are in use.
            tracing::error!(
                "another live bbot-agent uses {}; not touching taps or {}",
                self.run_root.display(),
                self.tftp_build_dir.display()
            );
            return n;
        }
        if let Some(prefix) = &self.tap_prefix {
            n += crate::vm::tap::clean_leftover_filters(prefix);
            n += clean_taps(prefix);
        }
        n += crate::vm::netns::clean_leftovers(&self.vm_prefix);
        if let Some(h) = &self.cgroups {
            n += crate::vm::cgroup::clean_leftovers(h, &self.vm_prefix);
        }
        if self.tftp_build_dir.exists() {
            match std::fs::remove_dir_all(&self.tftp_build_dir) {
                Ok(()) => {
                    tracing::info!(
                        "removed leftover TFTP directory {}",
                        self.tftp_build_dir.display()
                    );
                    n += 1;
                }
                Err(e) => tracing::error!("{}: {e}", self.tftp_build_dir.display()),
            }
        }
        n
    }

    /// Removes dead agents' run directories (and their QEMU); also tells
    /// whether another live agent has one.
    fn clean_run_dirs(&self) -> (usize, bool) {
        let Ok(entries) = std::fs::read_dir(&self.run_root) else {
            return (0, false);
        };
        let me = std::process::id();
        let mut n = 0;
        let mut others_alive = false;
        for e in entries.flatten() {
            let dir = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if pid == me {
                continue;
            }
            if fsutil::process_alive(pid, "bbot-agent") {
                others_alive = true;
                continue;
            }
            for qemu in processes_using(&dir) {
                tracing::warn!("killing leftover QEMU {qemu} of dead agent {pid} ({name})");
                kill_and_wait(qemu);
                n += 1;
            }
            let console = dir.join("console.log");
            if console.exists() {
                let _ = std::fs::create_dir_all(&self.log_dir);
                let kept = self.log_dir.join(format!("{name}-leftover.console.log"));
                if std::fs::rename(&console, &kept).is_ok() {
                    tracing::info!("console log of leftover {name} kept in {}", kept.display());
                }
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::info!("removed leftover run directory {}", dir.display());
                    n += 1;
                }
                Err(err) => tracing::error!("{}: {err}", dir.display()),
            }
        }
        (n, others_alive)
    }
}

/// The agent pid in a run directory name `<machine>-<pid>-<n>`.
fn owner_pid(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    parts.next()?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Processes whose command line names something inside `dir`, or whose
/// standard output is a file there (QEMU's is `<run>/qemu.log`; its QMP
/// and console are inherited descriptors, not paths).
fn processes_using(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false);
            cmdline
                || std::fs::read_link(format!("/proc/{pid}/fd/1"))
                    .is_ok_and(|out| out.starts_with(dir))
        })
        .collect()
}

/// SIGKILL `pid` and wait (bounded) until it is gone.
fn kill_and_wait(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a pid read from /proc and a constant signal.
    unsafe {
        libc::kill(raw, libc::SIGKILL);
    }
    let end = Instant::now() + KILL_WAIT;
    while Instant::now() < end {
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if gone {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::error!("leftover QEMU {pid} did not die within {KILL_WAIT:?}");
}

/// Deletes tap devices named `<prefix><n>`.
fn clean_taps(prefix: &str) -> usize {
    let mut n = 0;
    for name in fsutil::numbered_names(Path::new("/sys/class/net"), prefix) {
        match crate::vm::iproute::ip(&["link", "delete", "dev", &name]) {
            Ok(()) => {
                tracing::info!("deleted leftover tap {name}");
                n += 1;
            }
            Err(e) => tracing::error!("cannot delete leftover tap {name}: {e}"),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_directory_names_give_their_agent() {
        assert_eq!(
            owner_pid("x86_64-debian_12-uboot-uboot-1-24372-1"),
            Some(24372)
        );
        assert_eq!(owner_pid("m-7-12"), Some(7));
        assert_eq!(owner_pid("nonsense"), None);
        assert_eq!(owner_pid("m-x-1"), None);
        assert_eq!(owner_pid("m-1-y"), None);
    }

    #[test]
    fn a_dead_agents_run_directory_and_its_process_go() {
        let root = tempfile::tempdir().unwrap();
        let run_root = root.path().join("run");
        // pid 1 is init, never a bbot-agent.
        let dir = run_root.join("m-1-1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("console.log"), "booted\n").unwrap();
        // A stand-in for QEMU: a process naming a file in that directory.
        // (`read` is a shell builtin: no child that would outlive it.)
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x", &format!("{}/qmp.sock", dir.display())])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Seen under its new command line (a spawn racing other tests'
        // forks can show the parent's for a moment).
        let end = Instant::now() + Duration::from_secs(5);
        while !processes_using(&dir).contains(&child.id()) {
            assert!(
                Instant::now() < end,
                "the stand-in never showed its command line"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let mine = run_root.join(format!("m-{}-1", std::process::id()));
        std::fs::create_dir_all(&mine).unwrap();
        let tftp = root.path().join("tftp/build/tc");
        std::fs::create_dir_all(tftp.join("get")).unwrap();
        let l = VmLeftovers {
            run_root: run_root.clone(),
            log_dir: root.path().join("logs"),
            tftp_build_dir: tftp.clone(),
            tap_prefix: None,
            vm_prefix: format!("bbot-leftovers-unit-test-{}-", std::process::id()),
            cgroups: None,
        };
        assert_eq!(
            l.clean(),
            3,
            "the process, the directory, the TFTP directory"
        );
        assert!(child.wait().is_ok());
        assert!(!dir.exists() && !tftp.exists());
        assert!(mine.exists(), "this agent's own directory stays");
        assert_eq!(
            std::fs::read_to_string(root.path().join("logs/m-1-1-leftover.console.log")).unwrap(),
            "booted\n"
        );
    }
}
