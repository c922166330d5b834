//! The guest's own TFTP client (RFC 1350 with the blksize and tsize
//! options of RFC 2347–2349, and RFC 7440's windowsize), so a guest needs
//! nothing but `worker-guest` to fetch its task and upload its result.
//!
//! With a window of W blocks the sender sends W blocks per round trip and
//! the receiver acknowledges the last of them (or the last block it got in
//! order, which makes the sender resend from there), so neither a download
//! nor an upload is bound by one round trip per block. The agent's server
//! answers windowsize for both (its async-tftp carries a patch for
//! writes, vendor/async-tftp); a server that does not answer the option
//! gets one block per round trip.
//!
//! Hand-written rather than a crate: the TFTP client crates on crates.io
//! are async-only or unmaintained, and the protocol is a page of code. It
//! follows the RFC's rules that matter on a lossy link: each packet is
//! retransmitted on timeout a bounded number of times (so a transfer with
//! a dead server ends in bounded time, whatever else arrives meanwhile), a
//! duplicate DATA block is re-acknowledged at once while a duplicate ACK is
//! never answered with new data (no sorcerer's apprentice), packets from a
//! foreign transfer id get an error and are otherwise ignored, and a
//! transfer the client gives up on is aborted with an ERROR packet so the
//! server does not wait for it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

mod packet;

pub use packet::ERR_NOT_FOUND;
use packet::{
    accepted_options, ack, data, error_packet, parse, request, Abort, Accepted, Packet,
    ERR_UNDEFINED, ERR_UNKNOWN_TID, RRQ, WRQ,
};

/// Block size asked for: fits an Ethernet frame with IP and UDP headers.
pub const DEFAULT_BLKSIZE: u16 = 1428;
/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65464;
/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Default wait for an answer before a packet is resent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default number of resends before a transfer is given up.
pub const DEFAULT_RETRIES: u32 = 8;
/// Blocks per window asked for (RFC 7440): 16 × 1428 bytes
/// in flight, well inside a guest NIC's and the agent's socket buffers.
pub const DEFAULT_WINDOWSIZE: u16 = 16;

/// A transfer that failed.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// Local socket trouble.
    #[error("TFTP {what} with {server}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The server.
        server: SocketAddr,
        /// What failed.
        source: io::Error,
    },
    /// The server stopped answering (or never answered).
    #[error("TFTP {what} with {server}: no answer after {retries} retries ({timeout:?} each)")]
    Timeout {
        /// What was being done.
        what: String,
        /// The server.
        server: SocketAddr,
        /// Retries made.
        retries: u32,
        /// Wait for each answer.
        timeout: Duration,
    },
    /// The server refused or aborted the transfer.
    #[error("TFTP {what}: server {server} says: {message} (code {code})")]
    Remote {
        /// What was being done.
        what: String,
        /// The server.
        server: SocketAddr,
        /// TFTP error code (1 = file not found, 2 = access violation, ...).
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The server sent something that is not valid TFTP for this transfer.
    #[error("TFTP {what} with {server}: {message}")]
    Protocol {
        /// What was being done.
        what: String,
        /// The server.
        server: SocketAddr,
        /// What was wrong.
        message: String,
    },
}

impl TftpError {
    /// Whether the server said the file does not exist, which callers
    /// treat as "nothing to fetch" rather than a failure: TFTP error code
    /// 1, or code 0 ("not defined") whose message says so, since servers
    /// built on `async-tftp` with their own handler (the agent's, at the
    /// time of writing) can only send their refusals as code 0 messages.
    pub fn is_not_found(&self) -> bool {
        match self {
            TftpError::Remote {
                code: ERR_NOT_FOUND,
                ..
            } => true,
            TftpError::Remote {
                code: ERR_UNDEFINED,
                message,
                ..
            } => {
                let m = message.to_ascii_lowercase();
                m.contains("no such file") || m.contains("not found")
            }
            _ => false,
        }
    }

    /// Whether the server never answered or stopped answering.
    pub fn is_timeout(&self) -> bool {
        matches!(self, TftpError::Timeout { .. })
    }
}

/// A client for one server. Cheap to clone; every transfer uses its own
/// socket (its own transfer id).
#[derive(Debug, Clone)]
pub struct TftpClient {
    server: SocketAddr,
    blksize: u16,
    windowsize: u16,
    timeout: Duration,
    retries: u32,
}

/// What an exchange does with a packet from the server.
enum Verdict<T> {
    /// The exchange is over with this outcome.
    Done(Result<T, Abort>),
    /// A duplicate of what we already answered: answer it again now.
    Resend,
    /// Not for us at this point (a late duplicate): keep waiting.
    Ignore,
}

