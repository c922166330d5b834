//! Telling which bbot document a file holds, so a person can check any
//! manifest by hand without naming its kind.

use crate::bbot::{
    BootstrapManifest, BootstrappedMachineManifest, Document, MachineHeader, MachineManifest,
    ResultManifest, ResultRequestManifest, TaskManifest, TaskRequestManifest, TaskResponseManifest,
    ToolchainManifest,
};
use crate::error::Error;
use crate::text::{serialize_stream, Manifest};
use std::fmt;
use std::str::FromStr;

/// The kinds of document the checker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A machine manifest (`manifest` in a revision subvolume).
    Machine,
    /// A machine header (as offered in a task request).
    MachineHeader,
    /// A toolchain manifest.
    Toolchain,
    /// A bootstrap manifest (what the guest uploads after bootstrap).
    Bootstrap,
    /// The three-manifest stream of a bootstrapped machine.
    BootstrappedMachine,
    /// A task request (agent → controller).
    TaskRequest,
    /// A task response (controller → agent).
    TaskResponse,
    /// A task.
    Task,
    /// A result.
    Result,
    /// A result request (agent → controller).
    ResultRequest,
    /// Well-formed manifest text of no particular kind.
    Generic,
}

const NAMES: [(&str, Kind); 11] = [
    ("machine", Kind::Machine),
    ("machine-header", Kind::MachineHeader),
    ("toolchain", Kind::Toolchain),
    ("bootstrap", Kind::Bootstrap),
    ("bootstrapped-machine", Kind::BootstrappedMachine),
    ("task-request", Kind::TaskRequest),
    ("task-response", Kind::TaskResponse),
    ("task", Kind::Task),
    ("result", Kind::Result),
    ("result-request", Kind::ResultRequest),
    ("generic", Kind::Generic),
];

impl Kind {
    /// Every kind's command-line spelling.
    pub fn names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|(n, _)| *n)
    }

    /// Guesses the kind from the fields present: each bbot document has a
    /// field no other has at its start.
    pub fn detect(stream: &[Manifest]) -> Kind {
        let has = |i: usize, name: &str| stream.get(i).is_some_and(|m| m.get(name).is_some());
        let only_versions = |i: usize| {
            stream.get(i).is_some_and(|m| {
                !m.values.is_empty() && m.values.iter().all(|nv| nv.name.ends_with("-version"))
            })
        };
        if has(0, "session") {
            if has(1, "status") {
                Kind::ResultRequest
            } else {
                Kind::TaskResponse
            }
        } else if has(0, "agent") && has(0, "toolchain-name") {
            Kind::TaskRequest
        } else if has(0, "status") {
            Kind::Result
        } else if has(0, "machine") && (has(0, "repository-url") || has(0, "repository")) {
            Kind::Task
        } else if has(0, "type") && stream.len() == 3 {
            Kind::BootstrappedMachine
        } else if has(0, "type") {
            Kind::Machine
        } else if has(0, "summary") {
            Kind::MachineHeader
        } else if only_versions(0) {
            Kind::Bootstrap
        } else if has(0, "id") && stream[0].values.len() == 1 {
            Kind::Toolchain
        } else {
            Kind::Generic
        }
    }

    /// Checks a parsed stream as this kind and writes it back in canonical
    /// form (known fields in order, unknown ones kept after them).
    pub fn normalize(self, stream: &[Manifest], source: &str) -> Result<String, Error> {
        fn via<D: Document>(stream: &[Manifest], source: &str) -> Result<String, Error> {
            D::from_stream(stream, source)?.to_text()
        }
        match self {
            Kind::Machine => via::<MachineManifest>(stream, source),
            Kind::MachineHeader => via::<MachineHeader>(stream, source),
            Kind::Toolchain => via::<ToolchainManifest>(stream, source),
            Kind::Bootstrap => via::<BootstrapManifest>(stream, source),
            Kind::BootstrappedMachine => via::<BootstrappedMachineManifest>(stream, source),
            Kind::TaskRequest => via::<TaskRequestManifest>(stream, source),
            Kind::TaskResponse => via::<TaskResponseManifest>(stream, source),
            Kind::Task => via::<TaskManifest>(stream, source),
            Kind::Result => via::<ResultManifest>(stream, source),
            Kind::ResultRequest => via::<ResultRequestManifest>(stream, source),
            Kind::Generic => Ok(serialize_stream(stream)?),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = NAMES
            .iter()
            .find(|(_, k)| k == self)
            .map_or("generic", |(n, _)| n);
        f.write_str(name)
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                format!(
                    "unknown manifest kind '{s}' (expected one of: {})",
                    Kind::names().collect::<Vec<_>>().join(", ")
                )
            })
    }
}
