//! Typed bbot manifests (PROTOCOLS.md sections 2 and 6).
//!
//! Each kind reads from and writes to [`Manifest`]s, checks required
//! fields and value syntax, and keeps unknown fields (in order) so that a
//! manifest passed through the agent loses nothing a newer peer wrote.

mod fields;
mod machine;
mod result;
mod task;

pub use machine::{
    BootstrapManifest, BootstrappedMachineManifest, MacAddress, MachineHeader, MachineManifest,
    MachineRole, MachineType, ToolchainManifest, WORKER_GUEST_PACKAGE,
};
pub use result::{OperationResult, ResultManifest, ResultRequestManifest};
pub use task::{Board, BuildSetting, TaskManifest, TaskRequestManifest, TaskResponseManifest};

use crate::error::Error;
use crate::text::{parse_stream, serialize_stream, Manifest};

/// A bbot document: one manifest or a fixed stream of them, read and
/// written as a whole. The agent, the guest and the tests all go through
/// this, so every document is checked the same way wherever it enters.
pub trait Document: Sized {
    /// What the document is called in error messages ("task", "result").
    const KIND: &'static str;

    /// Reads the document from parsed manifests; `source` names the input.
    fn from_stream(stream: &[Manifest], source: &str) -> Result<Self, Error>;

    /// The manifests that make up the document, in order.
    fn to_stream(&self) -> Vec<Manifest>;

    /// Parses and checks text.
    fn parse(input: &[u8], source: &str) -> Result<Self, Error> {
        let stream = parse_stream(input, source)?;
        Self::from_stream(&stream, source)
    }

    /// Writes the document as manifest text.
    fn to_text(&self) -> Result<String, Error> {
        Ok(serialize_stream(&self.to_stream())?)
    }
}

/// A document that is exactly one manifest.
pub trait SingleManifest: Sized {
    /// What the manifest is called in error messages.
    const KIND: &'static str;
    /// Reads and checks the manifest.
    fn from_manifest(manifest: &Manifest) -> Result<Self, Error>;
    /// Writes the manifest (known fields first, then unknown ones).
    fn to_manifest(&self) -> Manifest;
}

impl<T: SingleManifest> Document for T {
    const KIND: &'static str = T::KIND;

    fn from_stream(stream: &[Manifest], source: &str) -> Result<Self, Error> {
        expect_count(stream, source, 1, T::KIND)?;
        T::from_manifest(&stream[0])
    }

    fn to_stream(&self) -> Vec<Manifest> {
        vec![self.to_manifest()]
    }
}

/// Checks that a stream has exactly `n` manifests, naming the first extra
/// one or the missing count.
pub(crate) fn expect_count(
    stream: &[Manifest],
    source: &str,
    n: usize,
    kind: &str,
) -> Result<(), Error> {
    use crate::text::Position;
    if stream.len() > n {
        return Err(Error::invalid(
            source,
            stream[n].start,
            format!("unexpected manifest #{} in {kind} (expected {n})", n + 1),
        ));
    }
    if stream.len() < n {
        let at = stream
            .last()
            .map_or(Position { line: 1, column: 1 }, |m| m.start);
        return Err(Error::invalid(
            source,
            at,
            format!("{kind} needs {n} manifest(s), found {}", stream.len()),
        ));
    }
    Ok(())
}
