//! A client connection whose incoming bytes pass [`Framing`] before the
//! HTTP parser reads them.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_rt::net::TcpStream;
use log::warn;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::framing::{Framing, Verdict};

/// One client's TCP connection, scanned as it is read.
pub struct ClientStream {
    io: TcpStream,
    framing: Framing,
    listener: &'static str,
    peer: Option<SocketAddr>,
    refused: IntCounter,
}

impl ClientStream {
    /// Wraps a connection accepted by `listener` from `peer`; `refused`
    /// counts the heads poisoned on it.
    pub fn new(
        io: TcpStream,
        listener: &'static str,
        peer: Option<SocketAddr>,
        refused: IntCounter,
    ) -> ClientStream {
        ClientStream {
            io,
            framing: Framing::default(),
            listener,
            peer,
            refused,
        }
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
                    this.peer.map_or_else(|| "an unknown peer".to_string(), |p| p.to_string())
                );
            }
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
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
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
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
