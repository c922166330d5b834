//! The per-VM TFTP server: the one place that maps what a guest asks for
//! to files on the host (PROTOCOLS.md section 5).
//!
//! Built on `async-tftp` (retransmission, options, block sizes) with a
//! handler of our own, because the mapping is the security boundary: a
//! guest reads only its phase's GET directory and writes only its PUT
//! directory, never through `..`, absolute paths or symlinks leading out.
//! Uploads land in a temporary file renamed into place when the transfer
//! completes, so the agent never reads a half-written manifest.
//!
//! The guest is hostile, so each server enforces its session's
//! [`SessionRules`]: in the task phase GET serves only the task manifest;
//! the result manifest is accepted once (a second upload cannot replace
//! it); uploads are capped per file, in number and in bytes per session;
//! and once the guest has been heard from, requests from any other address
//! are refused. Every request is reported on a channel so the agent can run
//! bbot's startup and build timeouts off the guest's activity. Names the
//! guest sends are escaped before they are logged.

//!
//! Modules: this one runs the server; `paths` maps requested names to
//! files (the escape checks); `session` is the handler that enforces a
//! session's rules and writes uploads atomically.

mod paths;
mod session;

use async_tftp::server::TftpServerBuilder;
use std::cell::Cell;
use std::fs;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use manifests::guest::Phase;
pub use paths::{resolve_get, resolve_put, Refusal, RefusalKind};
pub use session::{AtomicUpload, SessionRules};

use session::GuestHandler;

/// A guest-supplied name as it may appear in the agent's log: at most 200
/// characters, control and other invisible characters escaped.
pub fn shown_name(name: &str) -> String {
    const MAX: usize = 200;
    let mut s: String = name
        .chars()
        .take(MAX)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if name.chars().nth(MAX).is_some() {
        s.push_str("...");
    }
    s
}

/// The `--tftp` directory tree and the toolchain and instance whose
/// subdirectories a VM of this agent may use. What the guest writes, and
/// what it reads in a task, is per instance, so that several instances of
/// one toolchain never share a directory (PROTOCOLS.md sections 4a, 5).
#[derive(Debug, Clone)]
pub struct TftpLayout {
    /// `--tftp`.
    pub root: PathBuf,
    /// `--toolchain-name`.
    pub toolchain: String,
    /// `--instance`.
    pub instance: u16,
}

impl TftpLayout {
    /// Directory GET requests are served from: the toolchain's files
    /// (shared, the admin's) in a bootstrap, the instance's task in a task.
    pub fn get_dir(&self, phase: Phase) -> PathBuf {
        match phase {
            Phase::Bootstrap => self.root.join("toolchain").join(&self.toolchain),
            Phase::Task => self.task_dir().join("get"),
        }
    }

    /// Directory PUT requests write to.
    pub fn put_dir(&self, phase: Phase) -> PathBuf {
        match phase {
            Phase::Bootstrap => self
                .root
                .join("bootstrap")
                .join(&self.toolchain)
                .join(self.instance.to_string()),
            Phase::Task => self.task_dir().join("put"),
        }
    }

    /// The instance's task directory, `build/<toolchain>/<instance>`.
    pub fn task_dir(&self) -> PathBuf {
        self.root
            .join("build")
            .join(&self.toolchain)
            .join(self.instance.to_string())
    }
}

/// What the guest did, as the agent needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TftpEvent {
    /// A read request was accepted and the file is being sent.
    Get {
        /// The name the guest asked for.
        name: String,
    },
    /// A write request was accepted; data is arriving.
    PutStarted {
        /// The name the guest asked for.
        name: String,
    },
    /// An upload completed and was renamed into place.
    Stored {
        /// The name the guest asked for.
        name: String,
        /// Where it is now.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// A request was refused (answered with a TFTP error).
    Refused {
        /// `GET` or `PUT`.
        op: &'static str,
        /// The name the guest asked for.
        name: String,
        /// Why, for the log.
        reason: String,
    },
}

/// A TFTP server that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// The GET or PUT directory is missing or unreadable.
    #[error("TFTP directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// No UDP port could be bound.
    #[error("cannot bind a TFTP port on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: IpAddr,
        /// What failed.
        source: io::Error,
    },
    /// The server failed to start.
    #[error("cannot start the TFTP server: {0}")]
    Server(String),
}

/// The largest RFC 7440 window a client gets (blocks per round trip):
/// the guest's client asks for 16; at most 64 × 64 KiB in memory per
/// transfer.
pub const WINDOW_SIZE_LIMIT: u16 = 64;

