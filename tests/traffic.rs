//! Every kind of HTTP traffic through tokengate: WebSocket upgrades (authenticated like any
//! request, then proxied both ways) and server-sent events (streamed, not buffered).

#![allow(clippy::result_large_err)] // tungstenite's handshake callback type is not ours

mod common;

use bytes::Bytes;
use common::{Echo, Gate, HttpClient, STANDARD};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn config() -> String {
    STANDARD.replace(
        "routes:\n",
        "routes:\n  - path: /ws/**\n    abilities: [read]\n  - path: /events\n    abilities: [read]\n",
    )
}

/// A WebSocket upstream that echoes every message back, prefixed with what it saw.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen_abilities = String::new();
                let callback =
                    |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                     response| {
                        seen_abilities = request
                            .headers()
                            .get("x-token-abilities")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("none")
                            .to_owned();
                        Ok(response)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        let reply = format!("{seen_abilities}: {text}");
                        if ws.send(Message::Text(reply.into())).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_authenticated_then_proxied_both_ways() {
    let upstream = websocket_echo().await;
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let gate = Gate::start_with_upstream(upstream, echo, &config()).await;
    let reader = gate.token("u", &["read"]).await;
    let url = format!("ws://{}/ws/chat", gate.addr);

    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {reader}").parse().unwrap());
    request
        .headers_mut()
        .insert("x-token-abilities", "*".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "again"] {
        ws.send(Message::Text(text.into())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a reply")
            .unwrap()
            .unwrap();
        assert_eq!(reply, Message::Text(format!("read: {text}").into()));
    }
    ws.close(None).await.unwrap();

    // Without a token, the handshake is refused like any request.
    let error = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_err();
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_outlives_the_idle_timeout() {
    // Once upgraded, the connection is the tunnel's: the idle watchdog no longer applies.
    let upstream = websocket_echo().await;
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let config = format!("{}timeouts:\n  idle_seconds: 0.3\n", config());
    let gate = Gate::start_with_upstream(upstream, echo, &config).await;
    let reader = gate.token("u", &["read"]).await;
    let request = common::ws_request(gate.addr, "/ws/chat", &reader);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    // Real time is the point: four idle timeouts pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ws.send(Message::Text("still there".into())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a reply")
        .expect("the tunnel is open")
        .unwrap();
    assert_eq!(reply, Message::Text("read: still there".into()));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_without_buffering() {
    // The upstream sends one event, then waits until the test has seen it before the next.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (release_tx, release_rx) = mpsc::channel::<()>(1);
    let release_rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let release_rx = release_rx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let release_rx = release_rx.clone();
                    async move {
                        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                        tokio::spawn(async move {
                            let _ = tx.send(Ok(Frame::data(Bytes::from("data: one\n\n")))).await;
                            if let Some(mut release) = release_rx.lock().await.take() {
                                release.recv().await;
                            }
                            let _ = tx.send(Ok(Frame::data(Bytes::from("data: two\n\n")))).await;
                        });
                        let body = StreamBody::new(tokio_stream_from(rx));
                        let mut response = http::Response::new(body);
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("text/event-stream"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let gate = Gate::start_with_upstream(upstream, echo, &config()).await;
    let reader = gate.token("u", &["read"]).await;

    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let request = http::Request::get(gate.url("/events"))
        .header("authorization", format!("Bearer {reader}"))
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first event arrives while the upstream still holds the second")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, Bytes::from("data: one\n\n"));
    release_tx.send(()).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(second, Bytes::from("data: two\n\n"));
    gate.stop().await;
}

/// An mpsc receiver as a stream of body frames.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_still_work_beside_upgrades() {
    let gate = Gate::start(&config()).await;
    let reader = gate.token("u", &["read"]).await;
    let answer = HttpClient::http1()
        .get_bearer(&gate.url("/api/posts/1"), &reader)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tunnel_is_closed_after_its_own_idle_limit() {
    let upstream = websocket_echo().await;
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let config = format!("{}timeouts:\n  tunnel_idle_seconds: 0.4\n", config());
    let gate = Gate::start_with_upstream(upstream, echo, &config).await;
    let reader = gate.token("u", &["read"]).await;
    let request = common::ws_request(gate.addr, "/ws/chat", &reader);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    // Busy: open past the limit.
    for i in 0..6 {
        // Real time is the point: messages spaced closer than the limit.
        tokio::time::sleep(Duration::from_millis(150)).await;
        ws.send(Message::Text(format!("{i}").into())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        assert!(
            matches!(reply, Ok(Some(Ok(_)))),
            "busy tunnel closed: {reply:?}"
        );
    }
    // Quiet: closed between one and 1¼ limits later (bounded here generously).
    let quiet = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "a quiet tunnel stayed open");
    assert!(
        quiet.elapsed() >= Duration::from_millis(350),
        "closed too soon: {:?}",
        quiet.elapsed()
    );
    assert_eq!(
        gate.metric(r#"tokengate_connections_closed_total{reason="tunnel_idle"}"#),
        1.0
    );
    assert_eq!(gate.metric("tokengate_tunnels_open"), 0.0);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_keep_their_place_under_max_connections() {
    let upstream = websocket_echo().await;
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let config = format!("{}limits:\n  max_connections: 2\n", config());
    let gate = Gate::start_with_upstream(upstream, echo, &config).await;
    let reader = gate.token("u", &["read"]).await;
    let open =
        || tokio_tungstenite::connect_async(common::ws_request(gate.addr, "/ws/chat", &reader));
    let (first, _) = open().await.unwrap();
    let (second, _) = open().await.unwrap();
    // A third connection waits in the accept queue while two tunnels are open.
    let third = tokio::time::timeout(Duration::from_millis(800), open()).await;
    assert!(
        third.is_err(),
        "a third connection was served beside two tunnels"
    );
    drop(first);
    let (mut third, _) = tokio::time::timeout(Duration::from_secs(10), open())
        .await
        .expect("served once a tunnel closed")
        .unwrap();
    third.send(Message::Text("in".into())).await.unwrap();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(10), third.next()).await,
        Ok(Some(Ok(_)))
    ));
    drop(second);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_pass_and_a_refused_one_streams_its_answer() {
    let gate = Gate::start(&config()).await;
    let reader = gate.token("u", &["read"]).await;
    // `h2c` (or anything not in `upgrades`) is stripped: the request goes on as a plain one.
    let client = HttpClient::http1();
    let bearer = format!("Bearer {reader}");
    let answer = client
        .get(
            &gate.url("/ws/chat"),
            &[
                ("authorization", &bearer),
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    for gone in ["upgrade", "connection", "http2-settings"] {
        assert_eq!(
            answer.upstream_header(gone),
            None,
            "{gone} reached the upstream"
        );
    }
    gate.stop().await;

    // An upgrade the app refuses: its answer streams back like any other (it was read
    // whole into memory), while the app still holds the rest of it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 10\r\n\r\nfirst")
            .await
            .unwrap();
        let _ = released.await;
        let _ = stream.write_all(b"-last").await;
    });
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let gate = Gate::start_with_upstream(app, echo, &config()).await;
    let reader = gate.token("u", &["read"]).await;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(
            tokio::net::TcpStream::connect(gate.addr).await.unwrap(),
        ))
        .await
        .unwrap();
    tokio::spawn(connection.with_upgrades());
    let request = http::Request::get("/ws/chat")
        .header("host", "x")
        .header("authorization", format!("Bearer {reader}"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("the head arrives while the app holds the body")
        .unwrap();
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(response.headers()["content-length"], "10");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first bytes arrive before the app sends the rest")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    release.send(()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "-last");
    gate.stop().await;
}
