//! Keep-alive clients that behave as HTTP clients do across a server's
//! restart, each on its own thread with plain sockets so its timing does
//! not depend on the test's runtime. Each client sends one request per
//! tick on one connection it keeps; before reusing it, it checks whether
//! the server closed it while idle, and then sends on a new connection (a
//! request not yet written is not lost: clients retry those). An answer
//! that says `Connection: close` ends the connection. New connections go
//! to the first endpoint until it is taken out, as an endpoints controller
//! takes out a pod whose `/ready` fails, then to the second.
//!
//! A request is lost when it was written and its answer did not arrive
//! whole: the connection closed or broke first, or no answer came in 5 s.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a client waits for an answer before it counts the request lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a client connects, and the request it sends there.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The whole request, head and (empty) body; it must not ask to close.
    pub request: String,
}

/// What the clients saw at the first endpoint (the one taken out), and how
/// many answers the second gave.
#[derive(Debug, Default)]
pub struct Tally {
    /// Whole answers from the first endpoint.
    pub answered: usize,
    /// Of those, the ones that said `Connection: close`.
    pub closing: usize,
    /// Connections the first endpoint closed while idle under a client that
    /// still meant to use them (found closed before the next request).
    pub closed_idle: usize,
    /// Connections to the first endpoint refused.
    pub refused: usize,
    /// Whole answers from the second endpoint.
    pub answered_elsewhere: usize,
    /// Requests written whose answer did not arrive whole, with why.
    pub lost: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.answered += other.answered;
        self.closing += other.closing;
        self.closed_idle += other.closed_idle;
        self.refused += other.refused;
        self.answered_elsewhere += other.answered_elsewhere;
        self.lost.extend(other.lost);
    }
}

/// Clients running until stopped.
pub struct KeepAliveLoad {
    stop: Arc<AtomicBool>,
    taken_out: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Tally>>,
}

impl KeepAliveLoad {
    /// Starts `clients` clients, each sending a request every `every`, to
    /// `first` until it is taken out, then to `second`.
    pub fn start(first: Endpoint, second: Endpoint, clients: usize, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let taken_out = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let client = Client {
                    endpoints: [first.clone(), second.clone()],
                    stop: Arc::clone(&stop),
                    taken_out: Arc::clone(&taken_out),
                    every,
                };
                std::thread::spawn(move || client.run())
            })
            .collect();
        KeepAliveLoad {
            stop,
            taken_out,
            clients,
        }
    }

    /// New connections go to the second endpoint from now on.
    pub fn take_out_first(&self) {
        self.taken_out.store(true, Ordering::SeqCst);
    }

    /// Stops the clients (each finishes the request under way) and sums
    /// what they saw.
    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        super::eventually::eventually("the keep-alive clients stopped", || async {
            self.clients.iter().all(JoinHandle::is_finished)
        })
        .await;
        let mut tally = Tally::default();
        for client in self.clients {
            tally.add(client.join().expect("client thread"));
        }
        tally
    }
}

struct Client {
    endpoints: [Endpoint; 2],
    stop: Arc<AtomicBool>,
    taken_out: Arc<AtomicBool>,
    every: Duration,
}

/// A kept connection and the endpoint (0 or 1) it goes to.
struct Connection {
    stream: TcpStream,
    endpoint: usize,
}

impl Client {
    fn run(self) -> Tally {
        let mut tally = Tally::default();
        let mut kept: Option<Connection> = None;
        let mut next = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            // A client that fell behind does not make up for it in a burst.
            next = next.max(now) + self.every;
            let connection = match kept.take() {
                Some(connection) if still_open(&connection.stream) => Some(connection),
                Some(connection) => {
                    if connection.endpoint == 0 {
                        tally.closed_idle += 1;
                    }
                    self.connect(&mut tally)
                }
                None => self.connect(&mut tally),
            };
            let Some(mut connection) = connection else {
                continue;
            };
            let endpoint = connection.endpoint;
            match exchange(&mut connection.stream, &self.endpoints[endpoint].request) {
                Ok(closing) => {
                    if endpoint == 0 {
                        tally.answered += 1;
                        tally.closing += usize::from(closing);
                    } else {
                        tally.answered_elsewhere += 1;
                    }
                    if !closing {
                        kept = Some(connection);
                    }
                }
                Err(why) => tally.lost.push(format!("endpoint {endpoint}: {why}")),
            }
        }
        tally
    }

    /// A new connection to the endpoint in service, or `None` when it was
    /// refused (nothing was sent).
    fn connect(&self, tally: &mut Tally) -> Option<Connection> {
        let endpoint = usize::from(self.taken_out.load(Ordering::SeqCst));
        match TcpStream::connect(self.endpoints[endpoint].addr) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Some(Connection { stream, endpoint })
            }
            Err(_) if endpoint == 0 => {
                tally.refused += 1;
                None
            }
            Err(err) => panic!("the second endpoint refused a connection: {err}"),
        }
    }
}

/// Whether the server has not closed `stream` (nor sent anything on it)
/// while it was idle: the check a client makes before reusing a connection.
fn still_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let open =
        matches!(stream.peek(&mut [0u8; 1]), Err(err) if err.kind() == ErrorKind::WouldBlock);
    open && stream.set_nonblocking(false).is_ok()
}

/// Writes `request` on `stream` and reads its whole answer; whether the
/// answer said `Connection: close`, or why it did not arrive whole.
fn exchange(stream: &mut TcpStream, request: &str) -> Result<bool, String> {
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("writing the request failed: {err}"))?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|err| err.to_string())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let mut read = |answer: &mut Vec<u8>| match stream.read(&mut buf) {
        Ok(0) => Err(format!(
            "the connection closed after {} bytes of the answer",
            answer.len()
        )),
        Ok(n) => {
            answer.extend_from_slice(&buf[..n]);
            Ok(())
        }
        Err(err) => Err(format!(
            "reading the answer failed after {} bytes: {err}",
            answer.len()
        )),
    };
    let head_end = loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        read(&mut answer)?;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!("answered {}", head.lines().next().unwrap_or("")));
    }
    let length = super::raw::raw_header(&head, "content-length")
        .and_then(|length| length.parse::<usize>().ok())
        .ok_or_else(|| format!("an answer without a Content-Length: {head}"))?;
    while answer.len() < head_end + length {
        read(&mut answer)?;
    }
    let closing = super::raw::raw_header(&head, "connection")
        .is_some_and(|value| value.eq_ignore_ascii_case("close"));
    Ok(closing)
}
