//! The agent-facing protocol, as brep serves it (PROTOCOLS.md section 3):
//! `POST <url>?build-task` with a task request manifest answers 200 with a
//! task response (empty `session` when nothing matches the machines
//! offered); `POST <url>?build-result` with a result request answers 200 —
//! also for an unknown or ended session, which is logged and ignored, as
//! brep does, so that an agent's spool does not retry it for ever.
//!
//! Order of a result's handling matters: the lease is looked up, the
//! signature checked, then the merge is committed in one transaction and
//! only then is 200 sent — an agent that got 200 may forget the result.

use manifests::{
    Document, MachineRole, ResultRequestManifest, TaskRequestManifest, TaskResponseManifest,
};

use crate::auth::{self, AuthError};
use crate::db::{self, Applied, DbError, NewLease};
use crate::http::{Request, RequestHead, Response, MANIFEST_TYPE};
use crate::jobs::{self, JobError};
use crate::merge;
use crate::metrics::ResultOutcome;
use crate::state::State;

/// Largest task request: a few machine headers, a few KiB in practice.
pub const TASK_REQUEST_LIMIT: u64 = 1024 * 1024;
/// Largest result request: the agent and guest cap a result at 15 MiB.
pub const RESULT_REQUEST_LIMIT: u64 = 16 * 1024 * 1024;

/// Why a protocol request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Not `text/manifest`.
    #[error("expected Content-Type: {MANIFEST_TYPE}, got {0}")]
    ContentType(String),
    /// The body is not a valid manifest of the expected kind.
    #[error("{0}")]
    Manifest(#[from] manifests::Error),
    /// Authentication is on and the agent is not known.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The result's signature does not check out.
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored job does not fit its task.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The response could not be written.
    #[error("cannot write the task response: {0}")]
    Serialize(String),
}

impl ProtocolError {
    fn status(&self) -> u16 {
        match self {
            ProtocolError::ContentType(_) => 415,
            ProtocolError::Manifest(_) => 400,
            ProtocolError::Auth(AuthError::Random(_))
            | ProtocolError::Db(_)
            | ProtocolError::Job(_)
            | ProtocolError::Serialize(_) => 500,
            ProtocolError::Unauthorized(_) | ProtocolError::Auth(_) => 401,
        }
    }
}

fn check_type(head: &RequestHead) -> Result<(), ProtocolError> {
    match head.media_type() {
        Some(t) if t == MANIFEST_TYPE => Ok(()),
        other => Err(ProtocolError::ContentType(
            other.unwrap_or_else(|| "none".into()),
        )),
    }
}

fn answer(result: Result<Response, ProtocolError>, what: &str, head: &RequestHead) -> Response {
    result.unwrap_or_else(|e| {
        let status = e.status();
        let peer = head.remote.map(|a| a.to_string()).unwrap_or_default();
        if status >= 500 {
            tracing::error!(peer, status, error = %e, "{what} failed");
        } else {
            tracing::warn!(peer, status, error = %e, "{what} refused");
        }
        Response::text(status, e.to_string())
    })
}

/// A short, loggable form of a session (the whole one lets a result in).
fn short(session: &str) -> &str {
    session.get(..8).unwrap_or(session)
}

/// `POST ?build-task`.
pub fn task_request(state: &State, req: &Request) -> Response {
    answer(try_task_request(state, req), "task request", &req.head)
}

