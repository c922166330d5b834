//! A real btrfs filesystem for tests: a sparse image file, `mkfs.btrfs`, a loop
//! device from `losetup`, mounted on a temporary directory; unmounted, detached
//! and deleted again on drop. Needs root; [`BtrfsLoop::new`] returns `None` with a
//! loud message otherwise so that unprivileged runs skip instead of failing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the sparse image; btrfs wants a bit more than 100 MiB.
const IMAGE_SIZE: u64 = 512 * 1024 * 1024;

/// A mounted loop btrfs.
pub struct BtrfsLoop {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    dev: String,
}

/// Tells whether we run as root (uid 0), from /proc/self/status.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl BtrfsLoop {
    /// Creates and mounts a fresh filesystem. Panics when not root, and when
    /// the setup fails: the test cannot run, and must not pass.
    pub fn new() -> Self {
        Self::with_size(IMAGE_SIZE)
    }

    /// Like [`BtrfsLoop::new`] with an image of `size` bytes (sparse), for
    /// tests that keep real machine images.
    pub fn with_size(size: u64) -> Self {
        // Fail, never skip: a test that returns early would count as passed.
        assert!(
            is_root(),
            "this test needs root (loop devices, mount, btrfs): run it as root, \
             as scripts/test and CI do"
        );
        let dir = tempfile::Builder::new()
            .prefix("bbot-agent-btrfs-")
            .tempdir()
            .expect("temporary directory");
        let img = dir.path().join("btrfs.img");
        let f = std::fs::File::create(&img).expect("image file");
        f.set_len(size).expect("sparse image");
        drop(f);
        run(Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(&img)).expect("mkfs.btrfs");
        let dev =
            run(Command::new("losetup").args(["--find", "--show"]).arg(&img)).expect("losetup");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        if let Err(e) = run(Command::new("mount").arg(&dev).arg(&mnt)) {
            let _ = run(Command::new("losetup").arg("-d").arg(&dev));
            panic!("mount: {e}");
        }
        Self { dir, mnt, dev }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for BtrfsLoop {
    fn drop(&mut self) {
        if run(Command::new("umount").arg(&self.mnt)).is_err() {
            // Something still has it open (a failed test's child): lazy unmount.
            let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
        }
        if let Err(e) = run(Command::new("losetup").arg("-d").arg(&self.dev)) {
            eprintln!("cannot detach {}: {e}", self.dev);
        }
        let _ = &self.dir; // TempDir removes the image and mount point.
    }
}
