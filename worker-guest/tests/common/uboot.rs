//! Real U-Boot for the tests and the benchmark: Debian's U-Boot 2023.01
//! with Debian's patches as commits (`scripts/uboot-tree`), plus three
//! commits of ours on branch `bm-test`, built for two small boards, one
//! with each of Debian's ARM cross compilers:
//!
//! - A adds an unused variable to `common/main.c`, built by both boards: a
//!   real compiler warning.
//! - B makes stm32f429-discovery's board file call a function nobody
//!   defines (a link error for that board only) and leaves the warning in
//!   place. xilinx_zynqmp_mini does not build that file.
//! - C removes both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::fixture::git;

/// Boards built: (target, buildman's arch). Neither has SPL, so the link
/// messages of a build come from one linker and their order does not
/// depend on make's parallelism.
pub const BOARDS: [(&str, &str); 2] = [
    ("xilinx_zynqmp_mini", "aarch64"),
    ("stm32f429-discovery", "arm"),
];

/// buildman's board terms are regular expressions matched at the start
/// of a board's name (or arch, vendor ...): anchored at the end too, so
/// that `xilinx_zynqmp_mini` does not also select `xilinx_zynqmp_mini_qspi`
/// and its four siblings.
pub const BOARD_TERMS: [&str; 2] = ["xilinx_zynqmp_mini$", "stm32f429-discovery$"];

/// The branch with the test commits.
pub const BRANCH: &str = "bm-test";

/// `scripts/uboot-tree` of this repository.
pub fn uboot_tree_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/uboot-tree")
}

/// Fail (not skip) when something a real U-Boot build needs is missing.
pub fn require_prerequisites() {
    let mut missing = Vec::new();
    let script = uboot_tree_script();
    if !script.is_file() {
        missing.push(format!("{} (the U-Boot tree maker)", script.display()));
    }
    for (cmd, pkg) in [
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf"),
        ("gcc", "gcc"),
        ("make", "make"),
        ("bison", "bison"),
        ("flex", "flex"),
        ("git", "git"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(format!("{cmd} (Debian package {pkg})"));
        }
    }
    for (header, pkg) in [
        ("/usr/include/openssl/evp.h", "libssl-dev"),
        ("/usr/include/gnutls/gnutls.h", "libgnutls28-dev"),
        ("/usr/include/uuid/uuid.h", "uuid-dev"),
    ] {
        if !Path::new(header).exists() {
            missing.push(format!("{header} (Debian package {pkg})"));
        }
    }
    let py = Command::new("/usr/bin/python3")
        .args(["-c", "import venv, ensurepip, elftools, setuptools"])
        .output();
    if !py.is_ok_and(|o| o.status.success()) {
        missing.push(
            "/usr/bin/python3 with venv, pyelftools and setuptools (Debian packages \
             python3-venv python3-pyelftools python3-setuptools)"
                .to_string(),
        );
    }
    assert!(
        missing.is_empty(),
        "prerequisites of the real U-Boot build are missing (see \
         scripts/install-deps):\n  {}",
        missing.join("\n  ")
    );
}

/// `PATH` for U-Boot builds: Debian's /usr/bin before the rest, so that
/// `python3` (U-Boot's scripts and binman run it) is Debian's, with
/// pyelftools; a pyenv Python earlier on PATH lacks it.
pub fn build_path() -> std::ffi::OsString {
    let mut p = std::ffi::OsString::from("/usr/bin:");
    p.push(std::env::var_os("PATH").unwrap_or_default());
    p
}

/// Debian's U-Boot as made by `scripts/uboot-tree` in `dir/u-boot`
/// (branch `debian` checked out).
pub fn debian_tree(dir: &Path) -> PathBuf {
    let src = dir.join("u-boot");
    let t = Instant::now();
    let out = Command::new(uboot_tree_script())
        .arg(&src)
        .output()
        .expect("run scripts/uboot-tree");
    assert!(
        out.status.success(),
        "scripts/uboot-tree failed (it needs a deb-src entry and network on first use, \
         see scripts/install-deps):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("U-Boot tree ready in {:.1?}", t.elapsed());
    src
}

/// Edit one file of the tree by replacing `from` with `to` (exactly once).
fn edit(src: &Path, file: &str, from: &str, to: &str) {
    let path = src.join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {file}: {e}"));
    assert_eq!(
        text.matches(from).count(),
        1,
        "{file}: {from:?} not found once"
    );
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write edited file");
}

const MAIN_FROM: &str = "void main_loop(void)\n{\n\tconst char *s;\n";
const MAIN_WARN: &str = "void main_loop(void)\n{\n\tconst char *s;\n\tint bm_unused_variable;\n";
const BOARD_FILE: &str = "board/st/stm32f429-discovery/stm32f429-discovery.c";
const BOARD_FROM: &str = "int board_init(void)\n{\n\treturn 0;\n}\n";
const BOARD_BROKEN: &str = "extern void bm_missing_function(void);\n\n\
    int board_init(void)\n{\n\tbm_missing_function();\n\treturn 0;\n}\n";

/// Debian's U-Boot plus commits A, B, C on branch [`BRANCH`], checked out.
pub fn test_tree(dir: &Path) -> PathBuf {
    let src = debian_tree(dir);
    git(&src, &["checkout", "-q", "-b", BRANCH]);
    edit(&src, "common/main.c", MAIN_FROM, MAIN_WARN);
    git(
        &src,
        &[
            "commit",
            "-q",
            "-a",
            "-m",
            "bm-test: unused variable in main_loop",
        ],
    );
    edit(&src, BOARD_FILE, BOARD_FROM, BOARD_BROKEN);
    git(
        &src,
        &[
            "commit",
            "-q",
            "-a",
            "-m",
            "bm-test: stm32f429-discovery calls a missing function",
        ],
    );
    edit(&src, "common/main.c", MAIN_WARN, MAIN_FROM);
    edit(&src, BOARD_FILE, BOARD_BROKEN, BOARD_FROM);
    git(
        &src,
        &[
            "commit",
            "-q",
            "-a",
            "-m",
            "bm-test: fix the warning and the link error",
        ],
    );
    src
}

/// buildman's arguments for the three commits of [`BRANCH`] into `out`,
/// `extra` options, then the board terms.
pub fn boss_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["-b", BRANCH, "-c", "3", "-o", out];
    args.extend_from_slice(extra);
    args.extend(BOARD_TERMS);
    args
}
