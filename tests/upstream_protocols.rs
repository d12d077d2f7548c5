//! The protocols tokengate speaks to the upstream: HTTP/2 with prior knowledge (gRPC with
//! its trailers, over one shared connection), HTTPS with a private CA (and a refusal
//! without it), HTTP/2 over TLS, and WebSockets over TLS beside an HTTP/2 upstream.

#![allow(clippy::result_large_err)] // tungstenite's handshake callback type is not ours

mod common;

use bytes::{Buf, Bytes};
use common::{Echo, Gate, HttpClient, STANDARD, T0};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokengate::app::App;
use tokengate::clock::ManualClock;
use tokengate::config::Config;
use tokengate::token_cache::CreateToken;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio_tungstenite::tungstenite::Message;

const GRPC_PATH: &str = "/pkg.Service/Method";

fn routes() -> String {
    STANDARD.replace(
        "routes:\n",
        "routes:\n  - path: /pkg.Service/**\n    abilities: [read]\n  - path: /ws/**\n    abilities: [read]\n",
    )
}

/// A body of frames given up front: data, then trailers.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// A gRPC message: uncompressed flag, length, payload.
fn grpc_message(payload: &[u8]) -> Bytes {
    let mut message = vec![0u8];
    message.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    message.extend_from_slice(payload);
    message.into()
}

/// One request as the gRPC upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// A minimal h2c (prior knowledge) gRPC server: answers `POST /pkg.Service/*` with the
/// request message echoed back and trailers `grpc-status: 0`, `grpc-message: ok`;
/// `/pkg.Service/Slow` answers only once `release` is notified. `go_away` shuts every open
/// connection down gracefully (GOAWAY, then close once its calls are done); `ping_acks`
/// counts the client's acknowledgements of the PING that follows the GOAWAY (the only PING
/// this server sends), and `closed` the connections that ended.
struct GrpcUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<Mutex<usize>>,
    go_away: watch::Sender<u64>,
    release: Arc<Notify>,
    ping_acks: watch::Receiver<usize>,
    closed: watch::Receiver<usize>,
}

/// A server's connection, the frames its client sends read through on their way: counts
/// the client's PING acknowledgements. A client reads frames in order, so once it has
/// acknowledged the PING a graceful shutdown sends after its GOAWAY, it has read the
/// GOAWAY too.
struct CountPingAcks {
    stream: TcpStream,
    /// Bytes of the client's connection preface still to skip.
    preface: usize,
    /// Received bytes not yet making up a whole frame.
    pending: Vec<u8>,
    acks: Arc<watch::Sender<usize>>,
}

impl CountPingAcks {
    const PREFACE: usize = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".len();
    const PING: u8 = 0x6;
    const ACK: u8 = 0x1;

    fn new(stream: TcpStream, acks: Arc<watch::Sender<usize>>) -> Self {
        Self {
            stream,
            preface: Self::PREFACE,
            pending: Vec::new(),
            acks,
        }
    }

    fn received(&mut self, mut bytes: &[u8]) {
        let skip = self.preface.min(bytes.len());
        self.preface -= skip;
        bytes = &bytes[skip..];
        self.pending.extend_from_slice(bytes);
        // A frame: 24-bit length, type, flags, stream id, then the payload.
        while self.pending.len() >= 9 {
            let length = usize::from(self.pending[0]) << 16
                | usize::from(self.pending[1]) << 8
                | usize::from(self.pending[2]);
            if self.pending.len() < 9 + length {
                break;
            }
            if self.pending[3] == Self::PING && self.pending[4] & Self::ACK != 0 {
                self.acks.send_modify(|n| *n += 1);
            }
            self.pending.drain(..9 + length);
        }
    }
}

