//! `worker-guest task` on real U-Boot with no `~/.buildman`: the guest
//! finds a compiler on `PATH` for each board's architecture, as buildman's
//! toolchain scan would on a Debian machine: `arm` →
//! arm-linux-gnueabihf-gcc, `aarch64` → aarch64-linux-gnu-gcc, `sandbox` →
//! the host's gcc with no `CROSS_COMPILE`. Each board is configured and
//! its `cfg` target built (config_only, verbose) with that compiler, which
//! the log shows.

mod common;

use common::task::{show, task_command, uploaded_result};
use common::tftp::AsyncTftpServer;
use common::uboot::{self, build_path};
use common::TestDir;
use manifests::ResultStatus;
use worker_guest::toolchain::Toolchains;

/// (target, arch, the compiler its build must use).
const BOARDS: [(&str, &str, &str); 3] = [
    ("stm32f429-discovery", "arm", "arm-linux-gnueabihf-gcc"),
    ("xilinx_zynqmp_mini", "aarch64", "aarch64-linux-gnu-gcc"),
    ("sandbox", "sandbox", "gcc"),
];

#[test]
fn toolchains_found_on_path_for_arm_aarch64_and_sandbox() {
    let path = build_path();
    let tcs = Toolchains::detect(BOARDS.iter().map(|(_, a, _)| *a), &path);
    for (board, arch, gcc) in BOARDS {
        let tc = tcs
            .select(arch)
            .unwrap_or_else(|e| panic!("{board}: {e} (is {gcc} installed?)"));
        assert_eq!(
            tc.gcc.file_name().map(|n| n.to_string_lossy().into_owned()),
            Some(gcc.to_string()),
            "{arch}"
        );
        let cross = gcc.strip_suffix("gcc").unwrap_or_default();
        assert_eq!(tc.cross, cross, "{arch}: CROSS_COMPILE");
    }
}

#[test]
fn task_mode_configures_real_uboot_with_each_arch_compiler() {
    uboot::require_prerequisites();
    let dir = TestDir::new("task-real-uboot");
    let src = uboot::debian_tree(&dir.path);
    let tftp = dir.path.join("tftp");
    let server = AsyncTftpServer::start(&tftp);
    let mut task = format!(
        ": 1\nname: u-boot\nversion: 2023.01\nrepository-url: {}#debian\n\
         machine: m\ntarget: t\nbuild-setting: config_only=true\n\
         build-setting: verbose_build=true\n",
        src.display()
    );
    for (board, arch, _) in BOARDS {
        task.push_str(&format!("board: {board} {arch}\n"));
    }
    std::fs::write(tftp.join("manifest"), task).expect("write task");
    // HOME without a .buildman: compilers come from PATH (Debian's
    // /usr/bin first, for U-Boot's python3 scripts).
    let out = task_command(
        &server.addr.to_string(),
        &dir.path.join("work"),
        &dir.path,
        &[],
    )
    .env("PATH", build_path())
    .output()
    .expect("run worker-guest task");
    assert!(out.status.success(), "{}", show(&out));
    let r = uploaded_result(&tftp);
    for (board, arch, gcc) in BOARDS {
        let name = format!("{board}@0");
        let op = r
            .operation(&name)
            .unwrap_or_else(|| panic!("no operation {name}: {r:#?}"));
        let log = op.log.clone().unwrap_or_default();
        assert!(
            matches!(op.status, ResultStatus::Success | ResultStatus::Warning),
            "{name} ({arch}): {:?}\n{log}",
            op.status
        );
        // V=1: the preprocessor run that makes u-boot.cfg names the compiler.
        let used = log
            .lines()
            .any(|l| l.split_whitespace().next() == Some(gcc));
        assert!(used, "{name}: {gcc} not used:\n{log}");
        if arch == "sandbox" {
            // No command of the build runs a prefixed (cross) compiler.
            let cross = log.lines().find(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|w| w.ends_with("-gcc"))
            });
            assert_eq!(cross, None, "{name}: a cross compiler was used");
        }
    }
}
