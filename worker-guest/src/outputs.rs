//! What a build leaves in its output directory and what we report of it:
//! image sizes, config files, and the Kconfig timestamps that decide
//! whether the next commit must reconfigure.
//!
//! File names and formats follow a local buildman build, so that the boss
//! writes the same `sizes` file and config files either way and its summary
//! (`buildman -s`, `-S`, `-K`) compares remote and local builds directly.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::SystemTime;

use crate::toolchain::Toolchain;

/// ELF images whose sizes buildman reports (U-Boot proper, SPL, TPL).
pub const BASE_ELF_FILENAMES: [&str; 3] = ["u-boot", "spl/u-boot-spl", "tpl/u-boot-tpl"];

/// Config files kept from each build, relative to the build directory.
pub const CONFIG_FILE_PATTERNS: [&str; 6] = [
    "u-boot.cfg",
    "spl/u-boot-spl.cfg",
    "tpl/u-boot-tpl.cfg",
    ".config",
    "include/autoconf.mk",
    "include/generated/autoconf.h",
];

/// Remove the images of an earlier build in this directory (maybe another
/// board's), so that they are never mistaken for this build's.
pub fn remove_old_outputs(out_dir: &Path) {
    for f in BASE_ELF_FILENAMES {
        let _ = std::fs::remove_file(out_dir.join(f));
    }
}

/// The `(output name, path)` of each config file under `out_dir`, with
/// buildman's renaming of SPL/TPL copies: a file found under `spl/` or
/// `tpl/` gets `-spl`/`-tpl` before its extension (`autoconf.mk` →
/// `autoconf-spl.mk`); a name without an extension (`.config`) is kept.
fn config_file_map(out_dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut found = Vec::new();
    for sub in ["", "spl", "tpl"] {
        for pattern in CONFIG_FILE_PATTERNS {
            let path = out_dir.join(sub).join(pattern);
            if !path.is_file() {
                continue;
            }
            let base = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let target = if sub.is_empty() {
                base
            } else {
                match split_ext(&base) {
                    (stem, Some(ext)) => format!("{stem}-{sub}.{ext}"),
                    (_, None) => base,
                }
            };
            found.push((target, path));
        }
    }
    found
}

/// Python's `os.path.splitext` for a bare name: a leading dot does not
/// start an extension (`.config` has none).
fn split_ext(name: &str) -> (&str, Option<&str>) {
    let trimmed = name.trim_start_matches('.');
    let lead = name.len() - trimmed.len();
    match trimmed.rfind('.') {
        Some(pos) => (&name[..lead + pos], Some(&name[lead + pos + 1..])),
        None => (name, None),
    }
}

/// File in a build directory naming the board whose defconfig last
/// succeeded there. buildman leaves the config files of the board built
/// before in place (removing them would change what make rebuilds), so a
/// failed defconfig leaves another board's `.config` behind; this record
/// tells whose the files are, and only the board's own are reported.
const CONFIGURED_BOARD: &str = ".worker-guest-board";

/// Before a defconfig: the directory's config no longer belongs to anyone.
pub fn forget_configured_board(out_dir: &Path) {
    let _ = std::fs::remove_file(out_dir.join(CONFIGURED_BOARD));
}

/// After a successful defconfig of `board`.
pub fn mark_configured_board(out_dir: &Path, board: &str) {
    if let Err(e) = std::fs::write(out_dir.join(CONFIGURED_BOARD), board) {
        tracing::warn!("cannot record the board of {}: {e}", out_dir.display());
    }
}

/// Whether the config files in `out_dir` are `board`'s.
pub fn configured_for(out_dir: &Path, board: &str) -> bool {
    std::fs::read_to_string(out_dir.join(CONFIGURED_BOARD)).is_ok_and(|b| b == board)
}

/// Read the config files of a build, for the `config` of a failed result.
pub fn config_files(out_dir: &Path) -> BTreeMap<String, String> {
    config_file_map(out_dir)
        .into_iter()
        .filter_map(|(name, path)| {
            let bytes = std::fs::read(&path).ok()?;
            Some((name, String::from_utf8_lossy(&bytes).into_owned()))
        })
        .collect()
}

/// Run a binutils tool in `cwd` and return its stdout, or `None` if it
/// fails (a missing tool must not fail the build).
fn run_tool(
    tool: &Path,
    arg: Option<&str>,
    file: &str,
    cwd: &Path,
    env: &HashMap<OsString, OsString>,
) -> Option<String> {
    let mut cmd = Command::new(tool);
    if let Some(a) = arg {
        cmd.arg(a);
    }
    let out = cmd
        .arg(file)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The size of `.rodata` from `objdump -h`, as buildman appends it to each
/// size line (empty if there is none).
pub fn rodata_size(objdump: &str) -> &str {
    objdump
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[1] == ".rodata")
        .and_then(|f| f.get(2).copied())
        .unwrap_or("")
}