impl tokio::io::AsyncRead for CountPingAcks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.received(&buf.filled()[before..]);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for CountPingAcks {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn grpc_upstream() -> GrpcUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(Mutex::new(0));
    let (go_away, going_away) = watch::channel(0u64);
    let release = Arc::new(Notify::new());
    let (acks_tx, ping_acks) = watch::channel(0usize);
    let acks_tx = Arc::new(acks_tx);
    let (closed_tx, closed) = watch::channel(0usize);
    let closed_tx = Arc::new(closed_tx);
    let (log, count, released) = (seen.clone(), connections.clone(), release.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            let (log, released) = (log.clone(), released.clone());
            let (acks_tx, closed_tx) = (acks_tx.clone(), closed_tx.clone());
            let mut going_away = going_away.clone();
            going_away.mark_unchanged();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (log, released) = (log.clone(), released.clone());
                    async move {
                        let (parts, body) = request.into_parts();
                        let collected = body.collect().await.unwrap();
                        let trailers = collected.trailers().cloned();
                        let body = collected.to_bytes();
                        log.lock().unwrap().push(Seen {
                            version: parts.version,
                            uri: parts.uri.clone(),
                            headers: parts.headers,
                            body: body.clone(),
                            trailers,
                        });
                        if parts.uri.path() == "/pkg.Service/Slow" {
                            released.notified().await;
                        }
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
                        let mut payload = body;
                        if payload.len() >= 5 {
                            payload.advance(5);
                        }
                        let reply = grpc_message(&[b"reply to ", &payload[..]].concat());
                        let frames =
                            VecDeque::from([Frame::data(reply), Frame::trailers(trailers)]);
                        let response = Response::builder()
                            .header("content-type", "application/grpc")
                            .body(Frames(frames))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let stream = CountPingAcks::new(stream, acks_tx);
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = going_away.changed() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
                closed_tx.send_modify(|n| *n += 1);
            });
        }
    });
    GrpcUpstream {
        addr,
        seen,
        connections,
        go_away,
        release,
        ping_acks,
        closed,
    }
}

