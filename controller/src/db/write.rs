//! Every change to the database, each one all-or-nothing (a savepoint of
//! the writer's batch, see `writer`) and committed before it returns:
//! submit a job, lease a task, take a result, expire leases.

use manifests::ResultStatus;
use rusqlite::{params, Connection, OptionalExtension};

use std::sync::Arc;

use super::{from_json, status, to_json, Db, DbError, JobRow, LeaseRow, Specs, TaskRow};
use crate::jobs::{JobSpec, TaskCells};
use crate::merge::{CellOutcome, Expiry, Merge};

/// A lease about to be made.
#[derive(Debug, Clone)]
pub struct NewLease {
    /// Fresh random session.
    pub session: String,
    /// Agent name.
    pub agent: String,
    /// Agent toolchain.
    pub toolchain: String,
    /// Agent key fingerprint.
    pub fingerprint: Option<String>,
    /// Challenge to send.
    pub challenge: Option<String>,
    /// Now, Unix seconds.
    pub now: f64,
    /// Lease end, Unix seconds.
    pub expires: f64,
}

/// A task just leased.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Its job.
    pub job: JobRow,
    /// The task.
    pub task: TaskRow,
    /// The offered machine it matched.
    pub machine: String,
}

/// What taking a result did.
#[derive(Debug, Clone)]
pub enum Applied {
    /// Merged into the table.
    Merged {
        /// Job id.
        job_id: i64,
        /// Task id.
        task_id: i64,
        /// Cells now final.
        finished: usize,
        /// New tasks for cells to try again.
        retried: Vec<i64>,
        /// The job has no pending cell left.
        job_finished: bool,
        /// The merge's note.
        note: Option<String>,
        /// Operations that matched no cell.
        ignored: Vec<String>,
    },
    /// The session is unknown or its lease ended: nothing changed.
    Stale(String),
}

/// A lease that ran out.
#[derive(Debug, Clone)]
pub struct Expired {
    /// The lease.
    pub lease: LeaseRow,
    /// Its job.
    pub job_id: i64,
    /// What became of the task.
    pub outcome: Expiry,
}

/// A task row as stored, before its JSON and status are checked.
struct RawTask {
    id: i64,
    job_id: i64,
    boards: String,
    commits: String,
    state: String,
    attempt: u32,
    result: Option<String>,
    note: Option<String>,
}

fn task_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawTask> {
    Ok(RawTask {
        id: r.get(0)?,
        job_id: r.get(1)?,
        boards: r.get(2)?,
        commits: r.get(3)?,
        state: r.get(4)?,
        attempt: r.get(5)?,
        result: r.get(6)?,
        note: r.get(7)?,
    })
}

pub(super) const TASK_COLUMNS: &str =
    "id, job_id, boards, commits, state, attempt, result_status, note";

/// Reads a task row selected with [`TASK_COLUMNS`].
pub(super) fn load_task(conn: &Connection, id: i64) -> Result<TaskRow, DbError> {
    let raw = conn
        .query_row(
            &format!("SELECT {TASK_COLUMNS} FROM task WHERE id = ?1"),
            [id],
            task_row,
        )
        .optional()?
        .ok_or_else(|| DbError::Corrupt(format!("task {id} missing")))?;
    Ok(TaskRow {
        id: raw.id,
        job_id: raw.job_id,
        cells: TaskCells {
            boards: from_json(&raw.boards, "task boards")?,
            commits: from_json(&raw.commits, "task commits")?,
        },
        state: raw.state,
        attempt: raw.attempt,
        result_status: status(raw.result)?,
        note: raw.note,
    })
}

pub(super) fn load_job(
    conn: &Connection,
    specs: &Specs,
    id: i64,
) -> Result<Option<JobRow>, DbError> {
    let times: Option<(f64, Option<f64>)> = conn
        .query_row(
            "SELECT created, finished FROM job WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((created, finished)) = times else {
        return Ok(None);
    };
    let spec = match specs.get(id) {
        Some(spec) => spec,
        None => {
            let text: String =
                conn.query_row("SELECT spec FROM job WHERE id = ?1", [id], |r| r.get(0))?;
            let spec: Arc<JobSpec> = Arc::new(from_json(&text, "job spec")?);
            specs.put(id, Arc::clone(&spec));
            spec
        }
    };
    Ok(Some(JobRow {
        id,
        spec,
        created,
        finished,
    }))
}

pub(super) fn lease_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LeaseRow> {
    Ok(LeaseRow {
        session: r.get(0)?,
        task_id: r.get(1)?,
        agent: r.get(2)?,
        toolchain: r.get(3)?,
        fingerprint: r.get(4)?,
        machine: r.get(5)?,
        challenge: r.get(6)?,
        issued: r.get(7)?,
        expires: r.get(8)?,
        ended: r.get(9)?,
        outcome: r.get(10)?,
    })
}

pub(super) const LEASE_COLUMNS: &str =
    "session, task_id, agent, toolchain, fingerprint, machine, challenge, issued, expires, ended, outcome";

