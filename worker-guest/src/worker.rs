//! The buildman-compatible worker: reads the boss's commands, drives the
//! build engine, and streams responses back.
//!
//! Commands are read on a separate thread, so that the boss going away
//! (stdin EOF) is noticed even while a batch build blocks the command loop;
//! what happens then is the caller's choice (the binary kills its process
//! group). Every response goes through one [`ResponseWriter`].

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::build_settings::{BuildSettings, JobSplit, MakeFlags};
use crate::engine::{batch_split, BuildEvent, BuildSession, EngineConfig, EventSink};
use crate::process::load_avg;
use crate::protocol::{
    parse_command, BoardSpec, BuildResultMsg, Command, Response, ResponseWriter, Sizes,
};
use crate::settings_file::BuildmanSettings;
use crate::toolchain::Toolchains;
use crate::worktree;

/// How the worker is set up.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Directory with the pushed repository (`-g`).
    pub work_dir: PathBuf,
    /// Build threads to offer (normally the number of CPUs).
    pub nthreads: usize,
    /// The worker's buildman-style settings file (toolchains, make flags).
    pub settings_file: BuildmanSettings,
    /// Interval between heartbeats while a board builds.
    pub heartbeat_interval: Duration,
    /// Time allowed to each git command.
    pub git_timeout: Duration,
}

/// Number of CPUs we may use.
pub fn default_nthreads() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

/// What the command loop keeps between commands.
struct State {
    opts: WorkerOptions,
    auto_work_dir: bool,
    settings: BuildSettings,
    toolchains: Toolchains,
    make_flags: MakeFlags,
    session: Option<BuildSession>,
    /// A build draining on its own thread (a batch `build_boards`, or a
    /// demand-driven build after `build_done`), so that `quit` is still
    /// heard while it runs.
    /// The flag is set once the build is over (just before `build_done` is
    /// sent), so a command that follows `build_done` is never refused.
    draining: Option<(thread::JoinHandle<()>, Arc<AtomicBool>)>,
}

impl State {
    /// Whether a build (demand-driven or batch) is still running.
    fn building(&mut self) -> bool {
        if self
            .draining
            .as_ref()
            .is_some_and(|(_, over)| over.load(Ordering::SeqCst))
        {
            if let Some((b, _)) = self.draining.take() {
                let _ = b.join();
            }
        }
        self.session.is_some() || self.draining.is_some()
    }

    fn engine_config(&self) -> Arc<EngineConfig> {
        Arc::new(EngineConfig {
            work_dir: self.opts.work_dir.clone(),
            nthreads: self.opts.nthreads,
            settings: self.settings.clone(),
            toolchains: self.toolchains.clone(),
            make_flags: self.make_flags.clone(),
            heartbeat_interval: self.opts.heartbeat_interval,
            git_timeout: self.opts.git_timeout,
        })
    }
}

/// Map engine events to protocol responses, sent as they happen.
fn event_sink(out: &ResponseWriter) -> EventSink {
    let out = out.clone();
    Arc::new(move |ev| {
        let resp = match ev {
            BuildEvent::Started { num_threads } => Response::BuildStarted { num_threads },
            BuildEvent::WorktreeCreated { thread } => Response::WorktreeCreated { thread },
            BuildEvent::Heartbeat { board, thread } => Response::Heartbeat { board, thread },
            BuildEvent::Result(r) => Response::BuildResult(BuildResultMsg {
                board: r.board,
                commit_upto: r.commit_upto,
                return_code: r.return_code,
                stderr: r.stderr,
                stdout: r.stdout,
                load_avg: load_avg(),
                sizes: r.sizes.map(|raw| Sizes { raw }),
                config: r.config,
                lines: r.lines.unwrap_or_default(),
            }),
        };
        if let Err(e) = out.send(&resp) {
            tracing::warn!("cannot write to the boss: {e}");
        }
    })
}

/// How long after the end of input the reader thread waits for the
/// command loop to handle it (a `quit` sent just before closing, as the
/// boss does on Ctrl-C) before running the EOF action itself, in case the
/// loop is stuck.
const EOF_GRACE: Duration = Duration::from_secs(2);

