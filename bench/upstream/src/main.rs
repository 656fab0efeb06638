//! One upstream replica for `bench/run.sh`: HTTP/1.1 keep-alive on one
//! thread, answering `ok\n` to any path, `/status/NNN` with that status,
//! and `/__count` with how many requests it has served (JSON), so the
//! bench can tell how a proxy spread its load.
//!
//! Usage: `outrigger-bench-upstream PORT`

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn answer(req: &Request<Incoming>, served: &Cell<u64>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/__count" {
        let body = format!("{{\"requests\":{}}}", served.get());
        return Response::new(Full::new(Bytes::from(body)));
    }
    served.set(served.get() + 1);
    let status = path
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok\n")));
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
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let served = Rc::new(Cell::new(0u64));
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let served = Rc::clone(&served);
            tokio::task::spawn_local(async move {
                let service = service_fn(move |req| {
                    let response = answer(&req, &served);
                    async move { Ok::<_, Infallible>(response) }
                });
                // A client that goes away mid-request is no error of ours.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
