//! The result of a task and the request that delivers it to a controller.

use super::fields::{push_unknown, Fields};
use super::{expect_count, Document, SingleManifest};
use crate::error::Error;
use crate::status::ResultStatus;
use crate::text::{Manifest, NameValue};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::{Entry, HashMap};

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

    /// The operation named `name`. A linear scan: for a caller's handful of
    /// lookups; code that looks up every operation should build its own map.
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
        // The result comes from an untrusted guest and is read on the
        // agent's only control thread: every pair must cost O(1), so
        // operations are found by name through a map, not by a scan (15 MiB
        // of tiny operations took minutes that way). `HashMap`'s default
        // hasher is randomly keyed, so the guest cannot pick colliding names.
        let statuses =
            f.take_where(|n| n.len() > STATUS_SUFFIX.len() && n.ends_with(STATUS_SUFFIX));
        let mut operations: Vec<OperationResult> = Vec::with_capacity(statuses.len());
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(statuses.len());
        for nv in statuses {
            let op = operation_of(nv, STATUS_SUFFIX).unwrap_or_default();
            let Entry::Vacant(slot) = index.entry(op) else {
                return Err(f.error_at(
                    nv,
                    format!("duplicate field '{}' in result manifest", nv.name),
                ));
            };
            operations.push(OperationResult {
                name: op.to_string(),
                status: f.parse_value(nv)?,
                log: None,
            });
            slot.insert(operations.len() - 1);
        }
        for nv in f.take_where(|n| n.len() > LOG_SUFFIX.len() && n.ends_with(LOG_SUFFIX)) {
            let op = operation_of(nv, LOG_SUFFIX).unwrap_or_default();
            let Some(entry) = index.get(op).and_then(|&i| operations.get_mut(i)) else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::parse_manifest;

    fn error(text: &str) -> (u64, u64, String) {
        let m = parse_manifest(text.as_bytes(), "r").unwrap();
        let e = ResultManifest::from_manifest(&m).unwrap_err();
        (
            e.position().line,
            e.position().column,
            e.message().to_string(),
        )
    }

    const HEAD: &str = ": 1\nname: p\nversion: 1\nstatus: error\n";

    #[test]
    fn duplicates_and_stray_logs_are_named_where_they_are() {
        assert_eq!(
            error(&format!(
                "{HEAD}a@0-status: skip\nb@0-status: skip\na@0-status: error\n"
            )),
            (
                7,
                13,
                "duplicate field 'a@0-status' in result manifest".into()
            )
        );
        assert_eq!(
            error(&format!("{HEAD}a@0-status: skip\na@0-log: x\nb@1-log: y\n")),
            (7, 10, "'b@1-log' has no matching 'b@1-status' field".into())
        );
        // A log before its status is fine; a second log is not.
        assert_eq!(
            error(&format!("{HEAD}a@0-log: x\na@0-status: skip\na@0-log: y\n")),
            (7, 10, "duplicate field 'a@0-log' in result manifest".into())
        );
        // Statuses are checked before logs, whatever the order.
        assert_eq!(
            error(&format!("{HEAD}z-log: x\na-status: ok\n")),
            (6, 11, "invalid 'a-status' value: invalid status 'ok' (expected one of skip, success, warning, error, abort, abnormal, interrupt)".into())
        );
    }

    #[test]
    fn operations_keep_their_order_and_logs() {
        let text =
            format!("{HEAD}b@1-status: error\na@0-status: success\na@0-log: fine\nb@1-log: bad\n");
        let r =
            ResultManifest::from_manifest(&parse_manifest(text.as_bytes(), "r").unwrap()).unwrap();
        let ops: Vec<_> = r
            .operations
            .iter()
            .map(|o| (o.name.as_str(), o.status, o.log.as_deref()))
            .collect();
        assert_eq!(
            ops,
            [
                ("b@1", ResultStatus::Error, Some("bad")),
                ("a@0", ResultStatus::Success, Some("fine")),
            ]
        );
    }
}
