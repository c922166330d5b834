//! Support for tests with real guests: the machine made by the project's
//! own recipe (machines/make-machine) on a loop btrfs, the worker-guest
//! binary, a git daemon the guest clones from, and checks that a run left
//! nothing behind.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The machine name the recipe makes.
pub const MACHINE: &str = "x86_64-debian_12-uboot";
/// Loop btrfs size for tests that keep a machine image (sparse).
pub const VM_FS_SIZE: u64 = 8 * 1024 * 1024 * 1024;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

/// The cargo target directory the agent binary was built into.
pub fn target_dir() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_bbot-agent"));
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/bbot-agent")
        .to_path_buf()
}

/// The worker-guest binary of this source tree. Built by a nested cargo
/// into a target directory of its own: cargo only builds this package's
/// binaries for its tests, and it holds the lock on its target directory
/// while tests run, so building into the same one would wait forever.
pub fn worker_guest_binary() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_bbot-agent"));
    let release = exe
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "release");
    let nested = target_dir().join("vm-tests");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args([
            "build",
            "-q",
            "--locked",
            "-p",
            "worker-guest",
            "--bin",
            "worker-guest",
        ])
        .env("CARGO_TARGET_DIR", &nested)
        .current_dir(workspace());
    if release {
        cargo.arg("--release");
    }
    let st = cargo.status().expect("run cargo build -p worker-guest");
    assert!(st.success(), "cargo build -p worker-guest failed");
    let wg = nested
        .join(if release { "release" } else { "debug" })
        .join("worker-guest");
    assert!(wg.is_file(), "{} missing after the build", wg.display());
    wg
}

