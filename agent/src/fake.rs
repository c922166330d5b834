//! `--fake-bootstrap` / `--fake-build`: a [`MachineRunner`] that pretends, as
//! bbot's agent does, so that the control plane (subvolumes, controllers,
//! results, signals) can be exercised without a VM.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::path::{Path, PathBuf};

use manifests::{
    BootstrapManifest, BootstrappedMachineManifest, Document, MachineHeader, MachineManifest,
    MachineType, OperationResult, ResultManifest, ResultStatus, ToolchainManifest,
};

use crate::cancel::Cancel;
use crate::fsutil;
use crate::machines::BootstrappedMachine;
use crate::runner::{BootstrapJob, MachineRunner, RunnerError, TaskJob};
use crate::version::{AGENT_PACKAGE, AGENT_VERSION, WORKER_GUEST_PACKAGE, WORKER_GUEST_VERSION};

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

/// Fakes bootstraps and/or builds; whatever it does not fake goes to `real`.
pub struct FakeRunner {
    fake_bootstrap: bool,
    fake_build: bool,
    build_result: FakeBuildResult,
    build_duration: Duration,
    real: Box<dyn MachineRunner>,
    bootstraps: AtomicUsize,
    builds: AtomicUsize,
}

impl FakeRunner {
    /// Fakes what the flags say; `build_duration` makes a fake build take time
    /// (interruptible), which is how the signal test catches a task in flight.
    pub fn new(
        fake_bootstrap: bool,
        fake_build: bool,
        build_duration: Duration,
        real: Box<dyn MachineRunner>,
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
            return self.real.bootstrap(job, cancel);
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
            return self.real.run_task(job, cancel);
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

/// `--fake-machine` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FakeMachineError {
    /// The file cannot be read.
    #[error("--fake-machine: cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a machine header manifest.
    #[error("--fake-machine: {0}")]
    Manifest(#[from] manifests::Error),
}

/// Where `--fake-machine` comes from, so that SIGHUP can read it again.
#[derive(Debug, Clone)]
pub struct FakeMachineFile {
    /// The file (`-` for stdin, which is read once only).
    pub path: PathBuf,
    /// `--machines` (the fake machine's nominal location).
    pub machines: PathBuf,
    /// Toolchain id to record.
    pub toolchain_id: String,
}

impl FakeMachineFile {
    /// Reads the machine header and dresses it up as a bootstrapped machine
    /// (bbot does the same: the header is all a controller sees).
    pub fn read(&self) -> Result<BootstrappedMachine, FakeMachineError> {
        let bytes =
            fsutil::read_file_or_stdin(&self.path).map_err(|source| FakeMachineError::Io {
                path: self.path.clone(),
                source,
            })?;
        let header = MachineHeader::parse(&bytes, &fsutil::source_name(&self.path))?;
        Ok(fake_machine(header, &self.machines, &self.toolchain_id))
    }

    /// Whether SIGHUP can read it again (not stdin).
    pub fn rereadable(&self) -> bool {
        self.path != Path::new("-")
    }
}

/// A bootstrapped machine made from a bare header, for `--fake-machine`.
pub fn fake_machine(
    header: MachineHeader,
    machines: &Path,
    toolchain_id: &str,
) -> BootstrappedMachine {
    BootstrappedMachine {
        path: machines.join(&header.name),
        dir: None,
        manifest: BootstrappedMachineManifest {
            machine: MachineManifest {
                header,
                machine_type: MachineType::Kvm,
                mac: None,
                options: None,
                changes: None,
                extra: Vec::new(),
            },
            toolchain: ToolchainManifest {
                id: toolchain_id.to_string(),
                extra: Vec::new(),
            },
            bootstrap: fake_bootstrap_manifest(),
        },
    }
}
