//! The real [`MachineRunner`]: every bootstrap and every task in a QEMU
//! guest booted from the snapshot it is handed, talking to the agent only
//! through its own TFTP server (PROTOCOLS.md sections 4 and 5).
//!
//! One guest session, whatever the phase:
//! 1. prepare the phase's TFTP directories (the task manifest goes into
//!    `build/<tc>/get/manifest`), start the TFTP server on an ephemeral port;
//! 2. start QEMU, telling the guest `host:port` and the phase through
//!    fw_cfg (`opt/bbot/tftp`, `opt/bbot/mode`) and, for direct kernel boot,
//!    the kernel command line (`bbot.tftp=`, `bbot.mode=`);
//! 3. wait for the guest's first request (startup timeout), then for its
//!    `manifest` upload (bootstrap/build timeout), then — after a bootstrap —
//!    for it to power off (shutdown timeout). A missed deadline suspends the
//!    VM for investigation (`--suspend-time`), then forces it down;
//! 4. force the VM down, remove the TFTP directories and the run directory
//!    (QMP socket), keep the console log under `<state>/logs`.
//!
//! Cancellation is polled every 50 ms; the VM is forced down at once.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use manifests::{BootstrapManifest, Document, MacAddress, MachineManifest, ResultManifest};

use crate::base::cancel::Cancel;
use crate::vm::cgroup;
use crate::vm::confine::{Confinement, QemuUser};
use crate::vm::guest_services::{GuestServices, ServicesSpec};
use crate::vm::lifecycle::{Accel, Network, Vm, VmSpec, VmState};
use crate::vm::mirror::{self, Mirror, MirrorConfig, MirrorError};
use crate::vm::netns;
use crate::vm::result_check::vet_guest_result;
use crate::vm::runner::{
    BootstrapJob, MachineRunner, RunnerError, TaskJob, TaskObserver, Unobserved,
};
use crate::vm::tap::TapFilter;
use crate::vm::tftp::{shown_name, Phase, TftpEvent, TftpLayout, TftpServer};
use manifests::guest;

/// The guest's view of the host under QEMU user-mode networking.
const USER_NET_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// How long a guest gets to power off by itself after uploading its result
/// before it is asked to (the guest's init powers off as soon as
/// worker-guest exits).
const SELF_POWEROFF_WAIT: Duration = Duration::from_secs(3);
/// How long a guest asked to power off (ACPI) gets before it is forced down.
const TASK_POWEROFF_GRACE: Duration = Duration::from_secs(10);
/// The manifest the guest fetches and uploads.
const MANIFEST: &str = guest::MANIFEST_FILE;

/// Host-side VM settings from the command line that every QEMU guest of
/// this agent shares.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// CPUs per VM (`--cpu`).
    pub cpu: u16,
    /// RAM per VM in KiB (`--ram`).
    pub ram_kib: u64,
    /// Bridge for the VM's network (`--bridge`); user-mode networking when
    /// absent.
    pub bridge: Option<String>,
    /// TFTP root (`--tftp`); see PROTOCOLS.md section 5 for the per-phase mapping.
    pub tftp: PathBuf,
    /// Toolchain name, which selects the TFTP subdirectories.
    pub toolchain_name: String,
    /// `--toolchain-num`.
    pub toolchain_num: u16,
    /// `--instance`: every name a VM of this process uses carries it
    /// (PROTOCOLS.md section 4a).
    pub instance: u16,
}

/// Settings of the QEMU runner beyond [`VmConfig`].
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// CPU, RAM, bridge, TFTP root and toolchain.
    pub vm: VmConfig,
    /// `--qemu`.
    pub qemu: PathBuf,
    /// `--accel`.
    pub accel: Accel,
    /// `--bootstrap-startup`: first request of a bootstrapping guest.
    pub bootstrap_startup: Duration,
    /// `--build-startup`: first request of a building guest.
    pub build_startup: Duration,
    /// `--bootstrap-shutdown`: power-off after a bootstrap upload.
    pub bootstrap_shutdown: Duration,
    /// `--suspend-time`: how long a guest that missed a deadline stays
    /// suspended for investigation before it is forced down.
    pub suspend_time: Duration,
    /// Where VMs' run directories (QMP socket, logs) live while they run.
    pub run_root: PathBuf,
    /// Where console logs are kept after the VM is gone.
    pub log_dir: PathBuf,
    /// The host's mirrors of task repositories, served to the guests.
    pub mirrors: MirrorConfig,
    /// `--qemu-user`: the unprivileged user QEMU runs as.
    pub qemu_user: QemuUser,
    /// Where VM cgroups are made (`cgroup::Hierarchy::detect`, done by
    /// the caller before it starts anything); `None`: the host has no
    /// usable controllers, VMs run without a group (with a warning).
    pub cgroups: Option<cgroup::Hierarchy>,
}

