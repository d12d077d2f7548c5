//! Test harness: a real tokengate on 127.0.0.1:0 in front of a real upstream, with an
//! injectable clock and a temporary sled store, and a hyper client to talk to it.

#![allow(dead_code, unreachable_pub)]

pub mod db;
pub mod laravel;
pub mod process;
pub mod redis;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokengate::app::App;
use tokengate::clock::ManualClock;
use tokengate::config::Config;
pub use tokengate::echo::Echo;
use tokengate::store::SledStore;
use tokengate::token_cache::CreateToken;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// 2026-01-01T00:00:00Z, the harness clock's start.
pub const T0: i64 = 1_767_225_600;

pub struct Gate {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    pub echo: Echo,
    pub clock: Arc<ManualClock>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// A config with the harness's upstream and store filled in. `body` holds the rest
/// (abilities, routes, …) and must not set `upstream` or `store`.
pub fn config_for(upstream: SocketAddr, store: &std::path::Path, body: &str) -> Config {
    let yaml = format!(
        "upstream: http://{upstream}\nstore:\n  path: {}\n{body}",
        store.display()
    );
    Config::parse(&yaml).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{yaml}"))
}

pub const STANDARD: &str = r#"
tokens:
  prefix: "tg_"
abilities: [read, create, update, delete, reports, admin]
default_abilities: [read]
routes:
  - path: /healthz
    auth: none
  - path: /api/posts/{id}
    methods: [GET, HEAD]
    abilities: [read]
  - path: /api/posts
    methods: [POST]
    abilities: [create]
  - path: /api/both
    abilities: [read, update]
  - path: /api/reports/**
    any_ability: [reports, admin]
  - path: /admin/**
    abilities: [admin]
  - path: /app/**
    auth: session
  - path: /open/**
    auth: any
  - path: /slow
  - path: /upload
"#;

/// An App over a sled store at `store.path`, its token cache warmed.
pub async fn app_for(config: Config, clock: Arc<ManualClock>) -> Arc<App> {
    let store = SledStore::open(config.store.sled_path().expect("a sled store")).unwrap();
    let app = App::new(config, Arc::new(store), clock);
    app.warm().await.unwrap();
    app
}

/// Serves `app` as the proxy on 127.0.0.1:0: its address, the sender that shuts it down, and
/// the server's task.
pub async fn serve(app: &Arc<App>) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(tokengate::accept::run(listener, app.clone(), async {
        let _ = rx.await;
    }));
    (addr, tx, server)
}

/// How long `eventually` waits before it fails.
const EVENTUALLY: Duration = Duration::from_secs(15);

/// Waits until `check` holds, failing after `EVENTUALLY` (a test waits on an event, never
/// for a fixed time).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + EVENTUALLY;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `signal` (`-TERM`, `-HUP`, …) to the process `pid`; fails the test if `kill` does.
pub fn signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

/// `eventually` for a test without a runtime.
pub fn eventually_blocking(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + EVENTUALLY;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a child's pipe to the end on its own thread (so a full pipe never blocks it).
pub fn drain(pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut pipe = pipe;
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The value of one series in a Prometheus exposition: the line that is exactly `series`
/// (`name{labels}` as written there), a space and a number. `None` when no line is.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// One IPv4 TCP socket of this machine's network namespace, as Linux lists it in
/// `/proc/net/tcp`.
#[derive(Debug, Clone, Copy)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub listening: bool,
    /// Connected: bytes sent and not yet acknowledged.
    pub tx_queue: u32,
    /// Connected: bytes received and not yet read by the application. Listening:
    /// connections waiting in the accept queue.
    pub rx_queue: u32,
    pub inode: u64,
}

/// The IPv4 TCP sockets of this network namespace (Linux).
pub fn tcp_sockets() -> Vec<TcpEntry> {
    fn addr(field: &str) -> SocketAddr {
        let (ip, port) = field.split_once(':').expect("address:port");
        // The address is the network-order word printed as a native integer.
        let ip = u32::from_str_radix(ip, 16)
            .expect("hex address")
            .to_ne_bytes();
        let port = u16::from_str_radix(port, 16).expect("hex port");
        SocketAddr::from((ip, port))
    }
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
    table
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = fields[4].split_once(':').expect("tx_queue:rx_queue");
            TcpEntry {
                local: addr(fields[1]),
                remote: addr(fields[2]),
                listening: fields[3] == "0A",
                tx_queue: u32::from_str_radix(tx, 16).expect("hex tx_queue"),
                rx_queue: u32::from_str_radix(rx, 16).expect("hex rx_queue"),
                inode: fields[9].parse().expect("inode"),
            }
        })
        .collect()
}

/// The addresses process `pid` listens on (IPv4 TCP; Linux): the ports a child that bound
/// port 0 got, as the kernel reports them (so no port is picked before the child binds it).
pub fn listening(pid: u32) -> Vec<SocketAddr> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<u64> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    tcp_sockets()
        .into_iter()
        .filter(|s| s.listening && inodes.contains(&s.inode))
        .map(|s| s.local)
        .collect()
}

/// Waits until child `pid` listens on `ip` (it bound port 0 there) and returns the address;
/// fails if the child exits first (`exited` says whether it has, with how).
pub fn wait_listening(
    what: &str,
    pid: u32,
    ip: [u8; 4],
    mut exited: impl FnMut() -> Option<String>,
) -> SocketAddr {
    let ip = std::net::IpAddr::from(ip);
    let mut found = None;
    eventually_blocking(&format!("{what} listens on {ip}"), || {
        if let Some(status) = exited() {
            panic!("{what} exited before listening: {status}");
        }
        found = listening(pid).into_iter().find(|a| a.ip() == ip);
        found.is_some()
    });
    found.expect("found")
}

impl Gate {
    pub async fn start(body: &str) -> Gate {
        let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
        Self::start_with_upstream(echo.addr, echo, body).await
    }

    /// Starts tokengate in front of `upstream` (`echo` is kept for inspection).
    pub async fn start_with_upstream(upstream: SocketAddr, echo: Echo, body: &str) -> Gate {
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(upstream, &dir.path().join("store"), body);
        let clock = Arc::new(ManualClock::new(T0));
        let app = app_for(config, clock.clone()).await;
        let (addr, tx, server) = serve(&app).await;
        Gate {
            addr,
            app,
            echo,
            clock,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
        }
    }

    pub async fn token(&self, user: &str, abilities: &[&str]) -> String {
        self.token_expiring(user, abilities, None).await
    }

    pub async fn token_expiring(
        &self,
        user: &str,
        abilities: &[&str],
        expires_at: Option<i64>,
    ) -> String {
        self.app
            .tokens
            .create(CreateToken {
                user: user.into(),
                name: format!("{user}'s token"),
                abilities: Some(abilities.iter().map(|a| a.to_string()).collect()),
                expires_at,
            })
            .await
            .unwrap()
            .plaintext
    }

    /// Starts the admin listener on 127.0.0.1:0 (for as long as the test runs).
    pub async fn start_admin(&self, key: Option<&str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(tokengate::admin::run(
            listener,
            self.app.clone(),
            key.map(str::to_owned),
            std::future::pending(),
        ));
        addr
    }

    /// The value of one series in the Prometheus exposition (`name{labels}` as written
    /// there), or 0 when it is not there.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.app.metrics.render(0, 0, 0), series).unwrap_or(0.0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The header the echo upstream reports it received, if it did.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    pub fn http1() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 with prior knowledge (h2c), as gRPC clients speak it.
    pub fn http2() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &[u8])],
        body: Bytes,
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, http::HeaderValue::from_bytes(v).unwrap());
        }
        let response = self
            .inner
            .request(builder.body(Full::new(body)).unwrap())
            .await
            .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"));
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Answer {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.send(Method::GET, url, &headers, Bytes::new()).await
    }

    pub async fn get_bearer(&self, url: &str, token: &str) -> Answer {
        let value = format!("Bearer {token}");
        self.get(url, &[("authorization", &value)]).await
    }

    pub async fn post_bearer(&self, url: &str, token: &str) -> Answer {
        let value = format!("Bearer {token}");
        self.send(
            Method::POST,
            url,
            &[("authorization", value.as_bytes())],
            Bytes::new(),
        )
        .await
    }
}

/// Asserts the 401 of the README ("What a request gets"): status, `WWW-Authenticate: Bearer`, JSON message.
pub fn assert_unauthenticated(answer: &Answer, what: &str) {
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.headers["www-authenticate"], "Bearer", "{what}");
    assert_eq!(
        answer.json(),
        serde_json::json!({"message": "Unauthenticated."}),
        "{what}"
    );
}

pub fn assert_forbidden(answer: &Answer, what: &str) {
    assert_eq!(
        answer.status,
        StatusCode::FORBIDDEN,
        "{what}: {}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.json(),
        serde_json::json!({"message": "Invalid ability provided."}),
        "{what}"
    );
}

/// A WebSocket handshake request to `ws://addr/path` carrying a bearer token.
pub fn ws_request(
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}
