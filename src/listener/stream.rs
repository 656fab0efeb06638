//! A client connection whose incoming bytes pass [`Framing`] before the
//! HTTP parser reads them, whose later request heads get the same
//! `client_header_timeout` the parser gives the first one (it times only
//! that: a client could otherwise trickle every later head forever), and
//! which is closed when the client takes no byte of its answer for
//! `client_write_timeout` (the parser has no write timeout: a client that
//! stops reading would otherwise hold its connection and the answer's
//! unsent bytes forever).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_rt::net::TcpStream;
use log::warn;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::framing::{Framing, Verdict};

/// One client's TCP connection, scanned as it is read.
pub struct ClientStream {
    io: TcpStream,
    framing: Framing,
    listener: &'static str,
    peer: Option<SocketAddr>,
    refused: IntCounter,
    header_timeout: Duration,
    /// The deadline of the later head under way; made on first use, then reset.
    deadline: Option<Pin<Box<Sleep>>>,
    timing: bool,
    write_timeout: Duration,
    /// The deadline of a write the client is not taking; made on first
    /// use, then reset.
    write_deadline: Option<Pin<Box<Sleep>>>,
    /// Whether the last write waited on the client.
    write_stalled: bool,
}

/// How long a client may take to send each request head and to take each
/// byte of its answers.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// Each later request head, from its first byte.
    pub header: Duration,
    /// Each wait on a client that takes no answer bytes.
    pub write: Duration,
}

impl ClientStream {
    /// Wraps a connection accepted by `listener` from `peer`; `refused`
    /// counts the heads poisoned on it; each later head must arrive within
    /// `timeouts.header` of its first byte, and a write the client does not
    /// take may wait `timeouts.write`.
    pub fn new(
        io: TcpStream,
        listener: &'static str,
        peer: Option<SocketAddr>,
        refused: IntCounter,
        timeouts: ClientTimeouts,
    ) -> ClientStream {
        ClientStream {
            io,
            framing: Framing::default(),
            listener,
            peer,
            refused,
            header_timeout: timeouts.header,
            deadline: None,
            timing: false,
            write_timeout: timeouts.write,
            write_deadline: None,
            write_stalled: false,
        }
    }

    /// Times the writes the client is not taking: a write that made
    /// progress ends the wait, one that must wait starts it (or goes on
    /// with it); an error once it has lasted `write_timeout`.
    fn time_write(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if write.is_ready() {
            self.write_stalled = false;
            return write;
        }
        if !self.write_stalled {
            self.write_stalled = true;
            let at = Instant::now() + self.write_timeout;
            match &mut self.write_deadline {
                Some(deadline) => deadline.as_mut().reset(at),
                None => self.write_deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let expired = self
            .write_deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        warn!(
            "{} listener: {} took no answer bytes within client_write_timeout {}ms; connection closed",
            self.listener,
            self.peer(),
            self.write_timeout.as_millis()
        );
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "answer not taken within client_write_timeout",
        )))
    }

    /// The address of the client at the other end, when it was known.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    fn peer(&self) -> String {
        self.peer
            .map_or_else(|| "an unknown peer".to_string(), |p| p.to_string())
    }

    /// Starts or stops the later-head deadline as the scan says; an error
    /// once it has passed.
    fn time_later_head(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let under_way = self.framing.later_head_under_way();
        if under_way && !self.timing {
            let at = Instant::now() + self.header_timeout;
            match &mut self.deadline {
                Some(deadline) => deadline.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.timing = under_way;
        let expired = self.timing
            && self
                .deadline
                .as_mut()
                .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if !expired {
            return Ok(());
        }
        warn!(
            "{} listener: {} did not finish a request head within client_header_timeout {}ms; connection closed",
            self.listener,
            self.peer(),
            self.header_timeout.as_millis()
        );
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request head not finished within client_header_timeout",
        ))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            if let Verdict::BareLf(_) = this.framing.scan(&mut buf.filled_mut()[before..]) {
                this.refused.inc();
                warn!(
                    "{} listener: a request head from {} ends a line in a bare LF; refused with 400 and the connection closed",
                    this.listener,
                    this.peer()
                );
            }
        }
        if let Err(err) = this.time_later_head(cx) {
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
        this.time_write(cx, write)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.time_write(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
