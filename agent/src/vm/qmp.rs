//! A QMP connection that survives its own timeouts.
//!
//! `qapi` speaks QMP over a stream but keeps no request ids: if a read
//! times out, the late answer would be taken as the answer to the next
//! command. So every failed exchange drops the connection, and the next
//! command reconnects (QEMU's QMP socket accepts a new client once the old
//! one is gone) and handshakes again. The greeting is read here rather
//! than by `qapi`, whose handshake panics when QEMU closes the socket
//! first.

use qapi::qmp::{qmp_capabilities, QapiCapabilities};
use qapi::{Command, Qmp, Stream};
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Connection = Qmp<Stream<BufReader<UnixStream>, UnixStream>>;

/// A QMP exchange that failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached (QEMU not up yet, or gone).
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// QEMU answered something that is not QMP.
    #[error("QMP socket {path}: unexpected greeting {greeting:?}")]
    Greeting {
        /// The socket.
        path: PathBuf,
        /// What came instead.
        greeting: String,
    },
    /// The command was sent but no (good) answer came: timeout, EOF, or an
    /// error reply.
    #[error("QMP command {command} on {path}: {message}")]
    Command {
        /// The command's name.
        command: &'static str,
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A Unix socket in a directory, reachable however long the directory's
/// path: a socket address holds at most 107 bytes, and a run directory
/// under a long `--state` with long machine and toolchain names exceeds
/// that. The directory is held open and the socket reached as
/// `/proc/self/fd/<dir>/<name>`, a path of a few dozen bytes.
#[derive(Debug, Clone)]
pub struct SocketPath {
    dir: Arc<File>,
    name: String,
    full: PathBuf,
}

impl SocketPath {
    /// Socket `name` in directory `dir` (which must exist).
    pub fn in_dir(dir: &Path, name: &str) -> std::io::Result<SocketPath> {
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)?;
        Ok(SocketPath {
            dir: Arc::new(handle),
            name: name.to_string(),
            full: dir.join(name),
        })
    }

    /// The short path to bind or connect to (valid in this process while
    /// this value lives).
    pub fn short(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/self/fd/{}/{}",
            self.dir.as_raw_fd(),
            self.name
        ))
    }

    /// The real path, for people.
    pub fn full(&self) -> &Path {
        &self.full
    }
}

/// A lazily (re)connecting QMP client for one VM.
pub struct QmpClient {
    socket: SocketPath,
    path: PathBuf,
    timeout: Duration,
    conn: Option<Connection>,
}

impl QmpClient {
    /// A client for `socket`; each exchange waits at most `timeout` for
    /// its answer.
    pub fn new(socket: SocketPath, timeout: Duration) -> Self {
        QmpClient {
            path: socket.full().to_path_buf(),
            socket,
            timeout,
            conn: None,
        }
    }

    /// The socket path (for telling an admin how to reach a suspended VM).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(&mut self) -> Result<&mut Connection, QmpError> {
        if self.conn.is_none() {
            let stream =
                UnixStream::connect(self.socket.short()).map_err(|source| QmpError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
            let io_err = |source| QmpError::Connect {
                path: self.path.clone(),
                source,
            };
            stream
                .set_read_timeout(Some(self.timeout))
                .map_err(io_err)?;
            stream
                .set_write_timeout(Some(self.timeout))
                .map_err(io_err)?;
            let mut reader = BufReader::new(stream.try_clone().map_err(io_err)?);
            let mut greeting = String::new();
            reader.read_line(&mut greeting).map_err(io_err)?;
            if serde_json::from_str::<QapiCapabilities>(&greeting).is_err() {
                return Err(QmpError::Greeting {
                    path: self.path.clone(),
                    greeting,
                });
            }
            let mut qmp = Qmp::new(Stream::new(reader, stream));
            qmp.execute(&qmp_capabilities { enable: None })
                .map_err(|e| QmpError::Command {
                    command: "qmp_capabilities",
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
            self.conn = Some(qmp);
        }
        self.conn.as_mut().ok_or_else(|| QmpError::Connect {
            path: self.path.clone(),
            source: io::Error::other("not connected"),
        })
    }

    /// Runs one command. Any failure drops the connection so that a late
    /// answer can never be read as the answer to a later command.
    pub fn execute<C: Command>(&mut self, command: &C) -> Result<C::Ok, QmpError> {
        let path = self.path.clone();
        let result = self.connect()?.execute(command);
        result.map_err(|e| {
            self.conn = None;
            QmpError::Command {
                command: C::NAME,
                path,
                message: e.to_string(),
            }
        })
    }

    /// Connects, retrying until `deadline` (QEMU creates the socket a
    /// moment after it starts).
    pub fn connect_until(&mut self, deadline: Instant) -> Result<(), QmpError> {
        loop {
            match self.connect() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_socket_deeper_than_an_address_can_hold_is_reachable() {
        let base = tempfile::tempdir().unwrap();
        let deep = base.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let sock = SocketPath::in_dir(&deep, "qmp.sock").unwrap();
        assert!(sock.full().as_os_str().len() > 108);
        assert!(UnixListener::bind(sock.full()).is_err(), "too long as such");
        let listener = UnixListener::bind(sock.short()).unwrap();
        assert!(sock.full().exists(), "the socket is where it belongs");
        let mut c = UnixStream::connect(sock.clone().short()).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }
}
