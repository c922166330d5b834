//! The controller's only storage: SQLite (bundled) in WAL mode under
//! `--data`. All SQL lives in this module.
//!
//! Why SQLite: jobs, leases and results must survive a crash or a restart,
//! and every change the protocol makes (hand out a task, take a result,
//! expire a lease) is one transaction — committed before the agent gets
//! its answer. WAL lets the web pages read while agents write.
//!
//! Connections: one writer behind a mutex (SQLite has one writer anyway;
//! the mutex also makes "find a queued task, lease it" atomic without
//! retry loops) and a small pool of readers for pages, API and metrics.

mod read;
pub mod schema;
mod write;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use manifests::ResultStatus;
use rusqlite::{Connection, OpenFlags};

use crate::jobs::{JobSpec, TaskCells};

pub use read::Stats;
pub use write::{Applied, Claimed, Expired, NewLease};

/// File name of the database inside `--data`.
pub const DB_FILE: &str = "controller.sqlite";

/// How hard commits are pushed to disk. Every commit survives a crash of
/// the controller (it is in the WAL before anyone is answered); this is
/// about a crash of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// A result or job is fsynced before it is answered, so what an agent
    /// was told is stored survives a power cut (the default). Task
    /// hand-outs are not waited for: a lease lost with the power only
    /// makes its result stale and the task runs again.
    Full,
    /// Nothing waits for the disk (fsync at checkpoints only).
    Normal,
}

/// Anything that went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The `--data` directory cannot be made.
    #[error("cannot create --data directory {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database cannot be opened or set up.
    #[error("cannot open database {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// Written by a newer controller.
    #[error("database schema version {found} is newer than this controller's ({known}); run a newer bbot-controller")]
    TooNew {
        /// Version in the file.
        found: u32,
        /// Newest version this code knows.
        known: u32,
    },
    /// A migration failed (the database stays at the previous version).
    #[error("database migration to version {version} failed: {source}")]
    Migration {
        /// Version being migrated to.
        version: u32,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Stored data that does not parse (changed behind our back).
    #[error("database holds invalid data: {0}")]
    Corrupt(String),
    /// The transaction holding the change could not be committed (or
    /// begun): the change is not stored.
    #[error("database commit failed: {0}")]
    Commit(String),
    /// The writer thread cannot be started.
    #[error("cannot start the database writer thread: {0}")]
    Thread(std::io::Error),
    /// The writer thread is gone (stopping) or the change panicked.
    #[error("the database writer did not carry out the change (see the log)")]
    WriterGone,
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Job id.
    pub id: i64,
    /// The checked job (shared: it never changes once stored).
    pub spec: Arc<JobSpec>,
    /// Submitted, Unix seconds.
    pub created: f64,
    /// All cells final, Unix seconds.
    pub finished: Option<f64>,
}

/// A task as stored.
#[derive(Debug, Clone)]
pub struct TaskRow {
    /// Task id.
    pub id: i64,
    /// Its job.
    pub job_id: i64,
    /// Its cells.
    pub cells: TaskCells,
    /// `queued`, `leased` or `done`.
    pub state: String,
    /// Attempt number of this lineage (1 = first).
    pub attempt: u32,
    /// Overall status of the result that completed it.
    pub result_status: Option<ResultStatus>,
    /// Why it was made or what became of it.
    pub note: Option<String>,
}

/// A lease as stored.
#[derive(Debug, Clone)]
pub struct LeaseRow {
    /// The session (random, secret to the agent).
    pub session: String,
    /// The task.
    pub task_id: i64,
    /// Agent name.
    pub agent: String,
    /// Agent toolchain.
    pub toolchain: String,
    /// The agent's key fingerprint (authentication on).
    pub fingerprint: Option<String>,
    /// Machine the task was given for.
    pub machine: String,
    /// The challenge sent (authentication on).
    pub challenge: Option<String>,
    /// Handed out, Unix seconds.
    pub issued: f64,
    /// Runs out, Unix seconds.
    pub expires: f64,
    /// Ended, Unix seconds.
    pub ended: Option<f64>,
    /// `result` or `expired`.
    pub outcome: Option<String>,
}

/// The database.
pub struct Db {
    path: PathBuf,
    writer: writer::Writer,
    readers: Mutex<Vec<Connection>>,
    specs: Arc<Specs>,
}