/// The sizes of the images a successful build produced: for each, the
/// line `size` prints (header dropped; file name relative to the build
/// directory) followed by the `.rodata` size — what a local buildman
/// writes to its `sizes` file. `None` if there is no image.
pub fn sizes(out_dir: &Path, tc: &Toolchain, env: &HashMap<OsString, OsString>) -> Option<String> {
    let size_tool = tc.tool("size");
    let objdump_tool = tc.tool("objdump");
    let mut lines = Vec::new();
    for f in BASE_ELF_FILENAMES {
        if !out_dir.join(f).is_file() {
            continue;
        }
        let Some(out) = run_tool(&size_tool, None, f, out_dir, env) else {
            continue;
        };
        let Some(line) = out.lines().nth(1) else {
            continue;
        };
        let rodata = match crate::elf::rodata_field(&out_dir.join(f)) {
            Some(r) => r,
            None => {
                let dump = run_tool(&objdump_tool, Some("-h"), f, out_dir, env).unwrap_or_default();
                rodata_size(&dump).to_string()
            }
        };
        lines.push(format!("{line} {rodata}"));
    }
    if lines.is_empty() {
        None
    } else {
        Some(lines.join("\n"))
    }
}

/// buildman's `kconfig_changed_since`: whether the board's defconfig or
/// any `Kconfig*` file of the source (outside dot-directories and `build`)
/// is newer than `cfg_file`, i.e. whether the checkout changed the
/// configuration. False if `cfg_file` does not exist. Like Python's
/// `os.walk`, a symbolic link to a directory counts as a directory but is
/// not entered, and a link to a file is judged by its target's time.
pub fn kconfig_changed_since(cfg_file: &Path, src_dir: &Path, target: &str) -> bool {
    let Ok(ref_time) = std::fs::metadata(cfg_file).and_then(|m| m.modified()) else {
        return false;
    };
    let newer = |p: &Path| -> bool {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t: SystemTime| t > ref_time)
    };
    if newer(&src_dir.join("configs").join(format!("{target}_defconfig"))) {
        return true;
    }
    crate::fswalk::walk(
        src_dir,
        |name| !name.starts_with('.') && name != "build",
        |_, e| {
            if e.file_name().to_string_lossy().starts_with("Kconfig") && newer(&e.path()) {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        },
    )
    .is_break()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_python() {
        assert_eq!(split_ext(".config"), (".config", None));
        assert_eq!(split_ext("autoconf.mk"), ("autoconf", Some("mk")));
        assert_eq!(split_ext("u-boot-spl.cfg"), ("u-boot-spl", Some("cfg")));
    }

    #[test]
    fn kconfig_changes_are_seen_outside_build_and_dot_directories() {
        let dir = std::env::temp_dir().join(format!("kconfig-walk-{}", std::process::id()));
        let cfg = dir.join("build/.config");
        for d in ["build", ".git", "drivers/net", "configs"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("drivers/net/Kconfig"), "old\n").unwrap();
        std::fs::write(dir.join("configs/b_defconfig"), "old\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!kconfig_changed_since(&cfg, &dir, "b"), "no .config yet");
        std::fs::write(&cfg, "CONFIG_X=y\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Newer, but in places the walk skips.
        std::fs::write(dir.join("build/Kconfig"), "x\n").unwrap();
        std::fs::write(dir.join(".git/Kconfig"), "x\n").unwrap();
        assert!(!kconfig_changed_since(&cfg, &dir, "b"));
        std::fs::write(dir.join("configs/b_defconfig"), "new\n").unwrap();
        assert!(
            kconfig_changed_since(&cfg, &dir, "b"),
            "the board's defconfig"
        );
        assert!(!kconfig_changed_since(&cfg, &dir, "other"));
        std::fs::write(dir.join("drivers/net/Kconfig.ext"), "new\n").unwrap();
        assert!(
            kconfig_changed_since(&cfg, &dir, "other"),
            "a Kconfig* file"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rodata() {
        let dump =
            "Idx Name Size VMA LMA File off Algn\n  1 .rodata 00000010 0000 0000 00001000 2**3\n";
        assert_eq!(rodata_size(dump), "00000010");
        assert_eq!(rodata_size("nothing"), "");
    }
}
