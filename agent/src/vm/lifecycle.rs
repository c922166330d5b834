//! One QEMU guest and its lifecycle, as explicit states:
//!
//! ```text
//!   start ─▶ Running ──(guest powers off / powerdown)──▶ Exited
//!               │  └──────(force_down: QMP quit, then SIGKILL)──▶ Exited
//!               └─(suspend: QMP stop)─▶ Suspended ─(force_down)─▶ Exited
//! ```
//!
//! QEMU runs in its own process group (so a stop of the agent never
//! leaves a stray emulator, and a kill reaches every helper it forked),
//! with its working directory in the machine snapshot so the machine
//! manifest's relative `options` paths resolve there. A `Vm` that is
//! dropped while not `Exited` is forced down.

use crate::vm::qemu_channels::Channels;
use crate::vm::qmp::{QmpClient, QmpError};
use crate::vm::tap::{Tap, TapFilter};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How the guest's CPU is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (production).
    Kvm,
    /// Software emulation: slow, but runs anywhere (tests, hosts without KVM).
    Tcg,
}

impl Accel {
    /// QEMU's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!("'{s}' is not an accelerator (expected kvm or tcg)")),
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the guest's NIC is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// QEMU user-mode networking: no privileges needed; the host (and so
    /// the TFTP server on its loopback) is the gateway, 10.0.2.2.
    User,
    /// A tap device of its own, enslaved to this host bridge (bbot's
    /// classic setup; the host runs DHCP on the bridge). The agent creates
    /// the tap before QEMU starts and deletes it when QEMU is gone, so no
    /// qemu-bridge-helper or its ACL is involved.
    Bridge {
        /// The bridge.
        bridge: String,
        /// The tap device's name (at most 15 characters).
        tap: String,
        /// What the guest may reach through the tap (`tap`).
        filter: TapFilter,
    },
}

/// Everything needed to start one guest.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// A name for logs and the QEMU process title.
    pub name: String,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// KVM or TCG.
    pub accel: Accel,
    /// Virtual CPUs.
    pub cpus: u16,
    /// Guest RAM in MiB.
    pub ram_mib: u64,
    /// The machine snapshot: QEMU's working directory.
    pub machine_dir: PathBuf,
    /// Extra arguments from the machine manifest's `options`.
    pub machine_options: Vec<String>,
    /// The NIC's MAC address (`52:54:00:..`).
    pub mac: String,
    /// NIC connection.
    pub network: Network,
    /// `opt/...` fw_cfg entries (name, string).
    pub fw_cfg: Vec<(String, String)>,
    /// Appended to the kernel command line when the machine boots a kernel
    /// directly (`-kernel`).
    pub kernel_args: Vec<String>,
    /// Where the QMP socket, the console log and QEMU's own log go.
    pub run_dir: PathBuf,
    /// The network namespace QEMU runs in (user networking: the guest
    /// reaches only what the agent serves there), or the agent's own.
    pub netns: Option<std::sync::Arc<crate::vm::netns::GuestNetns>>,
    /// The QEMU user, seccomp filter and cgroup QEMU runs under.
    pub confinement: crate::vm::confine::Confinement,
}

/// Where a guest is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Running (or starting).
    Running,
    /// Paused by us for investigation; the process is still there.
    Suspended,
    /// The QEMU process is gone.
    Exited(ExitStatus),
}

/// Something went wrong starting or driving a guest.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `--accel kvm` on a host where KVM cannot be used.
    #[error("KVM is not usable here ({0}); run guests under emulation with --accel tcg (slow) or fix /dev/kvm access")]
    KvmUnavailable(String),
    /// QEMU could not be started at all.
    #[error("cannot start {qemu}: {source}")]
    Spawn {
        /// The binary.
        qemu: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// QEMU exited during start-up.
    #[error("QEMU exited during start-up ({status}): {log}")]
    EarlyExit {
        /// Its exit status.
        status: ExitStatus,
        /// The end of its own log.
        log: String,
    },
    /// A file the VM needs could not be prepared.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A QMP exchange failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// The guest's network could not be set up (tap device, bridge).
    #[error("guest network: {0}")]
    Network(String),
    /// QEMU could not be confined (user, cgroup).
    #[error("confining QEMU: {0}")]
    Confinement(String),
}

/// How long a QMP exchange may take before the connection is dropped.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long QEMU gets to create its QMP socket.
const STARTUP_GRACE: Duration = Duration::from_secs(10);
/// How long QEMU gets to exit after `quit` before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(5);

/// A running (or stopped) guest.
pub struct Vm {
    name: String,
    child: Child,
    qmp: QmpClient,
    state: VmState,
    console_log: PathBuf,
    /// Records the console while QEMU runs; finished when the Vm is dropped
    /// (after QEMU, whose exit closes the console).
    console: Option<crate::vm::console::ConsoleLog>,
    qemu_log: PathBuf,
    /// The tap device this VM owns (bridge networking), deleted with its
    /// filter when QEMU is gone.
    tap: Option<Tap>,
}

