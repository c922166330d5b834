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

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use futures_lite::AsyncWrite;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use manifests::guest;
pub use manifests::guest::Phase;

/// What one session's guest may do through its TFTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRules {
    /// The only names GET serves; `None` serves any file of the GET
    /// directory (the bootstrap phase: the toolchain's files).
    pub get_names: Option<Vec<String>>,
    /// Names that can be uploaded once: after one is stored (or while it is
    /// arriving) another upload of it is refused.
    pub put_once: Vec<String>,
    /// Largest single upload.
    pub max_file_bytes: u64,
    /// Most uploads accepted in the session, besides the `put_once` ones.
    pub max_files: u32,
    /// Most bytes received in the session, all uploads but the `put_once`
    /// ones together (broken-off ones included).
    pub max_bytes: u64,
}

impl SessionRules {
    /// The guest contract's rules for `phase` (PROTOCOLS.md section 5).
    pub fn for_phase(phase: Phase) -> Self {
        SessionRules {
            get_names: match phase {
                Phase::Bootstrap => None,
                Phase::Task => Some(vec![guest::MANIFEST_FILE.to_string()]),
            },
            put_once: vec![guest::MANIFEST_FILE.to_string()],
            max_file_bytes: guest::MAX_UPLOAD_BYTES,
            max_files: guest::MAX_SESSION_UPLOADS,
            max_bytes: guest::MAX_SESSION_UPLOAD_BYTES,
        }
    }
}

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

/// The `--tftp` directory tree and the toolchain whose subdirectories a
/// VM of this agent may use.
#[derive(Debug, Clone)]
pub struct TftpLayout {
    /// `--tftp`.
    pub root: PathBuf,
    /// `--toolchain-name`.
    pub toolchain: String,
}

impl TftpLayout {
    /// Directory GET requests are served from.
    pub fn get_dir(&self, phase: Phase) -> PathBuf {
        match phase {
            Phase::Bootstrap => self.root.join("toolchain").join(&self.toolchain),
            Phase::Task => self.root.join("build").join(&self.toolchain).join("get"),
        }
    }

    /// Directory PUT requests write to.
    pub fn put_dir(&self, phase: Phase) -> PathBuf {
        match phase {
            Phase::Bootstrap => self.root.join("bootstrap").join(&self.toolchain),
            Phase::Task => self.root.join("build").join(&self.toolchain).join("put"),
        }
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
        let handler = GuestHandler {
            get_dir: canonical(get_dir)?,
            put_dir: canonical(put_dir)?,
            rules,
            peer: Arc::clone(&peer),
            uploads: 0,
            session: Arc::new(Mutex::new(SessionState::default())),
            events: tx,
        };
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

/// Why a requested name was refused; the kind picks the TFTP error code
/// the guest sees (a guest's bootstrap treats "file not found" as "nothing
/// to install", everything else as an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String, pub RefusalKind);

/// The TFTP error class of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Error 1: no such file or directory.
    NotFound,
    /// Error 2: access violation (escapes, reserved names, not a file).
    Denied,
}

impl Refusal {
    fn not_found(why: &str) -> Self {
        Refusal(why.to_string(), RefusalKind::NotFound)
    }
    fn denied(why: &str) -> Self {
        Refusal(why.to_string(), RefusalKind::Denied)
    }
}

/// Checks a requested name: relative (one leading `/` allowed), only plain
/// components. Returns the components.
fn plain_components(name: &str) -> Result<Vec<&str>, Refusal> {
    let trimmed = name.strip_prefix('/').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(Refusal::denied("empty file name"));
    }
    let mut out = Vec::new();
    for c in Path::new(trimmed).components() {
        match c {
            Component::Normal(s) => match s.to_str() {
                Some(s) if !s.starts_with(".bbot-upload-") => out.push(s),
                Some(_) => return Err(Refusal::denied("reserved file name")),
                None => return Err(Refusal::denied("file name is not UTF-8")),
            },
            Component::ParentDir => return Err(Refusal::denied("'..' is not allowed")),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(Refusal::denied("absolute paths are not allowed"))
            }
        }
    }
    if out.is_empty() {
        return Err(Refusal::denied("empty file name"));
    }
    Ok(out)
}

/// Maps a GET name to a regular file inside `dir` (canonical), following
/// symlinks only as long as they stay inside.
pub fn resolve_get(dir: &Path, name: &str) -> Result<PathBuf, Refusal> {
    let parts = plain_components(name)?;
    let joined = parts.iter().fold(dir.to_path_buf(), |p, c| p.join(c));
    let real = fs::canonicalize(&joined).map_err(|_| Refusal::not_found("no such file"))?;
    if !real.starts_with(dir) {
        return Err(Refusal::denied("leads outside the guest's directory"));
    }
    if !real.is_file() {
        return Err(Refusal::denied("not a regular file"));
    }
    Ok(real)
}

