use async_io::Async;
use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncWrite, AsyncWriteExt};
use log::trace;
use std::cmp;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::packet::{Opts, Packet, RwReq, PACKET_DATA_HEADER_LEN};
use crate::server::{ServerConfig, DEFAULT_BLOCK_SIZE};
use crate::utils::io_timeout;

pub(crate) struct WriteRequest<'w, W>
where
    W: AsyncWrite + Send,
{
    peer: SocketAddr,
    socket: Async<UdpSocket>,
    writer: &'w mut W,
    // BytesMut reclaims memory only if it is continuous.
    // Because we always need to keep the previous ACK, we can not use
    // `buffer` as its storage since it breaks the continuity.
    // So we keep previous ACK in `ack` buffer.
    buffer: BytesMut,
    ack: BytesMut,
    block_size: usize,
    timeout: Duration,
    max_retries: u32,
    oack_opts: Option<Opts>,
    /// Blocks per acknowledgement (RFC 7440), 1 without the option.
    window_size: u16,
}

impl<'w, W> WriteRequest<'w, W>
where
    W: AsyncWrite + Send + Unpin,
{
    pub(crate) async fn init(
        writer: &'w mut W,
        peer: SocketAddr,
        req: &RwReq,
        config: ServerConfig,
        local_ip: IpAddr,
    ) -> Result<WriteRequest<'w, W>> {
        let oack_opts = build_oack_opts(&config, req);

        let block_size = oack_opts
            .as_ref()
            .and_then(|o| o.block_size)
            .map(usize::from)
            .unwrap_or(DEFAULT_BLOCK_SIZE);

        // Default window size is 1 as per rfc7440
        let window_size = oack_opts
            .as_ref()
            .and_then(|o| o.window_size)
            .unwrap_or(1)
            .max(1);

        let timeout = oack_opts
            .as_ref()
            .and_then(|o| o.timeout)
            .map(|t| Duration::from_secs(u64::from(t)))
            .unwrap_or(config.timeout);

        let addr = SocketAddr::new(local_ip, 0);
        let socket = Async::<UdpSocket>::bind(addr).map_err(Error::Bind)?;

        Ok(WriteRequest {
            peer,
            socket,
            writer,
            buffer: BytesMut::new(),
            ack: BytesMut::new(),
            block_size,
            timeout,
            max_retries: config.max_send_retries,
            oack_opts,
            window_size,
        })
    }

    pub(crate) async fn handle(&mut self) {
        if let Err(e) = self.try_handle().await {
            trace!("WRQ request failed (peer: {}, error: {}", self.peer, &e);

            Packet::Error(e.into()).encode(&mut self.buffer);
            let buf = self.buffer.split().freeze();
            // Errors are never retransmitted.
            // We do not care if `send_to` resulted to an IO error.
            let _ = self.socket.send_to(&buf[..], self.peer).await;
        }
    }

    /// Receives the file. With a window of W blocks (RFC 7440) the client
    /// sends W blocks per round trip and this acknowledges the last of
    /// them; with none (W = 1) every block, as RFC 1350 has it.
    ///
    /// Losses: a block past the expected one means one was lost, so the
    /// last block received in order is acknowledged at once (the client
    /// resends from the one after it); a block already received means the
    /// client missed an acknowledgement, which is sent again. Until the
    /// next block arrives in order a gap is answered once (the rest of the
    /// client's window shows the same gap) and duplicates once per
    /// window's worth, so a resent window costs one acknowledgement, not
    /// one per block (no sorcerer's apprentice), and a lost answer is
    /// repeated when the client resends again. Silence for the timeout resends the last
    /// acknowledgement, at most `max_retries` times in a row.
    async fn try_handle(&mut self) -> Result<()> {
        // Send first Ack/OAck
        match self.oack_opts.take() {
            Some(opts) => Packet::OAck(opts).encode(&mut self.ack),
            None => Packet::Ack(0).encode(&mut self.ack),
        }

        self.socket.send_to(&self.ack, self.peer).await?;

        let mut expected: u16 = 1;
        let mut in_window: u16 = 0;
        let mut retries: u32 = 0;
        // Since the last block in order: whether a gap was answered, and
        // duplicates seen modulo the window (the first of each window's
        // worth is answered).
        let mut gap_answered = false;
        let mut duplicates: u16 = 0;

        loop {
            let block = match self.recv_data_block().await {
                Ok(block) => block,
                Err(ref e) if e.kind() == io::ErrorKind::TimedOut => {
                    if retries >= self.max_retries {
                        return Err(Error::MaxSendRetriesReached(
                            self.peer, expected,
                        ));
                    }
                    retries += 1;
                    // The client resends from the block after this one.
                    in_window = 0;
                    self.socket.send_to(&self.ack, self.peer).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let (block_id, data) = block;

            if block_id != expected {
                let ahead = block_id.wrapping_sub(expected);
                // Ahead within a window: a gap; behind: a duplicate.
                // Anything else is from no transfer we know: ignored.
                let gap = ahead < self.window_size;
                let duplicate =
                    expected.wrapping_sub(block_id) <= self.window_size;
                let answer = if gap {
                    !std::mem::replace(&mut gap_answered, true)
                } else if duplicate {
                    let first = duplicates == 0;
                    duplicates = (duplicates + 1) % self.window_size;
                    first
                } else {
                    false
                };
                if answer {
                    in_window = 0;
                    self.socket.send_to(&self.ack, self.peer).await?;
                }
                continue;
            }

            retries = 0;
            gap_answered = false;
            duplicates = 0;

            // Write data to file
            self.writer.write_all(&data[..]).await?;

            let last = data.len() < self.block_size;
            in_window += 1;
            self.ack.clear();
            Packet::Ack(block_id).encode(&mut self.ack);
            if last || in_window >= self.window_size {
                in_window = 0;
                self.socket.send_to(&self.ack, self.peer).await?;
            }

            if last {
                break;
            }
            expected = expected.wrapping_add(1);
        }

        self.writer.flush().await?;
        self.writer.close().await?;

        Ok(())
    }

    /// The next DATA packet from the peer: its block number and data.
    async fn recv_data_block(&mut self) -> io::Result<(u16, Bytes)> {
        let socket = &mut self.socket;
        let peer = self.peer;

        self.buffer.resize(PACKET_DATA_HEADER_LEN + self.block_size, 0);
        let mut buf = self.buffer.split();

        io_timeout(self.timeout, async move {
            loop {
                let (len, recved_peer) = socket.recv_from(&mut buf[..]).await?;

                if recved_peer != peer {
                    continue;
                }

                if let Ok(Packet::Data(block_id, _)) =
                    Packet::decode(&buf[..len])
                {
                    buf.truncate(len);
                    buf.advance(PACKET_DATA_HEADER_LEN);
                    return Ok((block_id, buf.freeze()));
                }
            }
        })
        .await
    }
}

fn build_oack_opts(config: &ServerConfig, req: &RwReq) -> Option<Opts> {
    let mut opts = Opts::default();

    if !config.ignore_client_block_size {
        opts.block_size = match (req.opts.block_size, config.block_size_limit) {
            (Some(bsize), Some(limit)) => Some(cmp::min(bsize, limit)),
            (Some(bsize), None) => Some(bsize),
            _ => None,
        };
    }

    if !config.ignore_client_timeout {
        opts.timeout = req.opts.timeout;
    }

    opts.transfer_size = req.opts.transfer_size;

    if !config.ignore_client_window_size {
        opts.window_size =
            match (req.opts.window_size, config.window_size_limit) {
                (Some(wsize), Some(limit)) => Some(cmp::min(wsize, limit)),
                (Some(wsize), None) => Some(wsize),
                _ => None,
            };
    }

    if opts == Opts::default() {
        None
    } else {
        Some(opts)
    }
}
