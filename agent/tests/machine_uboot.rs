//! The build machine builds real U-Boot: the recipe's machine
//! (machines/make-machine) on a loop btrfs, proven by machines/check-machine,
//! which builds `qemu_arm64`, `rpi_arm64` (aarch64), `qemu_arm` (32-bit arm)
//! and `sandbox` (host gcc) from Debian's U-Boot tree (scripts/uboot-tree)
//! in a chroot of a copy of the machine's root image, with the guest's
//! environment. A missing package, alternatives link or header in the image
//! fails here, naming the board and the error, before any guest boots.

mod common;

use std::process::Command;

use common::btrfs_loop::{is_root, BtrfsLoop};
use common::vm;

#[test]
fn the_build_machine_builds_real_uboot_boards() {
    assert!(
        is_root(),
        "this test needs root (loop btrfs, chroot, mounts); run it as root"
    );
    let fs = BtrfsLoop::with_size(vm::VM_FS_SIZE);
    let work = tempfile::tempdir().expect("work dir");
    let worker_guest = vm::worker_guest_binary();
    let revision = vm::make_machine(fs.path(), &worker_guest);

    let tree = work.path().join("u-boot");
    vm::uboot_tree(&tree);

    let out = Command::new(vm::workspace().join("machines/check-machine"))
        .arg("--tmpdir")
        .arg(work.path())
        .arg(&revision)
        .arg(&tree)
        .output()
        .expect("run machines/check-machine");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "check-machine failed:\n{report}");
    for board in ["qemu_arm64", "rpi_arm64", "qemu_arm", "sandbox"] {
        assert!(
            report
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([board, "ok"])),
            "the report does not show {board} built:\n{report}"
        );
    }
    eprintln!("{report}");
}
