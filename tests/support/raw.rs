//! Raw HTTP/1.1 over TCP, for what a client library would not send or
//! would hide: one exchange as text, and readers of its head and body.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// Sends raw bytes as one HTTP/1.1 exchange (the request should say
/// `Connection: close`) and returns the whole answer as text.
pub fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether a raw answer stops short of the `Content-Length` its head
/// declares: an answer cut after its head left. A client that ends a body
/// at the close (as awc does) would read it as whole.
pub fn raw_cut_short(answer: &str) -> bool {
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return false;
    };
    raw_header(head, "content-length")
        .and_then(|length| length.parse::<usize>().ok())
        .is_some_and(|length| body.len() < length)
}

/// The value of header `name` (lower case) in a raw answer's head.
pub fn raw_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The JSON body of a raw answer.
pub fn raw_json(answer: &str) -> Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or(Value::Null)
}
