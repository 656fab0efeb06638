//! A client connection (plain or TLS: the bytes scanned are the decrypted
//! ones) whose incoming bytes pass [`Framing`] before the HTTP/1 parser
//! reads them (an HTTP/2 connection's are not scanned: the HTTP/2 server
//! checks its frames), and which times what the parser does not: its
//! later request heads get the same `client_header_timeout` the parser
//! gives the first one (a client could otherwise trickle every later head
//! forever), a pause in a request body closes the connection after
//! `client_body_timeout` even when no handler reads the body any more, and
//! a client that takes no byte of its answer for `client_write_timeout` is
//! cut (the parser has no write timeout: a client that stops reading would
//! otherwise hold its connection and the answer's unsent bytes forever).

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_http::Protocol;
use log::warn;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::deadline::Pause;
use super::framing::{ChunkRefusal, Framing, ScanVerdict};
use super::http2::{TakenIn, WrittenFrames};
use super::secure::{ClientWire, PeerIdentity};

/// One client's connection, scanned as it is read.
pub struct ClientStream {
    io: ClientWire,
    protocol: Protocol,
    framing: Framing,
    listener: &'static str,
    peer: Option<SocketAddr>,
    /// The caller's verified mesh identity, on a mutual TLS connection.
    identity: Option<PeerIdentity>,
    refused: IntCounter,
    timeouts: Timeouts,
    /// The later request head under way.
    head: Pause,
    /// The client's pause in a request body.
    body: Pause,
    /// A write the client is not taking.
    write: Pause,
    /// A chunk-size line was refused: what the handler is told, and the
    /// parser reads nothing more (an end of stream, so the handler's answer
    /// still goes out).
    refused_chunk: ChunkVerdict,
    /// The write side was shut; the rest is the lingering close.
    shut: bool,
    /// How long the lingering close waits for the client to close.
    linger: Pause,
    /// On an HTTP/2 connection, what is written, read for what is counted.
    written: Option<WrittenFrames>,
}

/// The chunk-size refusal on one connection, if any: shared between its
/// stream and its requests (in the connection's data), so the handler
/// whose body broke off there answers 400 or 413 for the right reason.
#[derive(Debug, Clone, Default)]
pub struct ChunkVerdict(Rc<Cell<Option<ChunkRefusal>>>);

impl ChunkVerdict {
    /// The refusal, once one was made.
    pub fn get(&self) -> Option<ChunkRefusal> {
        self.0.get()
    }
}

/// How long a client may take over what the parser does not time.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `client_header_timeout`: each later head, from its first byte.
    pub header: Duration,
    /// The longest pause in a request body before the connection is
    /// closed: `client_body_timeout`, and then the time the handler's own
    /// 408 for it takes to go out. It closes the connections whose body
    /// nobody reads any more (after a refusal, or an early answer).
    pub body: Duration,
    /// How long a closing connection reads and drops what the client
    /// still sends before it is closed (the lingering close).
    pub linger: Duration,
    /// `max_body_bytes`: the most a chunked body may announce.
    pub max_body_bytes: Option<u64>,
    /// `client_write_timeout`: each wait on a client that takes no byte of
    /// its answer.
    pub write: Duration,
}

impl ClientStream {
    /// Wraps a connection accepted by `listener` from `peer` (with its
    /// verified `identity`, over mutual TLS), whose client speaks
    /// `protocol`; `refused` counts the heads poisoned on it; a client is
    /// cut off when it takes longer than `timeouts` say.
    pub fn new(
        (io, identity): (ClientWire, Option<PeerIdentity>),
        protocol: Protocol,
        listener: &'static str,
        peer: Option<SocketAddr>,
        refused: IntCounter,
        timeouts: Timeouts,
    ) -> ClientStream {
        let framing = match protocol {
            Protocol::Http1 => Framing::new(timeouts.max_body_bytes),
            _ => Framing::off(),
        };
        ClientStream {
            io,
            protocol,
            framing,
            listener,
            peer,
            identity,
            refused,
            timeouts,
            head: Pause::default(),
            body: Pause::default(),
            write: Pause::default(),
            refused_chunk: ChunkVerdict::default(),
            shut: false,
            linger: Pause::default(),
            written: None,
        }
    }

    /// Reads what is written to this HTTP/2 connection for what is
    /// counted (see `http2::WrittenFrames`).
    pub fn scan_written(&mut self, scan: WrittenFrames) {
        self.written = Some(scan);
    }

    /// Where the dispatcher of this HTTP/2 connection tells the streams it
    /// takes in, when its written frames are read.
    pub fn taken_in(&self) -> Option<TakenIn> {
        self.written.as_ref().map(WrittenFrames::taken_in)
    }

