//! A blocking HTTP/1.1 server: one thread per connection (bounded), keep-alive,
//! `Content-Length` and chunked bodies, `Expect: 100-continue`.
//!
//! Everything a client controls is bounded: the head (16 KiB, 100 fields),
//! the body (the route's limit, checked against the declared length before
//! a byte of it is read), idle and read time, the number of connections.
//! A body over the limit is answered 413 with `Connection: close`; it is
//! never buffered or parsed — whatever the client still sends is discarded
//! for at most [`Limits::linger`] so that it reads the 413 instead of a
//! connection reset, then the connection is closed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{reason, Handler, Request, RequestHead, Response};

/// Bounds on what a client may make the server do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line and fields).
    pub head_bytes: usize,
    /// Most header fields.
    pub headers: usize,
    /// How long an idle keep-alive connection is kept. Longer than the
    /// agent's idle poll (60 s) so its connection is reused, and than
    /// reqwest's pool idle time (90 s), so the client gives up first and
    /// never sends on a connection the server is closing.
    pub idle: Duration,
    /// How long a single read or write may block once a request started.
    pub io: Duration,
    /// Most simultaneous connections; further ones get 503 and are closed.
    pub connections: usize,
    /// How long a refused body is discarded before closing (see module).
    pub linger: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            head_bytes: 16 * 1024,
            headers: 100,
            idle: Duration::from_secs(120),
            io: Duration::from_secs(30),
            connections: 1024,
            linger: Duration::from_secs(2),
        }
    }
}

/// A bound listening socket.
pub struct Server {
    listener: TcpListener,
    limits: Limits,
}

