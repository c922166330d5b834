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
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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
                futures_lite::future::block_on(async move {
                    let built = async {
                        TftpServerBuilder::with_handler(handler)
                            .std_socket(socket)
                            .map_err(|e| e.to_string())?
                            .timeout(Duration::from_secs(3))
                            .max_send_retries(10)
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
                    if let Err(e) = futures_lite::future::or(server.serve(), stopped).await {
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
