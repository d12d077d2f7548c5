//! The soak driver of `bench/soak.sh`: drives a running tokengate on loopback with every
//! kind of traffic at once for a number of minutes and fails if a single answer is not the
//! expected one, if its RSS grew more than 10 % (or 3 MiB, the larger) past warm-up, or
//! if it holds more file
//! descriptors at the end than at the start. It serves the upstream itself (HTTP, an 8 MiB
//! upload sink, large and slow bodies, server-sent events, WebSocket echo) and restarts it
//! twice; it reloads tokengate's config twice and runs a token revocation storm every
//! 15 seconds through the admin API.
//!
//! Two phases: a warm-up (every kind of traffic, a storm, a reload and a restart), then the
//! run. After each, the load stops, its connections close and RSS settles; those two RSS
//! figures are compared, so that memory in use by the load itself is never taken for a
//! leak, and memory kept after it always is.
//!
//! Not a user-facing tool: `bench/soak.sh` sets tokengate up and passes everything here:
//! `soak --minutes M --proxy ADDR --admin ADDR --upstream ADDR --pid PID --config FILE`
//! with `TOKENGATE_ADMIN_KEY` in the environment.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Growth past warm-up that is never taken for a leak: on an ~18 MiB process 10 % is
/// 1.8 MiB, within what the allocator's arenas and thread caches move by in a one-minute
/// run (the test command's: +4.4 to +9.8 % over ten runs, a leak-free binary). A leak of
/// 40 bytes a request passes 3 MiB within the minute's run; slower ones are the 30-minute
/// soak's to find, where 10 % is the larger.
const RSS_SLACK_KIB: u64 = 3 * 1024;

const UPLOAD: usize = 8 << 20;
const BIG: usize = 16 << 20;
/// `timeouts.client_send_seconds` in the config `bench/soak.sh` writes.
const CLIENT_SEND: Duration = Duration::from_secs(3);
const STORM_EVERY: Duration = Duration::from_secs(15);
const STORM_TOKENS: usize = 100;
/// The most threads tokengate may run at once.
const MAX_THREADS: u64 = 64;

#[derive(Clone)]
struct Args {
    minutes: f64,
    proxy: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    pid: u32,
    config: PathBuf,
    admin_key: String,
}

fn args() -> Args {
    let mut map = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        map.insert(k.trim_start_matches("--").to_owned(), v);
    }
    let get = |k: &str| {
        map.get(k)
            .unwrap_or_else(|| panic!("--{k} is required"))
            .clone()
    };
    Args {
        minutes: get("minutes").parse().expect("--minutes: a number"),
        proxy: get("proxy").parse().expect("--proxy: IP:port"),
        admin: get("admin").parse().expect("--admin: IP:port"),
        upstream: get("upstream").parse().expect("--upstream: IP:port"),
        pid: get("pid").parse().expect("--pid: a number"),
        config: get("config").into(),
        admin_key: std::env::var("TOKENGATE_ADMIN_KEY").expect("TOKENGATE_ADMIN_KEY"),
    }
}

/// What happened: answers by kind and status, and every unexpected one.
#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<Vec<String>>,
    failed: AtomicU64,
    /// When the upstream was down (start, end), for answers that overlap a restart.
    restarts: Mutex<Vec<(Instant, Option<Instant>)>>,
}

impl Tally {
    fn count(&self, what: impl Into<String>) {
        *self.lock_counts().entry(what.into()).or_insert(0) += 1;
    }

    fn restarted(&self) -> u64 {
        self.lock_counts()
            .get("upstream restarted")
            .copied()
            .unwrap_or(0)
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.counts.lock().unwrap()
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 50 {
            eprintln!("FAIL {what}");
            failures.push(what);
        }
    }

    /// Whether something sent at `sent` and settled now overlaps an upstream restart
    /// (with two seconds for connections it broke to be noticed).
    fn during_restart(&self, sent: Instant) -> bool {
        let now = Instant::now();
        self.restarts.lock().unwrap().iter().any(|(start, end)| {
            let end = end.map_or(now, |e| e + Duration::from_secs(2));
            sent <= end && now >= *start
        })
    }