/// One transfer's socket and peer bookkeeping.
struct Transfer<'c> {
    client: &'c TftpClient,
    socket: UdpSocket,
    /// The server's transfer id (address and port), once it answered.
    peer: Option<SocketAddr>,
    what: String,
    buf: Vec<u8>,
    /// Whether the last exchange had to resend its packet (a download's
    /// window restarts after the block that packet acknowledged).
    resent: bool,
}

impl<'c> Transfer<'c> {
    fn new(client: &'c TftpClient, what: String) -> Result<Self, TftpError> {
        let bind = if client.server.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let socket = UdpSocket::bind(bind).map_err(|source| TftpError::Io {
            what: what.clone(),
            server: client.server,
            source,
        })?;
        Ok(Transfer {
            client,
            socket,
            peer: None,
            what,
            buf: vec![0; usize::from(u16::MAX) + 4],
            resent: false,
        })
    }

    fn io(&self, source: io::Error) -> TftpError {
        TftpError::Io {
            what: self.what.clone(),
            server: self.client.server,
            source,
        }
    }

    fn send(&self, packet: &[u8]) -> Result<(), TftpError> {
        let to = self.peer.unwrap_or(self.client.server);
        self.socket
            .send_to(packet, to)
            .map(drop)
            .map_err(|e| self.io(e))
    }

    fn send_all(&self, packets: &[&[u8]]) -> Result<(), TftpError> {
        packets.iter().try_for_each(|p| self.send(p))
    }

    /// Gives up: tells the server (if it answered) and returns the error.
    fn abort(&self, abort: Abort) -> TftpError {
        if let Some(peer) = self.peer {
            // Best effort: the server times out anyway if this is lost.
            let _ = self
                .socket
                .send_to(&error_packet(abort.code, &abort.message), peer);
        }
        TftpError::Protocol {
            what: self.what.clone(),
            server: self.client.server,
            message: abort.message,
        }
    }

