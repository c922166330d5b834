//! A task guest started by hand the way the agent starts one, for the
//! benches that compare a task through the agent with the same guest
//! without it: a snapshot of the bootstrapped machine, a TFTP server
//! serving the task, the agent's `VmSpec` and `qemu_args` with plain user
//! networking (so the guest reaches the host as 10.0.2.2 and no network
//! namespace), the agent's QMP and console channels, its seccomp filter.
//!
//! Included by path from the benches, not only through `common`, so that a
//! bench needs nothing else of the test support.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use bbot_agent::vm::console::ConsoleLog;
use bbot_agent::vm::lifecycle::{qemu_args, Accel, Network, VmSpec};
use bbot_agent::vm::qemu_channels::Channels;
use bbot_agent::vm::tftp::{SessionRules, TftpServer};
use manifests::{guest, BootstrappedMachineManifest, Document};

/// What the guest gets.
pub struct HandTask<'a> {
    /// The machine's directory (`<machines>/<volume>/<machine>`).
    pub machine_dir: &'a Path,
    /// The bootstrapped subvolume's name inside it (`<machine>-<toolchain>`).
    pub bootstrapped: &'a str,
    /// The task manifest served as `manifest`.
    pub task: &'a str,
    /// Where this run's directories go.
    pub work: &'a Path,
    /// The run's number: names the snapshot and the directories.
    pub n: usize,
    /// QEMU's `-smp`.
    pub cpus: u16,
    /// QEMU's `-m`.
    pub ram_mib: u64,
}

/// A running guest; [`HandVm::finish`] tears it down.
pub struct HandVm {
    /// QEMU.
    pub qemu: Child,
    /// Its serial console, as the agent records it.
    pub console_path: PathBuf,
    /// Where the guest's uploads land.
    pub put: PathBuf,
    /// Held (like the agent does) until QEMU has ended.
    channels: Channels,
    console: ConsoleLog,
    server: TftpServer,
    snapshot: PathBuf,
}

impl HandTask<'_> {
    /// Snapshots the machine, serves the task and starts QEMU.
    pub fn start(&self) -> HandVm {
        let bootstrapped = self.machine_dir.join(self.bootstrapped);
        let manifest = std::fs::read(bootstrapped.join("manifest")).expect("bootstrapped manifest");
        let b = BootstrappedMachineManifest::parse(&manifest, "manifest").expect("parses");
        let get = self.work.join(format!("hand-get-{}", self.n));
        let put = self.work.join(format!("hand-put-{}", self.n));
        std::fs::create_dir_all(&get).expect("get");
        std::fs::create_dir_all(&put).expect("put");
        let snapshot = self
            .machine_dir
            .join(format!("{}-hand-{}", self.bootstrapped, self.n));
        let st = Command::new("btrfs")
            .args(["-q", "subvolume", "snapshot"])
            .arg(&bootstrapped)
            .arg(&snapshot)
            .status()
            .expect("btrfs snapshot");
        assert!(st.success(), "btrfs snapshot of {}", bootstrapped.display());
        std::fs::write(get.join("manifest"), self.task).expect("task");
        let server = TftpServer::start(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            &get,
            &put,
            SessionRules::for_phase(guest::Phase::Task),
        )
        .expect("TFTP server");
        let tftp = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)),
            server.local_addr().port(),
        )
        .to_string();
        let spec = VmSpec {
            name: format!("{}-{}", self.bootstrapped, self.n),
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            cpus: self.cpus,
            ram_mib: self.ram_mib,
            machine_dir: snapshot.clone(),
            machine_options: b.machine.option_args().expect("options"),
            mac: bbot_agent::vm::qemu_runner::machine_mac(&b.machine).to_string(),
            network: Network::User,
            fw_cfg: vec![
                (guest::FW_CFG_TFTP.into(), tftp.clone()),
                (
                    guest::FW_CFG_MODE.into(),
                    guest::Phase::Task.as_str().into(),
                ),
            ],
            kernel_args: vec![
                guest::cmdline_arg(guest::CMDLINE_TFTP, &tftp),
                guest::cmdline_arg(guest::CMDLINE_MODE, guest::Phase::Task.as_str()),
            ],
            run_dir: self.work.join(format!("hand-run-{}", self.n)),
            netns: None,
            // The agent's seccomp filter; the bench starts QEMU itself, as root.
            confinement: bbot_agent::vm::confine::Confinement {
                seccomp: true,
                ..Default::default()
            },
        };
        std::fs::create_dir_all(&spec.run_dir).expect("run dir");
        // QMP and the console as the agent hands them to QEMU.
        let mut channels = Channels::open(&spec.run_dir, None).expect("channels");
        let console_path = spec.run_dir.join("console.log");
        let console = ConsoleLog::record(
            channels.take_console().expect("console"),
            &console_path,
            bbot_agent::vm::console::CAP,
        )
        .expect("console");
        let mut cmd = Command::new(&spec.qemu);
        cmd.args(qemu_args(&spec, &channels))
            .current_dir(&snapshot)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        channels.inherit(&mut cmd);
        let qemu = cmd.spawn().expect("qemu");
        HandVm {
            qemu,
            console_path,
            put,
            channels,
            console,
            server,
            snapshot,
        }
    }
}

impl HandVm {
    /// Waits for the guest to power off.
    pub fn wait(&mut self) -> ExitStatus {
        self.qemu.wait().expect("wait for qemu")
    }

    /// Stops the guest now.
    pub fn kill(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }

    /// Ends the console log and the TFTP server and deletes the snapshot
    /// (QEMU must have ended).
    pub fn finish(self) {
        drop(self.channels);
        self.console.finish();
        drop(self.server);
        let st = Command::new("btrfs")
            .args(["-q", "subvolume", "delete"])
            .arg(&self.snapshot)
            .status()
            .expect("btrfs delete");
        assert!(st.success(), "btrfs delete of {}", self.snapshot.display());
    }
}
