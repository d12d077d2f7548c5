//! Timeouts and limits over real sockets: upstream connect (502) and response (504)
//! timeouts, the slowloris guard, the idle keep-alive timeout (and a busy connection
//! outliving it), the request head size (431) and the connection limit.

mod common;

use common::{Echo, Gate, HttpClient, STANDARD};
use http::StatusCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Reads until the server closes the connection (or `limit` passes); returns what came
/// and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

fn with(extra: &str) -> String {
    format!("{STANDARD}{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_answer_gets_504() {
    // Accepts connections and reads requests, but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let gate = Gate::start_with_upstream(
        addr,
        Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        &with("timeouts:\n  upstream_response_seconds: 0.5\n"),
    )
    .await;
    let reader = gate.token("u", &["read"]).await;
    let started = Instant::now();
    let answer = HttpClient::http1()
        .get_bearer(&gate.url("/api/posts/1"), &reader)
        .await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        answer.json(),
        serde_json::json!({"message": "The upstream service did not answer in time."})
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cannot_be_reached_in_time_gets_502() {
    // A listener whose accept queue is full and never drained: new connection attempts
    // hang (the kernel drops their SYNs), as with a firewalled host.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    const BACKLOG: usize = 1;
    let full = socket.listen(BACKLOG as u32).unwrap();
    let addr = full.local_addr().unwrap();
    // Connections until the kernel's count of the queue says it is full (Linux takes one
    // more than the backlog).
    let queued = || {
        common::tcp_sockets()
            .into_iter()
            .find(|s| s.listening && s.local == addr)
            .expect("the listener in /proc/net/tcp")
            .rx_queue as usize
    };
    let mut fillers = Vec::new();
    while queued() <= BACKLOG {
        let filler = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .expect("a queue with room takes a connection")
            .unwrap();
        fillers.push(filler);
        common::eventually("the kernel queues the connection", || {
            queued() == fillers.len()
        })
        .await;
    }
    let gate = Gate::start_with_upstream(
        addr,
        Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        &with("timeouts:\n  upstream_connect_seconds: 0.5\n"),
    )
    .await;
    let reader = gate.token("u", &["read"]).await;
    let started = Instant::now();
    let answer = HttpClient::http1()
        .get_bearer(&gate.url("/api/posts/1"), &reader)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "refused at once ({took:?}): the connection attempt did not hang"
    );
    assert!(took < Duration::from_secs(5), "the connect timeout applies");
    drop(full);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_off() {
    let gate = Gate::start(&with("timeouts:\n  client_header_seconds: 0.5\n")).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(
        closed,
        "the server closes a connection whose head never completes"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Others are served meanwhile.
    let answer = HttpClient::http1().get(&gate.url("/healthz"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let gate = Gate::start(&with("timeouts:\n  idle_seconds: 0.5\n")).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Closed after about the idle time, neither at once nor after the 10 s the test waits,
    // and with nothing more sent on it.
    let idle_from = Instant::now();
    let (rest, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let stayed_open = idle_from.elapsed();
    assert!(closed, "idle connection closed");
    assert!(
        rest.is_empty(),
        "nothing after the answer: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        stayed_open >= Duration::from_millis(400) && stayed_open < Duration::from_secs(5),
        "closed after {stayed_open:?} idle (idle_seconds: 0.5)"
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_in_steady_use_outlives_the_idle_timeout() {
    // The timeout bounds the quiet time between requests, not a connection's age.
    let gate = Gate::start(&with("timeouts:\n  idle_seconds: 0.5\n")).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(2000) {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "request {answered} on the connection: {}",
            String::from_utf8_lossy(&buf[..n])
        );
        answered += 1;
        // Real time is the point: quiet gaps shorter than the idle timeout.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(answered >= 5);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_limit_gets_431() {
    let gate = Gate::start(&with("limits:\n  max_header_bytes: 8192\n")).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let big = "x".repeat(20_000);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let (got, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // A normal request still works.
    let answer = HttpClient::http1().get(&gate.url("/healthz"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        gate.echo.seen().len() == 1,
        "the big one never reached the upstream"
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_their_turn() {
    let gate = Gate::start(&with("limits:\n  max_connections: 2\n")).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = TcpStream::connect(gate.addr).await.unwrap();
    let mut second = TcpStream::connect(gate.addr).await.unwrap();
    let mut buf = [0u8; 4096];
    for stream in [&mut first, &mut second] {
        stream.write_all(request).await.unwrap();
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    // The third connects (the kernel queues it) but is not served while two are open.
    let mut third = TcpStream::connect(gate.addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(waited.is_err(), "served past the limit");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    gate.stop().await;
}

/// An upstream on 127.0.0.1:0 that, for each connection, reads the request head, writes
/// `answer`, and then holds the connection open without a word; it reports when tokengate
/// closes a connection (`closed` receives once per connection).
async fn holding_upstream(
    answer: &'static [u8],
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(answer).await;
                // Hold on, reading (and dropping) whatever comes, until tokengate closes.
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = closed_tx.send(());
            });
        }
    });
    (addr, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_that_stalls_is_cut_and_its_connection_closed() {
    let (addr, mut closed) = holding_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nthe first part, and then nothing",
    )
    .await;
    let gate = Gate::start_with_upstream(
        addr,
        Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        &with("timeouts:\n  upstream_body_idle_seconds: 0.5\n"),
    )
    .await;
    let reader = gate.token("u", &["read"]).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    let request =
        format!("GET /api/posts/1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {reader}\r\n\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (got, cut) = read_until_closed(&mut client, Duration::from_secs(10)).await;
    assert!(cut, "the client's connection was not cut");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("then nothing"),
        "{got}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "{took:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the upstream connection was closed");
    assert_eq!(
        gate.metric(r#"tokengate_connections_closed_total{reason="upstream_body"}"#),
        1.0
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_lets_go_of_the_upstream_connection() {
    // A long answer the client never reads: the socket buffers fill, tokengate's writes
    // stop, and after the limit the connections on both sides are closed.
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let big = BIG.get_or_init(|| {
        let body = vec![b'x'; 64 * 1024 * 1024];
        let mut answer =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        answer.extend_from_slice(&body);
        answer
    });
    let (addr, mut closed) = holding_upstream(big).await;
    let gate = Gate::start_with_upstream(
        addr,
        Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        &with("timeouts:\n  client_send_seconds: 0.5\n"),
    )
    .await;
    let reader = gate.token("u", &["read"]).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(gate.addr).await.unwrap();
    let request =
        format!("GET /api/posts/1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {reader}\r\n\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    // Never read: the upstream connection is let go within a few seconds.
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the upstream connection was let go");
    assert_eq!(
        gate.metric(r#"tokengate_connections_closed_total{reason="client_send"}"#),
        1.0
    );
    drop(client);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_gets_408_and_the_upstream_connection_closes() {
    let (addr, mut closed) = holding_upstream(b"").await;
    let gate = Gate::start_with_upstream(
        addr,
        Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        &with("timeouts:\n  client_body_seconds: 0.5\n"),
    )
    .await;
    let reader = gate.token("u", &["create"]).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    // `/upload` takes every method alike: the body goes upstream as it comes.
    let request = format!(
        "POST /upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {reader}\r\ncontent-length: 100\r\n\r\na first byte"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (got, _) = read_until_closed(&mut client, Duration::from_secs(10)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        got.contains("The request body did not arrive in time."),
        "{got}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the upstream connection was closed");
    // A POST whose body is read before the decision (its path's routes depend on the
    // method) gets the same 408, and never reaches the upstream.
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    let request = format!(
        "POST /api/posts HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {reader}\r\n\
         content-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\na=1"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let (got, _) = read_until_closed(&mut client, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"));
    gate.stop().await;
}