    /// Receives one datagram, waiting at most until `deadline`; `None` on
    /// timeout.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<(usize, SocketAddr)>, TftpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        self.socket
            .set_read_timeout(Some(left))
            .map_err(|e| self.io(e))?;
        match self.socket.recv_from(&mut self.buf) {
            Ok(r) => Ok(Some(r)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            // A signal is not a reason to fail a transfer.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.recv_until(deadline),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Sends `packet`, then waits for a packet `judge` ends the exchange
    /// with, resending `packet` when the server is silent for the client's
    /// timeout (at most `retries` times) or when `judge` sees a duplicate.
    /// Ignored packets do not extend the wait, so the exchange takes at
    /// most `(retries + 1) × timeout`.
    fn exchange<T>(
        &mut self,
        packet: &[u8],
        judge: impl FnMut(&Packet<'_>) -> Verdict<T>,
    ) -> Result<T, TftpError> {
        self.send(packet)?;
        self.await_answer(&[packet], judge)
    }

    /// [`Transfer::exchange`] without the first send, and for a window of
    /// packets: `packets` were sent already (an upload window), or are
    /// only sent when the server falls silent (inside a download window,
    /// where blocks are not acknowledged one by one); a resend sends them
    /// all, in order.
    fn await_answer<T>(
        &mut self,
        packets: &[&[u8]],
        mut judge: impl FnMut(&Packet<'_>) -> Verdict<T>,
    ) -> Result<T, TftpError> {
        self.resent = false;
        let mut retries = 0;
        let mut deadline = Instant::now() + self.client.timeout;
        loop {
            let Some((n, from)) = self.recv_until(deadline)? else {
                if retries >= self.client.retries {
                    // Tell a server that is still there but lost us.
                    let _ = self.abort(Abort::new(ERR_UNDEFINED, "client timed out"));
                    return Err(TftpError::Timeout {
                        what: self.what.clone(),
                        server: self.client.server,
                        retries: self.client.retries,
                        timeout: self.client.timeout,
                    });
                }
                retries += 1;
                self.send_all(packets)?;
                self.resent = true;
                deadline = Instant::now() + self.client.timeout;
                continue;
            };
            match self.peer {
                // The first answer fixes the server's transfer id; it must
                // come from the server's host.
                None if from.ip() == self.client.server.ip() => self.peer = Some(from),
                None => continue,
                Some(peer) if peer != from => {
                    let _ = self
                        .socket
                        .send_to(&error_packet(ERR_UNKNOWN_TID, "unknown transfer id"), from);
                    continue;
                }
                Some(_) => {}
            }
            let Some(p) = parse(&self.buf[..n]) else {
                return Err(self.abort(Abort::new(ERR_UNDEFINED, "malformed packet")));
            };
            if let Packet::Error(code, message) = p {
                return Err(TftpError::Remote {
                    what: self.what.clone(),
                    server: self.client.server,
                    code,
                    message,
                });
            }
            match judge(&p) {
                Verdict::Done(Ok(v)) => return Ok(v),
                Verdict::Done(Err(a)) => return Err(self.abort(a)),
                Verdict::Resend => {
                    self.send_all(packets)?;
                    self.resent = true;
                }
                Verdict::Ignore => {}
            }
        }
    }
}

impl TftpClient {
    /// A client for `server` with the default block size, timeout and
    /// retries.
    pub fn new(server: SocketAddr) -> Self {
        TftpClient {
            server,
            blksize: DEFAULT_BLKSIZE,
            windowsize: DEFAULT_WINDOWSIZE,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
        }
    }

    /// Asks for another block size, clamped to RFC 2348's 8..=65464 (512,
    /// TFTP's own size, sends no blksize option at all, for servers that
    /// know no options).
    pub fn with_blksize(mut self, blksize: u16) -> Self {
        self.blksize = blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
        self
    }

    /// Asks for another window (RFC 7440), at least 1 (1 sends no
    /// windowsize option: one block per round trip).
    pub fn with_windowsize(mut self, windowsize: u16) -> Self {
        self.windowsize = windowsize.max(1);
        self
    }

    /// Changes the wait for each answer and how often a packet is resent,
    /// which together bound how long a silent server is waited for.
    pub fn with_timeout(mut self, timeout: Duration, retries: u32) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self.retries = retries;
        self
    }

    /// The server this client talks to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The options of a request; `windowsize` is asked for only when 2
    /// or more.
    fn options(&self, tsize: u64) -> Vec<(&'static str, String)> {
        let mut o = vec![("tsize", tsize.to_string())];
        if self.blksize != 512 {
            o.push(("blksize", self.blksize.to_string()));
        }
        if self.windowsize > 1 {
            o.push(("windowsize", self.windowsize.to_string()));
        }
        o
    }

    /// Downloads `name`.
    pub fn get(&self, name: &str) -> Result<Vec<u8>, TftpError> {
        let mut t = Transfer::new(self, format!("GET {name}"))?;
        let rrq = request(RRQ, name, &self.options(0));
        let (asked, asked_window) = (self.blksize, self.windowsize);
        // First answer: OACK (options accepted) or DATA 1 (options ignored).
        enum First {
            Options(Accepted),
            Block(Vec<u8>),
        }
        let first = t.exchange(&rrq, |p| match p {
            Packet::OAck(opts) => {
                Verdict::Done(accepted_options(opts, asked, asked_window).map(First::Options))
            }
            Packet::Data(1, chunk) => Verdict::Done(Ok(First::Block(chunk.to_vec()))),
            _ => Verdict::Ignore,
        })?;
        let mut out = Vec::new();
        let (opts, mut next, mut last_ack) = match first {
            First::Options(a) => {
                if let Some(n) = a.tsize {
                    // A size hint only: never trusted for an allocation
                    // beyond a sane bound.
                    out.reserve(usize::try_from(n.min(1 << 26)).unwrap_or(0));
                }
                (a, 1u16, ack(0))
            }
            First::Block(chunk) => {
                let opts = Accepted::PLAIN;
                if chunk.len() > opts.blksize {
                    return Err(t.abort(Abort::new(
                        ERR_UNDEFINED,
                        format!("block 1 holds {} bytes, more than 512", chunk.len()),
                    )));
                }
                let done = chunk.len() < opts.blksize;
                out.extend_from_slice(&chunk);
                if done {
                    t.send(&ack(1))?;
                    return Ok(out);
                }
                (opts, 2u16, ack(1))
            }
        };
        // `last_ack` acknowledges the last block received in order; it is
        // sent when a window is complete, and again whenever the server
        // falls silent or resends (then it resends from the block after).
        let mut ack_now = true;
        let mut in_window: u16 = 0;
        loop {
            let expected = next;
            let previous = expected.wrapping_sub(1);
            let blksize = opts.blksize;
            // A block past the one expected means one was lost: say so
            // once (the server resends from the last acknowledged block).
            let mut gap_reported = false;
            let judge = |p: &Packet<'_>| match p {
                Packet::Data(b, chunk) if *b == expected => {
                    if chunk.len() > blksize {
                        Verdict::Done(Err(Abort::new(
                            ERR_UNDEFINED,
                            format!(
                                "block {b} holds {} bytes, more than the block size {blksize}",
                                chunk.len()
                            ),
                        )))
                    } else {
                        Verdict::Done(Ok(chunk.to_vec()))
                    }
                }
                // Our ACK was lost and the server resent the block we had
                // (the last of its window).
                Packet::Data(b, _) if *b == previous => Verdict::Resend,
                // Our ACK 0 of its OACK was lost and it resent the OACK.
                Packet::OAck(_) if expected == 1 => Verdict::Resend,
                Packet::Data(b, _)
                    if !gap_reported
                        && b.wrapping_sub(expected) < opts.windowsize
                        && *b != expected =>
                {
                    gap_reported = true;
                    Verdict::Resend
                }
                _ => Verdict::Ignore,
            };
            let chunk = if ack_now {
                t.exchange(&last_ack, judge)?
            } else {
                t.await_answer(&[&last_ack], judge)?
            };
            out.extend_from_slice(&chunk);
            last_ack = ack(expected);
            if t.resent {
                // The server resends from this block on: a new window.
                in_window = 0;
            }
            in_window += 1;
            ack_now = in_window >= opts.windowsize;
            if ack_now {
                in_window = 0;
            }
            if chunk.len() < blksize {
                t.send(&last_ack)?;
                if let Some(n) = opts.tsize.filter(|&n| n != 0 && n != out.len() as u64) {
                    return Err(t.abort(Abort::new(
                        ERR_UNDEFINED,
                        format!("server announced {n} bytes but sent {}", out.len()),
                    )));
                }
                return Ok(out);
            }
            next = next.wrapping_add(1);
        }
    }

    /// Uploads `contents` as `name`.
    ///
    /// With a window of W blocks the client sends W blocks, then waits for
    /// the server's acknowledgement: of the window's last block (the next
    /// window follows), of an earlier one (a block was lost: the next
    /// window starts after it), or of the block before the window (the
    /// first was lost: the window is sent again, once per window; a later
    /// such duplicate is ignored, never answered with data; without a
    /// window every duplicate is). Silence resends the window.
    pub fn put(&self, name: &str, contents: &[u8]) -> Result<(), TftpError> {
        let mut t = Transfer::new(self, format!("PUT {name}"))?;
        let wrq = request(WRQ, name, &self.options(contents.len() as u64));
        let (asked, asked_window) = (self.blksize, self.windowsize);
        let opts = t.exchange(&wrq, |p| match p {
            Packet::OAck(opts) => Verdict::Done(accepted_options(opts, asked, asked_window)),
            Packet::Ack(0) => Verdict::Done(Ok(Accepted::PLAIN)),
            _ => Verdict::Ignore,
        })?;
        let blksize = opts.blksize;
        // Block i (from 0) holds contents[i × blksize ..]; the last is the
        // first one shorter than blksize (empty when the size is a
        // multiple of it). Block numbers on the wire are i + 1, wrapping.
        let blocks = contents.len() / blksize + 1;
        let wire = |i: usize| (i + 1) as u16;
        let mut base = 0usize;
        while base < blocks {
            let end = (base + usize::from(opts.windowsize)).min(blocks);
            let window: Vec<Vec<u8>> = (base..end)
                .map(|i| {
                    let from = i * blksize;
                    let to = (from + blksize).min(contents.len());
                    data(wire(i), &contents[from..to])
                })
                .collect();
            let packets: Vec<&[u8]> = window.iter().map(Vec::as_slice).collect();
            t.send_all(&packets)?;
            let (first, sent) = (wire(base), end - base);
            // One block per round trip (RFC 1350): a duplicate ACK is
            // only ever ignored (no sorcerer's apprentice).
            let mut resent_for_previous = opts.windowsize == 1;
            let acked = t.await_answer(&packets, |p| match p {
                Packet::Ack(b) if usize::from(b.wrapping_sub(first)) < sent => {
                    Verdict::Done(Ok(usize::from(b.wrapping_sub(first)) + 1))
                }
                // The server has nothing of this window (its first block
                // was lost, or it missed the whole window): resend it,
                // once; a late duplicate of the acknowledgement that
                // opened the window looks the same.
                Packet::Ack(b) if *b == first.wrapping_sub(1) && !resent_for_previous => {
                    resent_for_previous = true;
                    Verdict::Resend
                }
                Packet::OAck(_) if base == 0 && !resent_for_previous => {
                    resent_for_previous = true;
                    Verdict::Resend
                }
                _ => Verdict::Ignore,
            })?;
            base += acked;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blksize_is_clamped() {
        let c = TftpClient::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 69)));
        assert_eq!(c.clone().with_blksize(1).blksize, MIN_BLKSIZE);
        assert_eq!(c.with_blksize(u16::MAX).blksize, MAX_BLKSIZE);
    }
}
