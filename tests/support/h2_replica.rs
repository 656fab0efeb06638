//! A replica that speaks only HTTP/2 with prior knowledge (h2c), on the
//! `h2` crate's server, on a thread and runtime of its own so it can be
//! killed as a process dies: every connection and stream dropped at once.
//! nghttpd serves files; the tests need what it cannot do: an echo of the
//! head and body, an answer held open until released, the count of
//! connections made to it, and a stream limit of their choosing.
//!
//! - `/hold`: sends the head and `first\n` at once, then `last\n` and the
//!   end once [`H2Replica::release`] is called;
//! - `/slow`: answers after 200 ms (so a load's streams overlap);
//! - `/empty-with-trailers`: a head with `content-length: 0` that does not
//!   end the stream, then trailers `x-done: yes`;
//! - anything else: at once. Every answer but those above is JSON: the
//!   method, path, `:authority`, the headers and the request's trailers as
//!   `[name, value]` pairs, and the request body's length.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::future::{select, Either};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};

/// A running HTTP/2-only replica.
pub struct H2Replica {
    address: SocketAddr,
    counts: Arc<Counts>,
    release: Arc<Notify>,
    going_away: Arc<Notify>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
    held: AtomicUsize,
}

impl H2Replica {
    /// Starts one that allows `max_streams` concurrent streams per
    /// connection (`None`: the h2 crate's default, no limit).
    pub fn start(max_streams: Option<u32>) -> H2Replica {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let counts = Arc::new(Counts::default());
        let release = Arc::new(Notify::new());
        let going_away = Arc::new(Notify::new());
        let (kill, killed) = oneshot::channel();
        let served = Served {
            counts: Arc::clone(&counts),
            release: Arc::clone(&release),
            going_away: Arc::clone(&going_away),
        };
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                let serving = serve(listener, max_streams, served);
                let _ = select(killed, Box::pin(serving)).await;
            });
            // Dropping the runtime drops every connection and stream.
        });
        H2Replica {
            address,
            counts,
            release,
            going_away,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// `host:port`.
    pub fn endpoint(&self) -> String {
        self.address.to_string()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    /// `/hold` answers whose first bytes were sent.
    pub fn held(&self) -> usize {
        self.counts.held.load(Ordering::SeqCst)
    }

    /// Lets every `/hold` answer finish.
    pub fn release(&self) {
        self.release.notify_waiters();
    }

    /// Sends every open connection a GOAWAY and lets it drain.
    pub fn go_away(&self) {
        self.going_away.notify_waiters();
    }

    /// Dies at once: its connections close with their streams unfinished.
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the replica's thread ends");
        }
    }
}

impl Drop for H2Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the serving tasks share with the handle.
#[derive(Clone)]
struct Served {
    counts: Arc<Counts>,
    release: Arc<Notify>,
    going_away: Arc<Notify>,
}

async fn serve(listener: TcpListener, max_streams: Option<u32>, served: Served) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        served.counts.connections.fetch_add(1, Ordering::SeqCst);
        let served = served.clone();
        tokio::spawn(async move {
            let going_away = served.going_away.notified();
            let mut builder = h2::server::Builder::new();
            if let Some(max) = max_streams {
                builder.max_concurrent_streams(max);
            }
            let Ok(mut connection) = builder.handshake::<_, Bytes>(socket).await else {
                return;
            };
            let mut going_away = Some(Box::pin(going_away));
            loop {
                let next = match going_away.as_mut() {
                    Some(told) => {
                        match select(Box::pin(connection.accept()), told.as_mut()).await {
                            Either::Left((next, _)) => next,
                            Either::Right(_) => None,
                        }
                    }
                    None => connection.accept().await,
                };
                let Some(Ok((request, respond))) = next else {
                    if going_away.take().is_some() {
                        connection.graceful_shutdown();
                        continue;
                    }
                    return;
                };
                served.counts.requests.fetch_add(1, Ordering::SeqCst);
                let served = served.clone();
                tokio::spawn(async move {
                    let _ = answer(request, respond, &served.counts, &served.release).await;
                });
            }
        });
    }
}

async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    counts: &Counts,
    release: &Notify,
) -> Result<(), h2::Error> {
    let (head, mut body) = request.into_parts();
    let path = head.uri.path().to_string();
    if path == "/hold" {
        let released = release.notified();
        let mut sending = respond.send_response(http::Response::new(()), false)?;
        sending.send_data(Bytes::from_static(b"first\n"), false)?;
        counts.held.fetch_add(1, Ordering::SeqCst);
        released.await;
        return sending.send_data(Bytes::from_static(b"last\n"), true);
    }
    if path == "/echo" {
        let mut sending = respond.send_response(http::Response::new(()), false)?;
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            sending.send_data(chunk, false)?;
        }
        return sending.send_data(Bytes::new(), true);
    }
    if path == "/empty-with-trailers" {
        let response = http::Response::builder()
            .header("content-length", "0")
            .body(())
            .expect("a response");
        let mut sending = respond.send_response(response, false)?;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-done", http::HeaderValue::from_static("yes"));
        return sending.send_trailers(trailers);
    }
    let mut body_bytes = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body_bytes += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let echo = json!({
        "method": head.method.as_str(),
        "path": path,
        "authority": head.uri.authority().map(|a| a.to_string()),
        "headers": pairs(&head.headers),
        "trailers": pairs(&trailers),
        "body_bytes": body_bytes,
    });
    let response = http::Response::builder()
        .header("content-type", "application/json")
        .body(())
        .expect("a response");
    let mut sending = respond.send_response(response, false)?;
    sending.send_data(Bytes::from(echo.to_string()), true)
}

/// The fields of `headers` as `(name, value)` pairs.
fn pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.to_string(), value)
        })
        .collect()
}