thread_local! {
    /// When a small block last moved on this server thread (read for a
    /// GET, written for a PUT): see [`BUSY_AFTER_BLOCK`].
    static LAST_SMALL_BLOCK: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Notes that a block of `len` bytes moved on this server thread.
fn block_moved(len: usize) {
    let when = (len <= BUSY_BLOCK_LIMIT).then(Instant::now);
    LAST_SMALL_BLOCK.with(|c| c.set(when));
}

/// How long after a small block moved the server thread keeps polling
/// rather than sleeping until the next packet: about a loopback round trip
/// and a half. With blocks of a few hundred bytes to a few KiB the client
/// answers sooner than a sleep and wake-up take, so sleeping between the
/// blocks made the server as slow as tftpd-hpa at 512 and 1428 bytes;
/// polling made it 2.5 × faster. It costs at most this much CPU per
/// block, and nothing between transfers.
const BUSY_AFTER_BLOCK: Duration = Duration::from_micros(500);

/// The largest block after which the server polls. A client takes longer
/// to take in a large block than a sleep lasts, and each poll is several
/// system calls (the reactor's timers and interest), so polling made
/// 64 KiB blocks slower (1.4 × tftpd-hpa) where sleeping is not.
const BUSY_BLOCK_LIMIT: usize = 8192;

/// The server's future, re-polled at once (instead of sleeping) while a
/// transfer is moving: see [`BUSY_AFTER_BLOCK`].
struct BusyWhileTransferring<F>(F);

impl<F: Future + Unpin> Future for BusyWhileTransferring<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let r = Pin::new(&mut self.0).poll(cx);
        let moving = LAST_SMALL_BLOCK
            .with(Cell::get)
            .is_some_and(|t| t.elapsed() < BUSY_AFTER_BLOCK);
        if r.is_pending() && moving {
            cx.waker().wake_by_ref();
        }
        r
    }
}

/// Run first on the server's thread (to enter a network namespace).
pub type EnterFn = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// A running server; stopped when dropped.
pub struct TftpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    events: Receiver<TftpEvent>,
    peer: Arc<Mutex<Option<IpAddr>>>,
}

impl TftpServer {
    /// Serves `get_dir` and `put_dir` on an ephemeral UDP port of `bind`,
    /// under `rules`.
    pub fn start(
        bind: IpAddr,
        get_dir: &Path,
        put_dir: &Path,
        rules: SessionRules,
    ) -> Result<TftpServer, TftpError> {
        Self::start_in(bind, get_dir, put_dir, rules, None)
    }

    /// Like [`TftpServer::start`], with the server's thread first running
    /// `enter` (entering the guest's network namespace): TFTP answers each
    /// transfer from a new socket, and those must be in the namespace too.
    pub fn start_in(
        bind: IpAddr,
        get_dir: &Path,
        put_dir: &Path,
        rules: SessionRules,
        enter: Option<EnterFn>,
    ) -> Result<TftpServer, TftpError> {
        let canonical = |p: &Path| {
            fs::canonicalize(p).map_err(|source| TftpError::Directory {
                path: p.to_path_buf(),
                source,
            })
        };
        let (tx, events) = mpsc::channel();
        let peer: Arc<Mutex<Option<IpAddr>>> = Arc::default();
        let handler = GuestHandler::new(
            canonical(get_dir)?,
            canonical(put_dir)?,
            rules,
            Arc::clone(&peer),
            tx,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr, TftpError>>();
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tftp".into())
            .spawn(move || {
                let bound = enter
                    .map_or(Ok(()), |f| f())
                    .and_then(|()| UdpSocket::bind(SocketAddr::new(bind, 0)))
                    .and_then(|s| Ok((s.local_addr()?, s)))
                    .map_err(|source| TftpError::Bind { addr: bind, source });
                let (addr, socket) = match bound {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                async_io::block_on(async move {
                    let built = async {
                        TftpServerBuilder::with_handler(handler)
                            .std_socket(socket)
                            .map_err(|e| e.to_string())?
                            .timeout(Duration::from_secs(3))
                            .max_send_retries(10)
                            // A window is buffered whole: without a limit a
                            // guest asking for 65535 blocks of 64 KiB would
                            // make one transfer hold 4 GiB.
                            .window_size_limit(WINDOW_SIZE_LIMIT)
                            .build()
                            .await
                            .map_err(|e| e.to_string())
                    }
                    .await;
                    let server = match built {
                        Ok(s) => {
                            let _ = ready_tx.send(Ok(addr));
                            s
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(TftpError::Server(e)));
                            return;
                        }
                    };
                    let stopped = async {
                        while !stop_flag.load(Ordering::SeqCst) {
                            async_io::Timer::after(Duration::from_millis(50)).await;
                        }
                        Ok(())
                    };
                    let serving = BusyWhileTransferring(Box::pin(futures_lite::future::or(
                        server.serve(),
                        stopped,
                    )));
                    if let Err(e) = serving.await {
                        tracing::error!("TFTP server on {addr} failed: {e}");
                    }
                })
            })
            .map_err(|e| TftpError::Server(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(addr)) => Ok(TftpServer {
                addr,
                stop,
                thread: Some(thread),
                events,
                peer,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TftpError::Server("server thread exited".into())),
        }
    }

    /// The address the guest must be told.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The session's guest: the address of its first request, shared with
    /// the guest's other servers (the source server) so that they serve
    /// the same peer only.
    pub fn peer(&self) -> Arc<Mutex<Option<IpAddr>>> {
        Arc::clone(&self.peer)
    }

    /// What the guest did, in order.
    pub fn events(&self) -> &Receiver<TftpEvent> {
        &self.events
    }

    /// Stops serving; transfers in flight are abandoned (their temporary
    /// files removed).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TftpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
