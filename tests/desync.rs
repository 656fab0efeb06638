//! Replays the classified request vectors shipped with the
//! `http_desync_guardian` package at the inbound listener: whatever the
//! analyzer rates ambiguous or severe is refused, or reaches the app only
//! as a request the analyzer rates compliant or acceptable (the sidecar
//! frames what it forwards itself). A raw upstream records the bytes it got.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_desync_guardian::request_analyzer::HttpRequestData;
use http_desync_guardian::RequestSafetyTier;
use serde_norway::Value;
use support::sidecar::{listeners_with_inbound, sidecar_from};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A replica that keeps the raw head of every request it receives and
/// answers each with an empty 200, closing the connection.
struct RawReplica {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawReplica {
    /// Starts on a thread of its own, so the test's blocking client calls
    /// do not stall it.
    fn start() -> RawReplica {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&heads);
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((stream, _)) = listener.accept().await {
                    actix_rt::spawn(record_and_answer(stream, Arc::clone(&kept)));
                }
            })
        });
        RawReplica { addr, heads }
    }

    fn take_heads(&self) -> Vec<Vec<u8>> {
        self.heads
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default()
    }
}

/// Keeps the head of the request on `stream` in `kept`; answers an empty 200.
async fn record_and_answer(mut stream: tokio::net::TcpStream, kept: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer));
        match read.await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buffer[..n]),
            _ => break,
        }
    }
    if let Ok(mut heads) = kept.lock() {
        heads.push(head);
    }
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
}

/// One vector from the package's YAML.
struct Vector {
    name: String,
    raw: Vec<u8>,
}

/// `\xNN` escapes in the YAML stand for single bytes: chars up to U+00FF
/// become that byte, others their UTF-8.
fn bytes_of(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len());
    for c in text.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(byte) => bytes.push(byte),
            Err(_) => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    bytes
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// Where cargo unpacked the package, from `cargo metadata` (for this
/// platform: other platforms' packages are not downloaded).
fn package_dir() -> std::path::PathBuf {
    let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--offline", "--format-version", "1"])
        .args(["--filter-platform", &platform])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    let manifest = metadata["packages"]
        .as_array()
        .and_then(|packages| {
            packages
                .iter()
                .find(|p| p["name"] == "http_desync_guardian")
        })
        .and_then(|p| p["manifest_path"].as_str())
        .expect("http_desync_guardian is a dev-dependency");
    std::path::Path::new(manifest)
        .parent()
        .expect("package dir")
        .to_path_buf()
}

fn vectors() -> Vec<Vector> {
    let dir = package_dir().join("tests");
    let mut vectors = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the package's tests folder")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read vectors");
        let cases: Vec<Value> = serde_norway::from_str(&text).expect("vector YAML");
        for case in cases {
            let mut raw = bytes_of(&format!(
                "{} {} {}\r\n",
                scalar(&case["method"]),
                scalar(&case["uri"]),
                scalar(&case["version"])
            ));
            let headers = case["headers"].as_sequence().cloned().unwrap_or_default();
            let has_host = headers
                .iter()
                .any(|h| scalar(&h["name"]).eq_ignore_ascii_case("host"));
            if !has_host {
                raw.extend_from_slice(b"Host: app\r\n");
            }
            for header in &headers {
                raw.extend(bytes_of(&scalar(&header["name"])));
                raw.extend_from_slice(b": ");
                raw.extend(bytes_of(&scalar(&header["value"])));
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            vectors.push(Vector {
                name: format!(
                    "{}: {}",
                    file.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                    scalar(&case["name"])
                ),
                raw,
            });
        }
    }
    vectors
}

fn tier(raw: &[u8]) -> RequestSafetyTier {
    HttpRequestData::analyze_raw_request(raw).tier
}

fn dangerous(tier: RequestSafetyTier) -> bool {
    matches!(
        tier,
        RequestSafetyTier::Ambiguous | RequestSafetyTier::Severe
    )
}

/// Sends `raw` and a short body, closes the sending side, and reads the
/// answer's status (`None` when the connection closed without one).
fn send(addr: SocketAddr, raw: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = stream.write_all(raw);
    let _ = stream.write_all(b"0\r\n\r\n");
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.get(9..12).and_then(|code| code.parse().ok())
}

#[actix_rt::test]
async fn no_vector_reaches_the_app_ambiguously() {
    let app = RawReplica::start();
    let yaml = format!(
        "{}\ninbound:\n  auth: {{ exempt: [\"/*\"] }}\n",
        listeners_with_inbound(app.addr)
    );
    let sidecar = sidecar_from(&yaml, &[]).await;
    let inbound = sidecar.inbound_addr().expect("inbound");
    let vectors = vectors();
    assert!(
        vectors.len() > 150,
        "the package ships its vectors: {}",
        vectors.len()
    );
    let (mut dangerous_sent, mut refused, mut leaks) = (0, 0, Vec::new());
    for vector in &vectors {
        let sent_tier = tier(&vector.raw);
        let status = send(inbound, &vector.raw);

        let forwarded = app.take_heads();
        if dangerous(sent_tier) {
            dangerous_sent += 1;
            if forwarded.iter().all(Vec::is_empty) {
                refused += 1;
            }
        }
        // A connection that carried no bytes delivered nothing.
        for head in forwarded.into_iter().filter(|head| !head.is_empty()) {
            let forwarded_tier = tier(&head);
            if dangerous(forwarded_tier) {
                leaks.push(format!(
                    "{} (sent {sent_tier:?}, answered {status:?}) reached the app as {forwarded_tier:?}:\n{}",
                    vector.name,
                    String::from_utf8_lossy(&head)
                ));
            }
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    assert!(
        dangerous_sent > 50,
        "the vectors include dangerous ones: {dangerous_sent}"
    );
    assert!(
        refused * 10 >= dangerous_sent * 9,
        "at least 90% of the dangerous vectors are refused outright: {refused} of {dangerous_sent}"
    );
}