fn insert_task(
    tx: &Connection,
    job_id: i64,
    cells: &TaskCells,
    attempt: u32,
    parent: Option<i64>,
    note: Option<&str>,
    now: f64,
) -> Result<i64, DbError> {
    tx.execute(
        "INSERT INTO task (job_id, boards, commits, state, attempt, parent, note, created, updated)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?7)",
        params![
            job_id,
            to_json(&cells.boards)?,
            to_json(&cells.commits)?,
            attempt,
            parent,
            note,
            now
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Fills final cells (only those still without a status); returns how
/// many changed.
fn finish_cells(
    tx: &Connection,
    job_id: i64,
    task_id: i64,
    cells: &[CellOutcome],
    now: f64,
) -> Result<usize, DbError> {
    let mut stmt = tx.prepare_cached(
        "UPDATE cell SET status = ?4, log = ?5, task_id = ?6, finished = ?7
         WHERE job_id = ?1 AND board = ?2 AND commit_idx = ?3 AND status IS NULL",
    )?;
    let mut n = 0;
    for c in cells {
        n += stmt.execute(params![
            job_id,
            c.board as i64,
            c.commit as i64,
            c.status.as_str(),
            c.log,
            task_id,
            now
        ])?;
    }
    Ok(n)
}

/// Counts `finished` cells off the job's pending ones and marks the job
/// finished when none is left; returns whether it is.
fn close_job_if_done(
    tx: &Connection,
    job_id: i64,
    finished: usize,
    now: f64,
) -> Result<bool, DbError> {
    let pending: i64 = tx.query_row(
        "UPDATE job SET pending = pending - ?2 WHERE id = ?1 RETURNING pending",
        params![job_id, finished as i64],
        |r| r.get(0),
    )?;
    if pending <= 0 {
        tx.execute(
            "UPDATE job SET finished = ?2 WHERE id = ?1 AND finished IS NULL",
            params![job_id, now],
        )?;
    }
    Ok(pending <= 0)
}

impl Db {
    /// Stores a checked job with its cells and first tasks; returns its id
    /// and number of tasks.
    pub fn insert_job(&self, spec: &JobSpec, now: f64) -> Result<(i64, usize), DbError> {
        let spec = spec.clone();
        self.write(true, move |tx| {
            tx.execute(
                "INSERT INTO job (spec, machine, pending, created) VALUES (?1, ?2, ?3, ?4)",
                params![to_json(&spec)?, spec.machine, spec.cells() as i64, now],
            )?;
            let id = tx.last_insert_rowid();
            {
                let mut cell = tx.prepare_cached(
                    "INSERT INTO cell (job_id, board, commit_idx) VALUES (?1, ?2, ?3)",
                )?;
                for b in 0..spec.boards.len() {
                    for c in 0..spec.columns() {
                        cell.execute(params![id, b as i64, c as i64])?;
                    }
                }
            }
            let tasks = spec.split();
            for t in &tasks {
                insert_task(tx, id, t, 1, None, None, now)?;
            }
            Ok((id, tasks.len()))
        })
    }

    /// Leases the oldest queued task (oldest job first) whose job's machine
    /// glob matches one of `machines`, on the first such machine.
    pub fn claim(
        &self,
        machines: Vec<String>,
        lease: NewLease,
    ) -> Result<Option<Claimed>, DbError> {
        let specs = Arc::clone(&self.specs);
        self.write(false, move |tx| {
            // Running jobs wanting one of the machines (oldest job first,
            // and its first matching machine), then each job's oldest
            // queued task: the cost follows the number of running jobs,
            // not of queued tasks, so agents whose machines nobody wants
            // stay cheap however long the queue is.
            let mut wanted: Vec<(i64, &str)> = Vec::new();
            {
                let mut q = tx.prepare_cached(
                    "SELECT id FROM job WHERE finished IS NULL AND ?1 GLOB machine",
                )?;
                for m in &machines {
                    for id in q.query_map([m], |r| r.get::<_, i64>(0))? {
                        let id = id?;
                        if !wanted.iter().any(|(j, _)| *j == id) {
                            wanted.push((id, m.as_str()));
                        }
                    }
                }
            }
            wanted.sort_by_key(|(j, _)| *j);
            let mut found = None;
            {
                let mut q = tx.prepare_cached(
                    "SELECT id FROM task WHERE state = 'queued' AND job_id = ?1 ORDER BY id LIMIT 1",
                )?;
                for (job, machine) in wanted {
                    if let Some(task) = q.query_row([job], |r| r.get::<_, i64>(0)).optional()? {
                        found = Some((job, task, machine));
                        break;
                    }
                }
            }
            let Some((job_id, task_id, machine)) = found else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE task SET state = 'leased', session = ?2, updated = ?3 WHERE id = ?1",
                params![task_id, lease.session, lease.now],
            )?;
            tx.execute(
                &format!("INSERT INTO lease ({LEASE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, NULL)"),
                params![
                    lease.session,
                    task_id,
                    lease.agent,
                    lease.toolchain,
                    lease.fingerprint,
                    machine,
                    lease.challenge,
                    lease.now,
                    lease.expires
                ],
            )?;
            let task = load_task(tx, task_id)?;
            let job = load_job(tx, &specs, job_id)?
                .ok_or_else(|| DbError::Corrupt(format!("job {job_id} missing")))?;
            Ok(Some(Claimed {
                job,
                task,
                machine: machine.to_string(),
            }))
        })
    }

    /// Takes the result for `session`: `merge` decides from the job and
    /// task; the lease ends, cells fill, retries are queued — all in one
    /// transaction that is committed when this returns.
    pub fn apply_result(
        &self,
        session: &str,
        result_status: ResultStatus,
        now: f64,
        merge: impl FnOnce(&JobRow, &TaskRow) -> Merge + Send + 'static,
    ) -> Result<Applied, DbError> {
        let session = session.to_string();
        let specs = Arc::clone(&self.specs);
        self.write(true, move |tx| {
            let lease = tx
                .query_row(
                    &format!("SELECT {LEASE_COLUMNS} FROM lease WHERE session = ?1"),
                    [&session],
                    lease_row,
                )
                .optional()?;
            let Some(lease) = lease else {
                return Ok(Applied::Stale("unknown session".into()));
            };
            if let Some(outcome) = &lease.outcome {
                return Ok(Applied::Stale(format!("session already ended ({outcome})")));
            }
            let task = load_task(tx, lease.task_id)?;
            let job = load_job(tx, &specs, task.job_id)?
                .ok_or_else(|| DbError::Corrupt(format!("job {} missing", task.job_id)))?;
            let m = merge(&job, &task);
            tx.execute(
                "UPDATE lease SET ended = ?2, outcome = 'result' WHERE session = ?1",
                params![&session, now],
            )?;
            tx.execute(
                "UPDATE task SET state = 'done', session = NULL, result_status = ?2, note = ?3, updated = ?4
                 WHERE id = ?1",
                params![task.id, result_status.as_str(), m.note, now],
            )?;
            let finished = finish_cells(tx, job.id, task.id, &m.finished, now)?;
            if finished != m.finished.len() {
                tracing::warn!(
                    job = job.id,
                    task = task.id,
                    "{} cell(s) already had a status and were left as they were",
                    m.finished.len() - finished
                );
            }
            let mut retried = Vec::new();
            for cells in &m.retry {
                retried.push(insert_task(
                    tx,
                    job.id,
                    cells,
                    task.attempt + 1,
                    Some(task.id),
                    m.note.as_deref(),
                    now,
                )?);
            }
            let job_finished = close_job_if_done(tx, job.id, finished, now)?;
            Ok(Applied::Merged {
                job_id: job.id,
                task_id: task.id,
                finished,
                retried,
                job_finished,
                note: m.note,
                ignored: m.ignored,
            })
        })
    }

    /// Ends every lease that ran out by `now`; `decide` says, per task,
    /// whether it goes back to the queue or is given up, and the note kept
    /// with the task.
    pub fn expire_leases(
        &self,
        now: f64,
        decide: impl Fn(&JobSpec, &TaskRow, &LeaseRow) -> (Expiry, String) + Send + 'static,
    ) -> Result<Vec<Expired>, DbError> {
        let specs = Arc::clone(&self.specs);
        self.write(false, move |tx| {
            let leases: Vec<LeaseRow> = {
                let mut q = tx.prepare_cached(&format!(
                    "SELECT {LEASE_COLUMNS} FROM lease WHERE ended IS NULL AND expires <= ?1"
                ))?;
                let rows = q.query_map([now], lease_row)?;
                rows.collect::<Result<_, _>>()?
            };
            let mut out = Vec::new();
            for lease in leases {
                tx.execute(
                    "UPDATE lease SET ended = ?2, outcome = 'expired' WHERE session = ?1",
                    params![lease.session, now],
                )?;
                let task = load_task(tx, lease.task_id)?;
                let job = load_job(tx, &specs, task.job_id)?
                    .ok_or_else(|| DbError::Corrupt(format!("job {} missing", task.job_id)))?;
                let (outcome, note) = decide(&job.spec, &task, &lease);
                match &outcome {
                    Expiry::Requeue(attempt) => {
                        tx.execute(
                            "UPDATE task SET state = 'queued', session = NULL, attempt = ?2, note = ?3, updated = ?4
                             WHERE id = ?1",
                            params![task.id, attempt, note, now],
                        )?;
                    }
                    Expiry::GiveUp(cells) => {
                        tx.execute(
                            "UPDATE task SET state = 'done', session = NULL, result_status = 'abort', note = ?2, updated = ?3
                             WHERE id = ?1",
                            params![task.id, note, now],
                        )?;
                        let n = finish_cells(tx, job.id, task.id, cells, now)?;
                        close_job_if_done(tx, job.id, n, now)?;
                    }
                }
                out.push(Expired {
                    lease,
                    job_id: job.id,
                    outcome,
                });
            }
            Ok(out)
        })
    }
}
