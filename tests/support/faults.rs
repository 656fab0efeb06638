//! Replicas that misbehave on purpose, on raw TCP because an HTTP framework
//! would not (never answer, trickle, reset mid-answer, send broken HTTP),
//! and a load loop bounded in time and count that tallies what came back.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// A valid answer the faults cut or slow down: 200 with a 32-byte body.
pub const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 32\r\n\r\nthe whole answer, 32 bytes long.";

/// Where [`ANSWER`]'s body starts.
pub fn answer_body_start() -> usize {
    ANSWER
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4
}

/// What a [`FaultServer`] does with each request it reads.
#[derive(Clone, Copy)]
pub enum Fault {
    /// Reads the request and never answers; the connection stays open
    /// until the peer closes it or the server stops.
    Silent,
    /// Sends [`ANSWER`] one byte at a time, this long apart.
    Trickle(Duration),
    /// Sends the first `after` bytes of [`ANSWER`], then resets the
    /// connection (SO_LINGER 0, so the peer gets an RST, not a FIN).
    Reset { after: usize },
    /// Sends the first `after` bytes of [`ANSWER`], then nothing more; the
    /// connection stays open until the peer closes it or the server stops.
    Stall { after: usize },
    /// Sends these bytes as the answer, then closes the connection.
    Raw(&'static [u8]),
    /// Answers the first request on each connection with [`ANSWER`] and
    /// keeps the connection open; on reading the next request, closes it
    /// unanswered (a keep-alive timeout that races a pooled request).
    OneAnswerPerConnection,
}

impl std::fmt::Debug for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Silent => write!(f, "silent"),
            Fault::Trickle(gap) => write!(f, "a byte every {gap:?}"),
            Fault::Reset { after } => write!(f, "reset after {after} bytes"),
            Fault::Stall { after } => write!(f, "stall after {after} bytes"),
            Fault::Raw(bytes) => write!(f, "{:?}", String::from_utf8_lossy(bytes)),
            Fault::OneAnswerPerConnection => write!(f, "one answer per connection"),
        }
    }
}

/// A loopback server that answers every request with its [`Fault`].
pub struct FaultServer {
    pub addr: SocketAddr,
    state: Arc<FaultState>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct FaultState {
    /// Requests read so far.
    requests: AtomicUsize,
    /// Connections open now.
    open: AtomicUsize,
    /// The accept loop and every connection task, aborted on stop.
    tasks: Mutex<Vec<AbortHandle>>,
}

impl FaultServer {
    /// A server on a free port.
    pub async fn start(fault: Fault) -> FaultServer {
        FaultServer::start_at("127.0.0.1:0", fault).await
    }

    /// A server on `addr` (to take over a stopped replica's port).
    pub async fn start_at(addr: &str, fault: Fault) -> FaultServer {
        let listener = TcpListener::bind(addr).await.expect("bind a fault server");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(FaultState::default());
        let shared = Arc::clone(&state);
        let accept = actix_rt::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = Arc::clone(&shared);
                let task = actix_rt::spawn(async move {
                    connection.open.fetch_add(1, Ordering::SeqCst);
                    let _open = OpenGuard(Arc::clone(&connection));
                    serve(stream, fault, &connection.requests).await;
                });
                if let Ok(mut tasks) = shared.tasks.lock() {
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(task.abort_handle());
                }
            }
        });
        FaultServer {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// `host:port`, as a config endpoint.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Requests read so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// Stops listening (the port is free once this returns) and drops
    /// every connection.
    pub async fn stop(&mut self) {
        self.abort();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
    }

    fn abort(&self) {
        if let Some(accept) = &self.accept {
            accept.abort();
        }
        if let Ok(tasks) = self.state.tasks.lock() {
            tasks.iter().for_each(AbortHandle::abort);
        }
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Counts a connection closed when its task ends or is aborted.
struct OpenGuard(Arc<FaultState>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits for the peer to give up; whatever it sends is ignored.
async fn wait_for_close(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

async fn serve(mut stream: TcpStream, fault: Fault, requests: &AtomicUsize) {
    let mut answered = false;
    while read_request(&mut stream).await {
        requests.fetch_add(1, Ordering::SeqCst);
        match fault {
            Fault::Silent => {
                wait_for_close(&mut stream).await;
                return;
            }
            Fault::Stall { after } => {
                let _ = stream.write_all(&ANSWER[..after.min(ANSWER.len())]).await;
                wait_for_close(&mut stream).await;
                return;
            }
            Fault::Trickle(gap) => {
                for byte in ANSWER {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    // The slowness is the fault under test.
                    actix_rt::time::sleep(gap).await;
                }
            }
            Fault::Reset { after } => {
                let _ = stream.write_all(&ANSWER[..after.min(ANSWER.len())]).await;
                let _ = stream.flush().await;
                let _ = stream.set_zero_linger();
                return;
            }
            Fault::Raw(bytes) => {
                let _ = stream.write_all(bytes).await;
                let _ = stream.shutdown().await;
                return;
            }
            Fault::OneAnswerPerConnection if answered => return,
            Fault::OneAnswerPerConnection => {
                answered = true;
                if stream.write_all(ANSWER).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads one request head and its `Content-Length` body; false at the end
/// of the connection.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 && buffer.len() < 64 * 1024 => buffer.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body_left = length.saturating_sub(buffer.len() - head_end);
    while body_left > 0 {
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => body_left = body_left.saturating_sub(n),
            _ => return false,
        }
    }
    true
}

/// What a load run got back.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Requests sent.
    pub sent: usize,
    /// Whole answers by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Answers whose head came but whose body broke off.
    pub cut: usize,
    /// Requests that got no answer at all.
    pub unanswered: usize,
}

impl Tally {
    /// Whole answers with `status`.
    pub fn of(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Requests that did not end in a whole 200.
    pub fn failed(&self) -> usize {
        self.sent - self.of(200)
    }

    fn add(&mut self, other: Tally) {
        self.sent += other.sent;
        self.cut += other.cut;
        self.unanswered += other.unanswered;
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
    }
}

/// Runs `clients` concurrent clients, each sending the request `make`
/// builds one after another, until `duration` has passed or each has sent
/// `per_client` requests; every answer's body is read to its end.
pub async fn load<F>(clients: usize, duration: Duration, per_client: usize, make: F) -> Tally
where
    F: Fn(&awc::Client, usize) -> awc::ClientRequest,
{
    let deadline = Instant::now() + duration;
    let make = &make;
    let runs = (0..clients).map(|_| async move {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish();
        let mut tally = Tally::default();
        while tally.sent < per_client && Instant::now() < deadline {
            let request = make(&client, tally.sent);
            tally.sent += 1;
            match request.send().await {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    match response.body().limit(1 << 20).await {
                        Ok(_) => *tally.statuses.entry(status).or_default() += 1,
                        Err(_) => tally.cut += 1,
                    }
                }
                Err(_) => tally.unanswered += 1,
            }
        }
        tally
    });
    let mut total = Tally::default();
    for tally in futures_util::future::join_all(runs).await {
        total.add(tally);
    }
    total
}

/// Runs `during` while [`load`] runs, and returns the load's tally.
pub async fn load_while<F, D>(
    clients: usize,
    duration: Duration,
    per_client: usize,
    make: F,
    during: D,
) -> Tally
where
    F: Fn(&awc::Client, usize) -> awc::ClientRequest,
    D: Future<Output = ()>,
{
    let (tally, ()) =
        futures_util::future::join(load(clients, duration, per_client, make), during).await;
    tally
}