/// A gRPC client's answer: status, headers, the body's bytes and its trailers.
struct GrpcAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// An HTTP/2 prior-knowledge client connection to the gate, as gRPC clients open one.
async fn h2_client(gate: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(gate).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

async fn grpc_call(
    client: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    gate: SocketAddr,
    token: Option<&str>,
    payload: &[u8],
) -> GrpcAnswer {
    grpc_call_to(client, gate, GRPC_PATH, token, payload).await
}

async fn grpc_call_to(
    client: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    gate: SocketAddr,
    path: &str,
    token: Option<&str>,
    payload: &[u8],
) -> GrpcAnswer {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{gate}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Full::new(grpc_message(payload))).unwrap();
    client.ready().await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.send_request(request))
        .await
        .expect("an answer in time")
        .unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    GrpcAnswer {
        status: parts.status,
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_passes_through_with_its_trailers_over_one_h2c_connection() {
    let upstream = grpc_upstream().await;
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let body = format!("upstream_http2: true\n{}", routes());
    let gate = Gate::start_with_upstream(upstream.addr, echo, &body).await;
    let reader = gate.token("grpc-user", &["read"]).await;
    let mut client = h2_client(gate.addr).await;

    let answer = grpc_call(&mut client, gate.addr, Some(&reader), b"hello").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "application/grpc");
    assert_eq!(answer.body, grpc_message(b"reply to hello"));
    let trailers = answer.trailers.expect("the trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");

    let seen = upstream.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.uri.path(), GRPC_PATH);
    // The app sees the host the client asked for, as an HTTP/1.1 upstream would.
    assert_eq!(
        seen.uri.authority().map(|a| a.as_str().to_owned()),
        Some(gate.addr.to_string())
    );
    assert_eq!(seen.headers["x-token-abilities"], "read");
    assert_eq!(seen.headers["x-auth-user"], "grpc-user");
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.headers["content-type"], "application/grpc");
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.body, grpc_message(b"hello"));

    // No token: refused by tokengate, never sent upstream.
    let before = upstream.seen.lock().unwrap().len();
    let answer = grpc_call(&mut client, gate.addr, None, b"anonymous").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(upstream.seen.lock().unwrap().len(), before);

    // Many calls at once share the worker's one upstream connection.
    let calls = (0..20).map(|i| {
        let mut client = client.clone();
        let reader = reader.clone();
        let addr = gate.addr;
        tokio::spawn(async move {
            let payload = format!("call {i}");
            let answer = grpc_call(&mut client, addr, Some(&reader), payload.as_bytes()).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(
                answer.body,
                grpc_message(format!("reply to {payload}").as_bytes())
            );
            assert_eq!(answer.trailers.unwrap()["grpc-status"], "0");
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap();
    }
    assert_eq!(*upstream.connections.lock().unwrap(), 1);

    // The upstream shuts the connection down (GOAWAY) while a call is still running on it:
    // the next call goes over a new connection, the running one finishes on the old.
    let slow = {
        let (mut client, reader, addr) = (client.clone(), reader.clone(), gate.addr);
        tokio::spawn(async move {
            grpc_call_to(
                &mut client,
                addr,
                "/pkg.Service/Slow",
                Some(&reader),
                b"slow",
            )
            .await
        })
    };
    let seen_before = upstream.seen.lock().unwrap().len();
    common::eventually("the slow call reached the upstream", || {
        upstream.seen.lock().unwrap().len() > seen_before
    })
    .await;
    // The next call is made once tokengate has read the GOAWAY (it has acknowledged the
    // PING sent after it), so it cannot go out on the old connection.
    let acks_before = *upstream.ping_acks.borrow();
    upstream.go_away.send_modify(|n| *n += 1);
    let mut acks = upstream.ping_acks.clone();
    tokio::time::timeout(Duration::from_secs(10), acks.wait_for(|n| *n > acks_before))
        .await
        .expect("tokengate acknowledges the PING after the GOAWAY")
        .unwrap();
    let answer = grpc_call(&mut client, gate.addr, Some(&reader), b"again").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, grpc_message(b"reply to again"));
    assert_eq!(*upstream.connections.lock().unwrap(), 2);
    upstream.release.notify_one();
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, grpc_message(b"reply to slow"));
    assert_eq!(answer.trailers.unwrap()["grpc-status"], "0");

    // Once the old connection closed, calls still use the new one.
    let mut closed = upstream.closed.clone();
    tokio::time::timeout(Duration::from_secs(10), closed.wait_for(|n| *n == 1))
        .await
        .expect("the old connection closes once its last call is done")
        .unwrap();
    let answer = grpc_call(&mut client, gate.addr, Some(&reader), b"last").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(*upstream.connections.lock().unwrap(), 2);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_names_in_request_trailers_never_reach_an_http2_upstream() {
    let upstream = grpc_upstream().await;
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let body = format!("upstream_http2: true\n{}", routes());
    let gate = Gate::start_with_upstream(upstream.addr, echo, &body).await;
    let reader = gate.token("grpc-user", &["read"]).await;
    let stream = TcpStream::connect(gate.addr).await.unwrap();
    let (mut client, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut trailers = HeaderMap::new();
    for name in [
        "x-token-abilities",
        "x-auth-user",
        "x_auth_user",
        "x-forwarded-for",
        "remote-user",
        "authorization",
    ] {
        trailers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static("forged"),
        );
    }
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let request = Request::post(format!("http://{}{GRPC_PATH}", gate.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {reader}"))
        .body(Frames(VecDeque::from([
            Frame::data(grpc_message(b"hello")),
            Frame::trailers(trailers),
        ])))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.send_request(request))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.headers["x-token-abilities"], "read");
    let trailers = seen
        .trailers
        .expect("the client's trailers reached the upstream");
    assert_eq!(trailers["x-checksum"], "abc", "an ordinary trailer passes");
    for (name, value) in &trailers {
        assert_ne!(value, "forged", "{name} reached the upstream as a trailer");
    }

    // The same from an HTTP/1.1 client, as trailers of a chunked body.
    let message = grpc_message(b"hello");
    let mut request = format!(
        "POST {GRPC_PATH} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {reader}\r\n\
         content-type: application/grpc\r\nte: trailers\r\ntransfer-encoding: chunked\r\n\
         trailer: x-token-abilities, x-checksum\r\nconnection: close\r\n\r\n{:x}\r\n",
        gate.addr,
        message.len()
    )
    .into_bytes();
    request.extend_from_slice(&message);
    request.extend_from_slice(
        b"\r\n0\r\nx-token-abilities: forged\r\nx_auth_user: forged\r\nx-checksum: abc\r\n\r\n",
    );
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &request)
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer),
    )
    .await
    .expect("an answer in time")
    .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let seen = upstream.seen.lock().unwrap().last().cloned().unwrap();
    let trailers = seen
        .trailers
        .expect("the HTTP/1.1 client's trailers reached the upstream");
    assert_eq!(trailers["x-checksum"], "abc", "an ordinary trailer passes");
    for (name, value) in &trailers {
        assert_ne!(value, "forged", "{name} reached the upstream as a trailer");
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http1_clients_reach_an_h2c_upstream() {
    let upstream = grpc_upstream().await;
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let body = format!("upstream_http2: true\n{}", routes());
    let gate = Gate::start_with_upstream(upstream.addr, echo, &body).await;
    let reader = gate.token("u", &["read"]).await;
    let answer = HttpClient::http1()
        .post_bearer(&gate.url(GRPC_PATH), &reader)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = upstream.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.version, Version::HTTP_2);
    assert!(seen.headers.get("host").is_none());
    assert!(seen.headers.get("te").is_none());
    assert_eq!(seen.headers["x-token-abilities"], "read");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_h2c_upstream_is_a_502() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let body = format!("upstream_http2: true\n{}", routes());
    let gate = Gate::start_with_upstream(addr, echo, &body).await;
    let reader = gate.token("u", &["read"]).await;
    let mut client = h2_client(gate.addr).await;
    for _ in 0..2 {
        let answer = grpc_call(&mut client, gate.addr, Some(&reader), b"x").await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    }
    gate.stop().await;
}