    /// Checks an outcome: one of `want`, or (during an upstream restart) a 502/503/504 or
    /// a broken connection.
    fn check(&self, kind: &str, sent: Instant, got: Result<u16, String>, want: &[u16]) -> bool {
        match got {
            Ok(status) if want.contains(&status) => {
                self.count(format!("{kind} {status}"));
                return true;
            }
            Ok(status @ (502..=504)) if self.during_restart(sent) => {
                self.count(format!("{kind} {status} (upstream restarting)"))
            }
            Err(_) if self.during_restart(sent) => {
                self.count(format!("{kind} broken (upstream restarting)"))
            }
            Ok(status) => self.fail(format!("{kind}: {status}, expected {want:?}")),
            Err(e) => self.fail(format!("{kind}: {e}")),
        }
        false
    }
}

// ---------------------------------------------------------------------------------------
// The upstream

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> UpBody {
    Full::new(body.into()).boxed()
}

/// A body of `frames` produced by `next`, one every `every`.
fn stream_body(
    frames: usize,
    every: Duration,
    next: impl Fn(usize) -> Bytes + Send + 'static,
) -> UpBody {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    tokio::spawn(async move {
        for i in 0..frames {
            if tx.send(Ok(Frame::data(next(i)))).await.is_err() {
                return;
            }
            if !every.is_zero() {
                tokio::time::sleep(every).await;
            }
        }
    });
    BodyExt::boxed(StreamBody::new(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })))
}

async fn answer(mut request: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let size = query
        .strip_prefix("size=")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(512);
    let response = if path.starts_with("/ws/") {
        let key = request
            .headers()
            .get("sec-websocket-key")
            .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()));
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() && ws.send(message).await.is_err() {
                    return;
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", key.unwrap_or_default())
            .body(full(""))
    } else if path == "/events" {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(stream_body(100, Duration::from_millis(100), |i| {
                Bytes::from(format!("data: {i}\n\n"))
            }))
    } else if path == "/api/upload" {
        let mut received = 0;
        let mut body = request.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            received += frame.data_ref().map_or(0, Bytes::len);
        }
        Response::builder().body(full(format!("len={received}")))
    } else if path == "/api/big" {
        let chunk = Bytes::from(vec![b'b'; 64 << 10]);
        Response::builder()
            .header("content-length", size.to_string())
            .body(stream_body(size / chunk.len(), Duration::ZERO, move |_| {
                chunk.clone()
            }))
    } else {
        let abilities = request
            .headers()
            .get("x-token-abilities")
            .cloned()
            .unwrap_or(http::HeaderValue::from_static("-"));
        let status = if request.method() == Method::POST {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Response::builder()
            .status(status)
            .header("x-seen-abilities", abilities)
            .body(full(vec![b'x'; 512]))
    };
    Ok(response.expect("a valid response"))
}