/// Makes the recipe's machine in `machines` with `worker_guest` inside;
/// the Debian kernel is cached under the target directory.
pub fn make_machine(machines: &Path, worker_guest: &Path) -> PathBuf {
    let out = Command::new(workspace().join("machines/make-machine"))
        .arg("--machines")
        .arg(machines)
        .arg("--worker-guest")
        .arg(worker_guest)
        .arg("--cache")
        .arg(target_dir().join("machine-cache"))
        .output()
        .expect("run machines/make-machine");
    assert!(
        out.status.success(),
        "make-machine failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Makes Debian's U-Boot tree (scripts/uboot-tree, cached) in `dir`;
/// returns its commits, oldest first.
pub fn uboot_tree(dir: &Path) -> Vec<String> {
    let out = Command::new(workspace().join("scripts/uboot-tree"))
        .arg(dir)
        .output()
        .expect("run scripts/uboot-tree");
    assert!(
        out.status.success(),
        "scripts/uboot-tree failed (it needs the deb-src entry scripts/install-deps adds):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commits: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(commits.len() > 1, "the U-Boot tree has no Debian patches");
    commits
}

/// Debian's U-Boot tree served by `git daemon` on the host's loopback as
/// `git://127.0.0.1:<port>/u-boot.git`: the real-U-Boot tasks' repository.
pub struct ServedUboot {
    /// The tree's commits, oldest first.
    pub commits: Vec<String>,
    /// The bare repository the daemon serves.
    pub bare: PathBuf,
    /// The daemon.
    pub daemon: GitDaemon,
}

/// Makes Debian's U-Boot tree in `work/u-boot` ([`uboot_tree`]), a bare
/// clone of it in `work/git/u-boot.git` and a daemon serving `work/git`.
pub fn serve_uboot_tree(work: &Path) -> ServedUboot {
    let src = work.join("u-boot");
    let commits = uboot_tree(&src);
    let git_base = work.join("git");
    std::fs::create_dir_all(&git_base).expect("git base");
    let bare = git_base.join("u-boot.git");
    let st = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&src)
        .arg(&bare)
        .status()
        .expect("git clone --bare");
    assert!(st.success(), "git clone --bare of the U-Boot tree failed");
    let daemon = GitDaemon::start(&git_base);
    ServedUboot {
        commits,
        bare,
        daemon,
    }
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `git daemon` serving `base` read-only on the host's loopback: the
/// repository a controller names (the agent mirrors it; guests never
/// reach it).
pub struct GitDaemon {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl GitDaemon {
    /// Starts the daemon and waits until it accepts connections.
    pub fn start(base: &Path) -> Self {
        Self::start_in(base, None)
    }

    /// Like [`GitDaemon::start`], inside network namespace `netns` (for
    /// an agent that runs there).
    pub fn start_in(base: &Path, netns: Option<&str>) -> Self {
        let port = free_port();
        let mut cmd = match netns {
            None => Command::new("git"),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "git"]);
                c
            }
        };
        let child = cmd
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg(format!("--base-path={}", base.display()))
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: git daemon forks a child per
            // connection (and may outlive a plain kill otherwise).
            .process_group(0)
            .spawn()
            .expect("start git daemon");
        super::wait_for("git daemon", Duration::from_secs(10), || match netns {
            None => std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(drop),
            Some(ns) => Command::new("ip")
                .args(["netns", "exec", ns, "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"))
                .status()
                .ok()
                .filter(|s| s.success())
                .map(drop),
        });
        GitDaemon { child, port }
    }
}

/// A one-commit repository on branch `master` served by a [`GitDaemon`]:
/// what the scripted guests' tasks name as their source (the agent mirrors
/// it before each task, though those guests never fetch it).
pub struct TinyRepo {
    _daemon: GitDaemon,
    /// `git://127.0.0.1:<port>/tiny.git#master`.
    pub url: String,
}

impl TinyRepo {
    /// Makes `<work>/tiny-git/tiny.git` (once) and serves it (inside
    /// `netns` when given).
    pub fn serve(work: &Path, netns: Option<&str>) -> TinyRepo {
        let base = work.join("tiny-git");
        let src = base.join("src");
        std::fs::create_dir_all(&src).expect("tiny repo dir");
        let git = |dir: &Path, args: &[&str]| {
            let st = Command::new("git")
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "-c",
                    "init.defaultBranch=master",
                ])
                .args(args)
                .current_dir(dir)
                .status()
                .expect("git");
            assert!(st.success(), "git {args:?}");
        };
        if !base.join("tiny.git").exists() {
            git(&src, &["init", "-q"]);
            std::fs::write(src.join("README"), "tiny\n").expect("README");
            git(&src, &["add", "README"]);
            git(&src, &["commit", "-q", "-m", "tiny"]);
            git(&base, &["clone", "-q", "--bare", "src", "tiny.git"]);
        }
        let daemon = GitDaemon::start_in(&base, netns);
        let url = format!("git://127.0.0.1:{}/tiny.git#master", daemon.port);
        TinyRepo {
            _daemon: daemon,
            url,
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        // The whole group: the daemon and any child serving a clone.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals a process group;
            // no memory is involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guests' network namespaces of toolchain `tc` (`bbot-<tc>-...`).
pub fn netns_of(tc: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("bbot-{tc}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// The VMs' cgroups of toolchain `tc` (`bbot-agent/bbot-<tc>-...` in the
/// v2 tree or any v1 hierarchy).
pub fn cgroups_of(tc: &str) -> Vec<String> {
    let mut v = Vec::new();
    for h in ["", "memory/", "pids/", "cpu/"] {
        let dir = format!("/sys/fs/cgroup/{h}bbot-agent");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("bbot-{tc}-")) {
                v.push(format!("{dir}/{n}"));
            }
        }
    }
    v
}

/// QEMU processes whose command line names `what` (a VM name part).
pub fn qemu_processes(what: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", &format!("qemu-system.*bbot-.*{what}")])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Writes an executable file.
pub fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("parent directory");
    }
    std::fs::write(path, text).expect("write executable");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Whether QEMU is installed (the tests need it; CI installs it).
pub fn require_qemu() {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "qemu-system-x86_64 is required (scripts/install-deps installs it)"
    );
}

/// A loop btrfs holding the recipe's machine with the scripted
/// worker-guest (tests/guests/misbehaving-worker-guest, which picks its
/// behaviour at bootstrap from the toolchain directory), and a work
/// directory. Panics when not root.
pub fn scripted_machine() -> (super::btrfs_loop::BtrfsLoop, tempfile::TempDir) {
    let fs = super::btrfs_loop::BtrfsLoop::with_size(VM_FS_SIZE);
    require_qemu();
    let work = tempfile::tempdir().expect("work dir");
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/misbehaving-worker-guest");
    make_machine(fs.path(), &guest);
    (fs, work)
}

/// The agent's command line for the scripted machine's tests: toolchain
/// `tc`, machines on `fs`, TFTP root `<work>/tftp`, state
/// `<work>/state-<tc>`, TCG guests of 1 GiB, short idle sleep and
/// suspension, debug log; `extra` options, then the controller `url`.
pub fn agent_args(fs: &Path, work: &Path, tc: &str, extra: &[&str], url: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--machines",
        &fs.display().to_string(),
        "--tftp",
        &work.join("tftp").display().to_string(),
        "--state",
        &work.join(format!("state-{tc}")).display().to_string(),
        "--toolchain-name",
        tc,
        "--accel",
        "tcg",
        "--ram",
        "1048576",
        "--idle-sleep",
        "1",
        "--suspend-time",
        "2",
        "--verbose",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url.to_string());
    args
}