/// The action to take when the boss goes away, run at most once and never
/// after the worker has finished serving.
struct EofAction {
    action: Box<dyn Fn() + Send + Sync>,
    done: AtomicBool,
}

impl EofAction {
    fn run(&self) {
        if !self.done.swap(true, Ordering::SeqCst) {
            (self.action)();
        }
    }
}

/// Read lines on a thread and pass them to the command loop; `None` marks
/// the end of input. Commands read before the end are still handled in
/// order (a final `quit` gets its `quit_ack`); if the loop does not deal
/// with the end within [`EOF_GRACE`], the reader runs the EOF action itself.
fn spawn_reader(
    input: impl BufRead + Send + 'static,
    on_eof: Arc<EofAction>,
) -> std::io::Result<mpsc::Receiver<Option<String>>> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new().name("stdin".into()).spawn(move || {
        for line in input.lines() {
            let Ok(line) = line else { break };
            let line = line.trim().to_string();
            if !line.is_empty() && tx.send(Some(line)).is_err() {
                return;
            }
        }
        tracing::info!("stdin closed");
        if tx.send(None).is_err() {
            return;
        }
        thread::sleep(EOF_GRACE);
        on_eof.run();
    })?;
    Ok(rx)
}

/// Serve the boss until `quit` (returns 0, after `quit_ack`) or the end of
/// input (returns 1). `on_eof` runs when input ends (the binary kills its
/// process group: builds must not outlive the boss); `on_quit` after
/// `quit_ack` is sent, to stop builds still running.
pub fn run_worker(
    opts: WorkerOptions,
    input: impl BufRead + Send + 'static,
    out: ResponseWriter,
    on_eof: Box<dyn Fn() + Send + Sync>,
    on_quit: &dyn Fn(),
) -> i32 {
    let toolchains = Toolchains::from_settings(&opts.settings_file);
    let make_flags = MakeFlags::from_settings(&opts.settings_file);
    tracing::debug!("toolchains: {:?}", toolchains.archs());
    let nthreads = opts.nthreads;
    let on_eof = Arc::new(EofAction {
        action: on_eof,
        done: AtomicBool::new(false),
    });
    let rx = match spawn_reader(input, on_eof.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!("cannot start the input thread: {e}");
            return 1;
        }
    };
    let _ = out.send(&Response::Ready {
        nthreads,
        slots: nthreads,
    });
    // The boss's configure adds its toolchains to these.
    let mut state = State {
        opts,
        auto_work_dir: false,
        settings: BuildSettings::default(),
        toolchains,
        make_flags,
        session: None,
        draining: None,
    };
    for line in rx {
        let Some(line) = line else {
            on_eof.run();
            break;
        };
        let cmd = match parse_command(&line) {
            Ok(cmd) => cmd,
            Err(e) => {
                tracing::debug!("bad command {line:?}: {e}");
                let _ = out.error(e.to_string());
                continue;
            }
        };
        if cmd == Command::Quit {
            let _ = out.send_last(&Response::QuitAck);
            // The boss is served: a later end of input needs no action.
            on_eof.done.store(true, Ordering::SeqCst);
            on_quit();
            if state.auto_work_dir {
                let _ = std::fs::remove_dir_all(&state.opts.work_dir);
            }
            return 0;
        }
        handle(&mut state, cmd, &out);
    }
    1
}

