//! `--fake-bootstrap` / `--fake-build`: a [`MachineRunner`] that pretends, as
//! bbot's agent does, so that the control plane (subvolumes, controllers,
//! results, signals) can be exercised without a VM.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use manifests::{BootstrapManifest, OperationResult, ResultManifest, ResultStatus};

use crate::base::cancel::Cancel;
use crate::base::version::{
    AGENT_PACKAGE, AGENT_VERSION, WORKER_GUEST_PACKAGE, WORKER_GUEST_VERSION,
};
use crate::vm::runner::{BootstrapJob, MachineRunner, RunnerError, TaskJob};

/// What a fake build reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FakeBuildResult {
    /// bbot's `--fake-build`: an `abort` result with no operations, so that
    /// a controller never takes a made-up build for a real one.
    #[default]
    Abort,
    /// A made-up `success` per board × commit ([`fake_result`]): a testing
    /// aid for controllers' tests, asked for explicitly.
    Success,
}

/// Fakes bootstraps and/or builds; whatever it does not fake goes to `real`
/// (the QEMU runner), which is only absent when both phases are faked.
pub struct FakeRunner {
    fake_bootstrap: bool,
    fake_build: bool,
    build_result: FakeBuildResult,
    build_duration: Duration,
    real: Option<Box<dyn MachineRunner>>,
    bootstraps: AtomicUsize,
    builds: AtomicUsize,
}

impl FakeRunner {
    /// Fakes both phases, with no VM at all; `build_duration` makes a fake
    /// build take time (interruptible), which is how the signal test
    /// catches a task in flight.
    pub fn all_fake(build_duration: Duration) -> Self {
        Self::build(true, true, build_duration, None)
    }

    /// Fakes what the flags say and hands the other phase to `real`.
    pub fn new(
        fake_bootstrap: bool,
        fake_build: bool,
        build_duration: Duration,
        real: Box<dyn MachineRunner>,
    ) -> Self {
        Self::build(fake_bootstrap, fake_build, build_duration, Some(real))
    }

    fn build(
        fake_bootstrap: bool,
        fake_build: bool,
        build_duration: Duration,
        real: Option<Box<dyn MachineRunner>>,
    ) -> Self {
        Self {
            fake_bootstrap,
            fake_build,
            build_result: FakeBuildResult::default(),
            build_duration,
            real,
            bootstraps: AtomicUsize::new(0),
            builds: AtomicUsize::new(0),
        }
    }

    /// Makes fake builds report `result` instead of bbot's `abort`.
    pub fn with_build_result(mut self, result: FakeBuildResult) -> Self {
        self.build_result = result;
        self
    }

    /// The runner of the phases not faked; [`FakeRunner::all_fake`] has
    /// none and fakes both, so this only fails on a caller's mistake.
    fn real(&self) -> Result<&dyn MachineRunner, RunnerError> {
        self.real
            .as_deref()
            .ok_or_else(|| RunnerError::Unsupported("no VM runner: every phase is faked".into()))
    }

    /// How many bootstraps were faked so far (lets tests see re-bootstraps).
    pub fn bootstraps(&self) -> usize {
        self.bootstraps.load(Ordering::SeqCst)
    }

    /// How many builds were faked so far.
    pub fn builds(&self) -> usize {
        self.builds.load(Ordering::SeqCst)
    }
}

/// The bootstrap manifest a real guest of this version would upload.
pub fn fake_bootstrap_manifest() -> BootstrapManifest {
    BootstrapManifest {
        versions: vec![
            (AGENT_PACKAGE.to_string(), AGENT_VERSION.to_string()),
            (
                WORKER_GUEST_PACKAGE.to_string(),
                WORKER_GUEST_VERSION.to_string(),
            ),
        ],
        extra: Vec::new(),
    }
}

/// bbot's fake build: `abort`, no operations.
pub fn fake_abort(task: &manifests::TaskManifest) -> ResultManifest {
    let mut r = ResultManifest::new(task.name.clone(), task.version.clone());
    r.status = ResultStatus::Abort;
    r.worker_checksum = task.worker_checksum.clone();
    r.dependency_checksum = task.dependency_checksum.clone();
    r
}

/// A made-up successful result: one operation per board and commit, named
/// `<target>@<commit_upto>` as in PROTOCOLS.md section 6.
pub fn fake_result(task: &manifests::TaskManifest) -> ResultManifest {
    let mut r = ResultManifest::new(task.name.clone(), task.version.clone());
    let commits: Vec<Option<&str>> = if task.commits.is_empty() {
        vec![None]
    } else {
        task.commits.iter().map(|c| Some(c.as_str())).collect()
    };
    for b in &task.boards {
        for (i, c) in commits.iter().enumerate() {
            r.push_operation(OperationResult {
                name: manifests::TaskManifest::operation_name(b, i),
                status: ResultStatus::Success,
                log: Some(format!(
                    "fake build of {} ({}) at {}\n",
                    b.target,
                    b.arch,
                    c.unwrap_or("HEAD")
                )),
            });
        }
    }
    if r.operations.is_empty() {
        r.status = ResultStatus::Success;
    }
    r.worker_checksum = task.worker_checksum.clone();
    r.dependency_checksum = task.dependency_checksum.clone();
    r
}

impl MachineRunner for FakeRunner {
    fn bootstrap(
        &self,
        job: &BootstrapJob<'_>,
        cancel: &Cancel,
    ) -> Result<BootstrapManifest, RunnerError> {
        if !self.fake_bootstrap {
            return self.real()?.bootstrap(job, cancel);
        }
        if cancel.is_cancelled() {
            return Err(RunnerError::Interrupted);
        }
        self.bootstraps.fetch_add(1, Ordering::SeqCst);
        tracing::debug!("fake bootstrap of {}", job.subvolume.display());
        Ok(fake_bootstrap_manifest())
    }

    fn run_task(&self, job: &TaskJob<'_>, cancel: &Cancel) -> Result<ResultManifest, RunnerError> {
        if !self.fake_build {
            return self.real()?.run_task(job, cancel);
        }
        self.builds.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(
            "fake build of {} {} on {}",
            job.task.name,
            job.task.version,
            job.task.machine
        );
        if cancel.sleep(self.build_duration) {
            return Err(RunnerError::Interrupted);
        }
        Ok(match self.build_result {
            FakeBuildResult::Abort => fake_abort(job.task),
            FakeBuildResult::Success => fake_result(job.task),
        })
    }
}
