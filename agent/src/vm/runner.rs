//! The `Machine` seam: what the agent needs from "something that boots a
//! machine", so that the bookkeeping (subvolumes, controllers, results) is the
//! same whether the guest is real (QEMU, [`crate::vm::qemu_runner`]) or faked
//! (`--fake-*`, [`crate::vm::fake`]).
//!
//! Contract for implementations:
//! - they boot from the subvolume they are given and never touch any other;
//!   snapshot creation and deletion stay with the caller;
//! - they poll `cancel` regularly; once it is set they force the VM down and
//!   return [`RunnerError::Interrupted`] promptly (the caller then deletes the
//!   snapshot and reports an `interrupt` result);
//! - timeouts are theirs to enforce and are reported as [`RunnerError::Timeout`].

use std::path::Path;
use std::time::Duration;

use manifests::{
    BootstrapManifest, BootstrappedMachineManifest, MacAddress, MachineManifest, ResultManifest,
    TaskManifest,
};

use crate::base::cancel::Cancel;

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

/// What a runner tells its caller while a task runs.
pub trait TaskObserver: Send + Sync {
    /// The guest missed a deadline and its VM is now suspended for
    /// investigation (a suspended machine is never a priority victim).
    fn suspended(&self);
}

/// An observer that is not interested.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unobserved;

impl TaskObserver for Unobserved {
    fn suspended(&self) {}
}

/// One task: boot `subvolume` (a throw-away snapshot of `<name>-<toolchain>`),
/// hand the guest the task, collect its result, force the VM down.
pub struct TaskJob<'a> {
    /// The task as received (after `--trust` was applied).
    pub task: &'a TaskManifest,
    /// The bootstrapped machine the task runs on.
    pub machine: &'a BootstrappedMachineManifest,
    /// Snapshot to boot from; `None` with `--fake-machine` (nothing to boot).
    pub subvolume: Option<&'a Path>,
    /// `--build-timeout`.
    pub timeout: Duration,
    /// The controller's boost flag: the VM gets every hardware thread of
    /// the host instead of `--cpu`.
    pub boost: bool,
    /// Told when the VM is suspended.
    pub observer: &'a dyn TaskObserver,
}

impl std::fmt::Debug for TaskJob<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskJob")
            .field("task", &self.task.name)
            .field("machine", &self.machine.machine.header.name)
            .field("subvolume", &self.subvolume)
            .field("timeout", &self.timeout)
            .field("boost", &self.boost)
            .finish_non_exhaustive()
    }
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

/// Boots machines for bootstraps and tasks: the QEMU runner, and the fakes
/// that stand in for it in either phase.
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