fn handle(state: &mut State, cmd: Command, out: &ResponseWriter) {
    let send = |r: Response| {
        if let Err(e) = out.send(&r) {
            tracing::warn!("cannot write to the boss: {e}");
        }
    };
    match cmd {
        Command::Setup { work_dir } => match setup(work_dir, state.opts.git_timeout) {
            Ok((dir, auto)) => {
                let git_dir = dir.join(".git");
                send(Response::SetupDone {
                    work_dir: dir.to_string_lossy().into_owned(),
                    git_dir: git_dir.to_string_lossy().into_owned(),
                });
                state.opts.work_dir = dir;
                state.auto_work_dir = auto;
            }
            Err(msg) => send(Response::Error { msg }),
        },
        Command::Configure {
            settings,
            toolchains,
        } => {
            state.settings = BuildSettings::from_json(&settings);
            for (arch, gcc) in &toolchains {
                state.toolchains.add_from_boss(arch, gcc);
            }
            tracing::debug!(
                "configure: {settings:?}, toolchains {:?}",
                state.toolchains.archs()
            );
            if state.settings.skip_unaffected {
                tracing::info!(
                    "skip_unaffected: every commit is built, as by buildman's own worker \
                     (skipping copies a board's previous result files, and a worker has none)"
                );
            }
            send(Response::ConfigureDone);
        }
        Command::BuildBoards { boards, commits } => {
            if state.building() {
                return send(busy());
            }
            if boards.is_empty() {
                return send(Response::Error {
                    msg: "no boards specified".into(),
                });
            }
            let (threads, split) = batch_split(state.opts.nthreads, boards.len());
            tracing::debug!(
                "build_boards: {} boards, {threads} threads, {split:?}",
                boards.len()
            );
            match BuildSession::start(
                state.engine_config(),
                commits,
                threads,
                split,
                event_sink(out),
            ) {
                Ok(session) => {
                    for b in boards {
                        session.submit(b);
                    }
                    drain(state, session, out);
                }
                Err(e) => send(Response::Error { msg: e.to_string() }),
            }
        }
        Command::BuildPrepare {
            commits,
            max_boards,
        } => {
            if state.building() {
                return send(busy());
            }
            let split = JobSplit::Dynamic { max_boards };
            let threads = state.opts.nthreads;
            match BuildSession::start(
                state.engine_config(),
                commits,
                threads,
                split,
                event_sink(out),
            ) {
                Ok(session) => {
                    state.session = Some(session);
                    send(Response::BuildPrepareDone);
                }
                Err(e) => send(Response::Error { msg: e.to_string() }),
            }
        }
        Command::BuildBoard(BoardSpec { board, arch }) => match &state.session {
            Some(session) => session.submit(BoardSpec { board, arch }),
            None => send(no_builder()),
        },
        Command::BuildDone => match state.session.take() {
            Some(session) => drain(state, session, out),
            None => send(no_builder()),
        },
        Command::Quit => {}
    }
}

/// Let a build drain on its own thread and then send `build_done`, so the
/// command loop keeps listening (for `quit`) meanwhile.
fn drain(state: &mut State, session: BuildSession, out: &ResponseWriter) {
    let thread_out = out.clone();
    let over = Arc::new(AtomicBool::new(false));
    let thread_over = over.clone();
    let waiter = thread::Builder::new().name("drain".into()).spawn(move || {
        let exceptions = session.finish();
        thread_over.store(true, Ordering::SeqCst);
        if let Err(e) = thread_out.send(&Response::BuildDone { exceptions }) {
            tracing::warn!("cannot write to the boss: {e}");
        }
    });
    match waiter {
        Ok(handle) => state.draining = Some((handle, over)),
        Err(e) => {
            tracing::error!("cannot start a thread to finish the build: {e}");
            let _ = out.error(format!("cannot finish the build: {e}"));
        }
    }
}

fn busy() -> Response {
    Response::Error {
        msg: "build in progress (send build_done first)".into(),
    }
}

fn no_builder() -> Response {
    Response::Error {
        msg: "no builder (send build_prepare first)".into(),
    }
}

/// `setup`: use (or create) the work directory and make sure it holds a git
/// repository the boss can push to. Returns the directory and whether we
/// created it (then `quit` removes it).
fn setup(work_dir: Option<String>, git_timeout: Duration) -> Result<(PathBuf, bool), String> {
    let (dir, auto) = match work_dir {
        Some(d) => (PathBuf::from(d), false),
        None => (
            make_temp_dir().map_err(|e| format!("cannot create work directory: {e}"))?,
            true,
        ),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create work directory {}: {e}", dir.display()))?;
    if !dir.join(".git").is_dir() {
        worktree::run_git(&dir, &["init", "-q"], git_timeout)
            .map_err(|e| format!("git init failed: {e}"))?;
    }
    Ok((dir, auto))
}

fn make_temp_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let dir = base.join(format!("bm-worker-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary directory name"))
}

/// Resolve the `-g` directory: relative paths are taken from the current
/// directory, as buildman's `os.path.realpath` does.
pub fn resolve_work_dir(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}
