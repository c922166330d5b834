//! Group commit: every change to the database runs on one writer thread,
//! which takes whatever operations are waiting, runs each in a savepoint
//! of one transaction, commits once, and only then answers them.
//!
//! Why: every protocol step is a commit, and 200 agents polling and
//! reporting every second are 400 commits a second. Committed one at a
//! time with an fsync each, they queued behind each other's fsyncs
//! (measured: p50 650 ms). Batched, the fsyncs per second follow the
//! disk's pace, not the request rate.
//!
//! Durability is per operation: the connection commits with
//! `synchronous=NORMAL` (in the WAL, safe against a crash of the
//! controller). With `--sync full` the DURABLE operations (results, jobs)
//! are answered only after an fdatasync of the WAL that began after their
//! commit — what SQLite's FULL does — by a second thread, the syncer, so
//! the writer goes on committing meanwhile: task hand-outs and lease
//! sweeps never wait for the disk, whose fsyncs stall for hundreds of
//! milliseconds when it is busy (measured here), and one sync answers
//! every durable operation committed before it.
//! An operation that fails is rolled back to its savepoint alone; a failed
//! commit or sync fails the operations that depended on it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};

use super::{DbError, SyncMode};

/// Told, after the batch's commit, whether it failed.
type Done = Box<dyn FnOnce(Option<&DbError>) + Send>;
/// An operation: runs on the writer connection inside a savepoint (or is
/// told why it cannot run); says whether it succeeded (else its savepoint
/// is rolled back) and how to deliver its answer.
type Op = Box<dyn FnOnce(Result<&Connection, &DbError>) -> (bool, Done) + Send>;

/// Most operations per transaction: bounds how long one batch holds the
/// write lock and how much a failed commit takes down with it.
const MAX_BATCH: usize = 256;

/// An operation and whether its answer waits for the disk.
struct Queued {
    durable: bool,
    op: Op,
}

/// The writer thread and its queue.
pub struct Writer {
    ops: Mutex<Option<Sender<Queued>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread owning `conn`; `wal` is the database's
    /// write-ahead log, synced for durable operations when `sync` is full.
    pub fn start(conn: Connection, wal: PathBuf, sync: SyncMode) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Queued>();
        let sync_wal = (sync == SyncMode::Full).then_some(wal);
        let thread = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || run(conn, &rx, sync_wal.as_deref()))?;
        Ok(Self {
            ops: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `f` in the next batch and returns its result once the batch is
    /// committed (and, if `durable`, synced).
    pub fn write<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let (answer, wait) = mpsc::sync_channel::<Result<T, DbError>>(1);
        let op: Op = Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => f(conn),
                Err(e) => Err(DbError::Commit(e.to_string())),
            };
            let ok = result.is_ok();
            let done: Done = Box::new(move |commit_error| {
                let out = match (result, commit_error) {
                    (Ok(_), Some(e)) => Err(DbError::Commit(e.to_string())),
                    (r, _) => r,
                };
                let _ = answer.send(out);
            });
            (ok, done)
        });
        let sent = super::lock(&self.ops)
            .as_ref()
            .map(|s| s.send(Queued { durable, op }).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(DbError::WriterGone);
        }
        wait.recv().map_err(|_| DbError::WriterGone)?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the last batch; joining
        // it closes the connection (and checkpoints the WAL) before exit.
        super::lock(&self.ops).take();
        if let Some(t) = super::lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn run(mut conn: Connection, ops: &Receiver<Queued>, sync_wal: Option<&Path>) {
    let syncer = sync_wal.and_then(|wal| {
        let (tx, rx) = mpsc::channel::<Vec<Done>>();
        let wal = wal.to_path_buf();
        match std::thread::Builder::new()
            .name("db-sync".into())
            .spawn(move || run_syncer(&wal, &rx))
        {
            Ok(t) => Some((tx, t)),
            Err(e) => {
                // Degrade to syncing on this thread rather than not at all.
                tracing::error!(error = %e, "cannot start the WAL sync thread; syncing inline");
                None
            }
        }
    });
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        commit_batch(
            &mut conn,
            batch,
            sync_wal,
            syncer.as_ref().map(|(tx, _)| tx),
        );
    }
    if let Some((tx, t)) = syncer {
        drop(tx);
        let _ = t.join();
    }
}

