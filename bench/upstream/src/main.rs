//! One upstream replica for `bench/run.sh`: HTTP/1.1 keep-alive and
//! HTTP/2 with prior knowledge (h2c) on one port and one thread, answering
//! `ok\n` to any path, `/status/NNN` with that status, `/__count` with how
//! many requests it has served (JSON), so the bench can tell how a proxy
//! spread its load, and a gRPC call (`content-type: application/grpc`)
//! with one message, `ok`, and `grpc-status: 0` in trailers, as a unary
//! gRPC server answers.
//!
//! Usage: `outrigger-bench-upstream PORT`

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A gRPC message `ok`: not compressed, 2 bytes long.
const GRPC_OK: &[u8] = b"\x00\x00\x00\x00\x02ok";

/// An answer body: its bytes, then the trailers if it has any.
struct Answer {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

fn answer(req: &Request<Incoming>, served: &AtomicU64) -> Response<Answer> {
    let path = req.uri().path();
    if path == "/__count" {
        let body = format!("{{\"requests\":{}}}", served.load(Ordering::Relaxed));
        return Response::new(Answer {
            data: Some(Bytes::from(body)),
            trailers: None,
        });
    }
    served.fetch_add(1, Ordering::Relaxed);
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut response = Response::new(Answer {
            data: Some(Bytes::from_static(GRPC_OK)),
            trailers: Some(trailers),
        });
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        return response;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = Response::new(Answer {
        data: Some(Bytes::from_static(b"ok\n")),
        trailers: None,
    });
    *response.status_mut() = status;
    response
}

fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        Some(Ok(port)) => port,
        _ => {
            eprintln!("usage: outrigger-bench-upstream PORT");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let served = Arc::new(AtomicU64::new(0));
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let served = Arc::clone(&served);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let response = answer(&req, &served);
                    async move { Ok::<_, Infallible>(response) }
                });
                // A client that goes away mid-request is no error of ours.
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
