//! Performing one task: snapshot the bootstrapped machine, hand it to the
//! [`MachineRunner`], delete the snapshot, and always come back with a result
//! manifest (the runner's, or an `interrupt`/`abnormal` one made up here).
//!
//! Why always a result: the controller waits for one, and "the VM broke" is
//! information the controller's users need (`abnormal`), not a silent gap.

use std::time::Duration;

use manifests::{sanitize_text, OperationResult, ResultManifest, ResultStatus, TaskManifest};

use crate::base::cancel::Cancel;
use crate::host::machines::{BootstrappedMachine, TempSubvolume};
use crate::vm::runner::{MachineRunner, RunnerError, TaskJob, TaskObserver};

/// What performing a task needs besides the task and the machine.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// `--toolchain-name` (temporary snapshots are `<name>-<toolchain>-...`).
    pub toolchain_name: String,
    /// `--instance` (in temporary snapshot names).
    pub instance: u16,
    /// `--build-timeout`.
    pub build_timeout: Duration,
    /// `--trust` fingerprints; when non-empty they replace the task's list.
    pub trust: Vec<String>,
}

/// Applies the agent's `--trust` overrides to a task (bbot semantics: the
/// agent's list, when given, replaces the controller's).
pub fn apply_trust(task: &mut TaskManifest, trust: &[String]) {
    if !trust.is_empty() {
        task.trust = trust.to_vec();
    }
}

/// A result with status `status` and no operations, for tasks that never got
/// to produce one.
pub fn status_result(task: &TaskManifest, status: ResultStatus) -> ResultManifest {
    let mut r = ResultManifest::new(task.name.clone(), task.version.clone());
    r.status = status;
    r.worker_checksum = task.worker_checksum.clone();
    r.dependency_checksum = task.dependency_checksum.clone();
    r
}

/// How one task runs beyond the agent's settings: the controller's boost
/// flag, and who hears of a suspended VM.
pub struct RunAs<'a> {
    /// Every hardware thread for the VM (the `F` digit).
    pub boost: bool,
    /// Told when the VM is suspended (the machine lock's record).
    pub observer: &'a dyn TaskObserver,
}

/// Runs `task` on `machine` and returns its result. The temporary snapshot is
/// deleted before this returns, whatever happened.
pub fn perform(
    task: &TaskManifest,
    machine: &BootstrappedMachine,
    runner: &dyn MachineRunner,
    cfg: &TaskConfig,
    how: &RunAs<'_>,
    cancel: &Cancel,
) -> ResultManifest {
    // Snapshot the bootstrapped machine (not with --fake-machine: nothing to copy).
    let snapshot = match &machine.dir {
        Some(md) => {
            match TempSubvolume::snapshot(&machine.path, md.temp(&cfg.toolchain_name, cfg.instance))
            {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!("task {} {}: {e}", task.name, task.version);
                    return status_result(task, ResultStatus::Abnormal);
                }
            }
        }
        None => None,
    };
    let job = TaskJob {
        task,
        machine: &machine.manifest,
        subvolume: snapshot.as_ref().map(TempSubvolume::path),
        timeout: cfg.build_timeout,
        boost: how.boost,
        observer: how.observer,
    };
    let outcome = runner.run_task(&job, cancel);
    if let Some(s) = snapshot {
        if let Err(e) = s.delete() {
            tracing::error!("{e}");
        }
    }
    match outcome {
        // A guest's upload was vetted against the task by the runner
        // (`result_check`); a fake runner's result is the agent's own.
        Ok(r) => r,
        Err(RunnerError::Interrupted) => {
            tracing::warn!("task {} {} interrupted", task.name, task.version);
            status_result(task, ResultStatus::Interrupt)
        }
        Err(e) => {
            tracing::error!("task {} {}: {e}", task.name, task.version);
            failure_result(task, &e)
        }
    }
}

pub use manifests::guest::MACHINE_OPERATION;

/// The result of a task whose machine failed: bbot's `abort` for a missed
/// deadline (the operation was cut short), `abnormal` for a machine or
/// guest that broke, with the reason as the `machine` operation's log so
/// the controller's users see what happened.
pub fn failure_result(task: &TaskManifest, error: &RunnerError) -> ResultManifest {
    let status = match error {
        RunnerError::Timeout { .. } => ResultStatus::Abort,
        RunnerError::Interrupted => ResultStatus::Interrupt,
        RunnerError::Unsupported(_) | RunnerError::Failed(_) => ResultStatus::Abnormal,
    };
    let mut r = status_result(task, ResultStatus::Skip);
    r.push_operation(OperationResult {
        name: MACHINE_OPERATION.to_string(),
        status,
        log: Some(sanitize_text(&error.to_string())),
    });
    r
}
