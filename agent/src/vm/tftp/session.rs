//! One session's TFTP handler: the [`SessionRules`] a hostile guest is
//! held to (what it may GET, one result, upload quotas, one peer), and
//! uploads written to a temporary file renamed into place on completion.

use async_tftp::packet;
use async_tftp::server::Handler;
use futures_lite::AsyncWrite;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use manifests::guest;

use super::paths::{resolve_get, resolve_put, Refusal, RefusalKind};
use super::{shown_name, Phase, TftpEvent};

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

/// The handler of one session's server.
pub(super) struct GuestHandler {
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

impl GuestHandler {
    /// A handler serving `get_dir` and `put_dir` (canonical) under `rules`
    /// to `peer` (set by the first request), reporting on `events`.
    pub(super) fn new(
        get_dir: PathBuf,
        put_dir: PathBuf,
        rules: SessionRules,
        peer: Arc<Mutex<Option<IpAddr>>>,
        events: Sender<TftpEvent>,
    ) -> Self {
        GuestHandler {
            get_dir,
            put_dir,
            rules,
            peer,
            uploads: 0,
            session: Arc::new(Mutex::new(SessionState::default())),
            events,
        }
    }
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

/// A file read straight from the server's thread: each block is one
/// `read(2)`, from the page cache for what guests fetch (a task, the
/// worker binary). Neither a hop through a thread pool per block
/// (`blocking::Unblock`: about 1.15 × tftpd-hpa's time) nor reading the
/// whole file first (which costs its size in memory and delays the first
/// block: 1.4 × at 64 KiB blocks) is needed, since every VM has a server
/// thread of its own and a slow disk stalls only that guest's transfer.
struct DirectRead(File);

impl futures_lite::AsyncRead for DirectRead {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        super::block_moved(buf.len());
        std::task::Poll::Ready(std::io::Read::read(&mut self.0, buf))
    }
}

impl Handler for GuestHandler {
    type Reader = Box<dyn futures_lite::AsyncRead + Unpin + Send>;
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
        let reader: Self::Reader = Box::new(DirectRead(file));
        let _ = self.events.send(TftpEvent::Get { name });
        Ok((reader, len))
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
        super::block_moved(buf.len());
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
