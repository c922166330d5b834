//! Toolchains: which compiler builds which architecture, and the
//! environment make needs to use it.
//!
//! Toolchains come from two places: the worker's own buildman-style config
//! file (`[toolchain]` directories to scan, `[toolchain-prefix]` explicit
//! prefixes) and the boss's `configure` command, which names one gcc per
//! architecture and wins over anything found locally, so that every worker
//! builds with the boss's choice.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::settings_file::{expand_user, glob, BuildmanSettings};

/// Priority of an explicit prefix or a boss-supplied gcc (best).
pub const PRIORITY_FULL_PREFIX: u32 = 0;
/// Priority of a `[toolchain-prefix]` whose `<prefix>gcc` exists.
pub const PRIORITY_PREFIX_GCC: u32 = 1;
/// Priority of a `[toolchain-prefix]` found on `PATH`.
pub const PRIORITY_PREFIX_GCC_PATH: u32 = 2;
/// Base priority of compilers found by scanning `[toolchain]` directories.
pub const PRIORITY_CALC: u32 = 4;

/// No toolchain for a board's architecture. The text follows buildman, so
/// that a result's stderr reads "Tool chain error for <arch>: No tool chain
/// found for arch '<arch>'" exactly as users know it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("No tool chain found for arch '{0}'")]
pub struct NoToolchain(pub String);

/// One compiler, with what is needed to hand it to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// Full path of the C compiler.
    pub gcc: PathBuf,
    /// Directory holding it; put first on `PATH` for cross toolchains.
    pub path: PathBuf,
    /// `CROSS_COMPILE` prefix: the gcc basename up to its last `-`
    /// (`aarch64-linux-gnu-gcc` → `aarch64-linux-gnu-`; `gcc` → empty).
    pub cross: String,
    /// Architecture this toolchain builds.
    pub arch: String,
    /// Lower is better when two toolchains claim one architecture.
    pub priority: u32,
}

impl Toolchain {
    /// Describe the compiler at `gcc`. Without an explicit `arch`, the
    /// architecture is the first word of the prefix, or `sandbox` for a
    /// plain host `gcc`, as buildman decides it.
    pub fn new(gcc: PathBuf, arch: Option<&str>, priority: u32) -> Self {
        let base = gcc
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cross = match base.rfind('-') {
            Some(pos) => base[..=pos].to_string(),
            None => String::new(),
        };
        let arch = match arch {
            Some(a) => a.to_string(),
            None => match cross.find('-') {
                Some(pos) => cross[..pos].to_string(),
                None => "sandbox".to_string(),
            },
        };
        let path = gcc.parent().map(Path::to_path_buf).unwrap_or_default();
        Self {
            gcc,
            path,
            cross,
            arch,
            priority,
        }
    }

    /// Path of a binutils tool of this toolchain (`size`, `objdump`),
    /// resolved in the toolchain's directory first, so sizes are taken with
    /// the tools that match the compiler.
    pub fn tool(&self, name: &str) -> PathBuf {
        let candidate = self.path.join(format!("{}{}", self.cross, name));
        if self.cross.is_empty() || !is_executable(&candidate) {
            PathBuf::from(format!("{}{}", self.cross, name))
        } else {
            candidate
        }
    }

    /// Set the variables make needs: `CROSS_COMPILE` (with an optional
    /// wrapper such as ccache in front) and the toolchain directory first on
    /// `PATH` for a cross compiler, and `LC_ALL=C` so tool messages are not
    /// localised. A host compiler (empty prefix) leaves both alone, as
    /// buildman does.
    pub fn apply_env(&self, env: &mut HashMap<OsString, OsString>, wrapper: &str) {
        if !self.cross.is_empty() {
            env.insert(
                "CROSS_COMPILE".into(),
                format!("{wrapper}{}", self.cross).into(),
            );
            let mut path = OsString::from(self.path.as_os_str());
            if let Some(old) = env.get(&OsString::from("PATH")) {
                path.push(":");
                path.push(old);
            }
            env.insert("PATH".into(), path);
        }
        env.insert("LC_ALL".into(), "C".into());
    }
}

