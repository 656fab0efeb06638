//! A request body as it comes off its HTTP/2 stream: the stream's window is
//! given back as each piece is taken (so a client sends no more than the
//! handlers read, plus one window), and at its end the request's trailers,
//! if the client sent any, fill the request's [`Trailers`].

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_http::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;
use h2::RecvStream;

use crate::http::trailers::Trailers;

/// One request's body, read off its stream.
pub struct Incoming {
    body: RecvStream,
    trailers: Trailers,
    /// Its data has ended; the trailers are next.
    data_ended: bool,
    /// Its trailers were read (or it had none): nothing more comes.
    done: bool,
}

impl Incoming {
    /// The body arriving on `body`, whose trailers go to `trailers`.
    pub fn new(body: RecvStream, trailers: Trailers) -> Incoming {
        Incoming {
            body,
            trailers,
            data_ended: false,
            done: false,
        }
    }
}

impl Stream for Incoming {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_ended {
            match ready!(this.body.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Taken: the client may send as much again.
                    let _ = this.body.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(data)));
                }
                Some(Err(err)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(PayloadError::Http2Payload(err))));
                }
                None => this.data_ended = true,
            }
        }
        let trailers = ready!(this.body.poll_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(trailers)) => {
                this.trailers.fill(trailers);
                Poll::Ready(None)
            }
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(PayloadError::Http2Payload(err)))),
        }
    }
}