/// The KVM check behind a clear error: `/dev/kvm` must open read-write.
pub fn check_kvm() -> Result<(), VmError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| VmError::KvmUnavailable(format!("/dev/kvm: {e}")))
}

/// The QEMU arguments for `spec` (without the binary), its QMP and console
/// on `channels`.
pub fn qemu_args(spec: &VmSpec, channels: &Channels) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("bbot-{},process=bbot-{}", spec.name, spec.name),
        "-accel".into(),
        spec.accel.as_str().into(),
    ];
    if spec.accel == Accel::Kvm {
        args.extend(["-cpu".into(), "host".into()]);
    }
    args.extend([
        "-smp".into(),
        spec.cpus.to_string(),
        "-m".into(),
        format!("{}M", spec.ram_mib),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
    ]);
    args.extend(channels.qemu_args());
    args.extend(spec.confinement.qemu_args());
    let netdev = match &spec.network {
        Network::User => "user,id=net0".to_string(),
        Network::Bridge { tap, .. } => channels
            .tap_netdev()
            .unwrap_or_else(|| format!("tap,id=net0,ifname={tap},script=no,downscript=no")),
    };
    args.extend([
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={},romfile=", spec.mac),
    ]);
    for (name, value) in &spec.fw_cfg {
        args.extend(["-fw_cfg".into(), format!("name={name},string={value}")]);
    }
    let mut options = spec.machine_options.clone();
    if !spec.kernel_args.is_empty() && options.iter().any(|o| o == "-kernel") {
        let extra = spec.kernel_args.join(" ");
        match options.iter().position(|o| o == "-append") {
            Some(i) if i + 1 < options.len() => {
                options[i + 1] = format!("{} {extra}", options[i + 1]);
            }
            _ => options.extend(["-append".into(), extra]),
        }
    }
    args.extend(options);
    args
}

fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

