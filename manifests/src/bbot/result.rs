//! The result of a task and the request that delivers it to a controller.

use super::fields::{push_unknown, Fields};
use super::{expect_count, Document, SingleManifest};
use crate::error::Error;
use crate::status::ResultStatus;
use crate::text::{Manifest, NameValue};
use serde::{Deserialize, Serialize};

const STATUS_SUFFIX: &str = "-status";
const LOG_SUFFIX: &str = "-log";

/// The outcome of one operation (for board builds, one board at one
/// commit: `<target>@<commit_upto>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationResult {
    /// Operation name; written as `<name>-status` and `<name>-log`.
    pub name: String,
    /// How it went.
    pub status: ResultStatus,
    /// What it printed (build stderr then stdout), if kept.
    pub log: Option<String>,
}

/// A task's result: overall status and one status (and log) per operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultManifest {
    /// Package name (from the task).
    pub name: String,
    /// Package version (from the task).
    pub version: String,
    /// Overall status; the worst operation status when built with
    /// [`ResultManifest::push_operation`].
    pub status: ResultStatus,
    /// Operations in the order they ran.
    pub operations: Vec<OperationResult>,
    /// Checksum of the worker that produced this result.
    pub worker_checksum: Option<String>,
    /// Checksum of the dependencies the build used.
    pub dependency_checksum: Option<String>,
    /// Unknown fields, in order.
    pub extra: Vec<(String, String)>,
}

impl ResultManifest {
    /// An empty result (status `skip`) for a task, to which operations are
    /// added as they finish.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        ResultManifest {
            name: name.into(),
            version: version.into(),
            status: ResultStatus::Skip,
            operations: Vec::new(),
            worker_checksum: None,
            dependency_checksum: None,
            extra: Vec::new(),
        }
    }

    /// Adds an operation and merges its status into the overall one.
    pub fn push_operation(&mut self, op: OperationResult) {
        self.status = self.status.merge(op.status);
        self.operations.push(op);
    }

    /// The worst operation status (`skip` with no operations).
    pub fn worst_operation_status(&self) -> ResultStatus {
        self.operations
            .iter()
            .fold(ResultStatus::Skip, |acc, op| acc.merge(op.status))
    }

    /// The operation named `name`.
    pub fn operation(&self, name: &str) -> Option<&OperationResult> {
        self.operations.iter().find(|op| op.name == name)
    }
}

fn operation_of<'a>(nv: &'a NameValue, suffix: &str) -> Option<&'a str> {
    nv.name.strip_suffix(suffix).filter(|op| !op.is_empty())
}

impl SingleManifest for ResultManifest {
    const KIND: &'static str = "result";

    fn from_manifest(manifest: &Manifest) -> Result<Self, Error> {
        let mut f = Fields::new(manifest, <Self as SingleManifest>::KIND);
        let name = f.required("name")?;
        let version = f.required("version")?;
        let status = f.required_parsed("status")?;
        let worker_checksum = f.optional_string("worker-checksum")?;
        let dependency_checksum = f.optional_string("dependency-checksum")?;
        let mut operations: Vec<OperationResult> = Vec::new();
        for nv in f.take_where(|n| n.len() > STATUS_SUFFIX.len() && n.ends_with(STATUS_SUFFIX)) {
            let op = operation_of(nv, STATUS_SUFFIX).unwrap_or_default();
            if operations.iter().any(|o| o.name == op) {
                return Err(f.error_at(
                    nv,
                    format!("duplicate field '{}' in result manifest", nv.name),
                ));
            }
            operations.push(OperationResult {
                name: op.to_string(),
                status: f.parse_value(nv)?,
                log: None,
            });
        }
        for nv in f.take_where(|n| n.len() > LOG_SUFFIX.len() && n.ends_with(LOG_SUFFIX)) {
            let op = operation_of(nv, LOG_SUFFIX).unwrap_or_default();
            let Some(entry) = operations.iter_mut().find(|o| o.name == op) else {
                return Err(f.error_at(
                    nv,
                    format!("'{}' has no matching '{op}{STATUS_SUFFIX}' field", nv.name),
                ));
            };
            if entry.log.is_some() {
                return Err(f.error_at(
                    nv,
                    format!("duplicate field '{}' in result manifest", nv.name),
                ));
            }
            entry.log = Some(nv.value.clone());
        }
        Ok(ResultManifest {
            name,
            version,
            status,
            operations,
            worker_checksum,
            dependency_checksum,
            extra: f.unknown(),
        })
    }

    fn to_manifest(&self) -> Manifest {
        let mut m = Manifest::new("");
        m.push("name", &self.name);
        m.push("version", &self.version);
        m.push("status", self.status.as_str());
        // Statuses first, then logs, as bbot writes them: the summary reads
        // at the top of the file and the bulky logs follow.
        for op in &self.operations {
            m.push(format!("{}{STATUS_SUFFIX}", op.name), op.status.as_str());
        }
        for op in &self.operations {
            if let Some(log) = &op.log {
                m.push(format!("{}{LOG_SUFFIX}", op.name), log);
            }
        }
        m.push_opt("worker-checksum", self.worker_checksum.as_deref());
        m.push_opt("dependency-checksum", self.dependency_checksum.as_deref());
        push_unknown(&mut m, &self.extra);
        m
    }
}

/// What the agent POSTs to the controller's `result-url`: the session it
/// answers, the signed challenge, and the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRequestManifest {
    /// The session from the task response.
    pub session: String,
    /// Base64 signature of the challenge.
    pub challenge: Option<String>,
    /// The agent's checksum.
    pub agent_checksum: Option<String>,
    /// The result.
    pub result: ResultManifest,
    /// Unknown fields of the request manifest, in order.
    pub extra: Vec<(String, String)>,
}

impl Document for ResultRequestManifest {
    const KIND: &'static str = "result request";

    fn from_stream(stream: &[Manifest], source: &str) -> Result<Self, Error> {
        expect_count(stream, source, 2, Self::KIND)?;
        let mut f = Fields::new(&stream[0], Self::KIND);
        let session = f.required("session")?;
        let challenge = f.optional_string("challenge")?;
        let agent_checksum = f.optional_string("agent-checksum")?;
        let extra = f.unknown();
        let result = ResultManifest::from_manifest(&stream[1])?;
        Ok(ResultRequestManifest {
            session,
            challenge,
            agent_checksum,
            result,
            extra,
        })
    }

    fn to_stream(&self) -> Vec<Manifest> {
        let mut m = Manifest::new("");
        m.push("session", &self.session);
        m.push_opt("challenge", self.challenge.as_deref());
        m.push_opt("agent-checksum", self.agent_checksum.as_deref());
        push_unknown(&mut m, &self.extra);
        vec![m, self.result.to_manifest()]
    }
}