/// Is `path` an executable regular file?
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Rank a scanned compiler by its name, as buildman does, so that e.g. a
/// bare-metal `-elf` compiler beats a `-linux-gnueabi` one.
fn calc_priority(gcc: &Path) -> u32 {
    const ORDER: [&str; 12] = [
        "-elf",
        "-unknown-linux-gnu",
        "-linux",
        "-none-linux-gnueabi",
        "-none-linux-gnueabihf",
        "-uclinux",
        "-none-eabi",
        "-gentoo-linux-gnu",
        "-linux-gnueabi",
        "-linux-gnueabihf",
        "-le-linux",
        "-uclinux",
    ];
    let name = gcc.to_string_lossy();
    let pos = ORDER.iter().position(|s| name.contains(s));
    PRIORITY_CALC + pos.unwrap_or(ORDER.len() - 1) as u32
}

/// Names like `x86_64-linux-x86_64-linux-gcc` are broken links in some
/// toolchain tarballs, not compilers.
fn is_doubled_prefix(name: &str) -> bool {
    let Some(stem) = name.strip_suffix("gcc") else {
        return false;
    };
    let n = stem.len();
    n > 0 && n % 2 == 0 && stem[..n / 2] == stem[n / 2..]
}

/// The toolchains known to a worker, one per architecture.
#[derive(Debug, Clone, Default)]
pub struct Toolchains {
    by_arch: HashMap<String, Toolchain>,
    aliases: Vec<(String, Vec<String>)>,
    wrapper: String,
}

impl Toolchains {
    /// No toolchains.
    pub fn new() -> Self {
        Self::default()
    }