/// Stops a running [`Server`] from another thread.
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Stopper {
    /// Asks the server to stop: no new connections, requests in progress
    /// finish (each connection closes after its current request).
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // Wake the accept loop, which blocks in accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// A request head that cannot be used.
enum HeadError {
    /// Connection closed or timed out before a request started: no answer.
    Gone,
    /// Answer with this status and close.
    Refuse(u16, String),
}

/// How the body is framed.
enum Framing {
    None,
    Length(u64),
    Chunked,
}

impl Server {
    /// Binds `addr` (e.g. `127.0.0.1:8080`; port 0 picks a free one).
    pub fn bind(addr: impl ToSocketAddrs, limits: Limits) -> io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr)?,
            limits,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that stops [`Server::run`].
    pub fn stopper(&self) -> io::Result<Stopper> {
        let mut addr = self.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(Stopper {
            flag: Arc::new(AtomicBool::new(false)),
            addr,
        })
    }

    /// Serves until `stopper` is stopped, then waits (at most `drain`) for
    /// requests being handled to be answered.
    pub fn run(&self, handler: Arc<dyn Handler>, stopper: &Stopper, drain: Duration) {
        let open = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        for stream in self.listener.incoming() {
            if stopper.stopping() {
                break;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if open.load(Ordering::SeqCst) >= self.limits.connections {
                handler.refused(None, 503, "too many connections");
                let _ = write_response(
                    &stream,
                    &Response::text(503, "too many connections"),
                    false,
                    false,
                );
                continue;
            }
            open.fetch_add(1, Ordering::SeqCst);
            let conn = Connection {
                handler: Arc::clone(&handler),
                limits: self.limits.clone(),
                stopper: stopper.clone(),
                busy: Arc::clone(&busy),
            };
            let open2 = Arc::clone(&open);
            let spawned = std::thread::Builder::new()
                .name("http".into())
                .stack_size(512 * 1024)
                .spawn(move || {
                    conn.serve(stream);
                    open2.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                open.fetch_sub(1, Ordering::SeqCst);
                tracing::error!(error = %e, "cannot start a connection thread");
            }
        }
        let end = Instant::now() + drain;
        while busy.load(Ordering::SeqCst) > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One client connection.
struct Connection {
    handler: Arc<dyn Handler>,
    limits: Limits,
    stopper: Stopper,
    busy: Arc<AtomicUsize>,
}

/// Decrements the busy count however a request ends.
struct BusyGuard<'a>(&'a AtomicUsize);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Connection {
    fn serve(&self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(self.limits.io));
        let remote = stream.peer_addr().ok();
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::with_capacity(8192, read_half);
        loop {
            let _ = stream.set_read_timeout(Some(self.limits.idle));
            let head = match self.read_head(&mut reader, &stream, remote) {
                Ok(h) => h,
                Err(HeadError::Gone) => return,
                Err(HeadError::Refuse(status, why)) => {
                    self.handler.refused(None, status, &why);
                    let _ = write_response(&stream, &Response::text(status, why), false, false);
                    return;
                }
            };
            self.busy.fetch_add(1, Ordering::SeqCst);
            let _busy = BusyGuard(&self.busy);
            let (http10, mut keep_alive) = connection_semantics(&head.0, &head.1);
            let head = head.1;
            if self.stopper.stopping() {
                keep_alive = false;
            }
            let body = match self.read_body(&mut reader, &stream, &head) {
                Ok(b) => b,
                Err(None) => return,
                Err(Some((status, why))) => {
                    self.handler.refused(Some(&head), status, &why);
                    let _ = write_response(&stream, &Response::text(status, why), false, false);
                    linger(&stream, &mut reader, self.limits.linger);
                    return;
                }
            };
            let is_head = head.method == "HEAD";
            let handler = Arc::clone(&self.handler);
            let request = Request { head, body };
            let response =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(request)))
                    .unwrap_or_else(|_| Response::text(500, "internal error (handler panicked)"));
            let keep = keep_alive && response.status < 500;
            let mut response = response;
            if http10 && keep {
                response
                    .headers
                    .push(("Connection".into(), "keep-alive".into()));
            }
            if write_response(&stream, &response, keep, is_head).is_err() || !keep {
                let _ = stream.shutdown(Shutdown::Write);
                return;
            }
        }
    }

    /// Reads the request line and header fields. `Ok` holds the HTTP
    /// version string and the head.
    fn read_head(
        &self,
        reader: &mut BufReader<TcpStream>,
        stream: &TcpStream,
        remote: Option<SocketAddr>,
    ) -> Result<(String, RequestHead), HeadError> {
        let mut budget = self.limits.head_bytes;
        // RFC 9112 2.2: ignore empty lines before the request line.
        let line = loop {
            let line = read_line(reader, &mut budget).map_err(|e| match e {
                LineError::Io | LineError::Eof => HeadError::Gone,
                LineError::TooLong => HeadError::Refuse(431, "request head too large".into()),
                LineError::NotUtf8 => HeadError::Refuse(400, "request head is not UTF-8".into()),
            })?;
            if !line.is_empty() {
                break line;
            }
        };
        // A request started: from now on reads are bounded by the I/O time.
        let _ = stream.set_read_timeout(Some(self.limits.io));
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(HeadError::Refuse(400, "malformed request line".into()));
        };
        if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
            return Err(HeadError::Refuse(505, "only HTTP/1.0 and 1.1".into()));
        }
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(HeadError::Refuse(400, "malformed method".into()));
        }
        if !target.starts_with('/') {
            return Err(HeadError::Refuse(
                400,
                "request target must be a path".into(),
            ));
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers = Vec::new();
        loop {
            let line = read_line(reader, &mut budget).map_err(|e| match e {
                LineError::Io | LineError::Eof => HeadError::Gone,
                LineError::TooLong => HeadError::Refuse(431, "request head too large".into()),
                LineError::NotUtf8 => HeadError::Refuse(400, "request head is not UTF-8".into()),
            })?;
            if line.is_empty() {
                break;
            }
            if line.starts_with([' ', '\t']) {
                return Err(HeadError::Refuse(
                    400,
                    "obsolete header line folding".into(),
                ));
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(HeadError::Refuse(400, "malformed header field".into()));
            };
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(HeadError::Refuse(400, "malformed header name".into()));
            }
            if headers.len() >= self.limits.headers {
                return Err(HeadError::Refuse(431, "too many header fields".into()));
            }
            headers.push((name.to_string(), value.trim().to_string()));
        }
        Ok((
            version.to_string(),
            RequestHead {
                method: method.to_string(),
                path: path.to_string(),
                query: query.to_string(),
                headers,
                remote,
            },
        ))
    }

    /// Reads the body within the route's limit. `Err(None)`: the client is
    /// gone; `Err(Some(..))`: refuse with that status and close.
    fn read_body(
        &self,
        reader: &mut BufReader<TcpStream>,
        stream: &TcpStream,
        head: &RequestHead,
    ) -> Result<Vec<u8>, Option<(u16, String)>> {
        let limit = self.handler.body_limit(head);
        let framing = framing(head).map_err(Some)?;
        let expects_continue = head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let too_large = |n: u64| {
            Some((
                413,
                format!("request body of {n} bytes exceeds the limit of {limit} bytes"),
            ))
        };
        match framing {
            Framing::None => Ok(Vec::new()),
            Framing::Length(n) if n > limit => Err(too_large(n)),
            Framing::Length(n) => {
                if expects_continue {
                    send_continue(stream).map_err(|_| None)?;
                }
                // Grows as data arrives: a client declaring the limit and
                // sending nothing costs nothing.
                let mut body = Vec::with_capacity(n.min(64 * 1024) as usize);
                let got = reader.take(n).read_to_end(&mut body).map_err(|_| None)?;
                if got as u64 != n {
                    return Err(None);
                }
                Ok(body)
            }
            Framing::Chunked => {
                if expects_continue {
                    send_continue(stream).map_err(|_| None)?;
                }
                read_chunked(reader, limit)
            }
        }
    }
}

