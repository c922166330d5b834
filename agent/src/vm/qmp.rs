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
use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
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

/// A lazily (re)connecting QMP client for one VM.
pub struct QmpClient {
    path: PathBuf,
    timeout: Duration,
    conn: Option<Connection>,
}

impl QmpClient {
    /// A client for the socket at `path`; each exchange waits at most
    /// `timeout` for its answer.
    pub fn new(path: &Path, timeout: Duration) -> Self {
        QmpClient {
            path: path.to_path_buf(),
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
            let stream = UnixStream::connect(&self.path).map_err(|source| QmpError::Connect {
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
