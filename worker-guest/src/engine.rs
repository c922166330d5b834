//! The build engine: a pool of build threads, each with its own worktree,
//! taking boards from a queue and building them at every commit.
//!
//! The JSON worker drives it from the boss's commands; the task mode
//! drives it directly through [`build_boards`]. Both get the same per-(board,
//! commit) [`BuildOutcome`]s, delivered as [`BuildEvent`]s while the build
//! runs, so that results stream out as soon as each commit is built.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::build_settings::{BuildSettings, JobSplit, MakeFlags};
use crate::builder;
use crate::protocol::BoardSpec;
use crate::toolchain::Toolchains;
use crate::worktree::{self, GitError};

/// Default time between heartbeats for a board being built. The boss drops
/// a worker after 300 s of silence; 30 s leaves a wide margin.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// Why a build could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Worktree set-up failed.
    #[error("worktree setup failed: {0}")]
    Worktree(#[from] GitError),
    /// A build thread could not be started.
    #[error("cannot start build thread: {0}")]
    Thread(std::io::Error),
}

/// What the engine needs to know about the machine and the build.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The work directory holding the repository (`.git`) and `.bm-work`.
    pub work_dir: PathBuf,
    /// CPU threads to use (buildman's `nthreads`).
    pub nthreads: usize,
    /// Build settings from `configure`.
    pub settings: BuildSettings,
    /// Available toolchains.
    pub toolchains: Toolchains,
    /// Per-board make flags from the worker's config file.
    pub make_flags: MakeFlags,
    /// Interval between heartbeats for boards being built.
    pub heartbeat_interval: Duration,
}

/// The outcome of one board at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutcome {
    /// Board target.
    pub board: String,
    /// Index of the commit in the build's list (0 for the checked-out
    /// source).
    pub commit_upto: usize,
    /// make's exit status; 10 when there is no toolchain.
    pub return_code: i32,
    /// stderr of the build (warnings, errors), source paths made relative.
    pub stderr: String,
    /// stdout of the build.
    pub stdout: String,
    /// Size lines of the images (successful builds only).
    pub sizes: Option<String>,
    /// Config files of a failed build: output name → contents.
    pub config: BTreeMap<String, String>,
}

/// Progress and results of a build, in the order they happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// Worktree set-up begins for this many threads.
    Started {
        /// Number of build threads.
        num_threads: usize,
    },
    /// A thread's worktree is ready.
    WorktreeCreated {
        /// Thread number.
        thread: usize,
    },
    /// A board is being built (sent when it starts and then regularly).
    Heartbeat {
        /// Board target.
        board: String,
        /// Thread building it.
        thread: usize,
    },
    /// One board at one commit is done.
    Result(BuildOutcome),
}

/// Where events go; called from build threads, so it must be thread-safe.
pub type EventSink = Arc<dyn Fn(BuildEvent) + Send + Sync>;

/// State shared by the threads of one build.
pub(crate) struct Shared {
    pub cfg: Arc<EngineConfig>,
    pub commits: Option<Vec<String>>,
    pub split: JobSplit,
    pub num_threads: usize,
    pub active: AtomicUsize,
    pub building: Mutex<BTreeMap<usize, String>>,
    pub sink: EventSink,
    pub base_env: HashMap<OsString, OsString>,
    pub ccache: Option<String>,
    /// Files changed from commit `n - 1` to commit `n`, keyed by `n`;
    /// computed once per build by whichever thread gets there first.
    pub changes: Mutex<HashMap<usize, Option<Arc<Vec<String>>>>>,
}

/// A running build: threads waiting for boards until [`BuildSession::finish`].
pub struct BuildSession {
    tx: Option<mpsc::Sender<BoardSpec>>,
    workers: Vec<JoinHandle<usize>>,
    ticker: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

fn find_ccache() -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("ccache"))
        .find(|p| crate::toolchain::is_executable(p))
        .map(|p| p.to_string_lossy().into_owned())
}

impl BuildSession {
    /// Prepare a build of `commits` (`None`: the checked-out source) on
    /// `num_threads` threads: set up the worktrees (reporting progress
    /// through `sink`), then start threads that wait for boards.
    pub fn start(
        cfg: Arc<EngineConfig>,
        commits: Option<Vec<String>>,
        num_threads: usize,
        split: JobSplit,
        sink: EventSink,
    ) -> Result<Self, EngineError> {
        let num_threads = num_threads.max(1);
        if commits.is_some() {
            sink(BuildEvent::Started { num_threads });
            worktree::setup_worktrees(&cfg.work_dir, num_threads, |thread| {
                sink(BuildEvent::WorktreeCreated { thread })
            })?;
        } else {
            worktree::setup_thread_dirs(&cfg.work_dir, num_threads)?;
        }
        let ccache = if cfg.settings.ccache {
            find_ccache()
        } else {
            None
        };
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            commits,
            split,
            num_threads,
            active: AtomicUsize::new(0),
            building: Mutex::new(BTreeMap::new()),
            sink,
            base_env: std::env::vars_os().collect(),
            ccache,
            changes: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = mpsc::channel::<BoardSpec>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::with_capacity(num_threads);
        for thread in 0..num_threads {
            let rx = rx.clone();
            let shared = shared.clone();
            let handle = thread::Builder::new()
                .name(format!("build-{thread:02}"))
                .spawn(move || build_thread(&shared, thread, &rx))
                .map_err(EngineError::Thread)?;
            workers.push(handle);
        }
        let ticker = start_ticker(shared, cfg.heartbeat_interval).map_err(EngineError::Thread)?;
        Ok(Self {
            tx: Some(tx),
            workers,
            ticker: Some(ticker),
        })
    }