    /// Collect the toolchains a buildman config file describes:
    /// `[toolchain-prefix]` entries, then compilers (`*gcc`) in the `.`,
    /// `bin` and `usr/bin` subdirectories of each `[toolchain]` path.
    /// Aliases and the wrapper are taken from the same file.
    pub fn from_settings(settings: &BuildmanSettings) -> Self {
        let mut tcs = Self::new();
        for (arch, value) in settings.items("toolchain-prefix") {
            let prefix = expand_user(&value);
            if prefix.is_file() {
                tcs.add(Toolchain::new(prefix, Some(&arch), PRIORITY_FULL_PREFIX));
                continue;
            }
            let gcc = PathBuf::from(format!("{}gcc", prefix.display()));
            if gcc.is_file() {
                tcs.add(Toolchain::new(gcc, Some(&arch), PRIORITY_PREFIX_GCC));
                continue;
            }
            let on_path = std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(&gcc))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let mut found = false;
            for cand in on_path.into_iter().filter(|c| c.is_file()) {
                found = true;
                tcs.add(Toolchain::new(cand, Some(&arch), PRIORITY_PREFIX_GCC_PATH));
            }
            if !found {
                tracing::warn!("No tool chain found for prefix '{}'", gcc.display());
            }
        }
        for (_, value) in settings.items("toolchain") {
            for dir in glob(&expand_user(&value)) {
                for gcc in scan_dir(&dir) {
                    let prio = calc_priority(&gcc);
                    tcs.add(Toolchain::new(gcc, None, prio));
                }
            }
        }
        tcs.aliases = settings
            .items("toolchain-alias")
            .into_iter()
            .map(|(k, v)| (k, v.split_whitespace().map(str::to_string).collect()))
            .collect();
        if let Some((_, w)) = settings.items("toolchain-wrapper").last() {
            if !w.is_empty() {
                tcs.wrapper = format!("{w} ");
            }
        }
        tcs
    }

    /// Add a toolchain if it works (its gcc is executable) and beats any
    /// toolchain already known for its architecture. Returns whether it was
    /// taken.
    pub fn add(&mut self, tc: Toolchain) -> bool {
        if !is_executable(&tc.gcc) {
            tracing::debug!("toolchain {} is not an executable", tc.gcc.display());
            return false;
        }
        let better = match self.by_arch.get(&tc.arch) {
            Some(old) => tc.priority < old.priority,
            None => true,
        };
        if better {
            self.by_arch.insert(tc.arch.clone(), tc);
        }
        better
    }

    /// Add the boss's toolchain for `arch` (a gcc path, `~` allowed). It
    /// replaces whatever this worker found itself, since the boss decides
    /// which compiler every worker uses.
    pub fn add_from_boss(&mut self, arch: &str, gcc: &str) -> bool {
        let tc = Toolchain::new(expand_user(gcc), Some(arch), PRIORITY_FULL_PREFIX);
        if !is_executable(&tc.gcc) {
            tracing::warn!("toolchain for {arch} from the boss is not usable: {gcc}");
            return false;
        }
        self.by_arch.insert(arch.to_string(), tc);
        true
    }

    /// The toolchain for an architecture, following `[toolchain-alias]`.
    pub fn select(&self, arch: &str) -> Result<&Toolchain, NoToolchain> {
        for (tag, aliases) in &self.aliases {
            if tag == arch {
                if let Some(tc) = aliases.iter().find_map(|a| self.by_arch.get(a)) {
                    return Ok(tc);
                }
            }
        }
        self.by_arch
            .get(arch)
            .ok_or_else(|| NoToolchain(arch.to_string()))
    }

    /// Wrapper command put before `CROSS_COMPILE` (with a trailing space),
    /// from `[toolchain-wrapper]`; empty if none.
    pub fn wrapper(&self) -> &str {
        &self.wrapper
    }

    /// Architectures with a toolchain, sorted (for logs).
    pub fn archs(&self) -> Vec<String> {
        let mut v: Vec<_> = self.by_arch.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Other compiler architectures that build a buildman architecture:
/// buildman's default `[toolchain-alias]` section (`x86` → `i386`,
/// `riscv` → `riscv32`, `sh` → `sh4`) with the names Debian and
/// kernel.org compilers also use.
fn arch_aliases(arch: &str) -> &'static [&'static str] {
    match arch {
        "x86" => &["i386", "i686", "x86_64"],
        "riscv" => &["riscv32", "riscv64"],
        "blackfin" => &["bfin"],
        "nds32" => &["nds32le"],
        "openrisc" => &["or1k"],
        "sh" => &["sh4"],
        _ => &[],
    }
}

impl Toolchains {
    /// The toolchains of a guest without a `~/.buildman`, found the way
    /// buildman's `toolchain.py` scans a toolchain directory, over the
    /// directories of `path` (a `PATH`-style list) in order: every `*gcc`
    /// is a compiler for the architecture named by the first word of its
    /// prefix (`arm-linux-gnueabihf-gcc` → `arm`, `aarch64-linux-gnu-gcc` →
    /// `aarch64`; plain `gcc` → `sandbox`, the host compiler with no
    /// `CROSS_COMPILE`); when several build one architecture, buildman's
    /// ranking by name decides (`-elf` first, then `-unknown-linux-gnu`,
    /// `-linux` ...), the first found on a tie. `archs` are the boards'
    /// architectures, logged with the compiler each gets (or that none
    /// does: such boards report "No tool chain found", return code 10).
    pub fn detect<'a>(archs: impl IntoIterator<Item = &'a str>, path: &std::ffi::OsStr) -> Self {
        let mut tcs = Self::new();
        for dir in std::env::split_paths(path).filter(|d| !d.as_os_str().is_empty()) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with("gcc") && !is_doubled_prefix(n))
                .collect();
            names.sort();
            for name in names {
                let gcc = dir.join(name);
                let prio = calc_priority(&gcc);
                tcs.add(Toolchain::new(gcc, None, prio));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for arch in archs {
            if !seen.insert(arch.to_string()) {
                continue;
            }
            let aliases = arch_aliases(arch);
            if !aliases.is_empty() {
                tcs.aliases.push((
                    arch.to_string(),
                    aliases.iter().map(|a| a.to_string()).collect(),
                ));
            }
            match tcs.select(arch) {
                Ok(tc) => tracing::info!("toolchain for {arch}: {}", tc.gcc.display()),
                Err(_) => tracing::warn!("no compiler for arch '{arch}' on PATH"),
            }
        }
        tcs
    }
}