/// HTTP/1.0 or not, and whether the connection stays open after this
/// request (RFC 9112 9.3).
fn connection_semantics(version: &str, head: &RequestHead) -> (bool, bool) {
    let http10 = version == "HTTP/1.0";
    let conn = head
        .header("connection")
        .map(|v| v.to_ascii_lowercase())
        .unwrap_or_default();
    let close = conn.split(',').any(|t| t.trim() == "close");
    let keep = conn.split(',').any(|t| t.trim() == "keep-alive");
    (http10, if http10 { keep && !close } else { !close })
}

fn framing(head: &RequestHead) -> Result<Framing, (u16, String)> {
    let te = head.header("transfer-encoding");
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    match (te, lengths.as_slice()) {
        (Some(_), [_, ..]) => Err((400, "both Transfer-Encoding and Content-Length".into())),
        (Some(te), []) if te.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
        (Some(te), []) => Err((501, format!("transfer coding '{te}' not supported"))),
        (None, []) => Ok(Framing::None),
        (None, [first, rest @ ..]) => {
            if rest.iter().any(|v| v != first) {
                return Err((400, "conflicting Content-Length fields".into()));
            }
            if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
                return Err((400, format!("invalid Content-Length '{first}'")));
            }
            // Digits only: too many of them is simply too large.
            Ok(Framing::Length(first.parse().unwrap_or(u64::MAX)))
        }
    }
}

fn send_continue(mut stream: &TcpStream) -> io::Result<()> {
    stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    stream.flush()
}

/// Reads a chunked body (RFC 9112 7.1), refusing it once it would exceed
/// `limit`; chunk extensions and trailer fields are read and ignored.
fn read_chunked(
    reader: &mut BufReader<TcpStream>,
    limit: u64,
) -> Result<Vec<u8>, Option<(u16, String)>> {
    let mut body = Vec::new();
    let mut budget = 64 * 1024;
    loop {
        let line = read_line(reader, &mut budget).map_err(|e| match e {
            LineError::TooLong | LineError::NotUtf8 => {
                Some((400, "chunk framing too long or not text".to_string()))
            }
            LineError::Io | LineError::Eof => None,
        })?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| Some((400, format!("invalid chunk size '{size_text}'"))))?;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let t = read_line(reader, &mut budget).map_err(|e| match e {
                    LineError::TooLong | LineError::NotUtf8 => {
                        Some((400, "chunk trailer too long or not text".to_string()))
                    }
                    LineError::Io | LineError::Eof => None,
                })?;
                if t.is_empty() {
                    return Ok(body);
                }
            }
        }
        let total = (body.len() as u64).saturating_add(size);
        if total > limit {
            return Err(Some((
                413,
                format!("request body exceeds the limit of {limit} bytes"),
            )));
        }
        let got = reader.take(size).read_to_end(&mut body).map_err(|_| None)?;
        if got as u64 != size {
            return Err(None);
        }
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).map_err(|_| None)?;
        if &crlf != b"\r\n" {
            return Err(Some((400, "chunk not followed by CRLF".into())));
        }
    }
}

enum LineError {
    Io,
    Eof,
    TooLong,
    NotUtf8,
}

/// Reads one line (LF or CRLF) of at most `budget` bytes, which it
/// decreases; the line must be UTF-8.
fn read_line(reader: &mut BufReader<TcpStream>, budget: &mut usize) -> Result<String, LineError> {
    let mut line = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(LineError::Io),
        };
        if available.is_empty() {
            return Err(LineError::Eof);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        if chunk.len() > *budget {
            return Err(LineError::TooLong);
        }
        *budget -= chunk.len();
        line.extend_from_slice(chunk);
        let n = chunk.len();
        reader.consume(n);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return String::from_utf8(line).map_err(|_| LineError::NotUtf8);
        }
    }
}

/// Writes `response`; `keep` decides the `Connection` field.
fn write_response(
    mut stream: &TcpStream,
    response: &Response,
    keep: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + response.body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    for (n, v) in &response.headers {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&response.body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

/// After refusing a request whose body is still coming: half-close, then
/// discard what arrives for at most `time`, so that the client reads the
/// answer rather than a reset (closing with unread data sends RST).
fn linger(stream: &TcpStream, reader: &mut BufReader<TcpStream>, time: Duration) {
    let _ = stream.shutdown(Shutdown::Write);
    let end = Instant::now() + time;
    let mut buf = [0u8; 8192];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = stream.set_read_timeout(Some(left));
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
