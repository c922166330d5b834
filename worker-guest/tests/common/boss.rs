//! Driving the real buildman boss (buildman 0.2.0 from PyPI) against our
//! worker, without sshd: a virtualenv with buildman, a fake `ssh` first on
//! `PATH` (tests/boss/fake-ssh), per-host home directories, and a boss
//! `~/.buildman` naming the toolchains and machines.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The buildman virtualenv, created once per target directory (cached in
/// `<target>/buildman-venv-debian`) by tests/boss/setup-venv.sh, from
/// Debian's python3 with its system packages (real U-Boot builds run
/// `python3` from the virtualenv, and binman needs pyelftools).
pub fn venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let venv = tmp.parent().unwrap_or(&tmp).join("buildman-venv-debian");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/boss/setup-venv.sh");
        let st = Command::new(&script)
            .arg(&venv)
            .status()
            .expect("run setup-venv.sh");
        assert!(
            st.success(),
            "cannot set up the buildman virtualenv (pip install buildman==0.2.0 \
             into a /usr/bin/python3 virtualenv; needs python3-venv and python3-pyelftools)"
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
    /// What follows the fake ssh and the virtualenv on `PATH` (default:
    /// this process's `PATH`).
    pub path_tail: OsString,
}

/// The compilers the boss offers, as links under a home directory:
/// `hostcc/gcc` (host compiler, arch sandbox), `cross/aarch64-linux-gnu-gcc`
/// and `cross/arm-linux-gnueabihf-gcc`. The boss only offers workers the
/// toolchains that live under its `$HOME`, and checks that each worker has
/// the same path under its own.
fn toolchain_links(home: &Path) {
    for (dir, name, target) in [
        ("hostcc", "gcc", "/usr/bin/gcc"),
        (
            "cross",
            "aarch64-linux-gnu-gcc",
            "/usr/bin/aarch64-linux-gnu-gcc",
        ),
        (
            "cross",
            "arm-linux-gnueabihf-gcc",
            "/usr/bin/arm-linux-gnueabihf-gcc",
        ),
    ] {
        if !Path::new(target).exists() {
            // Not installed here: the boss simply has no such toolchain
            // (tests that need it check for it themselves).
            continue;
        }
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
            path_tail: std::env::var_os("PATH").unwrap_or_default(),
        }
    }

    /// A `buildman` command run in `src` with the boss's environment.
    pub fn command(&self, src: &Path, args: &[&str], extra_path: Option<&Path>) -> Command {
        let mut path = OsString::new();
        if let Some(p) = extra_path {
            path.push(p);
            path.push(":");
        }
        path.push(&self.bin);
        path.push(":");
        path.push(self.venv.join("bin"));
        path.push(":");
        path.push(&self.path_tail);
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

/// Run a Python snippet with buildman 0.2.0's modules importable (the
/// virtualenv's python), with `args` as `sys.argv[1:]`; returns stdout.
/// Used to compare our code with buildman's own on the same input.
pub fn buildman_python(snippet: &str, args: &[&Path]) -> String {
    let out = Command::new(venv().join("bin/python3"))
        .arg("-c")
        .arg(snippet)
        .args(args)
        .env_remove("PYTHONPATH")
        .output()
        .expect("run the virtualenv's python3");
    assert!(
        out.status.success(),
        "buildman's python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// buildman's own `BuilderThread._scan_lines` on a build directory: the
/// source-lines manifest a local buildman writes (`--lines`).
pub fn buildman_scan_lines(out_dir: &Path, src_dir: &Path) -> String {
    buildman_python(
        "import sys, types\n\
         from buildman import builderthread\n\
         fake = types.SimpleNamespace(builder=types.SimpleNamespace(\n\
         \x20   num_jobs=2, add_lines_time=lambda t: None))\n\
         res = types.SimpleNamespace(out_dir=sys.argv[1], src_dir=sys.argv[2])\n\
         sys.stdout.write(builderthread.BuilderThread._scan_lines(fake, res))\n",
        &[out_dir, src_dir],
    )
}

/// buildman's own `dtcache.hash_src_tree` of a source tree.
pub fn buildman_dtc_hash(src_dir: &Path) -> String {
    buildman_python(
        "import sys\nfrom buildman import dtcache\nprint(dtcache.hash_src_tree(sys.argv[1]))\n",
        &[src_dir],
    )
    .trim()
    .to_string()
}
