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
use std::time::{Duration, Instant};

use crate::build_settings::{BuildSettings, JobSplit, MakeFlags};
use crate::builder;
use crate::dtc_cache::DtcCache;
use crate::protocol::BoardSpec;
use crate::toolchain::Toolchains;
use crate::worktree::{self, GitError};

/// Environment variable that makes a build thread panic when it reaches
/// `<board>@<commit_upto>`: fault injection, so that tests can show that a
/// panic still gives the boss one result per commit. Never set otherwise.
pub const PANIC_INJECTION_VAR: &str = "WORKER_GUEST_TEST_PANIC";

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
    /// Time allowed to each git command (checkout, worktree set-up).
    pub git_timeout: Duration,
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
    /// The source-lines manifest of a successful build (setting `lines`):
    /// `<file>: <ranges>` lines, as buildman's `_scan_lines` makes it.
    pub lines: Option<String>,
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
    /// Whether commit `n` changed a Kconfig file, keyed by `n`: buildman's
    /// per-commit cache, answered by the first thread that asks (with its
    /// own board's defconfig and `.config`) for every thread. Kept per
    /// build; buildman keeps it for the life of the process, which would
    /// answer a later build's commit `n` from an earlier build's.
    pub kconfig_cache: Mutex<HashMap<usize, bool>>,
    /// The shared dtc/pylibfdt build (setting `shared_dtc`).
    pub dtc_cache: Option<DtcCache>,
    /// `(board, commit_upto)` at which to panic (see
    /// [`PANIC_INJECTION_VAR`]).
    pub panic_at: Option<(String, usize)>,
}

impl Shared {
    /// Panic if fault injection asks for it at this board and commit.
    pub fn maybe_inject_panic(&self, board: &str, upto: usize) {
        if let Some((b, u)) = &self.panic_at {
            if b == board && *u == upto {
                panic!("injected by {PANIC_INJECTION_VAR} at {board}@{upto}");
            }
        }
    }
}

/// Read [`PANIC_INJECTION_VAR`] (`<board>@<commit_upto>`).
fn panic_injection() -> Option<(String, usize)> {
    let v = std::env::var(PANIC_INJECTION_VAR).ok()?;
    let (board, upto) = v.rsplit_once('@')?;
    Some((board.to_string(), upto.parse().ok()?))
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
            worktree::setup_worktrees(&cfg.work_dir, num_threads, cfg.git_timeout, |thread| {
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
        let dtc_cache = cfg.settings.shared_dtc.then(|| {
            let jobs = match split {
                JobSplit::Fixed(n) => n,
                JobSplit::Dynamic { .. } => crate::worker::default_nthreads(),
            };
            DtcCache::new(cfg.work_dir.join(".bm-work").join(".dtc"), jobs)
        });
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
            kconfig_cache: Mutex::new(HashMap::new()),
            dtc_cache,
            panic_at: panic_injection(),
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
/// boards failed internally. A panic while building a board is caught: the
/// commits of that board that have no result yet get a failed one naming
/// the panic (the boss waits for exactly one result per board and commit),
/// the count reaches the boss as `exceptions`, and the thread goes on with
/// the next board.
fn build_thread(shared: &Shared, thread: usize, rx: &Mutex<mpsc::Receiver<BoardSpec>>) -> usize {
    let mut exceptions = 0;
    let ncommits = shared.commits.as_ref().map_or(1, Vec::len);
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
        let mut sent = vec![false; ncommits];
        let run = catch_unwind(AssertUnwindSafe(|| {
            builder::run_job(shared, thread, &board, &mut sent)
        }));
        if let Err(payload) = run {
            let why = panic_text(payload.as_ref());
            tracing::error!("build of {} panicked: {why}", board.board);
            exceptions += 1;
            report_lost_commits(shared, &board.board, &sent, &why);
        }
        set_building(shared, thread, None);
        shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The message of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// After a panic, send a failed result for every commit of `board` that
/// has none yet. Sending is itself guarded: a sink that panics again must
/// not take the build thread down.
fn report_lost_commits(shared: &Shared, board: &str, sent: &[bool], why: &str) {
    for (upto, _) in sent.iter().enumerate().filter(|(_, done)| !**done) {
        let outcome = BuildOutcome {
            board: board.to_string(),
            commit_upto: upto,
            return_code: 1,
            stderr: format!("worker-guest: internal error, the build thread panicked: {why}\n"),
            stdout: String::new(),
            sizes: None,
            config: BTreeMap::new(),
            lines: None,
        };
        let delivered = catch_unwind(AssertUnwindSafe(|| {
            (shared.sink)(BuildEvent::Result(outcome));
        }));
        if delivered.is_err() {
            tracing::error!("cannot report {board}@{upto} after a panic");
        }
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
    let total = boards.len() * commits.as_ref().map_or(1, |c| c.len().max(1));
    let progress = Mutex::new(Progress::new(total));
    let sink: EventSink = Arc::new(move |ev| {
        let mut progress = progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match ev {
            BuildEvent::Result(r) => {
                progress.done(&r);
                sink_results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(r);
            }
            BuildEvent::Heartbeat { board, .. } => progress.heartbeat(&board),
            _ => {}
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

/// Progress of an in-process build, logged so that a long task shows on
/// the guest's console (and so in the agent's log) while it runs: one line
/// per board × commit done, and a line per board still building at most
/// every [`PROGRESS_QUIET`].
struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    last_line: Instant,
}

/// Longest silence of [`Progress`] while a board builds.
const PROGRESS_QUIET: Duration = Duration::from_secs(60);

impl Progress {
    fn new(total: usize) -> Self {
        let now = Instant::now();
        Self {
            total,
            done: 0,
            started: now,
            last_line: now,
        }
    }

    fn done(&mut self, r: &BuildOutcome) {
        self.done += 1;
        self.last_line = Instant::now();
        tracing::info!(
            "built {}@{} ({}/{}, {}s): return code {}",
            r.board,
            r.commit_upto,
            self.done,
            self.total,
            self.started.elapsed().as_secs(),
            r.return_code
        );
    }

    fn heartbeat(&mut self, board: &str) {
        if self.last_line.elapsed() >= PROGRESS_QUIET {
            self.last_line = Instant::now();
            tracing::info!(
                "building {board} ({}/{} done, {}s)",
                self.done,
                self.total,
                self.started.elapsed().as_secs()
            );
        }
    }
}

/// buildman's batch split: min(nthreads, boards) threads, each with
/// `-j max(1, nthreads / threads)`.
pub fn batch_split(nthreads: usize, boards: usize) -> (usize, JobSplit) {
    let threads = nthreads.min(boards).max(1);
    (threads, JobSplit::Fixed((nthreads / threads).max(1)))
}
