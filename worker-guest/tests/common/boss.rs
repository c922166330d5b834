//! Driving the real buildman boss (buildman 0.2.0 from PyPI) against our
//! worker, without sshd: a virtualenv with buildman, a fake `ssh` first on
//! `PATH` (tests/boss/fake-ssh), per-host home directories, and a boss
//! `~/.buildman` naming the toolchains and machines.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The buildman virtualenv, created once per target directory (cached in
/// `<target>/buildman-venv`) by tests/boss/setup-venv.sh.
pub fn venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let venv = tmp.parent().unwrap_or(&tmp).join("buildman-venv");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/boss/setup-venv.sh");
        let st = Command::new(&script)
            .arg(&venv)
            .status()
            .expect("run setup-venv.sh");
        assert!(
            st.success(),
            "cannot set up the buildman virtualenv (pip install buildman==0.2.0)"
        );
        venv
    })
    .clone()
}

/// A boss set-up: its home, the fake hosts' homes and the fake ssh.
pub struct Boss {
    pub root: PathBuf,
    pub home: PathBuf,
    pub hosts: PathBuf,
    pub bin: PathBuf,
    pub venv: PathBuf,
}

/// Make `home/hostcc/gcc` (host compiler, arch sandbox) and
/// `home/cross/aarch64-linux-gnu-gcc`: toolchains under `$HOME`, as the
/// boss only offers workers the toolchains that live under its home.
fn toolchain_links(home: &Path) {
    for (dir, name, target) in [
        ("hostcc", "gcc", "/usr/bin/gcc"),
        (
            "cross",
            "aarch64-linux-gnu-gcc",
            "/usr/bin/aarch64-linux-gnu-gcc",
        ),
    ] {
        let d = home.join(dir);
        std::fs::create_dir_all(&d).expect("create toolchain dir");
        let link = d.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(target, &link).expect("toolchain symlink");
        }
    }
}

impl Boss {
    /// Set up a boss in `root` whose `[machines]` are `machines`, each
    /// with `max_boards` if given (0: the worker's thread count).
    pub fn new(root: &Path, machines: &[&str], max_boards: usize) -> Boss {
        let home = root.join("boss-home");
        let hosts = root.join("hosts");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).expect("create bin");
        toolchain_links(&home);
        let mut cfg =
            String::from("[toolchain]\nhostcc = ~/hostcc\ncross = ~/cross\n\n[machines]\n");
        for m in machines {
            cfg.push_str(m);
            cfg.push('\n');
            toolchain_links(&hosts.join(m));
        }
        if max_boards > 0 {
            for m in machines {
                cfg.push_str(&format!("\n[machine:{m}]\nmax_boards = {max_boards}\n"));
            }
        }
        std::fs::write(home.join(".buildman"), cfg).expect("write .buildman");
        let ssh = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/boss/fake-ssh");
        let link = bin.join("ssh");
        if !link.exists() {
            std::os::unix::fs::symlink(ssh, link).expect("ssh symlink");
        }
        Boss {
            root: root.to_path_buf(),
            home,
            hosts,
            bin,
            venv: venv(),
        }
    }

    /// A `buildman` command run in `src` with the boss's environment.
    pub fn command(&self, src: &Path, args: &[&str], extra_path: Option<&Path>) -> Command {
        let mut path = std::ffi::OsString::new();
        if let Some(p) = extra_path {
            path.push(p);
            path.push(":");
        }
        path.push(&self.bin);
        path.push(":");
        path.push(self.venv.join("bin"));
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let mut cmd = Command::new(self.venv.join("bin/buildman"));
        cmd.args(args)
            .current_dir(src)
            .env("HOME", &self.home)
            .env("PATH", path)
            .env("FAKE_SSH_HOMES", &self.hosts)
            .env("FAKE_SSH_WORKER", super::worker_bin())
            .env_remove("PYTHONPATH")
            .env_remove("VIRTUAL_ENV");
        cmd
    }

    /// Run buildman in `src` and return its output.
    pub fn run(&self, src: &Path, args: &[&str]) -> Output {
        self.command(src, args, None)
            .output()
            .expect("run buildman")
    }
}