fn try_task_request(state: &State, req: &Request) -> Result<Response, ProtocolError> {
    check_type(&req.head)?;
    let tr = TaskRequestManifest::parse(&req.body, "task request")?;
    let fingerprint = match &state.keys {
        None => None,
        Some(keys) => {
            let fp = tr
                .fingerprint
                .as_deref()
                .map(|f| f.trim().to_ascii_lowercase())
                .ok_or_else(|| {
                    ProtocolError::Unauthorized(format!(
                        "agent {} sent no fingerprint and --agent-keys is set",
                        tr.agent
                    ))
                })?;
            if keys.get(&fp).is_none() {
                return Err(ProtocolError::Unauthorized(format!(
                    "agent {} fingerprint {fp} is not in --agent-keys",
                    tr.agent
                )));
            }
            Some(fp)
        }
    };
    let now = db::now();
    state
        .agents
        .saw(&tr, req.head.remote.map(|a| a.ip().to_string()), now);
    let machines: Vec<&str> = tr
        .machines
        .iter()
        .filter(|m| m.role != Some(MachineRole::Auxiliary))
        .map(|m| m.name.as_str())
        .collect();
    let no_task = || -> Result<Response, ProtocolError> {
        let text = TaskResponseManifest::no_task()
            .to_text()
            .map_err(|e| ProtocolError::Serialize(e.to_string()))?;
        Ok(Response::manifest(text))
    };
    if machines.is_empty() {
        return no_task();
    }
    let session = auth::random_hex(16)?;
    let challenge = match fingerprint {
        Some(_) => Some(auth::new_challenge()?),
        None => None,
    };
    let lease = NewLease {
        session: session.clone(),
        agent: tr.agent.clone(),
        toolchain: tr.toolchain_name.clone(),
        fingerprint,
        challenge: challenge.clone(),
        now,
        expires: now + state.config.lease.as_secs_f64(),
    };
    let machines = machines.into_iter().map(String::from).collect();
    let Some(claimed) = state.db.claim(machines, lease)? else {
        tracing::debug!(agent = %tr.agent, toolchain = %tr.toolchain_name, "no task");
        return no_task();
    };
    state.metrics.leased();
    let task = jobs::task_manifest(
        claimed.job.id,
        &claimed.job.spec,
        &claimed.task.cells,
        &claimed.machine,
    )?;
    let response = TaskResponseManifest {
        session: session.clone(),
        challenge,
        result_url: Some(state.result_url()),
        upload_urls: Vec::new(),
        agent_checksum: None,
        task: Some(task),
        extra: Vec::new(),
    };
    let text = response
        .to_text()
        .map_err(|e| ProtocolError::Serialize(e.to_string()))?;
    tracing::info!(
        job = claimed.job.id,
        task = claimed.task.id,
        attempt = claimed.task.attempt,
        agent = %tr.agent,
        toolchain = %tr.toolchain_name,
        machine = %claimed.machine,
        session = short(&session),
        cells = claimed.task.cells.len(),
        "task leased"
    );
    Ok(Response::manifest(text))
}

/// `POST ?build-result`.
pub fn result_request(state: &State, req: &Request) -> Response {
    answer(try_result_request(state, req), "result", &req.head)
}

fn stale(state: &State, session: &str, why: &str) -> Response {
    state.metrics.result(ResultOutcome::Stale);
    tracing::warn!(
        session = short(session),
        why,
        "result ignored (stale session); answered 200 as brep does"
    );
    Response::typed(200, "text/plain; charset=utf-8", Vec::new())
}

fn try_result_request(state: &State, req: &Request) -> Result<Response, ProtocolError> {
    check_type(&req.head)?;
    let rr = ResultRequestManifest::parse(&req.body, "result request")?;
    let Some(lease) = state.db.lease(&rr.session)? else {
        return Ok(stale(state, &rr.session, "unknown session"));
    };
    if let Some(outcome) = &lease.outcome {
        return Ok(stale(
            state,
            &rr.session,
            &format!("session already ended ({outcome})"),
        ));
    }
    match (&lease.challenge, &lease.fingerprint, &state.keys) {
        (Some(challenge), Some(fp), Some(keys)) => {
            if let Err(e) = keys.verify(fp, challenge, rr.challenge.as_deref()) {
                state.metrics.result(ResultOutcome::Refused);
                tracing::warn!(
                    agent = %lease.agent,
                    machine = %lease.machine,
                    task = lease.task_id,
                    session = short(&rr.session),
                    error = %e,
                    "result refused: authentication failed"
                );
                return Err(e.into());
            }
        }
        (Some(_), _, None) => tracing::warn!(
            agent = %lease.agent,
            "task was handed out with a challenge but --agent-keys is no longer set: result accepted unverified"
        ),
        (None, _, Some(_)) => tracing::warn!(
            agent = %lease.agent,
            "task was handed out before --agent-keys was set: result accepted unverified"
        ),
        _ => {}
    }
    let result = rr.result;
    let status = result.status;
    let applied = state
        .db
        .apply_result(&rr.session, status, db::now(), move |job, task| {
            if result.name != job.spec.name || result.version != job.spec.version {
                tracing::warn!(
                    task = task.id,
                    got = %format!("{} {}", result.name, result.version),
                    "result names another package than its task"
                );
            }
            merge::merge(&job.spec, &task.cells, task.attempt, &result)
        })?;
    match applied {
        Applied::Stale(why) => Ok(stale(state, &rr.session, &why)),
        Applied::Merged {
            job_id,
            task_id,
            finished,
            retried,
            job_finished,
            note,
            ignored,
        } => {
            state.metrics.result(ResultOutcome::Accepted);
            if !ignored.is_empty() {
                tracing::warn!(
                    job = job_id,
                    task = task_id,
                    operations = %ignored.join(" "),
                    "result operations that match no cell of the task were ignored"
                );
            }
            tracing::info!(
                job = job_id,
                task = task_id,
                agent = %lease.agent,
                status = %status,
                cells_finished = finished,
                retry_tasks = ?retried,
                note = note.as_deref().unwrap_or(""),
                job_finished,
                "result merged"
            );
            Ok(Response::typed(
                200,
                "text/plain; charset=utf-8",
                Vec::new(),
            ))
        }
    }
}
