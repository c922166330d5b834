//! The `Machine` seam: what the agent needs from "something that boots a
//! machine", so that the bookkeeping (subvolumes, controllers, results) is the
//! same whether the guest is real (QEMU, next issue) or faked (`--fake-*`).
//!
//! Contract for implementations:
//! - they boot from the subvolume they are given and never touch any other;
//!   snapshot creation and deletion stay with the caller;
//! - they poll `cancel` regularly; once it is set they force the VM down and
//!   return [`RunnerError::Interrupted`] promptly (the caller then deletes the
//!   snapshot and reports an `interrupt` result);
//! - timeouts are theirs to enforce and are reported as [`RunnerError::Timeout`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use manifests::{
    BootstrapManifest, BootstrappedMachineManifest, MacAddress, MachineManifest, ResultManifest,
    TaskManifest,
};

use crate::cancel::Cancel;

/// Host-side VM settings from the command line, handed to a runner when it is
/// built (the QEMU runner needs all of them; fakes ignore them).
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
    /// Toolchain instance number on this host (distinguishes VMs of several agents).
    pub toolchain_num: u16,
}

/// One bootstrap: boot `subvolume` (a fresh writable snapshot of the machine's
/// current revision), let the guest bootstrap, wait for a clean shutdown.
#[derive(Debug)]
pub struct BootstrapJob<'a> {
    /// The machine manifest of the revision being bootstrapped.
    pub machine: &'a MachineManifest,
    /// Writable snapshot to boot from; it becomes `<name>-<toolchain>` on success.
    pub subvolume: &'a Path,
    /// MAC address the VM gets (recorded in the bootstrapped manifest).
    pub mac: MacAddress,
    /// `--bootstrap-timeout`.
    pub timeout: Duration,
}

/// One task: boot `subvolume` (a throw-away snapshot of `<name>-<toolchain>`),
/// hand the guest the task, collect its result, force the VM down.
#[derive(Debug)]
pub struct TaskJob<'a> {
    /// The task as received (after `--trust` was applied).
    pub task: &'a TaskManifest,
    /// The bootstrapped machine the task runs on.
    pub machine: &'a BootstrappedMachineManifest,
    /// Snapshot to boot from; `None` with `--fake-machine` (nothing to boot).
    pub subvolume: Option<&'a Path>,
    /// `--build-timeout`.
    pub timeout: Duration,
}

/// Why a runner did not produce what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Stop requested (SIGTERM/SIGINT); the VM was forced down.
    #[error("interrupted")]
    Interrupted,
    /// The guest missed a deadline.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// Which deadline (startup, bootstrap, build, shutdown).
        what: String,
        /// The deadline's length.
        after: Duration,
    },
    /// This runner cannot do that (e.g. no VM support compiled in or configured).
    #[error("{0}")]
    Unsupported(String),
    /// The VM or the guest failed.
    #[error("{0}")]
    Failed(String),
}

/// Boots machines for bootstraps and tasks. Implemented by the fakes now and by
/// the QEMU runner in the VM issue.
pub trait MachineRunner: Send + Sync {
    /// Bootstraps the machine in `job.subvolume` and returns the bootstrap
    /// manifest the guest uploaded (`<package>-version` pairs).
    fn bootstrap(
        &self,
        job: &BootstrapJob<'_>,
        cancel: &Cancel,
    ) -> Result<BootstrapManifest, RunnerError>;

    /// Runs `job.task` and returns the result manifest the guest uploaded. The
    /// caller fixes up name/version and turns errors into `abnormal` /
    /// `interrupt` results.
    fn run_task(&self, job: &TaskJob<'_>, cancel: &Cancel) -> Result<ResultManifest, RunnerError>;
}

/// The runner used when no VM support is available: every request fails with a
/// clear message pointing at the `--fake-*` options.
#[derive(Debug, Default)]
pub struct NoVmRunner;

impl MachineRunner for NoVmRunner {
    fn bootstrap(
        &self,
        _: &BootstrapJob<'_>,
        _: &Cancel,
    ) -> Result<BootstrapManifest, RunnerError> {
        Err(RunnerError::Unsupported(
            "booting machines is not available in this build; use --fake-bootstrap".into(),
        ))
    }

    fn run_task(&self, _: &TaskJob<'_>, _: &Cancel) -> Result<ResultManifest, RunnerError> {
        Err(RunnerError::Unsupported(
            "booting machines is not available in this build; use --fake-build".into(),
        ))
    }
}