/// Syncs the WAL for every durable answer waiting, as few times as the
/// disk allows: whatever queued up during one sync shares the next.
fn run_syncer(wal: &Path, waiting: &Receiver<Vec<Done>>) {
    while let Ok(mut dones) = waiting.recv() {
        while let Ok(more) = waiting.try_recv() {
            dones.extend(more);
        }
        let started = Instant::now();
        let synced = sync(wal);
        if let Err(e) = &synced {
            tracing::error!(error = %e, "WAL sync failed; durable changes answered with an error");
        }
        let took = started.elapsed();
        if took > SLOW_BATCH {
            tracing::warn!(
                answers = dones.len(),
                sync_ms = took.as_millis() as u64,
                "slow WAL sync"
            );
        }
        for done in dones {
            done(synced.as_ref().err());
        }
    }
}

/// Flushes the WAL (what `synchronous=FULL` does at each commit): a
/// second descriptor of the same file flushes the same page cache.
fn sync(wal: &Path) -> Result<(), DbError> {
    std::fs::File::open(wal)
        .and_then(|f| f.sync_data())
        .map_err(|e| DbError::Commit(format!("cannot sync {}: {e}", wal.display())))
}

/// A batch slower than this is logged: it delays every request in it.
const SLOW_BATCH: Duration = Duration::from_millis(100);

fn commit_batch(
    conn: &mut Connection,
    batch: Vec<Queued>,
    sync_wal: Option<&Path>,
    syncer: Option<&Sender<Vec<Done>>>,
) {
    let started = Instant::now();
    let ops = batch.len();
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = DbError::Sql(e);
            tracing::error!(error = %e, "cannot begin a database transaction");
            for Queued { op, .. } in batch {
                let (_, done) = op(Err(&e));
                done(None);
            }
            return;
        }
    };
    let mut dones = Vec::with_capacity(batch.len());
    for Queued { durable, op } in batch {
        let mut sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => {
                let e = DbError::Sql(e);
                tracing::error!(error = %e, "cannot open a savepoint");
                let (_, done) = op(Err(&e));
                done(None);
                continue;
            }
        };
        // A panicking operation drops its answer channel: its request
        // gets `WriterGone`; the others go on.
        let (ok, done) = catch_unwind(AssertUnwindSafe(|| op(Ok(&sp)))).unwrap_or_else(|_| {
            tracing::error!("database operation panicked; rolled back");
            (false, Box::new(|_: Option<&DbError>| {}) as Done)
        });
        let kept = if ok { sp.commit() } else { sp.rollback() };
        let own_error = kept.err().map(DbError::Sql);
        dones.push((durable, done, own_error));
    }
    let ran = started.elapsed();
    let committed = tx.commit().map_err(DbError::Sql);
    if let Err(e) = &committed {
        tracing::error!(error = %e, "database commit failed; the batch is lost");
    }
    let mut durable = Vec::new();
    for (needs_sync, done, own_error) in dones {
        if needs_sync && sync_wal.is_some() && committed.is_ok() && own_error.is_none() {
            durable.push(done);
        } else {
            done(own_error.as_ref().or(committed.as_ref().err()));
        }
    }
    if let (Some(wal), false) = (sync_wal, durable.is_empty()) {
        let durable = match syncer {
            Some(tx) => match tx.send(durable) {
                Ok(()) => Vec::new(),
                Err(mpsc::SendError(back)) => back,
            },
            None => durable,
        };
        if !durable.is_empty() {
            let synced = sync(wal);
            for done in durable {
                done(synced.as_ref().err());
            }
        }
    }
    let took = started.elapsed();
    if took > SLOW_BATCH {
        tracing::warn!(
            ops,
            run_ms = ran.as_millis() as u64,
            commit_ms = (took - ran).as_millis() as u64,
            "slow database batch"
        );
    }
}
