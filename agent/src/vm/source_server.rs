//! Serves one task's mirror to that task's guest, read-only, over the git
//! protocol: each connection the guest opens gets its own
//! `git daemon --inetd` (upload-pack only; nothing can be pushed) whose
//! base path holds nothing but a link to the mirror, so no other
//! repository of the host can be named.
//!
//! The listener is bound where only this guest can reach it (its network
//! namespace; see [`crate::vm::netns`]). Connections from any address but the
//! one the guest's TFTP session was pinned to are closed. At most
//! [`MAX_CONNECTIONS`] run at once, each under git daemon's own timeouts,
//! and all are killed when the server stops.

use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use manifests::guest::SOURCE_REPOSITORY;

/// Most git processes serving one guest at once.
pub const MAX_CONNECTIONS: usize = 4;

/// Who may connect: the address the guest's TFTP session was pinned to
/// (`None` until the guest has fetched its task: nobody).
pub type AllowedPeer = Arc<Mutex<Option<IpAddr>>>;

/// A running source server; stopped (and its git processes killed) when
/// dropped.
pub struct SourceServer {
    addr: SocketAddr,
    base: PathBuf,
    stop: Arc<AtomicBool>,
    listener_fd: i32,
    thread: Option<JoinHandle<()>>,
    children: Arc<Mutex<Vec<Child>>>,
}

impl SourceServer {
    /// Serves `mirror` on `listener`, to `allowed` only. `base` is a fresh
    /// directory of this session (it receives the link to the mirror and
    /// is removed on stop).
    pub fn start(
        listener: TcpListener,
        mirror: &Path,
        base: &Path,
        allowed: AllowedPeer,
    ) -> io::Result<SourceServer> {
        let addr = listener.local_addr()?;
        fs::create_dir_all(base)?;
        let link = base.join(SOURCE_REPOSITORY);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(mirror, &link)?;
        let stop = Arc::new(AtomicBool::new(false));
        let children: Arc<Mutex<Vec<Child>>> = Arc::default();
        let listener_fd = listener.as_raw_fd();
        let thread = {
            let stop = Arc::clone(&stop);
            let children = Arc::clone(&children);
            let base = base.to_path_buf();
            std::thread::Builder::new()
                .name(format!("source-{}", addr.port()))
                .spawn(move || accept_loop(listener, &base, &allowed, &stop, &children))?
        };
        Ok(SourceServer {
            addr,
            base: base.to_path_buf(),
            stop,
            listener_fd,
            thread: Some(thread),
            children,
        })
    }

    /// The listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept(): it fails with EINVAL once the socket
        // is shut down, and the loop sees the stop flag.
        // SAFETY: the fd stays open until the accept thread ends.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for c in children.iter_mut() {
            // SAFETY: each child leads its own process group.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
        children.clear();
        let _ = fs::remove_dir_all(&self.base);
    }
}

impl Drop for SourceServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(
    listener: TcpListener,
    base: &Path,
    allowed: &AllowedPeer,
    stop: &AtomicBool,
    children: &Mutex<Vec<Child>>,
) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("source server: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let pinned = *allowed.lock().unwrap_or_else(|p| p.into_inner());
        if pinned != Some(peer.ip()) {
            tracing::warn!(
                "source server: connection from {peer} refused (the session's guest is {pinned:?})"
            );
            continue;
        }
        let mut running = children.lock().unwrap_or_else(|p| p.into_inner());
        running.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        if running.len() >= MAX_CONNECTIONS {
            tracing::warn!("source server: {peer} has {MAX_CONNECTIONS} connections open; refused");
            continue;
        }
        match serve(stream, base) {
            Ok(child) => {
                tracing::info!("source server: serving the mirror to {peer}");
                running.push(child);
            }
            Err(e) => tracing::warn!("source server: cannot start git daemon: {e}"),
        }
    }
}

/// One `git daemon --inetd` on `stream`.
fn serve(stream: TcpStream, base: &Path) -> io::Result<Child> {
    let fd: OwnedFd = stream.into();
    let fd2 = fd.try_clone()?;
    let mut cmd = Command::new("git");
    cmd.args([
        // The mirror holds only the task's repository: any commit of it
        // may be asked for by hash (the task's commits, shallow).
        "-c",
        "uploadpack.allowAnySHA1InWant=true",
        "daemon",
        "--inetd",
        "--export-all",
        "--informative-errors",
        "--timeout=60",
        "--init-timeout=10",
    ])
    .arg(format!("--base-path={}", base.display()))
    .stdin(Stdio::from(fd))
    .stdout(Stdio::from(fd2))
    .stderr(Stdio::null())
    .process_group(0);
    crate::vm::lifecycle::die_with_agent(&mut cmd);
    cmd.spawn()
}