impl Vm {
    /// Starts QEMU for `spec` and waits until its QMP socket answers.
    pub fn start(spec: &VmSpec) -> Result<Vm, VmError> {
        if spec.accel == Accel::Kvm {
            check_kvm()?;
        }
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| VmError::Io { path, source }
        };
        fs::create_dir_all(&spec.run_dir).map_err(io_err(&spec.run_dir))?;
        let qemu_log = spec.run_dir.join("qemu.log");
        let log = File::create(&qemu_log).map_err(io_err(&qemu_log))?;
        let log2 = log.try_clone().map_err(io_err(&qemu_log))?;
        let confined = |e: crate::vm::confine::ConfineError| VmError::Confinement(e.to_string());
        spec.confinement
            .hand_over(&[&spec.machine_dir])
            .map_err(confined)?;
        let tap = match &spec.network {
            Network::User => None,
            Network::Bridge {
                bridge,
                tap,
                filter,
            } => Some(Tap::create(tap, bridge, &spec.mac, filter).map_err(VmError::Network)?),
        };
        // From here on a failure drops (deletes) the tap.
        let console_log = spec.run_dir.join("console.log");
        let opened = Channels::open(&spec.run_dir, tap.as_ref().map(Tap::name))
            .map_err(io_err(&spec.run_dir))
            .and_then(|mut channels| {
                let end = channels.take_console().ok_or_else(|| VmError::Io {
                    path: console_log.clone(),
                    source: std::io::Error::other("no console channel"),
                })?;
                let console = crate::vm::console::ConsoleLog::record(
                    end,
                    &console_log,
                    crate::vm::console::CAP,
                )
                .map_err(io_err(&console_log))?;
                Ok((channels, console))
            });
        let (channels, console) = opened?;
        let args = qemu_args(spec, &channels);
        tracing::debug!("starting {} {}", spec.qemu.display(), args.join(" "));
        let mut cmd = Command::new(&spec.qemu);
        cmd.args(&args)
            .current_dir(&spec.machine_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        // In this order: the namespace and the cgroup need root, and the
        // parent-death signal must be set after the uid changes (the
        // kernel clears it on a credential change).
        let prepared = match &spec.netns {
            Some(ns) => ns
                .enter_on_spawn(&mut cmd)
                .map_err(|e| VmError::Network(e.to_string())),
            None => Ok(()),
        }
        .and_then(|()| spec.confinement.apply_on_spawn(&mut cmd).map_err(confined));
        channels.inherit(&mut cmd);
        die_with_agent(&mut cmd);
        let spawned = prepared.and_then(|()| {
            cmd.spawn().map_err(|source| VmError::Spawn {
                qemu: spec.qemu.clone(),
                source,
            })
        });
        let child = spawned?;
        let mut vm = Vm {
            name: spec.name.clone(),
            child,
            qmp: QmpClient::new(channels.qmp_socket(), QMP_TIMEOUT),
            state: VmState::Running,
            console_log,
            console: Some(console),
            qemu_log,
            tap,
        };
        // QEMU has its own copies now; closing the agent's lets the console
        // end when QEMU does.
        drop(channels);
        let deadline = Instant::now() + STARTUP_GRACE;
        loop {
            if let VmState::Exited(status) = vm.state() {
                return Err(VmError::EarlyExit {
                    status,
                    log: tail(&vm.qemu_log, 2000),
                });
            }
            match vm
                .qmp
                .connect_until(Instant::now() + Duration::from_millis(200))
            {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    vm.force_down();
                    return Err(e.into());
                }
                Err(_) => {}
            }
        }
        tracing::info!("VM {} started (pid {})", vm.name, vm.pid());
        Ok(vm)
    }

    /// QEMU's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The serial console log.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// The end of the console log, for reports.
    pub fn console_tail(&self, max: u64) -> String {
        tail(&self.console_log, max)
    }

    /// The current state (notices an exit).
    pub fn state(&mut self) -> VmState {
        if !matches!(self.state, VmState::Exited(_)) {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited(status);
            }
        }
        self.state
    }

    /// Records QEMU's exit and releases what it used.
    fn exited(&mut self, status: ExitStatus) {
        self.state = VmState::Exited(status);
        // Dropping the tap deletes its filter and the device.
        self.tap = None;
    }

    /// Waits until QEMU exits or `timeout` passes; `keep_going` is asked
    /// between polls and ends the wait early when it says no.
    pub fn wait_exit(&mut self, timeout: Duration, mut keep_going: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if matches!(self.state(), VmState::Exited(_)) {
                return true;
            }
            if Instant::now() >= deadline || !keep_going() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the guest to power off (ACPI power button) and waits up to
    /// `timeout`; forces it down if it does not. Returns whether it shut
    /// down cleanly.
    pub fn shutdown(&mut self, timeout: Duration) -> bool {
        if matches!(self.state(), VmState::Exited(_)) {
            return true;
        }
        if let Err(e) = self.qmp.execute(&qapi::qmp::system_powerdown {}) {
            tracing::warn!("VM {}: powerdown request failed: {e}", self.name);
        }
        if self.wait_exit(timeout, || true) {
            return true;
        }
        tracing::warn!(
            "VM {} did not power off within {timeout:?}; forcing it down",
            self.name
        );
        self.force_down();
        false
    }

    /// Pauses the guest and keeps it for investigation, logging how to
    /// reach it.
    pub fn suspend(&mut self) -> Result<(), VmError> {
        if matches!(self.state(), VmState::Exited(_)) {
            return Ok(());
        }
        self.qmp.execute(&qapi::qmp::stop {})?;
        self.state = VmState::Suspended;
        tracing::warn!(
            "VM {} suspended for investigation: pid {}, QMP socket {}, console log {}",
            self.name,
            self.pid(),
            self.qmp.path().display(),
            self.console_log.display()
        );
        Ok(())
    }

    /// Whether QEMU reports the guest as running (not paused).
    pub fn is_running(&mut self) -> Result<bool, VmError> {
        Ok(self.qmp.execute(&qapi::qmp::query_status {})?.running)
    }

    /// Stops the guest now: QMP `quit`, then SIGKILL to QEMU's whole
    /// process group if it is still there after a grace period.
    pub fn force_down(&mut self) {
        if matches!(self.state(), VmState::Exited(_)) {
            return;
        }
        if let Err(e) = self.qmp.execute(&qapi::qmp::quit {}) {
            tracing::debug!("VM {}: quit failed ({e}); killing it", self.name);
        }
        if !self.wait_exit(QUIT_GRACE, || true) {
            let pgid = self.pid() as libc::pid_t;
            // SAFETY: kill(2) with a negative pid signals that process
            // group; the group is QEMU's own (process_group(0) at spawn).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            if let Ok(status) = self.child.wait() {
                self.exited(status);
            }
        }
        tracing::info!("VM {} is down", self.name);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.force_down();
        if let Some(c) = self.console.take() {
            c.finish();
        }
    }
}
/// QEMU must never outlive the agent, however the agent dies (SIGKILL,
/// panic-abort, the watchdog's SIGABRT): the kernel sends it SIGKILL when
/// the thread that spawned it exits (`PR_SET_PDEATHSIG`). That thread is
/// the agent's main thread, whose exit is the process's, so the signal
/// comes exactly when the agent is gone. A parent that died between fork
/// and prctl is caught by comparing the parent pid afterwards.
pub(crate) fn die_with_agent(cmd: &mut Command) {
    if !is_main_thread() {
        // Tests start VMs from their own threads, and a source server
        // spawns its git daemons from its accept thread, which lives as
        // long as the session; their owners kill them anyway.
        tracing::debug!("process started off the main thread: it dies with this thread");
    }
    // SAFETY: getpid is async-signal-safe; it runs before the fork.
    let agent = unsafe { libc::getpid() };
    // SAFETY: between fork and exec the closure only calls prctl and
    // getppid, both async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != agent {
                return Err(std::io::Error::other("the agent exited while QEMU started"));
            }
            Ok(())
        });
    }
}

/// Whether the calling thread is the process's main thread.
fn is_main_thread() -> bool {
    // SAFETY: plain syscalls without arguments.
    unsafe { libc::gettid() == libc::getpid() }
}