/// Compilers (`*gcc`) in a toolchain directory's usual places.
fn scan_dir(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for sub in [".", "bin", "usr/bin"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut names: Vec<_> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with("gcc") && !is_doubled_prefix(n))
            .collect();
        names.sort();
        found.extend(names.into_iter().map(|n| dir.join(sub).join(n)));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_prefix_and_arch() {
        let tc = Toolchain::new("/usr/bin/aarch64-linux-gnu-gcc".into(), None, 0);
        assert_eq!(tc.cross, "aarch64-linux-gnu-");
        assert_eq!(tc.arch, "aarch64");
        assert_eq!(tc.path, PathBuf::from("/usr/bin"));
        let tc = Toolchain::new("/home/u/hostcc/gcc".into(), None, 0);
        assert_eq!(tc.cross, "");
        assert_eq!(tc.arch, "sandbox");
        let tc = Toolchain::new("/x/arm-gcc".into(), Some("arm"), 0);
        assert_eq!(tc.cross, "arm-");
    }

    #[test]
    fn doubled_prefix() {
        assert!(is_doubled_prefix("x86_64-linux-x86_64-linux-gcc"));
        assert!(!is_doubled_prefix("x86_64-linux-gcc"));
    }

    #[test]
    fn missing_toolchain_message() {
        let tcs = Toolchains::new();
        assert_eq!(
            tcs.select("m68k").unwrap_err().to_string(),
            "No tool chain found for arch 'm68k'"
        );
    }

    #[test]
    fn scans_config() {
        let s = BuildmanSettings::parse("[toolchain]\nroot = /usr\n");
        let tcs = Toolchains::from_settings(&s);
        assert!(tcs.select("sandbox").is_ok(), "{:?}", tcs.archs());
    }

    #[test]
    fn detects_compilers_on_a_search_path() {
        let dir = std::env::temp_dir().join(format!("tc-detect-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let exe = |p: PathBuf| {
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        exe(a.join("gcc"));
        exe(b.join("gcc"));
        // buildman ranks -elf above -linux, wherever they lie on PATH.
        exe(a.join("aarch64-linux-gnu-gcc"));
        exe(b.join("aarch64-none-elf-gcc"));
        // -linux (matched in -linux-gnueabihf) above -none-eabi.
        exe(a.join("arm-none-eabi-gcc"));
        exe(b.join("arm-linux-gnueabihf-gcc"));
        exe(b.join("riscv64-linux-gcc"));
        // Not executable, or a doubled prefix: ignored.
        std::fs::write(a.join("mips-linux-gnu-gcc"), "").unwrap();
        exe(a.join("x86_64-linux-x86_64-linux-gcc"));
        let path = std::env::join_paths([&a, &b]).unwrap();
        let tcs = Toolchains::detect(["sandbox", "aarch64", "riscv", "arm", "mips", "x86"], &path);
        let sandbox = tcs.select("sandbox").unwrap();
        // The first gcc on PATH.
        assert_eq!(
            (sandbox.gcc.clone(), sandbox.cross.as_str()),
            (a.join("gcc"), "")
        );
        let arm64 = tcs.select("aarch64").unwrap();
        assert_eq!(arm64.gcc, b.join("aarch64-none-elf-gcc"));
        assert_eq!(arm64.cross, "aarch64-none-elf-");
        let arm = tcs.select("arm").unwrap();
        assert_eq!(arm.gcc, b.join("arm-linux-gnueabihf-gcc"));
        let riscv = tcs.select("riscv").unwrap();
        assert_eq!(riscv.cross, "riscv64-linux-");
        assert!(tcs.select("mips").is_err());
        assert!(tcs.select("x86").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