/// Serves the upstream on `addr` until `stop` is set; then closes every connection.
async fn upstream(addr: SocketAddr, stop: Arc<AtomicBool>) {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("the upstream port is free");
    let listener = socket.listen(1024).expect("listen");
    let mut connections = JoinSet::new();
    while !stop.load(Ordering::Acquire) {
        let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        let Ok(Ok((stream, _))) = accepted else {
            continue;
        };
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .with_upgrades()
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}

// ---------------------------------------------------------------------------------------
// Clients

type Http = Client<HttpConnector, Full<Bytes>>;

struct Soak {
    args: Args,
    http: Http,
    tally: Arc<Tally>,
    tokens: Vec<String>,
    session: String,
    xsrf: String,
    until: Instant,
}

impl Soak {
    fn running(&self) -> bool {
        Instant::now() < self.until
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.args.proxy)
    }

    fn token(&self) -> &str {
        &self.tokens[rand::random_range(0..self.tokens.len())]
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response<Incoming>, String> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(30), self.http.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(format!("{e:?}")),
            Err(_) => Err("no answer within 30 s".into()),
        }
    }

    /// Sends, reads the whole body, checks the status; the body if all went well.
    async fn call(
        &self,
        kind: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        want: &[u16],
    ) -> Option<(Response<()>, Bytes)> {
        let sent = Instant::now();
        let answered = async {
            let response = self.send(method, &self.url(path), headers, body).await?;
            let (head, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| format!("body: {e}"))?;
            Ok::<_, String>((Response::from_parts(head, ()), body.to_bytes()))
        }
        .await;
        let status = answered
            .as_ref()
            .map(|(r, _)| r.status().as_u16())
            .map_err(Clone::clone);
        self.tally
            .check(kind, sent, status, want)
            .then(|| answered.ok())
            .flatten()
    }

    /// `call` for a GET with a bearer token.
    async fn get_bearer(
        &self,
        kind: &str,
        path: &str,
        token: &str,
        want: &[u16],
    ) -> Option<(Response<()>, Bytes)> {
        let bearer = format!("Bearer {token}");
        let headers = [("authorization", bearer.as_str())];
        self.call(kind, Method::GET, path, &headers, Bytes::new(), want)
            .await
    }

    async fn valid_tokens(&self) {
        while self.running() {
            let path = format!("/api/items/{}", rand::random_range(0..1000));
            let answer = self
                .get_bearer("valid token", &path, self.token(), &[200])
                .await;
            if let Some((head, body)) = answer {
                if body.len() != 512 || head.headers()["x-seen-abilities"] != "create,read" {
                    self.tally
                        .fail(format!("valid token: wrong answer {:?}", head.headers()));
                }
            }
        }
    }

    async fn made_up_tokens(&self) {
        while self.running() {
            let made_up = match rand::random_range(0..3) {
                0 => format!(
                    "{}|tg_{:040x}",
                    rand::random_range(1..100_000),
                    rand::random::<u128>()
                ),
                1 => format!("tg_{:040x}", rand::random::<u128>()),
                _ => format!("{}x", self.token()),
            };
            self.get_bearer("made-up token", "/api/items/1", &made_up, &[401])
                .await;
        }
    }

    async fn sessions(&self) {
        let cookie = format!("tokengate_session={}", self.session);
        while self.running() {
            let with_cookie = [("cookie", cookie.as_str())];
            self.call(
                "session GET",
                Method::GET,
                "/app/notes",
                &with_cookie,
                Bytes::new(),
                &[200],
            )
            .await;
            let with_xsrf = [
                ("cookie", cookie.as_str()),
                ("x-xsrf-token", self.xsrf.as_str()),
            ];
            self.call(
                "session POST with XSRF",
                Method::POST,
                "/app/notes",
                &with_xsrf,
                Bytes::from("{}"),
                &[201],
            )
            .await;
            self.call(
                "session POST without XSRF",
                Method::POST,
                "/app/notes",
                &with_cookie,
                Bytes::from("{}"),
                &[419],
            )
            .await;
        }
    }

    async fn open_ws(&self, token: &str) -> Result<Ws, String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}/ws/echo", self.args.proxy)
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let bearer = format!("Bearer {token}").parse().map_err(|_| "token")?;
        request.headers_mut().insert("authorization", bearer);
        let connect = tokio_tungstenite::connect_async(request);
        match tokio::time::timeout(Duration::from_secs(30), connect).await {
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no handshake within 30 s".into()),
        }
    }

    async fn websockets(&self) {
        while self.running() {
            let sent = Instant::now();
            let outcome = async {
                let mut ws = self.open_ws(self.token()).await?;
                for i in 0..5 {
                    let text = format!("message {i}");
                    ws.send(Message::Text(text.clone().into()))
                        .await
                        .map_err(|e| e.to_string())?;
                    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => {}
                        other => return Err(format!("echo: {other:?}")),
                    }
                }
                ws.close(None).await.map_err(|e| e.to_string())?;
                Ok(101)
            }
            .await;
            self.tally.check("websocket session", sent, outcome, &[101]);
        }
    }

    /// Opens an event stream; the response if it is one.
    async fn open_events(&self, token: &str) -> Result<Incoming, String> {
        let bearer = format!("Bearer {token}");
        let response = self
            .send(
                Method::GET,
                &self.url("/events"),
                &[("authorization", &bearer)],
                Bytes::new(),
            )
            .await?;
        if response.status() != StatusCode::OK {
            return Err(format!("status {}", response.status()));
        }
        Ok(response.into_body())
    }

    async fn event_streams(&self) {
        while self.running() {
            let sent = Instant::now();
            let outcome = async {
                let mut events = self.open_events(self.token()).await?;
                for _ in 0..5 {
                    match tokio::time::timeout(Duration::from_secs(10), events.frame()).await {
                        Ok(Some(Ok(f)))
                            if f.data_ref().is_some_and(|d| d.starts_with(b"data: ")) => {}
                        other => return Err(format!("event: {other:?}")),
                    }
                }
                Ok(200)
            }
            .await;
            self.tally.check("event stream", sent, outcome, &[200]);
        }
    }

    async fn uploads(&self) {
        let body = Bytes::from(vec![b'u'; UPLOAD]);
        while self.running() {
            let bearer = format!("Bearer {}", self.token());
            let answer = self
                .call(
                    "8 MiB upload",
                    Method::POST,
                    "/api/upload",
                    &[
                        ("authorization", &bearer),
                        // Without a type, Rack reads a POST's body as a form, and so
                        // does tokengate's method-override check.
                        ("content-type", "application/octet-stream"),
                    ],
                    body.clone(),
                    &[200],
                )
                .await;
            if let Some((_, got)) = answer {
                if got != format!("len={UPLOAD}") {
                    self.tally.fail(format!("upload: the upstream got {got:?}"));
                }
            }
        }
    }

    /// A client that reads a 2 MiB answer 16 KiB at a time, 20 ms apart.
    async fn slow_readers(&self) {
        while self.running() {
            let sent = Instant::now();
            let outcome = async {
                let bearer = format!("Bearer {}", self.token());
                let path = format!("/api/big?size={}", 2 << 20);
                let response = self
                    .send(
                        Method::GET,
                        &self.url(&path),
                        &[("authorization", &bearer)],
                        Bytes::new(),
                    )
                    .await?;
                let mut body = response.into_body();
                let mut got = 0;
                while let Some(frame) = body.frame().await {
                    got += frame
                        .map_err(|e| e.to_string())?
                        .data_ref()
                        .map_or(0, Bytes::len);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if got == 2 << 20 {
                    Ok(200)
                } else {
                    Err(format!("{got} bytes of {}", 2 << 20))
                }
            }
            .await;
            self.tally.check("slow reader", sent, outcome, &[200]);
        }
    }

    /// A client that asks for 16 MiB and reads nothing: tokengate must drop it after
    /// `timeouts.client_send_seconds`.
    async fn stuck_clients(&self) {
        while self.running() {
            let sent = Instant::now();
            let outcome = async {
                let mut stream = TcpStream::connect(self.args.proxy).await.map_err(|e| e.to_string())?;
                let head = format!(
                    "GET /api/big?size={BIG} HTTP/1.1\r\nhost: soak\r\nauthorization: Bearer {}\r\n\r\n",
                    self.token()
                );
                stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
                tokio::time::sleep(CLIENT_SEND * 3).await;
                let mut buf = vec![0; 1 << 20];
                let mut got = 0;
                let drained = tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                    }
                })
                .await;
                match drained {
                    Ok(()) if got < BIG => Ok(200),
                    Ok(()) => Err("a stuck client got the whole answer".to_owned()),
                    Err(_) => Err("a stuck client was never disconnected".to_owned()),
                }
            }
            .await;
            self.tally
                .check("stuck client disconnected", sent, outcome, &[200]);
        }
    }

    /// A client that reads a little of a 16 MiB answer and goes away.
    async fn quitters(&self) {
        while self.running() {
            let sent = Instant::now();
            let outcome = async {
                let bearer = format!("Bearer {}", self.token());
                let path = format!("/api/big?size={BIG}");
                let response = self
                    .send(
                        Method::GET,
                        &self.url(&path),
                        &[("authorization", &bearer)],
                        Bytes::new(),
                    )
                    .await?;
                let status = response.status().as_u16();
                let mut body = response.into_body();
                let mut got = 0;
                while got < 100 << 10 {
                    match body.frame().await {
                        Some(Ok(frame)) => got += frame.data_ref().map_or(0, Bytes::len),
                        other => return Err(format!("body: {other:?}")),
                    }
                }
                Ok(status)
            }
            .await;
            self.tally
                .check("disconnect mid-answer", sent, outcome, &[200]);
        }
    }

    async fn admin(
        &self,
        method: Method,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(u16, serde_json::Value), String> {
        let key = format!("Bearer {}", self.args.admin_key);
        let url = format!("http://{}{path}", self.args.admin);
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let response = self
            .send(
                method,
                &url,
                &[
                    ("authorization", &key),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// Every `STORM_EVERY`: 100 new tokens, in use by requests, WebSockets and event
    /// streams, revoked all at once; then each must be refused and each stream ended.
    async fn revocation_storms(&self) {
        let mut round = 0;
        while self.running() {
            let next = Instant::now() + STORM_EVERY;
            round += 1;
            let mut tokens = Vec::new();
            for i in 0..STORM_TOKENS {
                let request = serde_json::json!({"user": "storm", "name": format!("storm {round} {i}"), "abilities": ["read"]});
                match self.admin(Method::POST, "/admin/tokens", request).await {
                    Ok((201, created)) => tokens.push((
                        created["token"]["id"].as_u64().unwrap_or_default(),
                        created["plaintext"].as_str().unwrap_or_default().to_owned(),
                    )),
                    other => {
                        return self
                            .tally
                            .fail(format!("storm: creating a token: {other:?}"))
                    }
                }
            }
            let sent = Instant::now();
            let mut streams = Vec::new();
            for (_, token) in tokens.iter().take(3) {
                match (self.open_ws(token).await, self.open_events(token).await) {
                    (Ok(ws), Ok(events)) => streams.push((ws, events)),
                    (ws, events) => {
                        self.tally.check(
                            "storm stream",
                            sent,
                            Err(format!("{:?} {:?}", ws.err(), events.err())),
                            &[],
                        );
                    }
                }
            }
            for (_, token) in &tokens {
                self.get_bearer("storm token before", "/api/items/1", token, &[200])
                    .await;
            }
            let revoked = futures_util::future::join_all(tokens.iter().map(|(id, _)| async move {
                let path = format!("/admin/tokens/{id}");
                self.admin(Method::DELETE, &path, serde_json::Value::Null)
                    .await
            }))
            .await;
            for outcome in revoked {
                if !matches!(outcome, Ok((204, _))) {
                    self.tally.fail(format!("storm: revoking: {outcome:?}"));
                }
            }
            let revoked_at = Instant::now();
            for (mut ws, mut events) in streams {
                let closed = tokio::time::timeout(Duration::from_secs(3), async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Close(Some(frame)))) => {
                                return frame.code == CloseCode::Policy
                            }
                            Some(Ok(_)) => {}
                            _ => return false,
                        }
                    }
                })
                .await;
                let outcome = match closed {
                    Ok(true) => Ok(1008),
                    other => Err(format!("websocket of a revoked token: {other:?}")),
                };
                self.tally
                    .check("storm websocket closed", sent, outcome, &[1008]);
                let ended = tokio::time::timeout(Duration::from_secs(3), async {
                    while let Some(frame) = events.frame().await {
                        if frame.is_err() {
                            return false;
                        }
                    }
                    true
                })
                .await;
                let outcome = match ended {
                    Ok(true) => Ok(200),
                    other => Err(format!("event stream of a revoked token: {other:?}")),
                };
                self.tally
                    .check("storm event stream ended", sent, outcome, &[200]);
            }
            self.tally.count(format!(
                "storm streams ended within {:?}",
                revoked_at.elapsed().as_secs().max(1)
            ));
            for (_, token) in &tokens {
                self.get_bearer("storm token after", "/api/items/1", token, &[401])
                    .await;
            }
            tokio::time::sleep_until(next.min(self.until).into()).await;
        }
    }

    /// Adds a public route to the config file and reloads; the route must then answer.
    async fn reload(&self, n: usize) {
        let config = std::fs::read_to_string(&self.args.config).expect("the config file");
        let route = format!("routes:\n  - path: /reloaded-{n}/**\n    auth: none\n");
        std::fs::write(&self.args.config, config.replacen("routes:\n", &route, 1))
            .expect("writable config");
        match self
            .admin(Method::POST, "/admin/reload", serde_json::Value::Null)
            .await
        {
            Ok((200, _)) => self.tally.count("config reload 200"),
            other => self.tally.fail(format!("config reload: {other:?}")),
        }
        self.call(
            "reloaded route",
            Method::GET,
            &format!("/reloaded-{n}/x"),
            &[],
            Bytes::new(),
            &[200],
        )
        .await;
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

// ---------------------------------------------------------------------------------------
// The process watched

#[derive(Clone, Copy)]
struct Sample {
    at: f64,
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

fn sample(pid: u32, started: Instant) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    Sample {
        at: started.elapsed().as_secs_f64(),
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
    }
}

async fn setup(args: &Args, http: &Http) -> (Vec<String>, String, String) {
    let probe = Soak {
        args: args.clone(),
        http: http.clone(),
        tally: Arc::default(),
        tokens: Vec::new(),
        session: String::new(),
        xsrf: String::new(),
        until: Instant::now(),
    };
    let mut tokens = Vec::new();
    for i in 0..50 {
        let request = serde_json::json!({"user": format!("u{}", i % 10), "name": format!("soak {i}"), "abilities": ["read", "create"]});
        let (status, created) = probe
            .admin(Method::POST, "/admin/tokens", request)
            .await
            .expect("the admin API");
        assert_eq!(status, 201, "creating a token: {created}");
        tokens.push(
            created["plaintext"]
                .as_str()
                .expect("a plaintext")
                .to_owned(),
        );
    }
    let (status, _) = probe
        .admin(
            Method::POST,
            "/admin/users",
            serde_json::json!({"name": "alice"}),
        )
        .await
        .expect("the admin API");
    assert!(status == 201 || status == 409, "adding alice: {status}");
    let (status, minted) = probe
        .admin(
            Method::POST,
            "/admin/sessions",
            serde_json::json!({"user": "alice"}),
        )
        .await
        .expect("the admin API");
    assert_eq!(status, 201, "minting a session: {minted}");
    let session = minted["cookie"]["value"]
        .as_str()
        .expect("a cookie value")
        .to_owned();
    let cookie = format!("tokengate_session={session}");
    let response = probe
        .send(
            Method::GET,
            &probe.url("/_tokengate/csrf-cookie"),
            &[("cookie", &cookie)],
            Bytes::new(),
        )
        .await
        .expect("the CSRF cookie");
    let xsrf = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("XSRF-TOKEN="))
        .and_then(|v| v.split(';').next())
        .expect("an XSRF-TOKEN cookie");
    let xsrf = percent_encoding::percent_decode_str(xsrf)
        .decode_utf8_lossy()
        .into_owned();
    (tokens, session, xsrf)
}

