//! HTTP/2 clients with prior knowledge (h2c), as real tools: curl
//! (`--http2-prior-knowledge`) for single requests and h2load (Debian's
//! `nghttp2-client`) for many streams over few connections, and for a
//! request whose answer comes before its body is sent (curl 7.88 takes the
//! RST_STREAM(NO_ERROR) that follows such an answer for an error; nghttp2
//! reads the answer, as RFC 9113, 8.1 asks). Both run off
//! the test's thread, which runs the sidecar's actors.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// A curl answer: its status line, head and body.
#[derive(Debug)]
pub struct CurlAnswer {
    /// The status line, e.g. `HTTP/2 200`.
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl CurlAnswer {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {}", self.status_line))
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (a replica's echo).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("a JSON body ({err}): {}", self.body))
    }
}

/// Runs `curl -sS -i` with `args` (which say the protocol and the URL),
/// `stdin` as its input; the answer it printed.
pub async fn curl(args: &[&str], stdin: Option<Vec<u8>>) -> CurlAnswer {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let shown: String = args.join(" ").chars().take(200).collect();
    let output = actix_rt::task::spawn_blocking(move || {
        let mut child = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl runs (apt-get install curl)");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(bytes) = stdin {
            input.write_all(&bytes).expect("curl reads its input");
        }
        drop(input);
        child.wait_with_output().expect("curl finishes")
    })
    .await
    .expect("joins");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "curl {shown} printed no answer: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default().trim().to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    CurlAnswer {
        status_line,
        headers,
        body: body.to_string(),
    }
}

/// An HTTP/2 request with prior knowledge to `url`, with more curl `args`.
pub async fn h2c(url: &str, args: &[&str]) -> CurlAnswer {
    let mut all = vec!["--http2-prior-knowledge"];
    all.extend_from_slice(args);
    all.push(url);
    curl(&all, None).await
}

/// What h2load reports: requests done and their status classes.
#[derive(Debug, PartialEq, Eq)]
pub struct LoadReport {
    pub succeeded: u64,
    /// Streams that got no answer (reset, or refused by the server).
    pub failed: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
}

/// Runs h2load against `url` with `requests` requests over `clients`
/// connections, at most `streams` at once on each; each a POST of the file
/// `body` (with its `content-length`) when one is given.
pub async fn h2load(
    url: &str,
    requests: u32,
    clients: u32,
    streams: u32,
    body: Option<&Path>,
) -> LoadReport {
    let mut args = vec![
        "-n".to_string(),
        requests.to_string(),
        "-c".to_string(),
        clients.to_string(),
        "-m".to_string(),
        streams.to_string(),
        url.to_string(),
    ];
    if let Some(body) = body {
        args.extend(["-d".to_string(), body.display().to_string()]);
    }
    let output = actix_rt::task::spawn_blocking(move || {
        Command::new("h2load")
            .args(&args)
            .output()
            .expect("h2load runs (apt-get install nghttp2-client)")
    })
    .await
    .expect("joins");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let numbers = |prefix: &str| -> Vec<u64> {
        let line = text
            .lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("h2load printed no {prefix} line: {text}"));
        line[prefix.len()..]
            .split(',')
            .filter_map(|part| part.split_whitespace().next()?.parse().ok())
            .collect()
    };
    // "requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, ..."
    let requests = numbers("requests:");
    // "status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx"
    let codes = numbers("status codes:");
    LoadReport {
        succeeded: requests[3],
        failed: requests[4],
        status_2xx: codes[0],
        status_4xx: codes[2],
        status_5xx: codes[3],
    }
}

/// Runs `curl -sS` with `args` and returns its exit code and what it
/// printed, for an answer that may break off (curl then exits non-zero).
pub async fn curl_exit(args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = actix_rt::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl runs (apt-get install curl)")
    })
    .await
    .expect("joins");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.code(), printed)
}
