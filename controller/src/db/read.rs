//! Reads for pages, API, metrics and the result path's lease lookup. All
//! go through reader connections, so they never wait for the writer.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, OptionalExtension};

use super::write::{lease_row, load_job, LEASE_COLUMNS};
use super::{from_json, index, status, Db, DbError, JobRow, LeaseRow};
use crate::jobs::TaskCells;
use crate::views::{
    count_key, CellLog, CellState, CellView, JobState, JobSummary, JobView, LeaseView, TaskView,
};

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Tasks per state.
    pub tasks: BTreeMap<String, u64>,
    /// Done tasks per result status.
    pub tasks_done: BTreeMap<String, u64>,
    /// Cells per status (`pending` without one).
    pub cells: BTreeMap<String, u64>,
    /// Jobs running and finished.
    pub jobs: BTreeMap<String, u64>,
    /// Leases that ran out, ever.
    pub lease_expiries: u64,
    /// Leases ended by a result, ever.
    pub leases_reported: u64,
}

fn job_state(finished: Option<f64>) -> JobState {
    if finished.is_some() {
        JobState::Finished
    } else {
        JobState::Running
    }
}

fn counts(conn: &Connection, job: i64) -> Result<BTreeMap<String, usize>, DbError> {
    let mut q =
        conn.prepare_cached("SELECT status, COUNT(*) FROM cell WHERE job_id = ?1 GROUP BY status")?;
    let rows = q.query_map([job], |r| {
        Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (st, n) = row?;
        out.insert(count_key(status(st)?), n as usize);
    }
    Ok(out)
}

fn summary(conn: &Connection, job: &JobRow) -> Result<JobSummary, DbError> {
    Ok(JobSummary {
        id: job.id,
        name: job.spec.name.clone(),
        repository: job.spec.repository.clone(),
        reference: job.spec.reference.clone(),
        machine: job.spec.machine.clone(),
        boards: job.spec.boards.len(),
        columns: job.spec.columns(),
        counts: counts(conn, job.id)?,
        state: job_state(job.finished),
        created: job.created,
        finished: job.finished,
    })
}

impl Db {
    /// The lease with this session.
    pub fn lease(&self, session: &str) -> Result<Option<LeaseRow>, DbError> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {LEASE_COLUMNS} FROM lease WHERE session = ?1"),
                    [session],
                    lease_row,
                )
                .optional()?)
        })
    }

    /// Every job, newest first.
    pub fn jobs(&self) -> Result<Vec<JobSummary>, DbError> {
        self.read(|conn| {
            let ids: Vec<i64> = {
                let mut q = conn.prepare_cached("SELECT id FROM job ORDER BY id DESC")?;
                let rows = q.query_map([], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(job) = load_job(conn, &self.specs, id)? {
                    out.push(summary(conn, &job)?);
                }
            }
            Ok(out)
        })
    }

    /// A job with its table and tasks.
    pub fn job(&self, id: i64) -> Result<Option<JobView>, DbError> {
        self.read(|conn| {
            let Some(job) = load_job(conn, &self.specs, id)? else {
                return Ok(None);
            };
            let tasks = tasks(conn, id)?;
            // Which unfinished task holds each pending cell.
            let mut holder: HashMap<(usize, usize), (i64, CellState)> = HashMap::new();
            for t in tasks.iter().filter(|t| t.state != "done") {
                let state = if t.state == "leased" {
                    CellState::Building
                } else {
                    CellState::Queued
                };
                let cells = TaskCells {
                    boards: t.boards.clone(),
                    commits: t.commits.clone(),
                };
                for cell in cells.cells() {
                    holder.insert(cell, (t.id, state));
                }
            }
            let mut cells = Vec::with_capacity(job.spec.cells());
            {
                let mut q = conn.prepare_cached(
                    "SELECT board, commit_idx, status, task_id, COALESCE(length(CAST(log AS BLOB)), 0)
                     FROM cell WHERE job_id = ?1 ORDER BY board, commit_idx",
                )?;
                let rows = q.query_map([id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })?;
                for row in rows {
                    let (b, c, st, task, log_bytes) = row?;
                    let (board, commit) = (index(b)?, index(c)?);
                    let st = status(st)?;
                    let (task, state) = match (st, holder.get(&(board, commit))) {
                        (Some(_), _) => (task, CellState::Done),
                        (None, Some((t, s))) => (Some(*t), *s),
                        (None, None) => (None, CellState::Queued),
                    };
                    cells.push(CellView {
                        board,
                        commit,
                        status: st,
                        state,
                        task,
                        log_bytes: log_bytes.max(0) as u64,
                    });
                }
            }
            let spec = &job.spec;
            Ok(Some(JobView {
                id,
                name: spec.name.clone(),
                version: spec.version.clone(),
                repository: spec.repository.clone(),
                reference: spec.reference.clone(),
                target: spec.target.clone(),
                machine: spec.machine.clone(),
                boards: spec.boards.clone(),
                commits: spec.commits.clone(),
                build_settings: spec.settings.iter().map(ToString::to_string).collect(),
                boards_per_task: spec.boards_per_task,
                max_attempts: spec.max_attempts,
                state: job_state(job.finished),
                created: job.created,
                finished: job.finished,
                counts: counts(conn, id)?,
                cells,
                tasks,
            }))
        })
    }

    /// One cell with its log.
    pub fn cell(&self, job: i64, board: usize, commit: usize) -> Result<Option<CellLog>, DbError> {
        self.read(|conn| {
            let Some(row) = load_job(conn, &self.specs, job)? else {
                return Ok(None);
            };
            let Some(b) = row.spec.boards.get(board) else {
                return Ok(None);
            };
            if commit >= row.spec.columns() {
                return Ok(None);
            }
            let found: Option<(Option<String>, Option<String>, Option<i64>)> = conn
                .query_row(
                    "SELECT status, log, task_id FROM cell WHERE job_id = ?1 AND board = ?2 AND commit_idx = ?3",
                    rusqlite::params![job, board as i64, commit as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((st, log, task)) = found else {
                return Ok(None);
            };
            Ok(Some(CellLog {
                job,
                board: b.clone(),
                board_index: board,
                commit: row.spec.commits.get(commit).cloned(),
                commit_index: commit,
                status: status(st)?,
                task,
                log,
            }))
        })
    }

    /// Every lease not yet ended (tasks agents hold now).
    pub fn open_leases(&self) -> Result<Vec<LeaseView>, DbError> {
        self.read(|conn| {
            let mut q = conn.prepare_cached(
                "SELECT l.agent, l.toolchain, l.machine, t.job_id, l.task_id, l.issued, l.expires
                 FROM lease l JOIN task t ON t.id = l.task_id
                 WHERE l.ended IS NULL ORDER BY l.issued",
            )?;
            let rows = q.query_map([], |r| {
                Ok(LeaseView {
                    agent: r.get(0)?,
                    toolchain: r.get(1)?,
                    machine: r.get(2)?,
                    job: r.get(3)?,
                    task: r.get(4)?,
                    issued: r.get(5)?,
                    expires: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Counts for `/metrics`.
    pub fn stats(&self) -> Result<Stats, DbError> {
        self.read(|conn| {
            let mut s = Stats::default();
            let group = |sql: &str| -> Result<BTreeMap<String, u64>, DbError> {
                let mut q = conn.prepare_cached(sql)?;
                let rows = q.query_map([], |r| {
                    Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?))
                })?;
                let mut m = BTreeMap::new();
                for row in rows {
                    let (k, n) = row?;
                    m.insert(k.unwrap_or_else(|| "pending".into()), n.max(0) as u64);
                }
                Ok(m)
            };
            s.tasks = group("SELECT state, COUNT(*) FROM task GROUP BY state")?;
            s.tasks_done = group(
                "SELECT result_status, COUNT(*) FROM task WHERE state = 'done' GROUP BY result_status",
            )?;
            // Running jobs only: the whole history would make every
            // scrape slower as it grows.
            s.cells = group(
                "SELECT status, COUNT(*) FROM cell
                 WHERE job_id IN (SELECT id FROM job WHERE finished IS NULL) GROUP BY status",
            )?;
            s.jobs = group(
                "SELECT CASE WHEN finished IS NULL THEN 'running' ELSE 'finished' END, COUNT(*)
                 FROM job GROUP BY 1",
            )?;
            let leases = group("SELECT outcome, COUNT(*) FROM lease GROUP BY outcome")?;
            s.lease_expiries = leases.get("expired").copied().unwrap_or(0);
            s.leases_reported = leases.get("result").copied().unwrap_or(0);
            Ok(s)
        })
    }
}

/// Every task of a job, oldest first, with the lease holding it.
fn tasks(conn: &Connection, job: i64) -> Result<Vec<TaskView>, DbError> {
    let mut q = conn.prepare_cached(
        "SELECT t.id, t.boards, t.commits, t.state, t.attempt, t.result_status, t.note,
                l.agent, l.machine, l.expires
         FROM task t LEFT JOIN lease l ON l.session = t.session
         WHERE t.job_id = ?1 ORDER BY t.id",
    )?;
    let rows = q.query_map([job], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, u32>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, Option<String>>(6)?,
            r.get::<_, Option<String>>(7)?,
            r.get::<_, Option<String>>(8)?,
            r.get::<_, Option<f64>>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, boards, commits, state, attempt, result, note, agent, machine, expires) = row?;
        out.push(TaskView {
            id,
            boards: from_json(&boards, "task boards")?,
            commits: from_json(&commits, "task commits")?,
            state,
            attempt,
            result_status: status(result)?,
            note,
            agent,
            machine,
            lease_expires: expires,
        });
    }
    Ok(out)
}