/// A client for one phase: dropped with it, so that its idle connections close.
fn client() -> Http {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

/// Every kind of traffic at once, until `soak.until`.
fn spawn_load(soak: &Arc<Soak>) -> JoinSet<()> {
    let mut load = JoinSet::new();
    let only = std::env::var("SOAK_ONLY").unwrap_or_default();
    macro_rules! drive {
        ($n:expr, $method:ident) => {
            let wanted = only.is_empty() || only.split(',').any(|k| k == stringify!($method));
            for _ in 0..if wanted { $n } else { 0 } {
                let soak = Arc::clone(soak);
                load.spawn(async move { soak.$method().await });
            }
        };
    }
    drive!(6, valid_tokens);
    drive!(2, made_up_tokens);
    drive!(2, sessions);
    drive!(2, websockets);
    drive!(2, event_streams);
    drive!(1, uploads);
    drive!(1, slow_readers);
    drive!(1, stuck_clients);
    drive!(1, quitters);
    drive!(1, revocation_storms);
    load
}

/// Waits for the load to end, closes its client's connections and lets tokengate close
/// its own and return freed memory (jemalloc's decay is a second): at least 3 s, until
/// RSS moves less than 0.5 % in half a second (at most 10 s).
async fn settle(mut load: JoinSet<()>, soak: Arc<Soak>) {
    while load.join_next().await.is_some() {}
    let pid = soak.args.pid;
    drop(Arc::into_inner(soak).expect("every task ended"));
    let started = Instant::now();
    let mut last = sample(pid, started).rss_kib;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sample(pid, started).rss_kib;
        if now.abs_diff(last) * 200 < last && started.elapsed() >= Duration::from_secs(3) {
            return;
        }
        last = now;
    }
}