// ---- TLS towards the upstream ----

/// A private CA and a certificate it signed for 127.0.0.1 and localhost.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "tokengate test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "upstream.test");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();

    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Pki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

/// A TLS listener: every connection's negotiated ALPN protocol is logged in `alpn`.
struct TlsUpstream {
    addr: SocketAddr,
    alpn: Arc<Mutex<Vec<Option<String>>>>,
}

/// A TLS listener on 127.0.0.1:0 that records each connection's ALPN protocol and hands the
/// stream to `serve`, in a task of its own.
async fn tls_upstream<F, Fut>(pki: &Pki, serve: F) -> TlsUpstream
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
    let alpn = Arc::new(Mutex::new(Vec::new()));
    let log = alpn.clone();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let log = log.clone();
            let serve = serve.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let protocol = stream
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                log.lock().unwrap().push(protocol);
                serve(stream).await;
            });
        }
    });
    TlsUpstream { addr, alpn }
}

/// An HTTPS upstream (HTTP/1.1 or HTTP/2, as ALPN says) answering JSON: the version and
/// the headers it got.
async fn https_upstream(pki: &Pki) -> TlsUpstream {
    tls_upstream(pki, |stream| async move {
        let service = service_fn(|request: Request<Incoming>| async move {
            let headers: serde_json::Map<String, serde_json::Value> = request
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let json = serde_json::json!({
                "version": format!("{:?}", request.version()),
                "path": request.uri().path(),
                "headers": headers,
            });
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(json.to_string()))))
        });
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// tokengate with a config of the test's own (`upstream` and `upstream_ca` are the
/// harness's business otherwise), like `Gate::start_with_upstream`.
struct TlsGate {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TlsGate {
    /// `ca`: the PEM written to a file for `upstream_ca`.
    async fn start(upstream: &str, ca: Option<&str>, extra: &str) -> TlsGate {
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = format!(
            "upstream: {upstream}\nstore:\n  path: {}\n{extra}",
            dir.path().join("store").display()
        );
        if let Some(pem) = ca {
            let file = dir.path().join("ca.pem");
            std::fs::write(&file, pem).unwrap();
            yaml.push_str(&format!("upstream_ca: {}\n", file.display()));
        }
        yaml.push_str(&routes());
        let config = Config::parse(&yaml)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{yaml}"));
        let app = common::app_for(config, Arc::new(ManualClock::new(T0))).await;
        let (addr, shutdown, server) = common::serve(&app).await;
        TlsGate {
            addr,
            app,
            shutdown,
            server,
            _dir: dir,
        }
    }

