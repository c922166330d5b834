//! Manifests exchanged by the bbot agent, its controllers and its guests.
//!
//! Two layers, so that each protocol lives in one place:
//! - [`text`]: the build2 manifest text format (parse, serialize, streams),
//!   knowing nothing about what the pairs mean;
//! - [`bbot`]: the typed manifests of PROTOCOLS.md sections 2 and 6 (machine,
//!   toolchain, bootstrap, task request/response, task, result), each
//!   checked on the way in and written in canonical order on the way out,
//!   with unknown fields kept;
//! - [`guest`]: the guest contract's names, keys and limits, shared by the
//!   agent and the guest.
//!
//! ```
//! use manifests::{Document, ResultManifest, OperationResult, ResultStatus};
//! let mut result = ResultManifest::new("u-boot", "2026.01");
//! result.push_operation(OperationResult {
//!     name: "sandbox@0".into(),
//!     status: ResultStatus::Warning,
//!     log: Some("warning: unused variable".into()),
//! });
//! let text = result.to_text().unwrap();
//! assert_eq!(ResultManifest::parse(text.as_bytes(), "result").unwrap(), result);
//! ```

pub mod bbot;
pub mod detect;
mod error;
pub mod guest;
mod status;
pub mod summary;
pub mod text;

pub use bbot::{
    Board, BootstrapManifest, BootstrappedMachineManifest, BuildSetting, Document, MacAddress,
    MachineHeader, MachineManifest, MachineRole, MachineType, OperationResult, ResultManifest,
    ResultRequestManifest, SingleManifest, TaskManifest, TaskRequestManifest, TaskResponseManifest,
    ToolchainManifest,
};
pub use error::Error;
pub use status::{InvalidStatus, ResultStatus};
pub use text::{
    parse_manifest, parse_stream, sanitize_text, serialize_manifest, serialize_stream, Manifest,
    NameValue, ParseError, Position, SerializeError,
};
