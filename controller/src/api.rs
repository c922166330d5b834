//! The JSON API: the same views as the pages, and job submission.
//!
//! `POST /api/jobs` takes a [`JobRequest`] and answers 201 with the job's
//! id; with `--submit-token-file` it needs `Authorization: Bearer <token>`.

use serde::{Deserialize, Serialize};

use crate::db;
use crate::http::{Request, Response};
use crate::jobs::JobRequest;
use crate::state::{State, RECENT};

/// Largest job submission: 10,000 boards and 1,000 commits fit.
pub const SUBMIT_LIMIT: u64 = 1024 * 1024;

/// The answer to a submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    /// The new job's id.
    pub id: i64,
    /// Tasks it was split into.
    pub tasks: usize,
    /// Board × commit cells.
    pub cells: usize,
    /// Its page.
    pub url: String,
}

fn db_error(e: &db::DbError) -> Response {
    tracing::error!(error = %e, "API request failed");
    Response::json_error(500, e.to_string())
}

/// Compares without an early exit, so the time taken says nothing about
/// how much of a guessed token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /api/jobs`.
pub fn submit(state: &State, req: &Request) -> Response {
    if let Some(token) = &state.config.submit_token {
        let given = req
            .head
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            tracing::warn!(peer = ?req.head.remote, "job submission without the right token");
            return Response::json_error(401, "job submission needs Authorization: Bearer <token>");
        }
    }
    match req.head.media_type().as_deref() {
        Some("application/json") => {}
        other => {
            return Response::json_error(
                415,
                format!(
                    "expected Content-Type: application/json, got {}",
                    other.unwrap_or("none")
                ),
            )
        }
    }
    let request: JobRequest = match serde_json::from_slice(&req.body) {
        Ok(r) => r,
        Err(e) => return Response::json_error(400, format!("invalid job JSON: {e}")),
    };
    let spec = match request.into_spec(state.config.defaults) {
        Ok(s) => s,
        Err(e) => return Response::json_error(400, e.to_string()),
    };
    let (id, tasks) = match state.db.insert_job(&spec, db::now()) {
        Ok(x) => x,
        Err(e) => return db_error(&e),
    };
    tracing::info!(
        job = id,
        repository = %spec.repository_url(),
        boards = spec.boards.len(),
        commits = spec.commits.len(),
        machine = %spec.machine,
        tasks,
        "job submitted"
    );
    Response::json(
        201,
        &Submitted {
            id,
            tasks,
            cells: spec.cells(),
            url: format!("{}jobs/{id}", state.config.base_url),
        },
    )
    .with_header("Location", format!("/api/jobs/{id}"))
}

/// `GET /api/jobs`.
pub fn jobs(state: &State) -> Response {
    match state.db.jobs() {
        Ok(j) => Response::json(200, &j),
        Err(e) => db_error(&e),
    }
}

/// `GET /api/jobs/ID`.
pub fn job(state: &State, id: i64) -> Response {
    match state.db.job(id) {
        Ok(Some(j)) => Response::json(200, &j),
        Ok(None) => Response::json_error(404, format!("no job {id}")),
        Err(e) => db_error(&e),
    }
}

/// `GET /api/jobs/ID/cells/B/C`.
pub fn cell(state: &State, id: i64, board: usize, commit: usize) -> Response {
    match state.db.cell(id, board, commit) {
        Ok(Some(c)) => Response::json(200, &c),
        Ok(None) => Response::json_error(404, format!("no cell {board}/{commit} in job {id}")),
        Err(e) => db_error(&e),
    }
}

/// `GET /api/agents`.
pub fn agents(state: &State) -> Response {
    match state.db.open_leases() {
        Ok(leases) => Response::json(
            200,
            &state
                .agents
                .recent(db::now() - RECENT.as_secs_f64(), &leases),
        ),
        Err(e) => db_error(&e),
    }
}