    async fn token(&self, user: &str, abilities: &[&str]) -> String {
        self.app
            .tokens
            .create(CreateToken {
                user: user.into(),
                name: format!("{user}'s token"),
                abilities: Some(abilities.iter().map(|a| a.to_string()).collect()),
                expires_at: None,
            })
            .await
            .unwrap()
            .plaintext
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        self.server.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_trusted_through_upstream_ca() {
    let pki = pki();
    let upstream = https_upstream(&pki).await;
    let url = format!("https://{}", upstream.addr);
    let gate = TlsGate::start(&url, Some(&pki.ca_pem), "").await;
    let reader = gate.token("tls-user", &["read"]).await;
    // One client connection, so that its upstream connection is kept for it: a pooling
    // client may open a second connection when the first is not yet back in its pool.
    let stream = TcpStream::connect(gate.addr).await.unwrap();
    let (mut client, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for _ in 0..3 {
        let request = Request::get("/api/posts/1")
            .header("host", gate.addr.to_string())
            .header("authorization", format!("Bearer {reader}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        client.ready().await.unwrap();
        let response = client.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["version"], "HTTP/1.1");
        assert_eq!(json["path"], "/api/posts/1");
        assert_eq!(json["headers"]["x-token-abilities"], "read");
        assert_eq!(json["headers"]["x-auth-user"], "tls-user");
        assert!(json["headers"].get("authorization").is_none());
    }
    // One TLS connection served the three requests, speaking HTTP/1.1.
    assert_eq!(
        *upstream.alpn.lock().unwrap(),
        vec![Some("http/1.1".to_owned())]
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_an_untrusted_certificate_is_a_502() {
    let pki = pki();
    let upstream = https_upstream(&pki).await;
    let url = format!("https://{}", upstream.addr);
    // The system's roots only: the private CA is unknown.
    let gate = TlsGate::start(&url, None, "").await;
    let reader = gate.token("u", &["read"]).await;
    let answer = HttpClient::http1()
        .get_bearer(&gate.url("/api/posts/1"), &reader)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(
        upstream.alpn.lock().unwrap().is_empty(),
        "no handshake completed"
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_to_the_upstream() {
    let pki = pki();
    let upstream = https_upstream(&pki).await;
    let url = format!("https://{}", upstream.addr);
    let gate = TlsGate::start(&url, Some(&pki.ca_pem), "upstream_http2: true\n").await;
    let reader = gate.token("h2-user", &["read"]).await;
    for client in [HttpClient::http1(), HttpClient::http2()] {
        for _ in 0..2 {
            let answer = client.get_bearer(&gate.url("/api/posts/7"), &reader).await;
            assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
            let json = answer.json();
            assert_eq!(json["version"], "HTTP/2.0");
            assert_eq!(json["path"], "/api/posts/7");
            assert_eq!(
                answer.upstream_header("x-token-abilities").as_deref(),
                Some("read")
            );
        }
    }
    assert_eq!(*upstream.alpn.lock().unwrap(), vec![Some("h2".to_owned())]);
    gate.stop().await;
}

/// A WebSocket upstream over TLS that answers every text message with `echo: TEXT`.
async fn wss_upstream(pki: &Pki) -> TlsUpstream {
    tls_upstream(pki, |stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let reply = format!("echo: {text}");
                if ws.send(Message::Text(reply.into())).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_reach_an_http2_tls_upstream_over_http1() {
    let pki = pki();
    let upstream = wss_upstream(&pki).await;
    let url = format!("https://{}", upstream.addr);
    let gate = TlsGate::start(&url, Some(&pki.ca_pem), "upstream_http2: true\n").await;
    let reader = gate.token("u", &["read"]).await;
    let request = common::ws_request(gate.addr, "/ws/chat", &reader);
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::Text("hello".into())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a reply")
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::Text("echo: hello".into()));
    ws.close(None).await.unwrap();
    assert_eq!(
        *upstream.alpn.lock().unwrap(),
        vec![Some("http/1.1".to_owned())]
    );
    gate.stop().await;
}
