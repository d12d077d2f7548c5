//! Long-lived answers end with their credential: a WebSocket tunnel gets a close frame 1008
//! and an event stream ends within a second of its token being revoked, expiring or losing
//! the route's ability, or of its session ending (logout, expiry, the user removed). A
//! stream opened with another credential goes on.

#![allow(clippy::result_large_err)] // tungstenite's handshake callback type is not ours

mod common;

use bytes::Bytes;
use common::{Echo, Gate, STANDARD, T0};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokengate::credential::token::TokenId;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// The requirement: ended within a second of the credential.
const WITHIN: Duration = Duration::from_secs(1);

fn config() -> String {
    STANDARD.replace(
        "routes:\n",
        "routes:\n  - path: /ws/**\n    abilities: [read]\n  - path: /events\n    abilities: [read]\n",
    )
}

/// Every way a credential ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    TokenRevoked,
    TokenExpired,
    TokenLostAbility,
    SessionLoggedOut,
    SessionExpired,
    UserRemoved,
}

const ENDINGS: [Ending; 6] = [
    Ending::TokenRevoked,
    Ending::TokenExpired,
    Ending::TokenLostAbility,
    Ending::SessionLoggedOut,
    Ending::SessionExpired,
    Ending::UserRemoved,
];

/// A credential to open a stream with, and what ends it.
struct Credential {
    header: (&'static str, String),
    token: Option<TokenId>,
    session: Option<tokengate::credential::session::SessionHash>,
}

async fn credential(gate: &Gate, ending: Ending) -> Credential {
    match ending {
        Ending::TokenRevoked | Ending::TokenExpired | Ending::TokenLostAbility => {
            let expires = matches!(ending, Ending::TokenExpired).then_some(T0 + 3600);
            let token = gate.token_expiring("u", &["read"], expires).await;
            let id = TokenId(token.split('|').next().unwrap().parse().unwrap());
            Credential {
                header: ("authorization", format!("Bearer {token}")),
                token: Some(id),
                session: None,
            }
        }
        Ending::SessionLoggedOut | Ending::SessionExpired | Ending::UserRemoved => {
            gate.app.users.add("alice", None).await.unwrap();
            let session = gate.app.sessions.create("alice").await.unwrap();
            Credential {
                header: (
                    "cookie",
                    format!("tokengate_session={}", session.cookie_value),
                ),
                token: None,
                session: Some(session.session.hash),
            }
        }
    }
}

/// Ends `credential` as `ending` says.
async fn end(gate: &Gate, ending: Ending, credential: &Credential) {
    let tokens = &gate.app.tokens;
    match ending {
        Ending::TokenRevoked => assert!(tokens.revoke(credential.token.unwrap()).await.unwrap()),
        Ending::TokenExpired => gate.clock.advance(3601),
        Ending::TokenLostAbility => {
            tokens
                .set_abilities(credential.token.unwrap(), &["create".into()])
                .await
                .unwrap()
                .unwrap();
        }
        Ending::SessionLoggedOut => {
            let hash = credential.session.unwrap();
            assert!(gate.app.sessions.revoke(hash).await.unwrap());
        }
        // Past the idle limit (120 minutes).
        Ending::SessionExpired => gate.clock.advance(120 * 60 + 1),
        Ending::UserRemoved => assert!(gate.app.remove_user("alice").await.unwrap().is_some()),
    }
}

/// A WebSocket upstream that echoes every text message.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        if ws.send(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_ws(gate: &Gate, header: &(&'static str, String)) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/ws/chat", gate.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert(header.0, header.1.parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

async fn round_trip(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    assert!(
        matches!(&reply, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text),
        "{text}: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_close_with_1008_when_their_credential_ends() {
    let upstream = websocket_echo().await;
    for ending in ENDINGS {
        let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let gate = Gate::start_with_upstream(upstream, echo, &config()).await;
        let credential = credential(&gate, ending).await;
        let bystander = gate.token("bystander", &["read"]).await;
        let mut ws = open_ws(&gate, &credential.header).await;
        let mut other = open_ws(&gate, &("authorization", format!("Bearer {bystander}"))).await;
        round_trip(&mut ws, "before").await;
        // Still open across several checks while the credential is good.
        tokio::time::sleep(Duration::from_millis(600)).await;
        round_trip(&mut ws, "still").await;

        end(&gate, ending, &credential).await;
        let ended = Instant::now();
        let close = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => {}
                    other => panic!("{ending:?}: ended without a close frame: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{ending:?}: the tunnel stayed open"));
        let took = ended.elapsed();
        let frame = close.expect("a close frame with a status");
        assert_eq!(frame.code, CloseCode::Policy, "{ending:?}");
        assert!(
            took < WITHIN,
            "{ending:?}: closed {took:?} after the ending"
        );
        // The bystander's tunnel goes on.
        round_trip(&mut other, "unaffected").await;
        assert_eq!(
            gate.metric(r#"tokengate_connections_closed_total{reason="credential"}"#),
            1.0,
            "{ending:?}"
        );
        drop((ws, other));
        gate.stop().await;
    }
}

/// An upstream answering every request with an event stream: an event every 50 ms, until
/// the client goes.
async fn event_source() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    let (tx, mut rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                    tokio::spawn(async move {
                        for i in 0.. {
                            let event = Frame::data(Bytes::from(format!("data: {i}\n\n")));
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                            // Real time is the point: a source that paces its events.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    });
                    let body =
                        StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
                    let mut response = http::Response::new(body);
                    response.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

type Events = hyper::body::Incoming;

async fn open_events(gate: &Gate, header: &(&'static str, String), http2: bool) -> Events {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http::<http_body_util::Empty<Bytes>>();
    let request = http::Request::get(gate.url("/events"))
        .header(header.0, &header.1)
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}

/// Reads events until the stream ends; `Err` if it fails instead of ending.
async fn drain(events: &mut Events) -> Result<(), String> {
    loop {
        match events.frame().await {
            None => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

async fn next_event(events: &mut Events) {
    let frame = tokio::time::timeout(Duration::from_secs(10), events.frame()).await;
    assert!(
        matches!(&frame, Ok(Some(Ok(f))) if f.data_ref().is_some_and(|d| d.starts_with(b"data: "))),
        "{frame:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_end_when_their_credential_ends() {
    let upstream = event_source().await;
    for http2 in [false, true] {
        for ending in ENDINGS {
            let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
            let gate = Gate::start_with_upstream(upstream, echo, &config()).await;
            let credential = credential(&gate, ending).await;
            let bystander = gate.token("bystander", &["read"]).await;
            let mut events = open_events(&gate, &credential.header, http2).await;
            let mut other = open_events(
                &gate,
                &("authorization", format!("Bearer {bystander}")),
                http2,
            )
            .await;
            next_event(&mut events).await;
            // Real time is the point: open across several checks while the credential is good.
            tokio::time::sleep(Duration::from_millis(600)).await;
            next_event(&mut events).await;

            end(&gate, ending, &credential).await;
            let ended = Instant::now();
            let drained = tokio::time::timeout(Duration::from_secs(10), drain(&mut events))
                .await
                .unwrap_or_else(|_| panic!("{ending:?}: the stream stayed open"));
            let took = ended.elapsed();
            assert_eq!(drained, Ok(()), "{ending:?} (http2 {http2}): ended cleanly");
            assert!(took < WITHIN, "{ending:?}: ended {took:?} after the ending");
            // The bystander's stream goes on.
            for _ in 0..3 {
                next_event(&mut other).await;
            }
            assert_eq!(
                gate.metric(r#"tokengate_connections_closed_total{reason="credential"}"#),
                1.0
            );
            // (An open stream would hold the shutdown for its grace period.)
            drop((events, other));
            gate.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_answers_and_public_streams_are_not_watched() {
    let upstream = event_source().await;
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let body = config().replace(
        "routes:\n",
        "routes:\n  - path: /events\n    methods: [GET]\n    auth: none\n",
    );
    let gate = Gate::start_with_upstream(upstream, echo, &body).await;
    let mut events = open_events(&gate, &("x-any", "thing".into()), false).await;
    next_event(&mut events).await;
    assert!(
        gate.app.streams.is_empty(),
        "a public stream has no credential"
    );
    drop(events);
    gate.stop().await;
}