/// Maps a PUT name to its final path inside `dir` (canonical): the parent
/// directory must already exist inside `dir`, and the name must not be a
/// directory.
pub fn resolve_put(dir: &Path, name: &str) -> Result<PathBuf, Refusal> {
    let parts = plain_components(name)?;
    let (file, parents) = parts
        .split_last()
        .ok_or_else(|| Refusal::denied("empty file name"))?;
    let parent = parents.iter().fold(dir.to_path_buf(), |p, c| p.join(c));
    let real_parent =
        fs::canonicalize(&parent).map_err(|_| Refusal::not_found("no such directory"))?;
    if !real_parent.starts_with(dir) {
        return Err(Refusal::denied("leads outside the guest's directory"));
    }
    let target = real_parent.join(file);
    if target.is_dir() {
        return Err(Refusal::denied("is a directory"));
    }
    Ok(target)
}

struct GuestHandler {
    get_dir: PathBuf,
    put_dir: PathBuf,
    rules: SessionRules,
    /// The guest's address, fixed by its first request.
    peer: Arc<Mutex<Option<IpAddr>>>,
    /// Uploads accepted so far.
    uploads: u32,
    session: Arc<Mutex<SessionState>>,
    events: Sender<TftpEvent>,
}

/// What the session's uploads have used, shared with the uploads in
/// flight.
#[derive(Debug, Default)]
struct SessionState {
    /// Bytes received, all uploads together.
    bytes: u64,
    /// The [`SessionRules::put_once`] names being received or stored.
    once_taken: HashMap<String, bool>,
}

fn session_state(m: &Mutex<SessionState>) -> std::sync::MutexGuard<'_, SessionState> {
    // A panic while holding the lock leaves plain counters behind: go on.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A requested name without its optional leading `/`, as the contract
/// names files.
fn plain_name(name: &str) -> &str {
    name.strip_prefix('/').unwrap_or(name)
}

impl GuestHandler {
    /// The session's guest is whoever made the first accepted request;
    /// requests from any other address are refused. (With user networking
    /// every guest's packets come from the host's loopback: there the
    /// guest's network namespace keeps other guests out.)
    fn check_peer(
        &mut self,
        op: &'static str,
        name: &str,
        client: &SocketAddr,
    ) -> Result<(), packet::Error> {
        let pinned = {
            let mut peer = self.peer.lock().unwrap_or_else(|p| p.into_inner());
            *peer.get_or_insert(client.ip())
        };
        match pinned {
            ip if ip == client.ip() => Ok(()),
            ip => Err(self.refuse_as(
                op,
                name,
                Refusal::denied(&format!(
                    "{} is not this session's guest ({ip})",
                    client.ip()
                )),
            )),
        }
    }

    fn refuse(&self, op: &'static str, name: &str, reason: String) -> packet::Error {
        self.report(op, name, &reason);
        packet::Error::Msg(format!("{name}: {reason}"))
    }

    /// A refusal of a mapped name, answered with its TFTP error code.
    fn refuse_as(&self, op: &'static str, name: &str, r: Refusal) -> packet::Error {
        self.report(op, name, &r.0);
        match r.1 {
            RefusalKind::NotFound => packet::Error::FileNotFound,
            RefusalKind::Denied => packet::Error::PermissionDenied,
        }
    }

    fn report(&self, op: &'static str, name: &str, reason: &str) {
        tracing::warn!("TFTP {op} '{}' refused: {reason}", shown_name(name));
        let _ = self.events.send(TftpEvent::Refused {
            op,
            name: name.to_string(),
            reason: reason.to_string(),
        });
    }
}