    /// Queue a board; a free thread builds it at every commit.
    pub fn submit(&self, board: BoardSpec) {
        if let Some(tx) = &self.tx {
            // Sending only fails when every thread has gone, which only a
            // panic can cause; that is counted by finish().
            let _ = tx.send(board);
        }
    }

    /// Wait until every queued board is built. Returns the number of
    /// internal failures (thread panics), which should be 0.
    pub fn finish(mut self) -> usize {
        self.tx = None;
        let mut exceptions = 0;
        for w in self.workers.drain(..) {
            exceptions += w.join().unwrap_or(1);
        }
        if let Some((stop, handle)) = self.ticker.take() {
            drop(stop);
            let _ = handle.join();
        }
        exceptions
    }
}

/// One build thread: take boards until the queue closes. Returns how many
/// boards failed internally (a panic is caught so the thread keeps serving
/// and the count reaches the boss as `exceptions`).
fn build_thread(shared: &Shared, thread: usize, rx: &Mutex<mpsc::Receiver<BoardSpec>>) -> usize {
    let mut exceptions = 0;
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            rx.recv()
        };
        let Ok(board) = job else {
            return exceptions;
        };
        shared.active.fetch_add(1, Ordering::SeqCst);
        set_building(shared, thread, Some(&board.board));
        (shared.sink)(BuildEvent::Heartbeat {
            board: board.board.clone(),
            thread,
        });
        let run = catch_unwind(AssertUnwindSafe(|| {
            builder::run_job(shared, thread, &board)
        }));
        if run.is_err() {
            tracing::error!("build of {} panicked", board.board);
            exceptions += 1;
        }
        set_building(shared, thread, None);
        shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn set_building(shared: &Shared, thread: usize, board: Option<&str>) {
    let mut b = shared
        .building
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match board {
        Some(name) => b.insert(thread, name.to_string()),
        None => b.remove(&thread),
    };
}

/// Send a heartbeat for every board being built, every `interval`, until
/// the returned sender is dropped.
fn start_ticker(
    shared: Arc<Shared>,
    interval: Duration,
) -> std::io::Result<(mpsc::Sender<()>, JoinHandle<()>)> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let handle = thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || loop {
            match stop_rx.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let building: Vec<(usize, String)> = shared
                .building
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(t, b)| (*t, b.clone()))
                .collect();
            for (thread, board) in building {
                (shared.sink)(BuildEvent::Heartbeat { board, thread });
            }
        })?;
    Ok((stop_tx, handle))
}

/// Build `boards` at every commit (`None`: the checked-out source) and
/// return all outcomes, the way a batch `build_boards` does: as many threads
/// as boards (up to `nthreads`), CPUs split evenly between them. For callers
/// that want results in one piece rather than streamed (the task mode).
pub fn build_boards(
    cfg: Arc<EngineConfig>,
    boards: &[BoardSpec],
    commits: Option<Vec<String>>,
) -> Result<Vec<BuildOutcome>, EngineError> {
    let results = Arc::new(Mutex::new(Vec::new()));
    let sink_results = results.clone();
    let sink: EventSink = Arc::new(move |ev| {
        if let BuildEvent::Result(r) = ev {
            sink_results
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(r);
        }
    });
    let (num_threads, split) = batch_split(cfg.nthreads, boards.len());
    let session = BuildSession::start(cfg, commits, num_threads, split, sink)?;
    for b in boards {
        session.submit(b.clone());
    }
    session.finish();
    let mut out = std::mem::take(
        &mut *results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    out.sort_by(|a, b| (&a.board, a.commit_upto).cmp(&(&b.board, b.commit_upto)));
    Ok(out)
}

/// buildman's batch split: min(nthreads, boards) threads, each with
/// `-j max(1, nthreads / threads)`.
pub fn batch_split(nthreads: usize, boards: usize) -> (usize, JobSplit) {
    let threads = nthreads.min(boards).max(1);
    (threads, JobSplit::Fixed((nthreads / threads).max(1)))
}