    /// Tells the scan of written frames, if any, what a write took: the
    /// first `written` bytes of `bufs`.
    fn wrote<'a>(&mut self, bufs: impl IntoIterator<Item = &'a [u8]>, written: usize) {
        let Some(scan) = &mut self.written else {
            return;
        };
        let mut left = written;
        for buf in bufs {
            if left == 0 {
                break;
            }
            let taken = left.min(buf.len());
            scan.wrote(&buf[..taken]);
            left -= taken;
        }
    }

    /// Times the first request head from `accepted`, when the connection
    /// was accepted: the parser times it only from when it starts, after
    /// the wait for the client's first bytes that told its protocol, and
    /// the two together must not give a client more than
    /// `client_header_timeout`.
    pub fn time_first_head(&mut self, accepted: Instant) {
        self.head
            .start(self.timeouts.header.saturating_sub(accepted.elapsed()));
    }

    /// The protocol its client speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The chunk-size refusal of this connection, for its requests.
    pub fn chunk_verdict(&self) -> ChunkVerdict {
        self.refused_chunk.clone()
    }

    /// The address of the client at the other end, when it was known.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The client's verified mesh identity, on a mutual TLS connection.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref()
    }

    fn peer(&self) -> String {
        self.peer
            .map_or_else(|| "an unknown peer".to_string(), |p| p.to_string())
    }

    /// An error once the client has taken too long over a later head or
    /// paused too long in a body (the pauses are started and stopped by
    /// what `read` brought).
    fn check_pauses(
        &mut self,
        cx: &mut Context<'_>,
        read: &Poll<io::Result<()>>,
    ) -> io::Result<()> {
        if self.framing.later_head_under_way() {
            self.head.start(self.timeouts.header);
        } else if !self.framing.first_head_under_way() {
            self.head.stop();
        }
        match read {
            Poll::Pending if self.framing.body_under_way() => self.body.start(self.timeouts.body),
            Poll::Pending => self.body.stop(),
            Poll::Ready(_) => self.body.stop(),
        }
        let (what, limit) = if self.head.passed(cx) {
            (
                "finish a request head within client_header_timeout",
                self.timeouts.header,
            )
        } else if self.body.passed(cx) {
            (
                "send request body bytes within client_body_timeout",
                self.timeouts.body,
            )
        } else {
            return Ok(());
        };
        warn!(
            "{} listener: {} did not {what} ({}ms); connection closed",
            self.listener,
            self.peer(),
            limit.as_millis()
        );
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("did not {what}"),
        ))
    }

    /// Times the writes the client is not taking: a write that made
    /// progress ends the wait, one that must wait starts it (or goes on
    /// with it); an error once it has lasted `client_write_timeout`.
    fn time_write(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if write.is_ready() {
            self.write.stop();
            return write;
        }
        self.write.start(self.timeouts.write);
        if !self.write.passed(cx) {
            return Poll::Pending;
        }
        warn!(
            "{} listener: {} took no answer bytes within client_write_timeout {}ms; connection closed",
            self.listener,
            self.peer(),
            self.timeouts.write.as_millis()
        );
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "answer not taken within client_write_timeout",
        )))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refused_chunk.get().is_some() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            match this.framing.scan(&mut buf.filled_mut()[before..]) {
                ScanVerdict::Clean => {}
                ScanVerdict::BareLf(_) => {
                    this.refused.inc();
                    warn!(
                        "{} listener: a request head from {} ends a line in a bare LF; refused with 400 and the connection closed",
                        this.listener,
                        this.peer()
                    );
                }
                ScanVerdict::Chunk(at, refusal) => {
                    buf.set_filled(before + at);
                    this.refused_chunk.0.set(Some(refusal));
                }
            }
        }
        if let Err(err) = this.check_pauses(cx, &read) {
            return Poll::Ready(Err(err));
        }
        read
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = write {
            this.wrote([buf], written);
        }
        this.time_write(cx, write)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// Sends the FIN, then reads and drops what the client still sends
    /// until it closes or the linger time passes (RFC 9112 9.6): closing
    /// with its bytes unread would reset the connection, and a reset
    /// destroys the answers the client has not read yet (those before a
    /// refused request on a pipelined connection).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.shut = true;
            this.linger.start(this.timeouts.linger);
        }
        let mut dropped = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut dropped);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending if this.linger.passed(cx) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = write {
            this.wrote(bufs.iter().map(|buf| &buf[..]), written);
        }
        this.time_write(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
