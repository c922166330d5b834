//! Helpers shared by the agent's integration tests: a loop-mounted btrfs,
//! machine layouts on it, and scripted bbot controllers on loopback.
#![allow(dead_code)]

pub mod agent;
pub mod btrfs_loop;
pub mod cgroup;
pub mod controller;
pub mod hand_vm;
pub mod vm;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bbot_agent::base::version::BOOTSTRAP_PROTOCOL;
use bbot_agent::host::btrfs;
use bbot_agent::host::layout::{MachineDir, MANIFEST_FILE};

/// Machine manifest text for revision `id` of machine `name`.
pub fn machine_manifest(name: &str, id: &str) -> String {
    format!(": 1\nid: {id}\nname: {name}\nsummary: test machine {name}\ntype: kvm\n")
}

/// Creates `<machines>/<volume>/<name>/<name>-<P>.<rev>` as a subvolume holding
/// a manifest with `id` and a small disk image; optionally read-only.
pub fn add_revision(
    machines: &Path,
    volume: &str,
    name: &str,
    rev: u32,
    id: &str,
    ro: bool,
) -> PathBuf {
    let dir = machines.join(volume).join(name);
    std::fs::create_dir_all(&dir).expect("machine dir");
    let sv = dir.join(format!("{name}-{BOOTSTRAP_PROTOCOL}.{rev}"));
    btrfs::create_subvolume(&sv).expect("revision subvolume");
    std::fs::write(sv.join(MANIFEST_FILE), machine_manifest(name, id)).expect("manifest");
    std::fs::write(sv.join("disk.img"), vec![0u8; 4096]).expect("disk image");
    if ro {
        btrfs::set_read_only(&sv, true).expect("read-only");
    }
    sv
}

/// Points `<name>-<P>` at revision `rev` (relative or absolute target),
/// replacing any previous link atomically.
pub fn set_link(machines: &Path, volume: &str, name: &str, rev: u32, relative: bool) {
    let dir = machines.join(volume).join(name);
    let target_name = format!("{name}-{BOOTSTRAP_PROTOCOL}.{rev}");
    let target = if relative {
        PathBuf::from(&target_name)
    } else {
        dir.join(&target_name)
    };
    let tmp = dir.join(".link.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join(format!("{name}-{BOOTSTRAP_PROTOCOL}"))).expect("rename link");
}

/// The machine directory handle the library uses.
pub fn machine_dir(machines: &Path, volume: &str, name: &str) -> MachineDir {
    MachineDir {
        volume: volume.into(),
        name: name.into(),
        dir: machines.join(volume).join(name),
    }
}

/// Every temporary snapshot (`*-bbot-tmp-*`) anywhere under `machines`.
pub fn temporaries(machines: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for vol in std::fs::read_dir(machines).into_iter().flatten().flatten() {
        for m in std::fs::read_dir(vol.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for e in std::fs::read_dir(m.path()).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().contains("-bbot-tmp-") {
                    v.push(e.path());
                }
            }
        }
    }
    v
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