/// Parsed job specs by job id. A spec never changes once stored, and every
/// task hand-out and result needs its job's: parsing the JSON each time
/// (tens of KiB for a thousand boards) would cost more than the rest of
/// the request.
#[derive(Default)]
pub(crate) struct Specs(Mutex<HashMap<i64, Arc<JobSpec>>>);

/// Most specs kept; past that the cache starts over (running jobs come
/// back in at their next request).
const MAX_SPECS: usize = 1024;

impl Specs {
    fn get(&self, id: i64) -> Option<Arc<JobSpec>> {
        lock(&self.0).get(&id).cloned()
    }

    fn put(&self, id: i64, spec: Arc<JobSpec>) {
        let mut m = lock(&self.0);
        if m.len() >= MAX_SPECS {
            m.clear();
        }
        m.insert(id, spec);
    }
}

/// Now as Unix seconds (what the database stores).
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Locks a mutex even if a panicking thread poisoned it: a connection is
/// still usable (an unfinished transaction rolled back when it dropped).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Db {
    /// Opens (creating if needed) the database in `dir` and migrates it.
    pub fn open(dir: &Path, sync: SyncMode) -> Result<Self, DbError> {
        std::fs::create_dir_all(dir).map_err(|source| DbError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let open_err = |source| DbError::Open {
            path: path.clone(),
            source,
        };
        let mut writer = Connection::open(&path).map_err(open_err)?;
        let mode: String = writer
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::Corrupt(format!(
                "journal mode is {mode}, WAL could not be set"
            )));
        }
        setup(&writer).map_err(open_err)?;
        let before = schema::migrate(&mut writer)?;
        if before != schema::VERSION {
            tracing::info!(path = %path.display(), from = before, to = schema::VERSION, "database ready");
        }
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let writer =
            writer::Writer::start(writer, PathBuf::from(wal), sync).map_err(DbError::Thread)?;
        Ok(Self {
            path,
            writer,
            readers: Mutex::new(Vec::new()),
            specs: Arc::default(),
        })
    }

    /// Copies the WAL into the database file and empties it, so that a
    /// stopped controller leaves one self-contained file (for backups).
    /// Called at shutdown, when no request is being served.
    pub fn checkpoint(&self) -> Result<(), DbError> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            tracing::warn!("WAL checkpoint at shutdown was blocked; the WAL stays");
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes on disk: the database and its WAL.
    pub fn size_bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        size(&self.path) + size(Path::new(&wal))
    }

    /// Runs `f` on the writer connection inside a transaction; returns
    /// once that transaction is committed — and, when `durable` and
    /// `--sync full`, on disk (see [`writer`]).
    fn write<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        self.writer.write(durable, f)
    }

    /// Runs `f` with a reader connection (opened on first need, kept for
    /// the next reader).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, DbError>) -> Result<T, DbError> {
        let conn = lock(&self.readers).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c
            }
        };
        let out = f(&conn);
        let mut pool = lock(&self.readers);
        if pool.len() < 8 {
            pool.push(conn);
        }
        out
    }
}

fn setup(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // The writer syncs the WAL itself where it matters (see `writer`).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints run inside the commit that crosses this many WAL pages
    // and fsync both files: on a busy disk that commit stalls for hundreds
    // of milliseconds, and every request of its batch with it. 10,000
    // pages (40 MiB of WAL) instead of SQLite's 1,000 makes that ten
    // times rarer; the stall itself is the disk's, not our volume's.
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    Ok(())
}

/// JSON of a stored value.
fn to_json<T: serde::Serialize>(v: &T) -> Result<String, DbError> {
    serde_json::to_string(v).map_err(|e| DbError::Corrupt(e.to_string()))
}

/// A stored JSON value, or a clear error naming what it was.
fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

/// A stored status.
fn status(text: Option<String>) -> Result<Option<ResultStatus>, DbError> {
    text.map(|t| {
        t.parse::<ResultStatus>()
            .map_err(|e| DbError::Corrupt(e.to_string()))
    })
    .transpose()
}

/// A stored index (board, column).
fn index(v: i64) -> Result<usize, DbError> {
    usize::try_from(v).map_err(|_| DbError::Corrupt(format!("negative index {v}")))
}