fn mean_rss_mib(samples: &[Sample]) -> f64 {
    let sum: u64 = samples.iter().map(|s| s.rss_kib).sum();
    sum as f64 / samples.len().max(1) as f64 / 1024.0
}

/// The upstream server, restarted on demand.
struct Upstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(upstream(addr, Arc::clone(&stop)));
        Self { addr, stop, task }
    }

    /// Stops it (every connection closes), waits 300 ms, starts it again; answers that
    /// overlap the restart may be 502s or broken connections.
    async fn restart(&mut self, tally: &Tally) {
        tally.restarts.lock().unwrap().push((Instant::now(), None));
        self.stop.store(true, Ordering::Release);
        let _ = (&mut self.task).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        *self = Self::start(self.addr);
        if let Some(last) = tally.restarts.lock().unwrap().last_mut() {
            last.1 = Some(Instant::now());
        }
        tally.count("upstream restarted");
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Event {
    Reload,
    Restart,
}

/// What happens beside the load: samples of tokengate's RSS, fds and threads, config
/// reloads and upstream restarts.
struct Timeline {
    pid: u32,
    started: Instant,
    every: Duration,
    samples: Vec<Sample>,
    reloads: usize,
    upstream: Upstream,
}

impl Timeline {
    fn sample(&mut self) -> Sample {
        let now = sample(self.pid, self.started);
        self.samples.push(now);
        now
    }

    /// One phase: a sample every `every` until its load ends, and `events` at their
    /// offsets from `begun`.
    async fn follow(&mut self, soak: &Soak, begun: Instant, mut events: Vec<(Duration, Event)>) {
        while soak.running() {
            tokio::time::sleep(self.every).await;
            self.sample();
            while let Some(&(at, event)) = events.first() {
                if begun.elapsed() < at {
                    break;
                }
                events.remove(0);
                match event {
                    Event::Reload => {
                        self.reloads += 1;
                        soak.reload(self.reloads).await;
                    }
                    Event::Restart => self.upstream.restart(&soak.tally).await,
                }
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args = args();
    let started = Instant::now();
    let fds_at_start = sample(args.pid, started).fds;
    let (tokens, session, xsrf) = setup(&args, &client()).await;
    let tally = Arc::new(Tally::default());
    let phase = |until| {
        Arc::new(Soak {
            args: args.clone(),
            http: client(),
            tally: Arc::clone(&tally),
            tokens: tokens.clone(),
            session: session.clone(),
            xsrf: xsrf.clone(),
            until,
        })
    };
    let run = Duration::from_secs_f64(args.minutes * 60.0);
    let warm_up = (run / 5).clamp(Duration::from_secs(40), Duration::from_secs(60));
    let mut timeline = Timeline {
        pid: args.pid,
        started,
        every: Duration::from_secs(if run <= Duration::from_secs(300) {
            2
        } else {
            10
        }),
        samples: Vec::new(),
        reloads: 0,
        upstream: Upstream::start(args.upstream),
    };

    // Warm-up: every kind of traffic, a revocation storm, a reload and an upstream
    // restart included; then the load stops and its connections close, and tokengate's
    // RSS is the baseline.
    let begun = Instant::now();
    let soak = phase(begun + warm_up);
    let load = spawn_load(&soak);
    let events = vec![(warm_up / 3, Event::Reload), (warm_up / 2, Event::Restart)];
    timeline.follow(&soak, begun, events).await;
    settle(load, soak).await;
    let warm_at = timeline.samples.len();
    let warm = timeline.sample();
    let restarts_before = tally.restarted();
    let reloads_before = timeline.reloads;

    // The run: the same traffic, two reloads, two upstream restarts.
    let begun = Instant::now();
    let soak = phase(begun + run);
    let load = spawn_load(&soak);
    let events = vec![
        (run / 4, Event::Reload),
        (run / 3, Event::Restart),
        (run * 2 / 3, Event::Restart),
        (run * 3 / 4, Event::Reload),
    ];
    timeline.follow(&soak, begun, events).await;
    settle(load, soak).await;
    let run_ends = timeline.samples.len();
    let settled = timeline.sample();
    let restarts = tally.restarted() - restarts_before;
    let reloads = timeline.reloads - reloads_before;
    let samples = timeline.samples;

    let tally = Arc::into_inner(tally).expect("every phase ended");
    let counts = tally.counts.into_inner().unwrap();
    let total: u64 = counts.values().sum();
    println!("# Soak report\n");
    println!(
        "A warm-up of {warm_up:?}, then {:.1} minutes; {total} outcomes\n",
        args.minutes
    );
    println!("| outcome | count |\n| --- | ---: |");
    for (what, n) in &counts {
        println!("| {what} | {n} |");
    }
    println!("\n| seconds | RSS MiB | open fds | threads |\n| ---: | ---: | ---: | ---: |");
    for (i, s) in samples.iter().enumerate() {
        let note = match i {
            i if i == warm_at => " (after warm-up, settled)",
            i if i == run_ends => " (after the run, settled)",
            _ => "",
        };
        println!(
            "| {:.0}{note} | {:.1} | {} | {} |",
            s.at,
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.threads
        );
    }
    let rss_growth = settled.rss_kib as f64 / warm.rss_kib.max(1) as f64;
    let tail = ((run_ends - warm_at - 1) / 5).max(1);
    println!(
        "\nRSS settled after warm-up {:.1} MiB, after the run {:.1} MiB ({:+.1} %); \
         under load: {:.1} MiB on average in the warm-up's second half, {:.1} MiB in the \
         run's last fifth",
        warm.rss_kib as f64 / 1024.0,
        settled.rss_kib as f64 / 1024.0,
        (rss_growth - 1.0) * 100.0,
        mean_rss_mib(&samples[warm_at / 2..warm_at]),
        mean_rss_mib(&samples[run_ends - tail..run_ends]),
    );
    println!(
        "open fds: {fds_at_start} before the load, {} after warm-up, {} after the run",
        warm.fds, settled.fds
    );
    let mut failed = tally.failed.load(Ordering::Relaxed);
    let failures = tally.failures.into_inner().unwrap();
    for f in &failures {
        println!("FAIL {f}");
    }
    let grown_kib = settled.rss_kib.saturating_sub(warm.rss_kib);
    if rss_growth > 1.10 && grown_kib > RSS_SLACK_KIB {
        println!(
            "FAIL RSS grew {:+.1} % ({:.1} MiB) past warm-up (limit 10 % or 3 MiB, the larger)",
            (rss_growth - 1.0) * 100.0,
            grown_kib as f64 / 1024.0
        );
        failed += 1;
    }
    // Workers, their few blocking threads, the main runtime's, sled's: a few dozen. A burst
    // of admin requests once started 150.
    let threads = samples.iter().map(|s| s.threads).max().unwrap_or(0);
    if threads > MAX_THREADS {
        println!("FAIL tokengate ran {threads} threads at once (limit {MAX_THREADS})");
        failed += 1;
    }
    if settled.fds > fds_at_start {
        println!(
            "FAIL open fds grew: {fds_at_start} before, {} after",
            settled.fds
        );
        failed += 1;
    }
    if reloads != 2 || restarts != 2 {
        println!("FAIL the run was too short for two reloads and two restarts");
        failed += 1;
    }
    if failed > 0 {
        println!("\nsoak FAILED: {failed} problem(s)");
        std::process::exit(1);
    }
    println!("\nsoak passed");
}
