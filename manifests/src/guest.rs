//! The guest contract (PROTOCOLS.md section 5): every name, key and limit
//! the agent and the guest must agree on, owned here once so that
//! `bbot-agent` (which serves and enforces it) and `worker-guest` (which
//! follows it) cannot drift apart. The guest's init script
//! (`machines/guest/bbot-init`) repeats the mode keys in shell; its test
//! checks them against these constants.

/// The file the guest GETs (its task) and PUTs (its result, or in the
/// bootstrap phase its bootstrap manifest).
pub const MANIFEST_FILE: &str = "manifest";

/// The worker binary a bootstrap GETs from the toolchain's directory.
pub const WORKER_FILE: &str = "worker-guest";

/// The fw_cfg file naming the session's TFTP server (`host:port`).
pub const FW_CFG_TFTP: &str = "opt/bbot/tftp";
/// The fw_cfg file naming the phase ([`Phase::as_str`]).
pub const FW_CFG_MODE: &str = "opt/bbot/mode";

/// The kernel command-line parameter naming the TFTP server (direct kernel
/// boots only), `bbot.tftp=host:port`.
pub const CMDLINE_TFTP: &str = "bbot.tftp";
/// The kernel command-line parameter naming the phase.
pub const CMDLINE_MODE: &str = "bbot.mode";

/// The fw_cfg file naming the git URL the guest fetches its source from:
/// the agent's mirror of the task's repository, served to this guest only.
/// Absent: the guest clones the task's `repository-url` itself.
pub const FW_CFG_SOURCE: &str = "opt/bbot/source";
/// The kernel command-line parameter naming the same URL.
pub const CMDLINE_SOURCE: &str = "bbot.source";
/// The repository path of the served mirror (`git://host:port/<this>`).
pub const SOURCE_REPOSITORY: &str = "source.git";

/// Where Linux shows fw_cfg file `key` inside the guest.
pub fn fw_cfg_sysfs_path(key: &str) -> String {
    format!("/sys/firmware/qemu_fw_cfg/by_name/{key}/raw")
}

/// `name=value` for the kernel command line.
pub fn cmdline_arg(param: &str, value: &str) -> String {
    format!("{param}={value}")
}

/// Largest single upload the agent accepts: the controller's result size
/// cap (brep refuses larger results).
pub const MAX_UPLOAD_BYTES: u64 = 15 * 1024 * 1024;

/// Most files one session may upload. A task uploads one result; the rest
/// is room for upload archives, not for a guest filling the host's disk.
pub const MAX_SESSION_UPLOADS: u32 = 16;

/// Most bytes one session may upload, all files together.
pub const MAX_SESSION_UPLOAD_BYTES: u64 = 4 * MAX_UPLOAD_BYTES;

/// Largest result manifest the guest writes: 64 KiB under
/// [`MAX_UPLOAD_BYTES`], so a chatty build loses the middle of its largest
/// logs rather than its whole result.
pub const MAX_RESULT_BYTES: usize = MAX_UPLOAD_BYTES as usize - 64 * 1024;

/// Largest serial console log the agent keeps per VM; past it, a note says
/// how much was cut. A guest printing without end costs disk only up to
/// here.
pub const MAX_CONSOLE_LOG_BYTES: u64 = 16 * 1024 * 1024;

/// Name of the result operation with which the guest reports a failure of
/// its own (bad task, clone failure, engine error) rather than a build's.
/// The only operation besides the task's board builds that the agent
/// accepts from a guest.
pub const WORKER_OPERATION: &str = "worker";

/// Name of the operation with which the agent reports what went wrong with
/// the machine or the guest (never accepted from the guest).
pub const MACHINE_OPERATION: &str = "machine";

/// Which of the contract's two phases a VM is in; it decides what the guest
/// may GET and PUT and which mode its init starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// First boot of a machine revision for a toolchain: GET the toolchain's
    /// files, PUT the bootstrap manifest.
    Bootstrap,
    /// A build task: GET the task manifest, PUT the result manifest.
    Task,
}

impl Phase {
    /// The mode's name, as written to fw_cfg and the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Bootstrap => "bootstrap",
            Phase::Task => "task",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
