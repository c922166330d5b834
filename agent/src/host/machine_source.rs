//! Where the machines offered to controllers come from: real enumeration
//! of `--machines` (with bootstraps), or `--fake-machine`, a bare machine
//! header dressed up as a bootstrapped machine (bbot's diagnostic mode).
//!
//! Why here and not in the work loop: the loop only asks "what can I
//! offer?"; whether the answer comes from btrfs or from a file is the host
//! layer's business.

use std::path::{Path, PathBuf};

use manifests::{
    BootstrappedMachineManifest, Document, MachineHeader, MachineManifest, MachineType,
    ToolchainManifest,
};

use crate::base::fsutil;
use crate::host::locks::HoldFor;
use crate::host::machines::{BootstrappedMachine, HeldMachine, Machines, MachinesError};
use crate::vm::fake::fake_bootstrap_manifest;

/// Where the offered machines come from.
pub enum MachineSource<'a> {
    /// Real enumeration of `--machines`.
    Enumerate(Machines<'a>),
    /// `--fake-machine`: this machine, nothing on disk; re-read from the file
    /// (when it is one) on SIGHUP.
    Fake(Box<BootstrappedMachine>, Option<FakeMachineFile>),
}

impl MachineSource<'_> {
    /// This round's machines (enumeration may bootstrap).
    pub fn offered(&self) -> Result<Vec<BootstrappedMachine>, MachinesError> {
        match self {
            MachineSource::Enumerate(m) => m.enumerate(),
            MachineSource::Fake(m, _) => Ok(vec![(**m).clone()]),
        }
    }

    /// The machines other instances run tasks on now (none with
    /// `--fake-machine`): what a priority monitor may interrupt, and whose
    /// priorities the `B` rule looks at.
    pub fn running_tasks(&self) -> Vec<HeldMachine> {
        let MachineSource::Enumerate(m) = self else {
            return Vec::new();
        };
        match m.held() {
            Ok(v) => v
                .into_iter()
                .filter(|h| h.holder.hold == HoldFor::Task)
                .collect(),
            Err(e) => {
                tracing::error!("{e}");
                Vec::new()
            }
        }
    }

    /// Whether another instance holds any machine now (so an empty offer
    /// means "busy", not "nothing to offer").
    pub fn any_held(&self) -> bool {
        match self {
            MachineSource::Enumerate(m) => m.held().is_ok_and(|v| !v.is_empty()),
            MachineSource::Fake(..) => false,
        }
    }

    /// SIGHUP: re-reads the `--fake-machine` file (machines are looked at
    /// afresh every round anyway).
    pub fn reread(&mut self) {
        if let MachineSource::Fake(m, Some(f)) = self {
            match f.read() {
                Ok(new) => **m = new,
                Err(e) => tracing::error!("{e}; keeping the previous machine"),
            }
        }
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
        lock: None,
    }
}
