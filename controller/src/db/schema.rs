//! The schema and its migrations. `PRAGMA user_version` holds the version;
//! `MIGRATIONS[i]` takes a database from version `i` to `i + 1`, each in
//! its own transaction, so an interrupted upgrade leaves a database at a
//! version this code knows how to continue from.
//!
//! Tables:
//! - `job`: the checked job (`spec`, JSON of `JobSpec`), its machine glob
//!   (a column of its own for the `GLOB` of the task query), the number
//!   of cells still pending (so completion is not a count per result),
//!   times; running jobs are indexed, the task query starts from them.
//! - `cell`: one row per board × column; `status` NULL until final. The
//!   primary key makes "every cell exactly once" structural, and results
//!   only ever fill cells whose status is still NULL.
//! - `task`: boards × columns of a job (JSON index lists), `queued` →
//!   `leased` → `done`; `attempt` counts the lineage's attempts; a retry of
//!   part of a task is a new row with `parent`.
//! - `lease`: every hand-out of a task: session, agent, machine, challenge,
//!   expiry, and how it ended (`result` or `expired`).

use rusqlite::Connection;

use super::DbError;

/// Version `i + 1` is reached by running `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE job (
        id       INTEGER PRIMARY KEY,
        spec     TEXT NOT NULL,
        machine  TEXT NOT NULL,
        pending  INTEGER NOT NULL,
        created  REAL NOT NULL,
        finished REAL
    );
    CREATE INDEX job_running ON job(id) WHERE finished IS NULL;
    CREATE TABLE cell (
        job_id     INTEGER NOT NULL REFERENCES job(id),
        board      INTEGER NOT NULL,
        commit_idx INTEGER NOT NULL,
        status     TEXT,
        log        TEXT,
        task_id    INTEGER,
        finished   REAL,
        PRIMARY KEY (job_id, board, commit_idx)
    ) WITHOUT ROWID;
    CREATE TABLE task (
        id            INTEGER PRIMARY KEY,
        job_id        INTEGER NOT NULL REFERENCES job(id),
        boards        TEXT NOT NULL,
        commits       TEXT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done')),
        attempt       INTEGER NOT NULL,
        parent        INTEGER REFERENCES task(id),
        session       TEXT UNIQUE,
        result_status TEXT,
        note          TEXT,
        created       REAL NOT NULL,
        updated       REAL NOT NULL
    );
    CREATE INDEX task_queue ON task(state, job_id, id);
    CREATE INDEX task_job ON task(job_id);
    CREATE TABLE lease (
        session     TEXT PRIMARY KEY,
        task_id     INTEGER NOT NULL REFERENCES task(id),
        agent       TEXT NOT NULL,
        toolchain   TEXT NOT NULL,
        fingerprint TEXT,
        machine     TEXT NOT NULL,
        challenge   TEXT,
        issued      REAL NOT NULL,
        expires     REAL NOT NULL,
        ended       REAL,
        outcome     TEXT
    );
    CREATE INDEX lease_open ON lease(expires) WHERE ended IS NULL;
    CREATE INDEX lease_task ON lease(task_id);
    "#,
];

/// The schema version this code writes.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings `conn` to [`VERSION`]; refuses a database from a newer
/// controller rather than guess at its meaning.
pub fn migrate(conn: &mut Connection) -> Result<u32, DbError> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > VERSION {
        return Err(DbError::TooNew {
            found,
            known: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as u32 + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", version))
            .and_then(|()| tx.commit())
            .map_err(|source| DbError::Migration { version, source })?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer() {
        let mut c = Connection::open_in_memory().expect("db");
        assert_eq!(migrate(&mut c).expect("migrate"), 0);
        assert_eq!(migrate(&mut c).expect("again"), VERSION);
        let v: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, VERSION);
        c.pragma_update(None, "user_version", VERSION + 1)
            .expect("bump");
        assert!(matches!(migrate(&mut c), Err(DbError::TooNew { .. })));
    }
}
