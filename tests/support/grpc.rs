//! Real gRPC peers on Python's grpcio (`grpc_peer.py` beside this file):
//! a replica serving `outrigger.test.Echo`, and a client that makes calls
//! and reports their outcome (code, messages, metadata, time) as JSON.
//! Both run as child processes, so a call never blocks the test's thread,
//! which runs the sidecar's actors.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::child::OwnedChild;

/// Where the peer script is.
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpc_peer.py");

/// A gRPC replica on loopback, killed when dropped.
pub struct GrpcReplica {
    port: u16,
    child: OwnedChild,
}

impl GrpcReplica {
    /// A replica named `name` that answers every method as it should.
    pub fn start(name: &str) -> GrpcReplica {
        GrpcReplica::start_with(name, &[])
    }

    /// A replica named `name` started with the script's `serve` options
    /// `args`: `["--status", "UNAVAILABLE"]` fails every call with that
    /// code, `["--slow-ms", "500"]` waits before every answer.
    pub fn start_with(name: &str, args: &[&str]) -> GrpcReplica {
        let mut child = Command::new("python3")
            .arg(PEER)
            .args(["serve", "--name", name])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the gRPC peer (pip install grpcio)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the gRPC peer prints its port");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("the gRPC peer printed no port: {line:?}"));
        GrpcReplica {
            port,
            child: OwnedChild::new(child),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, as a static endpoint names it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The replica's process (to kill it, or signal it).
    pub fn process(&mut self) -> &mut OwnedChild {
        &mut self.child
    }
}

/// What a call sends and how: built with the chained setters, e.g.
/// `CallArgs::new().authority("echo").payload("hi").timeout(ms(200))`.
#[derive(Debug, Clone, Default)]
pub struct CallArgs {
    args: Vec<String>,
}

impl CallArgs {
    pub fn new() -> CallArgs {
        CallArgs::default()
    }

    fn with(mut self, flag: &str, value: String) -> CallArgs {
        self.args.push(flag.to_string());
        self.args.push(value);
        self
    }

    /// The `:authority` the call sends: the service the sidecar routes to.
    pub fn authority(self, service: &str) -> CallArgs {
        self.with("--authority", service.to_string())
    }

    /// The request message of a unary or server-streaming call (for
    /// `ServerStream` the count of messages to answer, for `Fail` a code
    /// name, for `Slow` milliseconds).
    pub fn payload(self, payload: &str) -> CallArgs {
        self.with("--payload", payload.to_string())
    }

    /// Custom metadata sent with the call.
    pub fn metadata(self, key: &str, value: &str) -> CallArgs {
        self.with("--metadata", format!("{key}={value}"))
    }

    /// The call's deadline (sent as `grpc-timeout`).
    pub fn timeout(self, deadline: Duration) -> CallArgs {
        self.with("--timeout", format!("{}", deadline.as_secs_f64()))
    }

    /// The messages a `ClientStream` or `Bidi` call sends: `count` of
    /// them, `m-<i>` each, or `bytes` bytes each when `bytes` is not 0.
    pub fn messages(self, count: usize, bytes: usize) -> CallArgs {
        self.with("--messages", count.to_string())
            .with("--message-bytes", bytes.to_string())
    }

    /// The last message a stream sends has `bytes` bytes, whatever the
    /// others have.
    pub fn last_message(self, bytes: usize) -> CallArgs {
        self.with("--last-message-bytes", bytes.to_string())
    }

    /// A `Bidi` call sends each message only once the answer to the one
    /// before it came.
    pub fn lockstep(mut self) -> CallArgs {
        self.args.push("--lockstep".to_string());
        self
    }

    /// A wait between the messages a stream sends, to keep it open.
    pub fn interval(self, wait: Duration) -> CallArgs {
        self.with("--interval-ms", wait.as_millis().to_string())
    }

    /// Makes `calls` calls, `concurrency` at a time, over one channel; the
    /// outcome is then a [`Summary`] (`grpc_calls`).
    pub fn repeat(self, calls: usize, concurrency: usize) -> CallArgs {
        self.with("--repeat", calls.to_string())
            .with("--concurrency", concurrency.to_string())
    }
}

/// The outcome of one call as the client saw it.
#[derive(Debug, Clone)]
pub struct GrpcOutcome {
    /// The status code's name, e.g. `OK`, `UNAVAILABLE`.
    pub code: String,
    pub details: String,
    /// The answer's messages (those of 1 KiB or less).
    pub messages: Vec<String>,
    pub message_count: u64,
    /// The answer's bytes, all messages together.
    pub bytes: u64,
    pub initial: HashMap<String, String>,
    pub trailing: HashMap<String, String>,
    pub elapsed: Duration,
}

impl GrpcOutcome {
    /// The initial metadata's `key`.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.initial.get(key).map(String::as_str)
    }

    /// The trailing metadata's `key`.
    pub fn trailer(&self, key: &str) -> Option<&str> {
        self.trailing.get(key).map(String::as_str)
    }

    /// The `x-outrigger` reason of an answer the sidecar made (grpcio shows
    /// a trailers-only answer's headers as its trailing metadata).
    pub fn reason(&self) -> Option<&str> {
        self.trailer("x-outrigger")
    }
}

/// The outcome of repeated calls: how many ended with each code and were
/// answered by each replica, and how long they took.
#[derive(Debug, Clone)]
pub struct Summary {
    pub codes: HashMap<String, u64>,
    pub replicas: HashMap<String, u64>,
    /// The codes of the calls each replica answered (its `x-replica`).
    pub by_replica: HashMap<String, HashMap<String, u64>>,
    /// The first failed calls: code, `x-outrigger` reason and details.
    pub failures: Vec<String>,
    pub elapsed: Duration,
    pub slowest: Duration,
}

impl Summary {
    /// Calls that ended with `code`.
    pub fn count(&self, code: &str) -> u64 {
        self.codes.get(code).copied().unwrap_or(0)
    }
}

/// A call running in its own process: started by [`GrpcCall::start`],
/// finished by awaiting [`GrpcCall::outcome`]; killed if dropped first.
pub struct GrpcCall {
    child: Option<Child>,
    shown: String,
}

impl GrpcCall {
    /// Starts a call of `method` to `target` (`host:port`, a sidecar
    /// listener or a replica).
    pub fn start(target: &str, method: &str, args: &CallArgs) -> GrpcCall {
        let child = Command::new("python3")
            .arg(PEER)
            .args(["call", "--target", target, "--method", method])
            .args(&args.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs the gRPC peer (pip install grpcio)");
        GrpcCall {
            child: Some(child),
            shown: format!("{method} to {target} {:?}", args.args),
        }
    }

    /// The JSON the call printed once it ended.
    async fn json(mut self) -> Value {
        let child = self.child.take().expect("not awaited before");
        let output = actix_rt::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("joins")
            .expect("the gRPC client finishes");
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "the gRPC call {} printed no outcome ({err}): {}{}",
                self.shown,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// How the call ended.
    pub async fn outcome(self) -> GrpcOutcome {
        let json = self.json().await;
        GrpcOutcome {
            code: text(&json["code"]),
            details: text(&json["details"]),
            messages: json["messages"]
                .as_array()
                .map(|all| all.iter().map(text).collect())
                .unwrap_or_default(),
            message_count: json["message_count"].as_u64().unwrap_or(0),
            bytes: json["bytes"].as_u64().unwrap_or(0),
            initial: map(&json["initial"]),
            trailing: map(&json["trailing"]),
            elapsed: millis(&json["elapsed_ms"]),
        }
    }

    /// How repeated calls ended (the call was started with
    /// [`CallArgs::repeat`]).
    pub async fn summary(self) -> Summary {
        let json = self.json().await;
        let counts = |value: &Value| {
            value
                .as_object()
                .map(|all| {
                    all.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let by_replica = json["by_replica"]
            .as_object()
            .map(|all| all.iter().map(|(k, v)| (k.clone(), counts(v))).collect())
            .unwrap_or_default();
        Summary {
            codes: counts(&json["codes"]),
            replicas: counts(&json["replicas"]),
            by_replica,
            failures: json["failures"]
                .as_array()
                .map(|all| all.iter().map(text).collect())
                .unwrap_or_default(),
            elapsed: millis(&json["elapsed_ms"]),
            slowest: millis(&json["slowest_ms"]),
        }
    }
}

impl Drop for GrpcCall {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Calls `method` on `target` once and waits for how it ended.
pub async fn grpc_call(target: &str, method: &str, args: CallArgs) -> GrpcOutcome {
    GrpcCall::start(target, method, &args).outcome().await
}

/// Makes the repeated calls `args` asks for and waits for their summary.
pub async fn grpc_calls(target: &str, method: &str, args: CallArgs) -> Summary {
    GrpcCall::start(target, method, &args).summary().await
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn map(value: &Value) -> HashMap<String, String> {
    value
        .as_object()
        .map(|all| all.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default()
}

fn millis(value: &Value) -> Duration {
    Duration::from_secs_f64(value.as_f64().unwrap_or(0.0) / 1000.0)
}