/// Boots real guests with QEMU.
#[derive(Debug)]
pub struct QemuRunner {
    cfg: QemuConfig,
}

static SESSION: AtomicU64 = AtomicU64::new(0);

/// Taps of toolchain `num`, instance `instance` are `<prefix><session>`:
/// unique on the host per instance (which runs one VM at a time), found
/// again by name after a crash, and within the kernel's 15 characters
/// (`bbot99i99t` and at most 5 digits).
pub fn tap_prefix(num: u16, instance: u16) -> String {
    format!("bbot{num}i{instance}t")
}

impl QemuRunner {
    /// A runner with these settings; checks KVM up front so a
    /// misconfigured host fails at start, not at the first task.
    pub fn new(cfg: QemuConfig) -> Result<QemuRunner, crate::vm::lifecycle::VmError> {
        if cfg.accel == Accel::Kvm {
            crate::vm::lifecycle::check_kvm()?;
        }
        if cfg.vm.bridge.is_some() {
            crate::vm::tap::check_available().map_err(crate::vm::lifecycle::VmError::Network)?;
        }
        match &cfg.cgroups {
            Some(h) => tracing::info!(
                "VMs run in cgroups ({:?}) under {}",
                h.version(),
                h.parents()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => tracing::warn!(
                "no cgroup memory, pids and cpu controllers: VMs run without their limits"
            ),
        }
        Ok(QemuRunner { cfg })
    }

    /// What a dead predecessor's VMs may have left, for start-up.
    pub fn leftovers(&self) -> crate::vm::leftovers::VmLeftovers {
        crate::vm::leftovers::VmLeftovers {
            run_root: self.cfg.run_root.clone(),
            log_dir: self.cfg.log_dir.clone(),
            tftp_build_dir: self.layout().task_dir(),
            tap_prefix: self
                .cfg
                .vm
                .bridge
                .as_ref()
                .map(|_| tap_prefix(self.cfg.vm.toolchain_num, self.cfg.vm.instance)),
            vm_prefix: self.names_prefix(),
            cgroups: self.cfg.cgroups.clone(),
        }
    }

    fn layout(&self) -> TftpLayout {
        TftpLayout {
            root: self.cfg.vm.tftp.clone(),
            toolchain: self.cfg.vm.toolchain_name.clone(),
            instance: self.cfg.vm.instance,
        }
    }

    /// The start of this instance's VM namespace and cgroup names
    /// (`bbot-<toolchain>-<num>-<instance>-`).
    fn names_prefix(&self) -> String {
        netns::name_prefix(
            &self.cfg.vm.toolchain_name,
            self.cfg.vm.toolchain_num,
            self.cfg.vm.instance,
        )
    }

    /// A task VM's CPUs: `--cpu`, or with the controller's boost flag every
    /// hardware thread of the host (PROTOCOLS.md section 4a).
    fn cpus(&self, boost: bool) -> u16 {
        if !boost {
            return self.cfg.vm.cpu;
        }
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        u16::try_from(all).unwrap_or(u16::MAX).max(self.cfg.vm.cpu)
    }

    /// The address the TFTP server binds and the one the guest is told.
    fn tftp_addresses(&self) -> Result<(Ipv4Addr, Ipv4Addr), RunnerError> {
        match &self.cfg.vm.bridge {
            None => Ok((Ipv4Addr::LOCALHOST, USER_NET_HOST)),
            Some(bridge) => {
                let ip = interface_ipv4(bridge).ok_or_else(|| {
                    RunnerError::Failed(format!(
                        "bridge {bridge} has no IPv4 address for the guest to reach the TFTP server"
                    ))
                })?;
                Ok((ip, ip))
            }
        }
    }

    /// Runs one guest session and hands the uploaded manifest to `after`
    /// while the VM still exists (a bootstrap waits for its power-off
    /// there). Whatever happens, the VM is down and its run directory gone
    /// when this returns.
    #[allow(clippy::too_many_arguments)]
    fn session<T>(
        &self,
        phase: Phase,
        machine: &MachineManifest,
        subvolume: &Path,
        mac: MacAddress,
        startup: Duration,
        work: Duration,
        source: Option<&Mirror>,
        (cpus, observer): (u16, &dyn TaskObserver),
        cancel: &Cancel,
        after: impl FnOnce(&mut Vm, Vec<u8>) -> Result<T, RunnerError>,
    ) -> Result<T, RunnerError> {
        let layout = self.layout();
        let (bind, advertised) = self.tftp_addresses()?;
        let mode = phase.as_str();
        let id = SESSION.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}-{}-{}-{}",
            machine.header.name,
            self.cfg.vm.toolchain_name,
            self.cfg.vm.toolchain_num,
            self.cfg.vm.instance
        );
        let run_dir = self
            .cfg
            .run_root
            .join(format!("{name}-{}-{id}", std::process::id()));
        // Bounds of what this VM may use (`cgroup`): the guest's RAM plus
        // QEMU's own (TCG's translation cache among it), a process count
        // with room for QEMU's I/O threads, the default CPU share.
        let ram_kib = guest_ram_kib(self.cfg.vm.ram_kib, machine)?;
        let overhead_mib = if self.cfg.accel == Accel::Tcg {
            2048
        } else {
            1024
        };
        let limits = cgroup::Limits {
            memory_bytes: (ram_kib / 1024 + overhead_mib) << 20,
            pids: 512,
            cpu_weight: 100,
        };
        let services_name = format!("{}{}-{id}", self.names_prefix(), std::process::id());
        let source_dir = run_dir.join("source");
        // With user networking the guest gets a network namespace of its
        // own, and its servers listen there (see `netns`); on a bridge
        // they listen on the bridge's address.
        let services = GuestServices::open(&ServicesSpec {
            phase,
            get_dir: &layout.get_dir(phase),
            put_dir: &layout.put_dir(phase),
            bind: IpAddr::V4(bind),
            advertised: IpAddr::V4(advertised),
            name: &services_name,
            own_netns: self.cfg.vm.bridge.is_none(),
            cgroup: self.cfg.cgroups.clone().map(|h| (h, limits)),
            source: source.map(|m| (m, source_dir.as_path())),
        });
        let services = match services {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&run_dir);
                return Err(e);
            }
        };
        let tftp = services.tftp_addr().to_string();
        let options = machine
            .option_args()
            .map_err(|e| RunnerError::Failed(e.message().to_string()))?;
        let mut fw_cfg = vec![
            (guest::FW_CFG_TFTP.to_string(), tftp.clone()),
            (guest::FW_CFG_MODE.to_string(), mode.to_string()),
        ];
        let mut kernel_args = vec![
            guest::cmdline_arg(guest::CMDLINE_TFTP, &tftp),
            guest::cmdline_arg(guest::CMDLINE_MODE, mode),
        ];
        if let Some(url) = services.source_url() {
            fw_cfg.push((guest::FW_CFG_SOURCE.to_string(), url.to_string()));
            kernel_args.push(guest::cmdline_arg(guest::CMDLINE_SOURCE, url));
        }
        let spec = VmSpec {
            name: name.clone(),
            qemu: self.cfg.qemu.clone(),
            accel: self.cfg.accel,
            cpus,
            ram_mib: (ram_kib / 1024).max(64),
            machine_dir: subvolume.to_path_buf(),
            machine_options: options,
            mac: mac.to_string(),
            network: match &self.cfg.vm.bridge {
                None => Network::User,
                Some(b) => Network::Bridge {
                    bridge: b.clone(),
                    filter: TapFilter {
                        host: bind,
                        tftp_port: services.ports().0,
                        source_port: services.ports().1,
                    },
                    // Unique on the host while this agent runs this VM.
                    tap: format!(
                        "{}{}",
                        tap_prefix(self.cfg.vm.toolchain_num, self.cfg.vm.instance),
                        id % 100_000
                    ),
                },
            },
            fw_cfg,
            kernel_args,
            run_dir: run_dir.clone(),
            netns: services.netns(),
            confinement: Confinement {
                user: Some(self.cfg.qemu_user.clone()),
                seccomp: true,
                cgroup: services.cgroup(),
            },
        };
        let outcome = match Vm::start(&spec) {
            Err(e) => Err(RunnerError::Failed(e.to_string())),
            Ok(mut vm) => {
                tracing::info!("{mode} of {name}: guest started, {}", services.describe());
                let r = self
                    .wait_upload(
                        &mut vm,
                        services.tftp(),
                        phase,
                        (startup, work),
                        observer,
                        cancel,
                    )
                    .and_then(|path| {
                        let bytes = fs::read(&path)
                            .map_err(|e| RunnerError::Failed(format!("{}: {e}", path.display())))?;
                        after(&mut vm, bytes)
                    });
                vm.force_down();
                r
            }
        };
        // QEMU is gone: the servers stop, then the namespace and the
        // group go.
        drop(spec);
        drop(services);
        self.finish_run_dir(&run_dir, &name, mode);
        outcome
    }

    /// Keeps the console log (one file per session, named after its run
    /// directory; the oldest beyond `console::KEPT_LOGS` are deleted) and
    /// removes the run directory (QMP socket).
    fn finish_run_dir(&self, run_dir: &Path, name: &str, mode: &str) {
        let console = run_dir.join("console.log");
        if console.exists() {
            let _ = fs::create_dir_all(&self.cfg.log_dir);
            let session = run_dir
                .file_name()
                .map_or_else(|| name.to_string(), |n| n.to_string_lossy().into_owned());
            let kept = self
                .cfg
                .log_dir
                .join(format!("{session}-{mode}.console.log"));
            match fs::rename(&console, &kept).or_else(|_| fs::copy(&console, &kept).map(drop)) {
                Ok(()) => tracing::info!("console log of {name} kept in {}", kept.display()),
                Err(e) => tracing::warn!("cannot keep console log {}: {e}", console.display()),
            }
            crate::vm::console::rotate(&self.cfg.log_dir, crate::vm::console::KEPT_LOGS);
        }
        if let Err(e) = fs::remove_dir_all(run_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", run_dir.display());
            }
        }
    }

    /// Waits for the guest's first request, then for its manifest upload.
    fn wait_upload(
        &self,
        vm: &mut Vm,
        server: &TftpServer,
        phase: Phase,
        (startup, work): (Duration, Duration),
        observer: &dyn TaskObserver,
        cancel: &Cancel,
    ) -> Result<PathBuf, RunnerError> {
        let start = Instant::now();
        let mut first_request: Option<Instant> = None;
        loop {
            if cancel.is_cancelled() {
                vm.force_down();
                return Err(RunnerError::Interrupted);
            }
            while let Ok(event) = server.events().try_recv() {
                if first_request.is_none() {
                    tracing::info!("guest's first TFTP request after {:.1?}", start.elapsed());
                    first_request = Some(Instant::now());
                }
                match event {
                    TftpEvent::Stored { name, path, bytes }
                        if name.trim_start_matches('/') == MANIFEST =>
                    {
                        tracing::info!("guest uploaded its manifest ({bytes} bytes)");
                        return Ok(path);
                    }
                    TftpEvent::Refused { op, name, reason } => {
                        tracing::warn!(
                            "guest's TFTP {op} '{}' refused: {reason}",
                            shown_name(&name)
                        );
                    }
                    other => tracing::debug!("guest TFTP: {other:?}"),
                }
            }
            if let VmState::Exited(status) = vm.state() {
                let when = if first_request.is_some() {
                    "before uploading its manifest"
                } else {
                    "before requesting anything over TFTP"
                };
                return Err(RunnerError::Failed(format!(
                    "the guest stopped ({status}) {when}; console:\n{}",
                    vm.console_tail(3000)
                )));
            }
            let (what, deadline) = match first_request {
                None => ("startup", start + startup),
                Some(t) => (
                    match phase {
                        Phase::Bootstrap => "bootstrap",
                        Phase::Task => "build",
                    },
                    t + work,
                ),
            };
            if Instant::now() >= deadline {
                let after = match first_request {
                    None => startup,
                    Some(_) => work,
                };
                self.suspend_then_stop(vm, what, observer, cancel);
                return Err(RunnerError::Timeout {
                    what: what.to_string(),
                    after,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A guest that missed a deadline: pause it, say how to reach it, keep
    /// it for `--suspend-time` (or until the agent is stopped), then stop it.
    fn suspend_then_stop(
        &self,
        vm: &mut Vm,
        what: &str,
        observer: &dyn TaskObserver,
        cancel: &Cancel,
    ) {
        let console = vm.console_tail(2000);
        if console.is_empty() {
            let hint = if self.cfg.accel == Accel::Kvm {
                "; if KVM cannot run guests on this host, try --accel tcg"
            } else {
                ""
            };
            tracing::error!(
                "guest missed its {what} deadline without printing anything on its console{hint}"
            );
        } else {
            tracing::error!("guest missed its {what} deadline; end of its console:\n{console}");
        }
        match vm.suspend() {
            Ok(()) => {
                observer.suspended();
                let until = Instant::now() + self.cfg.suspend_time;
                while Instant::now() < until && !cancel.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Err(e) => tracing::warn!("cannot suspend the guest: {e}"),
        }
        vm.force_down();
    }

    /// Empties (recreates) a directory the guest writes into.
    fn fresh_dir(dir: &Path) -> Result<(), RunnerError> {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RunnerError::Failed(format!("{}: {e}", dir.display()))),
        }
        fs::create_dir_all(dir).map_err(|e| RunnerError::Failed(format!("{}: {e}", dir.display())))
    }
}

impl MachineRunner for QemuRunner {
    fn bootstrap(
        &self,
        job: &BootstrapJob<'_>,
        cancel: &Cancel,
    ) -> Result<BootstrapManifest, RunnerError> {
        let layout = self.layout();
        let get = layout.get_dir(Phase::Bootstrap);
        if !get.is_dir() {
            return Err(RunnerError::Failed(format!(
                "TFTP toolchain directory {} does not exist: it must hold what guests \
                 install at bootstrap (worker-guest)",
                get.display()
            )));
        }
        let put = layout.put_dir(Phase::Bootstrap);
        Self::fresh_dir(&put)?;
        let outcome = self.session(
            Phase::Bootstrap,
            job.machine,
            job.subvolume,
            job.mac,
            self.cfg.bootstrap_startup,
            job.timeout,
            None,
            (self.cfg.vm.cpu, &Unobserved),
            cancel,
            |vm, bytes| {
                // A bootstrapped image must be consistent on disk: the guest
                // powers off by itself.
                let down = vm.wait_exit(self.cfg.bootstrap_shutdown, || !cancel.is_cancelled());
                if cancel.is_cancelled() {
                    return Err(RunnerError::Interrupted);
                }
                if !down {
                    self.suspend_then_stop(vm, "shutdown", &Unobserved, cancel);
                    return Err(RunnerError::Timeout {
                        what: "shutdown".into(),
                        after: self.cfg.bootstrap_shutdown,
                    });
                }
                let name = format!("bootstrap manifest uploaded by {}", job.machine.header.name);
                BootstrapManifest::parse(&bytes, &name).map_err(|e| {
                    RunnerError::Failed(format!(
                        "the guest uploaded an invalid bootstrap manifest: {e}"
                    ))
                })
            },
        );
        let _ = fs::remove_dir_all(&put);
        outcome
    }

    fn run_task(&self, job: &TaskJob<'_>, cancel: &Cancel) -> Result<ResultManifest, RunnerError> {
        let Some(subvolume) = job.subvolume else {
            return Err(RunnerError::Unsupported(
                "a task with --fake-machine has no machine to boot; add --fake-build".into(),
            ));
        };
        // The source first: a guest without it could only fail, later.
        let (url, reference) = job.task.repository();
        let mirror = mirror::update(&self.cfg.mirrors, url, reference, &job.task.commits, cancel)
            .map_err(|e| match e {
            MirrorError::Interrupted => RunnerError::Interrupted,
            e => RunnerError::Failed(format!("cannot get the task's source: {e}")),
        })?;
        let layout = self.layout();
        let build_dir = layout.task_dir();
        let get = layout.get_dir(Phase::Task);
        let put = layout.put_dir(Phase::Task);
        Self::fresh_dir(&get)?;
        Self::fresh_dir(&put)?;
        let text = job
            .task
            .to_text()
            .map_err(|e| RunnerError::Failed(format!("cannot write the task manifest: {e}")))?;
        fs::write(get.join(MANIFEST), text)
            .map_err(|e| RunnerError::Failed(format!("{}: {e}", get.display())))?;
        let machine = &job.machine.machine;
        let mac = machine_mac(machine);
        let outcome = self.session(
            Phase::Task,
            machine,
            subvolume,
            mac,
            self.cfg.build_startup,
            job.timeout,
            Some(&mirror),
            (self.cpus(job.boost), job.observer),
            cancel,
            |vm, bytes| {
                // The guest powers off after its upload. One that lingers is
                // asked to (ACPI power button), then forced down.
                if !vm.wait_exit(SELF_POWEROFF_WAIT, || !cancel.is_cancelled())
                    && !cancel.is_cancelled()
                {
                    tracing::info!("guest still running after its upload; asking it to power off");
                    if vm.shutdown(TASK_POWEROFF_GRACE) {
                        tracing::info!("guest powered off cleanly");
                    }
                }
                let name = format!("result manifest uploaded by {}", machine.header.name);
                // The guest's word about the task it was sent, not the
                // result itself (`result_check`).
                ResultManifest::parse(&bytes, &name)
                    .map(|r| vet_guest_result(job.task, r))
                    .map_err(|e| {
                        RunnerError::Failed(format!(
                            "the guest uploaded an invalid result manifest: {e}"
                        ))
                    })
            },
        );
        if let Err(e) = fs::remove_dir_all(&build_dir) {
            tracing::warn!("cannot remove {}: {e}", build_dir.display());
        }
        outcome
    }
}

/// The RAM a guest of `machine` gets: `--ram`, capped at the machine's
/// `ram-maximum`; a machine whose `ram-minimum` exceeds `--ram` cannot run
/// here (better a clear error than a guest starved into odd failures).
fn guest_ram_kib(agent_ram_kib: u64, machine: &MachineManifest) -> Result<u64, RunnerError> {
    let h = &machine.header;
    if let Some(min) = h.ram_minimum.filter(|m| *m > agent_ram_kib) {
        return Err(RunnerError::Failed(format!(
            "machine {} needs at least {min} KiB of RAM (ram-minimum), but --ram gives {agent_ram_kib} KiB",
            h.name
        )));
    }
    Ok(h.ram_maximum
        .map_or(agent_ram_kib, |max| agent_ram_kib.min(max)))
}

/// The MAC address a machine's guests get: the one recorded at bootstrap,
/// or one derived from the machine name (stable across tasks) when the
/// manifest has none.
pub fn machine_mac(machine: &MachineManifest) -> MacAddress {
    machine
        .mac
        .unwrap_or_else(|| MacAddress::locally_administered(name_bytes(&machine.header.name)))
}

/// Six bytes derived from a machine name, for a stable MAC when the
/// manifest has none.
fn name_bytes(name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// The first IPv4 address of a network interface (the bridge guests reach
/// the host through).
fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free with freeifaddrs below; every
    // pointer is checked before use.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return None;
        }
        let mut found = None;
        let mut cur = addrs;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null()
                && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
                && std::ffi::CStr::from_ptr(ifa.ifa_name).to_str() == Ok(name)
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                break;
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(addrs);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_address_and_unknown_interfaces_none() {
        assert_eq!(interface_ipv4("lo"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(interface_ipv4("no-such-if0"), None);
    }

    #[test]
    fn guest_ram_follows_the_machine_limits() {
        let text =
            ": 1\nid: i\nname: m\nsummary: s\nram-minimum: 1024\nram-maximum: 4096\ntype: kvm\n";
        let m = <MachineManifest as manifests::Document>::parse(text.as_bytes(), "m").unwrap();
        assert_eq!(guest_ram_kib(2048, &m).unwrap(), 2048);
        assert_eq!(
            guest_ram_kib(8192, &m).unwrap(),
            4096,
            "capped at ram-maximum"
        );
        let e = guest_ram_kib(512, &m).unwrap_err().to_string();
        assert!(
            e.contains("needs at least 1024 KiB") && e.contains("--ram gives 512 KiB"),
            "{e}"
        );
    }

    #[test]
    fn derived_mac_is_stable_and_local() {
        let a = MacAddress::locally_administered(name_bytes("m"));
        assert_eq!(a, MacAddress::locally_administered(name_bytes("m")));
        assert_eq!(a.0[0] & 0x03, 0x02);
    }
}
