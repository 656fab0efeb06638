//! A WebSocket echo app (actix-ws) to put behind either listener: each
//! text message is answered with `echo: <text>`, and each handshake's
//! target and headers are kept for the test to read. A WebSocket client's
//! helpers: a round trip, and the next close frame.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_codec::Framed;
use actix_web::http::header::HeaderMap;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::ws;
use futures_util::{SinkExt, StreamExt};

/// A handshake as the app saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
}

/// The echo app on a free loopback port, serving WebSockets on any path.
pub struct EchoApp {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl EchoApp {
    /// Starts the app on the current actix system, one worker.
    pub fn start() -> EchoApp {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&seen);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(Arc::clone(&kept)))
                .default_service(web::get().to(echo))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind");
        let addr = server.addrs()[0];
        actix_rt::spawn(server.run());
        EchoApp { addr, seen }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// The handshakes the app has seen, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

async fn echo(
    req: HttpRequest,
    body: web::Payload,
    seen: web::Data<Arc<Mutex<Vec<Seen>>>>,
) -> actix_web::Result<HttpResponse> {
    seen.lock().expect("not poisoned").push(Seen {
        target: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    let (response, mut session, mut messages) = actix_ws::handle(&req, body)?;
    actix_rt::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            match message {
                actix_ws::Message::Text(text) => {
                    // A failed send means the peer left; the stream ends next.
                    let _ = session.text(format!("echo: {text}")).await;
                }
                actix_ws::Message::Close(reason) => {
                    let _ = session.close(reason).await;
                    return;
                }
                _ => {}
            }
        }
    });
    Ok(response)
}

/// An open WebSocket, as awc's client gives it.
pub type Connection = Framed<awc::BoxedSocket, ws::Codec>;

/// Sends `text` and asserts the echo comes back.
pub async fn round_trip(connection: &mut Connection, text: &str) {
    connection
        .send(ws::Message::Text(text.into()))
        .await
        .expect("send");
    match connection.next().await {
        Some(Ok(ws::Frame::Text(bytes))) => assert_eq!(bytes, format!("echo: {text}").as_bytes()),
        other => panic!("expected an echo of {text:?}, got {other:?}"),
    }
}

/// Closes the WebSocket as a client does and waits for the app's close.
pub async fn close(connection: &mut Connection) {
    connection
        .send(ws::Message::Close(None))
        .await
        .expect("close");
    while let Some(Ok(frame)) = connection.next().await {
        if matches!(frame, ws::Frame::Close(_)) {
            break;
        }
    }
}

/// The close frame that ends the connection within `within`, skipping
/// other frames; panics if the connection ends without one.
pub async fn next_close(connection: &mut Connection, within: Duration) -> Option<ws::CloseReason> {
    let wait = async {
        loop {
            match connection.next().await {
                Some(Ok(ws::Frame::Close(reason))) => return reason,
                Some(Ok(_)) => continue,
                other => panic!("the connection ended without a close frame: {other:?}"),
            }
        }
    };
    actix_rt::time::timeout(within, wait)
        .await
        .expect("a close frame in time")
}
