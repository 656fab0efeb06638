//! Protocol upgrades: a WebSocket echo server behind the sidecar, with
//! messages round-tripping through `ws://<outbound>/<service>/ws`.

mod support;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use support::client::get_json;
use support::eventually::eventually;
use support::sidecar::sidecar;

async fn echo(req: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
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

#[actix_web::test]
async fn websocket_messages_round_trip_through_the_sidecar() {
    let server = HttpServer::new(|| App::new().route("/ws", web::get().to(echo)))
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind");
    let upstream = server.addrs()[0];
    actix_rt::spawn(server.run());
    let sidecar = sidecar(&format!(
        "  - {{ name: chat, endpoints: [\"{upstream}\"] }}"
    ))
    .await;

    let url = format!("ws://{}/chat/ws", sidecar.outbound_addr());
    let (response, mut connection) = awc::Client::new()
        .ws(url)
        .connect()
        .await
        .expect("handshake");
    assert_eq!(response.status().as_u16(), 101);
    let admin = format!("http://{}/services", sidecar.admin_addr());
    let (_, services) = get_json(&admin).await;
    assert_eq!(
        services["services"][0]["replicas"][0]["load"], 1,
        "an open tunnel is load"
    );

    for text in ["hello", "second message", "third"] {
        connection
            .send(ws::Message::Text(text.into()))
            .await
            .expect("send");
        match connection.next().await {
            Some(Ok(ws::Frame::Text(bytes))) => {
                assert_eq!(bytes, format!("echo: {text}").as_bytes())
            }
            other => panic!("expected an echo of {text:?}, got {other:?}"),
        }
    }
    connection
        .send(ws::Message::Close(None))
        .await
        .expect("close");
    while let Some(Ok(frame)) = connection.next().await {
        if matches!(frame, ws::Frame::Close(_)) {
            break;
        }
    }
    drop(connection);
    eventually("the tunnel closes and stops counting as load", || async {
        get_json(&admin).await.1["services"][0]["replicas"][0]["load"] == 0
    })
    .await;
}