static UPLOAD_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Handler for GuestHandler {
    type Reader = blocking::Unblock<File>;
    type Writer = AtomicUpload;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let name = path.to_string_lossy().into_owned();
        self.check_peer("GET", &name, client)?;
        if let Some(names) = &self.rules.get_names {
            if !names.iter().any(|n| n == plain_name(&name)) {
                return Err(self.refuse_as(
                    "GET",
                    &name,
                    Refusal::not_found("not a file of this session"),
                ));
            }
        }
        let real =
            resolve_get(&self.get_dir, &name).map_err(|r| self.refuse_as("GET", &name, r))?;
        let file = File::open(&real).map_err(|e| self.refuse("GET", &name, e.to_string()))?;
        let len = file.metadata().ok().map(|m| m.len());
        tracing::debug!("TFTP GET '{}' -> {}", shown_name(&name), real.display());
        let _ = self.events.send(TftpEvent::Get { name });
        Ok((blocking::Unblock::new(file), len))
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        let name = path.to_string_lossy().into_owned();
        self.check_peer("PUT", &name, client)?;
        let target =
            resolve_put(&self.put_dir, &name).map_err(|r| self.refuse_as("PUT", &name, r))?;
        let limit = self.rules.max_file_bytes;
        if let Some(size) = size.filter(|s| *s > limit) {
            return Err(self.refuse(
                "PUT",
                &name,
                format!("{size} bytes exceed the upload limit of {limit} bytes"),
            ));
        }
        let once = plain_name(&name).to_string();
        let once = self.rules.put_once.contains(&once).then_some(once);
        // The contract's own files (the result) are bounded by being
        // accepted once; the session quotas are for everything else, so
        // that a flood of other uploads cannot crowd out the result.
        if once.is_none() && self.uploads >= self.rules.max_files {
            let max = self.rules.max_files;
            return Err(self.refuse("PUT", &name, format!("over the session's {max} uploads")));
        }
        if let Some(key) = &once {
            let mut state = session_state(&self.session);
            if state.once_taken.get(key).copied().unwrap_or(false) {
                drop(state);
                return Err(self.refuse(
                    "PUT",
                    &name,
                    "already uploaded in this session (one upload only)".to_string(),
                ));
            }
            state.once_taken.insert(key.clone(), true);
        }
        if once.is_none() {
            self.uploads += 1;
        }
        let dir = target.parent().unwrap_or(&self.put_dir);
        let temp = dir.join(format!(
            ".bbot-upload-{}-{}",
            std::process::id(),
            UPLOAD_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(f) => f,
            Err(e) => {
                if let Some(key) = &once {
                    session_state(&self.session).once_taken.remove(key);
                }
                return Err(self.refuse("PUT", &name, e.to_string()));
            }
        };
        let _ = self
            .events
            .send(TftpEvent::PutStarted { name: name.clone() });
        Ok(AtomicUpload {
            inner: Some(blocking::Unblock::new(file)),
            temp,
            target,
            name,
            written: 0,
            limit,
            session_limit: if once.is_some() {
                u64::MAX
            } else {
                self.rules.max_bytes
            },
            session: Arc::clone(&self.session),
            once,
            events: self.events.clone(),
            done: false,
        })
    }
}

/// An upload in flight: data goes to a temporary file that is renamed over
/// the target only when the transfer completes (the server closes the
/// writer after the last block); a transfer that breaks off leaves nothing.
pub struct AtomicUpload {
    inner: Option<blocking::Unblock<File>>,
    temp: PathBuf,
    target: PathBuf,
    name: String,
    written: u64,
    limit: u64,
    session_limit: u64,
    session: Arc<Mutex<SessionState>>,
    /// The put-once name this upload holds, released if it breaks off.
    once: Option<String>,
    events: Sender<TftpEvent>,
    done: bool,
}

impl AtomicUpload {
    fn over(&self, reason: String) -> Poll<io::Result<usize>> {
        tracing::warn!("TFTP PUT '{}' refused: {reason}", shown_name(&self.name));
        let _ = self.events.send(TftpEvent::Refused {
            op: "PUT",
            name: self.name.clone(),
            reason: reason.clone(),
        });
        Poll::Ready(Err(io::Error::other(reason)))
    }
}

impl AsyncWrite for AtomicUpload {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.written + buf.len() as u64 > self.limit {
            let limit = self.limit;
            return self.over(format!("over the upload limit of {limit} bytes"));
        }
        {
            let mut state = session_state(&self.session);
            if state.bytes + buf.len() as u64 > self.session_limit {
                drop(state);
                let limit = self.session_limit;
                return self.over(format!("over the session's upload limit of {limit} bytes"));
            }
            state.bytes += buf.len() as u64;
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(io::Error::other("upload already closed")));
        };
        let n = futures_lite::ready!(Pin::new(inner).poll_write(cx, buf))?;
        self.written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(inner) = self.inner.as_mut() {
            futures_lite::ready!(Pin::new(inner).poll_close(cx))?;
            self.inner = None;
        }
        if !self.done {
            fs::rename(&self.temp, &self.target)?;
            self.done = true;
            tracing::debug!(
                "TFTP PUT '{}' stored as {}",
                shown_name(&self.name),
                self.target.display()
            );
            let _ = self.events.send(TftpEvent::Stored {
                name: self.name.clone(),
                path: self.target.clone(),
                bytes: self.written,
            });
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for AtomicUpload {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.temp);
            // A broken-off upload of a put-once name may be tried again.
            if let Some(key) = &self.once {
                session_state(&self.session).once_taken.remove(key);
            }
        }
    }
}
