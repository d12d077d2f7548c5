//! Bodies stream both ways through tokengate: a large upload reaches the upstream while the
//! client is still sending, and a slow chunked answer reaches the client chunk by chunk.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

/// A body fed chunk by chunk through a channel; it ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// An upstream with two endpoints: `/upload` counts bytes as they arrive (visible in
/// `received`), `/slow` sends "first", then waits for `release` before "second".
struct StreamUpstream {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    release: Arc<Notify>,
}

async fn stream_upstream() -> StreamUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let release = Arc::new(Notify::new());
    let (r, n) = (received.clone(), release.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (received, release) = (r.clone(), n.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (received, release) = (received.clone(), release.clone());
                    async move {
                        let (tx, rx) = mpsc::channel::<Bytes>(4);
                        if request.uri().path() == "/upload" {
                            let mut body = request.into_body();
                            while let Some(Ok(frame)) = body.frame().await {
                                if let Some(data) = frame.data_ref() {
                                    received.fetch_add(data.len() as u64, Ordering::SeqCst);
                                }
                            }
                            let total = received.load(Ordering::SeqCst);
                            tx.send(Bytes::from(total.to_string())).await.unwrap();
                        } else {
                            tokio::spawn(async move {
                                tx.send(Bytes::from_static(b"first")).await.unwrap();
                                release.notified().await;
                                tx.send(Bytes::from_static(b"second")).await.unwrap();
                            });
                        }
                        Ok::<_, Infallible>(Response::new(ChannelBody(rx)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    StreamUpstream {
        addr,
        received,
        release,
    }
}

async fn gate_in_front_of(upstream: &StreamUpstream) -> Gate {
    let echo = tokengate::echo::Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    Gate::start_with_upstream(upstream.addr, echo, STANDARD).await
}

/// `GET /slow` through the gate: its 200's body, still streaming.
async fn get_slow(gate: &Gate, token: &str) -> Incoming {
    let client: Client<_, http_body_util::Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(gate.url("/slow"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_upload_streams_to_the_upstream() {
    let upstream = stream_upstream().await;
    let gate = gate_in_front_of(&upstream).await;
    let token = gate.token("u", &["read"]).await;
    let client: Client<_, ChannelBody> = Client::builder(TokioExecutor::new()).build_http();
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let request = Request::post(gate.url("/upload"))
        .header("authorization", format!("Bearer {token}"))
        .body(ChannelBody(rx))
        .unwrap();
    let response = tokio::spawn(client.request(request));

    let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
    for _ in 0..10 {
        tx.send(chunk.clone()).await.unwrap();
    }
    // Half sent, the body not finished: the upstream must already be receiving it.
    let received = upstream.received.clone();
    eventually("the upstream receives the first half", || {
        received.load(Ordering::SeqCst) >= 5 * 1024 * 1024
    })
    .await;
    for _ in 0..10 {
        tx.send(chunk.clone()).await.unwrap();
    }
    drop(tx);
    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, (20 * 1024 * 1024).to_string());
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_streaming_longer_than_the_idle_timeout_is_not_cut() {
    // A connection with a response still streaming is busy, not idle.
    let upstream = stream_upstream().await;
    let echo = tokengate::echo::Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let config =
        format!("{STANDARD}timeouts:\n  client_header_seconds: 0.3\n  idle_seconds: 0.3\n");
    let gate = Gate::start_with_upstream(upstream.addr, echo, &config).await;
    let token = gate.token("u", &["read"]).await;
    let mut body = get_slow(&gate, &token).await;
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    // Five idle timeouts pass while the upstream holds the rest back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    upstream.release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the rest arrives")
        .expect("the connection was not closed under the response");
    assert_eq!(rest.to_bytes(), "second");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_chunked_answer_streams_back() {
    let upstream = stream_upstream().await;
    let gate = gate_in_front_of(&upstream).await;
    let token = gate.token("u", &["read"]).await;
    let mut body = get_slow(&gate, &token).await;
    // The upstream has sent only "first" and waits: we must get it now.
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first chunk arrives before the upstream finishes")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    upstream.release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
    gate.stop().await;
}
