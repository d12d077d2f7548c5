//! The configuration file: raw YAML structs (every one `deny_unknown_fields`, since a typo in
//! an auth config is a hole), one `validate()` that collects every problem with its place
//! in the file, and the typed `Config` the rest of tokengate uses.

use crate::routes::{parse_pattern, AuthMode, Route, RouteTable};
use crate::token_cache::TokenPolicy;
use http::uri::{Authority, Scheme};
use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Every problem found in a config file, each with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file: `routes[2].abilities[0]`, or a line and column.
    pub place: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", p.place, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn one(place: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                place: place.into(),
                message: message.into(),
            }],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    workers: Option<usize>,
    upstream: Option<String>,
    tls: Option<RawTls>,
    upstream_ca: Option<PathBuf>,
    upstream_http2: Option<bool>,
    store: Option<RawStore>,
    admin: Option<RawAdmin>,
    tokens: Option<RawTokens>,
    #[serde(default)]
    abilities: Vec<String>,
    #[serde(default)]
    default_abilities: Vec<String>,
    sessions: Option<RawSessions>,
    headers: Option<RawHeaders>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    access_log: Option<RawAccessLog>,
    shutdown_grace_seconds: Option<u64>,
    timeouts: Option<RawTimeouts>,
    limits: Option<RawLimits>,
    upgrades: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    enabled: Option<bool>,
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    upstream_connect_seconds: Option<f64>,
    upstream_response_seconds: Option<f64>,
    client_header_seconds: Option<f64>,
    idle_seconds: Option<f64>,
    client_body_seconds: Option<f64>,
    client_send_seconds: Option<f64>,
    upstream_body_idle_seconds: Option<f64>,
    tunnel_idle_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_header_bytes: Option<usize>,
    max_connections: Option<usize>,
    body_scan_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<PathBuf>,
    cache_mb: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    key_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    prefix: Option<String>,
    expiration_minutes: Option<i64>,
    cache_capacity: Option<usize>,
    forward_authorization: Option<bool>,
    max_per_user: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    cookie: Option<String>,
    idle_minutes: Option<i64>,
    lifetime_minutes: Option<i64>,
    secure: Option<bool>,
    forward_cookie: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    abilities: Option<String>,
    user: Option<String>,
    token_id: Option<String>,
    method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: String,
    methods: Option<Vec<String>>,
    auth: Option<String>,
    #[serde(default)]
    abilities: Vec<String>,
    #[serde(default)]
    any_ability: Vec<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Proxy worker threads, each with its own listener and upstream pool.
    pub workers: usize,
    pub upstream: UpstreamTarget,
    /// Speak HTTP/2 with prior knowledge (h2c, or h2 over TLS) to the upstream (gRPC).
    pub upstream_http2: bool,
    /// TLS towards an `https://` upstream.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// HTTPS on the proxy listener.
    pub tls: Option<TlsFiles>,
    pub store_path: PathBuf,
    /// Bytes of sled's page cache.
    pub store_cache_bytes: u64,
    pub admin: AdminConfig,
    pub tokens: TokenPolicy,
    /// Send the client's `Authorization` header upstream after tokengate used it.
    pub forward_authorization: bool,
    pub sessions: SessionConfig,
    pub headers: IdentityHeaders,
    /// Peers whose `X-Forwarded-*` headers are kept (extended) rather than replaced.
    pub trusted_proxies: Vec<IpNet>,
    pub routes: RouteTable,
    pub access_log: Option<AccessLogFormat>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// The `Upgrade` protocols that may pass (lower case): WebSocket by default.
    pub upgrades: Vec<String>,
}

/// The server certificate and key, and the TLS config built from them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server: Arc<rustls::ServerConfig>,
}

/// One line per request on stdout, in this format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting to the upstream (then 502).
    pub upstream_connect: Duration,
    /// From sending a request to the upstream's response headers (then 504).
    pub upstream_response: Duration,
    /// A client's request headers must arrive within this (slowloris; then the connection
    /// is closed).
    pub client_header: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle: Duration,
    /// A request body that sends nothing for this long ends with 408.
    pub client_body: Duration,
    /// A client that takes nothing of its response for this long is disconnected.
    pub client_send: Duration,
    /// An upstream response body that sends nothing for this long is cut.
    pub upstream_body_idle: Duration,
    /// A tunnel (WebSocket) with no byte either way for this long is closed.
    pub tunnel_idle: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Open client connections per process; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How much of a POST body is read, before it goes upstream, for a `_method` field
    /// (`method_override`); the rest is checked as it streams.
    pub body_scan_bytes: usize,
}

/// Where allowed requests go: scheme and authority, parsed once.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub key_env: String,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub cookie: String,
    pub idle_minutes: i64,
    pub lifetime_minutes: i64,
    pub secure: bool,
    pub forward_cookie: bool,
}

/// The names of the identity headers sent upstream.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub abilities: HeaderName,
    pub user: HeaderName,
    pub token_id: HeaderName,
    pub method: HeaderName,
}

impl IdentityHeaders {
    pub fn all(&self) -> [&HeaderName; 4] {
        [&self.abilities, &self.user, &self.token_id, &self.method]
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(path.display().to_string(), e.to_string()))?;
        Self::parse(&text)
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| {
            let place = match e.location() {
                Some(at) => format!("line {} column {}", at.line(), at.column()),
                None => "config".into(),
            };
            ConfigError::one(place, e.to_string())
        })?;
        validate(raw)
    }
}

/// Collects problems without stopping at the first.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, place: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            place: place.into(),
            message: message.into(),
        });
    }

    /// Returns the value, or records the error and returns `None`.
    fn check<T>(&mut self, place: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|e| self.add(place, e)).ok()
    }
}

fn valid_ability(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("'{text}' is not an address like 127.0.0.1:8080 or [::1]:8080"))
}

fn upstream(text: &str) -> Result<UpstreamTarget, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("'{text}' is not a URL: {e}"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(format!(
            "'{text}' needs a scheme and a host, like http://127.0.0.1:3000"
        ));
    };
    if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
        return Err(format!(
            "'{scheme}' upstreams are not supported; use http:// or https://"
        ));
    }
    if authority.as_str().contains('@') {
        return Err("credentials in the upstream URL are not supported".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("the upstream URL takes no path or query: requests keep their own".into());
    }
    Ok(UpstreamTarget {
        scheme: scheme.clone(),
        authority: authority.clone(),
    })
}

fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|_| format!("'{text}' is not a header name"))
}

fn trusted_proxy(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{text}' is not an IP address or CIDR range"))
}

fn positive(value: i64, what: &str) -> Result<i64, String> {
    if value > 0 {
        Ok(value)
    } else {
        Err(format!("{what} must be a positive number of minutes"))
    }
}

/// Worker threads when the config does not say: half the CPUs this process may use (the
/// cgroup's quota counts), at least one. A sidecar shares its machine with the app it
/// guards; with a worker per CPU, workers and app preempt each other, and the requests
/// queued on a descheduled worker wait (docs/performance.md: p99 3–4 ms with two workers
/// against 1.2–1.3 ms with one on two shared cores, at the same or better throughput).
fn default_workers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cpus / 2).max(1)
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut p = Problems::default();

    let listen = p.check(
        "listen",
        socket_addr(raw.listen.as_deref().unwrap_or("0.0.0.0:8080")),
    );
    let workers = raw.workers.unwrap_or_else(default_workers);
    if workers == 0 || workers > 1024 {
        p.add(
            "workers",
            "must be between 1 and 1024 (default: half the CPUs, at least 1)",
        );
    }
    let upstream = match raw.upstream.as_deref() {
        Some(text) => p.check("upstream", upstream(text)),
        None => {
            p.add("upstream", "is required: the URL of the app to protect");
            None
        }
    };
    let tls = raw.tls.and_then(|t| {
        p.check("tls", crate::tls::server_config(&t.cert, &t.key))
            .map(|server| TlsFiles {
                cert: t.cert,
                key: t.key,
                server,
            })
    });
    let upstream_http2 = raw.upstream_http2.unwrap_or(false);
    let upstream_tls = match &upstream {
        Some(target) if target.scheme == Scheme::HTTPS => p.check(
            "upstream_ca",
            crate::tls::client_config(raw.upstream_ca.as_deref(), upstream_http2),
        ),
        _ => {
            if raw.upstream_ca.is_some() {
                p.add("upstream_ca", "only used with an https:// upstream");
            }
            None
        }
    };
    let raw_store = raw.store.unwrap_or(RawStore {
        path: None,
        cache_mb: None,
    });
    let store_path = raw_store
        .path
        .unwrap_or_else(|| PathBuf::from("./data/tokengate"));
    let store_cache_bytes = match raw_store.cache_mb {
        None => crate::store::DEFAULT_CACHE_BYTES,
        Some(0) => {
            p.add("store.cache_mb", "must be at least 1");
            0
        }
        Some(mb) => mb.saturating_mul(1024 * 1024),
    };

    let raw_admin = raw.admin.unwrap_or(RawAdmin {
        listen: None,
        key_env: None,
    });
    let admin_listen = p.check(
        "admin.listen",
        socket_addr(raw_admin.listen.as_deref().unwrap_or("127.0.0.1:9090")),
    );
    let key_env = raw_admin
        .key_env
        .unwrap_or_else(|| "TOKENGATE_ADMIN_KEY".into());
    if key_env.is_empty() {
        p.add("admin.key_env", "must name an environment variable");
    }
    if let (Some(l), Some(a)) = (listen, admin_listen) {
        if l.port() == a.port()
            && (l.ip() == a.ip() || l.ip().is_unspecified() || a.ip().is_unspecified())
        {
            p.add(
                "admin.listen",
                "must differ from listen: the admin API never shares the proxy port",
            );
        }
    }

    let mut declared: Vec<String> = Vec::new();
    for (i, a) in raw.abilities.iter().enumerate() {
        if !valid_ability(a) {
            p.add(
                format!("abilities[{i}]"),
                format!("'{a}' is not an ability name ([A-Za-z0-9:._-]+)"),
            );
        } else if declared.contains(a) {
            p.add(
                format!("abilities[{i}]"),
                format!("'{a}' is declared twice"),
            );
        } else {
            declared.push(a.clone());
        }
    }
    let known = |p: &mut Problems, place: String, a: &String| -> bool {
        if declared.contains(a) {
            true
        } else {
            p.add(place, format!("'{a}' is not one of the declared abilities"));
            false
        }
    };
    let mut default_abilities = Vec::new();
    for (i, a) in raw.default_abilities.iter().enumerate() {
        if known(&mut p, format!("default_abilities[{i}]"), a) {
            default_abilities.push(a.clone());
        }
    }

    let raw_tokens = raw.tokens.unwrap_or(RawTokens {
        prefix: None,
        expiration_minutes: None,
        cache_capacity: None,
        forward_authorization: None,
        max_per_user: None,
    });
    let prefix = raw_tokens.prefix.unwrap_or_default();
    if prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_graphic() && b != b'|') {
        p.add(
            "tokens.prefix",
            "must be at most 64 printable ASCII characters, without '|'",
        );
    }
    let lifetime = raw_tokens
        .expiration_minutes
        .and_then(|m| {
            p.check(
                "tokens.expiration_minutes",
                positive(m, "expiration_minutes"),
            )
        })
        .map(|m| m.saturating_mul(60));
    let cache_capacity = raw_tokens.cache_capacity.unwrap_or(100_000);
    if cache_capacity == 0 {
        p.add("tokens.cache_capacity", "must be at least 1");
    }
    let max_per_user = raw_tokens.max_per_user.unwrap_or(1000);
    if max_per_user == 0 {
        p.add("tokens.max_per_user", "must be at least 1");
    }

    let raw_sessions = raw.sessions.unwrap_or(RawSessions {
        cookie: None,
        idle_minutes: None,
        lifetime_minutes: None,
        secure: None,
        forward_cookie: None,
    });
    let cookie = raw_sessions
        .cookie
        .unwrap_or_else(|| "tokengate_session".into());
    if cookie.is_empty()
        || !cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        p.add(
            "sessions.cookie",
            format!("'{cookie}' is not a cookie name ([A-Za-z0-9_.-]+)"),
        );
    }
    let idle_minutes = p
        .check(
            "sessions.idle_minutes",
            positive(raw_sessions.idle_minutes.unwrap_or(120), "idle_minutes"),
        )
        .unwrap_or(120);
    let lifetime_minutes = p
        .check(
            "sessions.lifetime_minutes",
            positive(
                raw_sessions.lifetime_minutes.unwrap_or(1440),
                "lifetime_minutes",
            ),
        )
        .unwrap_or(1440);

    let raw_headers = raw.headers.unwrap_or(RawHeaders {
        abilities: None,
        user: None,
        token_id: None,
        method: None,
    });
    let mut header = |place: &str, value: Option<String>, default: &str| {
        p.check(place, header_name(value.as_deref().unwrap_or(default)))
    };
    let headers = (
        header(
            "headers.abilities",
            raw_headers.abilities,
            "x-token-abilities",
        ),
        header("headers.user", raw_headers.user, "x-auth-user"),
        header("headers.token_id", raw_headers.token_id, "x-auth-token-id"),
        header("headers.method", raw_headers.method, "x-auth-method"),
    );
    let headers = match headers {
        (Some(abilities), Some(user), Some(token_id), Some(method)) => {
            let h = IdentityHeaders {
                abilities,
                user,
                token_id,
                method,
            };
            let names = h.all();
            for (i, a) in names.iter().enumerate() {
                if names[..i].contains(a) {
                    p.add("headers", format!("'{a}' is used for two identity headers"));
                }
            }
            Some(h)
        }
        _ => None,
    };

    let trusted_proxies: Vec<IpNet> = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, t)| p.check(&format!("trusted_proxies[{i}]"), trusted_proxy(t)))
        .collect();

    if raw.routes.is_empty() {
        p.add(
            "routes",
            "at least one route is needed: a request that matches no route is refused",
        );
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let place = format!("routes[{i}]");
        let pattern_ok = p
            .check(&format!("{place}.path"), parse_pattern(&r.path))
            .is_some();
        let auth = match r.auth.as_deref() {
            None | Some("any") => Some(AuthMode::Any),
            Some("none") => Some(AuthMode::None),
            Some("token") => Some(AuthMode::Token),
            Some("session") => Some(AuthMode::Session),
            Some(other) => {
                p.add(
                    format!("{place}.auth"),
                    format!("'{other}' is not one of none, any, token, session"),
                );
                None
            }
        };
        let methods = r.methods.map(|list| {
            if list.is_empty() {
                p.add(
                    format!("{place}.methods"),
                    "is empty: leave it out to allow every method",
                );
            }
            list.iter()
                .enumerate()
                .filter_map(|(j, m)| {
                    let valid = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
                    match Method::from_bytes(m.as_bytes()) {
                        Ok(method) if valid => Some(method),
                        _ => {
                            p.add(
                                format!("{place}.methods[{j}]"),
                                format!("'{m}' is not an HTTP method (uppercase, like GET)"),
                            );
                            None
                        }
                    }
                })
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        let mut abilities_of = |field: &str, list: &[String]| {
            let mut ok = true;
            for (j, a) in list.iter().enumerate() {
                ok &= known(&mut p, format!("{place}.{field}[{j}]"), a);
            }
            ok
        };
        let abilities_ok =
            abilities_of("abilities", &r.abilities) & abilities_of("any_ability", &r.any_ability);
        if auth == Some(AuthMode::None) && !(r.abilities.is_empty() && r.any_ability.is_empty()) {
            p.add(
                &place,
                "a public route (auth: none) cannot require abilities",
            );
        }
        if let (true, Some(auth), true) = (pattern_ok, auth, abilities_ok) {
            routes.push(Route {
                index: i,
                pattern: r.path.into(),
                methods,
                auth,
                all_of: r.abilities.into(),
                any_of: r.any_ability.into(),
            });
        }
    }

    if !p.0.is_empty() {
        return Err(ConfigError { problems: p.0 });
    }
    let raw_log = raw.access_log.unwrap_or(RawAccessLog {
        enabled: None,
        format: None,
    });
    let access_log = match raw_log.format.as_deref().unwrap_or("text") {
        _ if !raw_log.enabled.unwrap_or(false) => None,
        "text" => Some(AccessLogFormat::Text),
        "json" => Some(AccessLogFormat::Json),
        other => {
            p.add(
                "access_log.format",
                format!("'{other}' is not a format: text or json"),
            );
            None
        }
    };
    let shutdown_grace = Duration::from_secs(raw.shutdown_grace_seconds.unwrap_or(30));
    let raw_t = raw.timeouts.unwrap_or(RawTimeouts {
        upstream_connect_seconds: None,
        upstream_response_seconds: None,
        client_header_seconds: None,
        idle_seconds: None,
        client_body_seconds: None,
        client_send_seconds: None,
        upstream_body_idle_seconds: None,
        tunnel_idle_seconds: None,
    });
    let mut seconds = |place: &str, value: Option<f64>, default: f64| {
        let value = value.unwrap_or(default);
        if value.is_finite() && value > 0.0 && value <= 86_400.0 {
            Duration::from_secs_f64(value)
        } else {
            p.add(place, "must be a number of seconds above 0, at most 86400");
            Duration::from_secs_f64(default)
        }
    };
    let timeouts = Timeouts {
        upstream_connect: seconds(
            "timeouts.upstream_connect_seconds",
            raw_t.upstream_connect_seconds,
            5.0,
        ),
        upstream_response: seconds(
            "timeouts.upstream_response_seconds",
            raw_t.upstream_response_seconds,
            60.0,
        ),
        client_header: seconds(
            "timeouts.client_header_seconds",
            raw_t.client_header_seconds,
            30.0,
        ),
        idle: seconds("timeouts.idle_seconds", raw_t.idle_seconds, 60.0),
        client_body: seconds(
            "timeouts.client_body_seconds",
            raw_t.client_body_seconds,
            60.0,
        ),
        client_send: seconds(
            "timeouts.client_send_seconds",
            raw_t.client_send_seconds,
            60.0,
        ),
        upstream_body_idle: seconds(
            "timeouts.upstream_body_idle_seconds",
            raw_t.upstream_body_idle_seconds,
            300.0,
        ),
        tunnel_idle: seconds(
            "timeouts.tunnel_idle_seconds",
            raw_t.tunnel_idle_seconds,
            300.0,
        ),
    };
    let upgrades: Vec<String> = match raw.upgrades {
        None => vec!["websocket".to_owned()],
        Some(list) => {
            for (i, protocol) in list.iter().enumerate() {
                let token = !protocol.is_empty()
                    && protocol
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
                if !token {
                    p.add(
                        format!("upgrades[{i}]"),
                        format!("'{protocol}' is not a protocol name ([A-Za-z0-9._-]+)"),
                    );
                } else if protocol.eq_ignore_ascii_case("h2c") {
                    p.add(
                        format!("upgrades[{i}]"),
                        "h2c cannot be allowed: the upstream would take HTTP/2 requests through the tunnel that tokengate never checks",
                    );
                }
            }
            list.into_iter().map(|p| p.to_ascii_lowercase()).collect()
        }
    };
    let raw_l = raw.limits.unwrap_or(RawLimits {
        max_header_bytes: None,
        max_connections: None,
        body_scan_bytes: None,
    });
    let max_header_bytes = raw_l.max_header_bytes.unwrap_or(64 * 1024);
    if !(8192..=1024 * 1024).contains(&max_header_bytes) {
        p.add(
            "limits.max_header_bytes",
            "must be between 8192 and 1048576",
        );
    }
    let max_connections = raw_l.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        p.add("limits.max_connections", "must be at least 1");
    }
    let body_scan_bytes = raw_l.body_scan_bytes.unwrap_or(64 * 1024);
    if !(1024..=16 * 1024 * 1024).contains(&body_scan_bytes) {
        p.add(
            "limits.body_scan_bytes",
            "must be between 1024 and 16777216",
        );
    }
    let limits = Limits {
        max_header_bytes,
        max_connections,
        body_scan_bytes,
    };
    if !p.0.is_empty() {
        return Err(ConfigError { problems: p.0 });
    }
    let routes = RouteTable::new(routes).map_err(|e| ConfigError::one("routes", e))?;
    match (listen, upstream, admin_listen, headers) {
        (Some(listen), Some(upstream), Some(admin_listen), Some(headers)) => Ok(Config {
            listen,
            workers,
            upstream,
            upstream_http2,
            upstream_tls,
            tls,
            store_path,
            store_cache_bytes,
            admin: AdminConfig {
                listen: admin_listen,
                key_env,
            },
            tokens: TokenPolicy {
                prefix,
                lifetime,
                abilities: declared,
                default_abilities,
                cache_capacity,
                max_per_user,
            },
            forward_authorization: raw_tokens.forward_authorization.unwrap_or(false),
            sessions: SessionConfig {
                cookie,
                idle_minutes,
                lifetime_minutes,
                secure: raw_sessions.secure.unwrap_or(true),
                forward_cookie: raw_sessions.forward_cookie.unwrap_or(false),
            },
            headers,
            trusted_proxies,
            routes,
            access_log,
            shutdown_grace,
            timeouts,
            limits,
            upgrades,
        }),
        _ => Err(ConfigError::one("config", "invalid")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "upstream: http://127.0.0.1:3000\nroutes:\n  - path: /**\n";

    fn problems(yaml: &str) -> Vec<String> {
        match Config::parse(yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.place, p.message))
                .collect(),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.upstream.to_string(), "http://127.0.0.1:3000");
        assert_eq!(c.store_path, PathBuf::from("./data/tokengate"));
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.admin.key_env, "TOKENGATE_ADMIN_KEY");
        assert_eq!(c.tokens.prefix, "");
        assert_eq!(c.tokens.lifetime, None);
        assert_eq!(c.headers.abilities, "x-token-abilities");
        assert_eq!(c.headers.token_id, "x-auth-token-id");
        assert!(c.sessions.secure);
        assert!(!c.forward_authorization);
        assert_eq!(c.routes.routes().len(), 1);
        assert_eq!(c.routes.routes()[0].auth, AuthMode::Any);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.workers, (cpus / 2).max(1));
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../config.example.yaml");
        let c = Config::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.tokens.prefix, "tg_");
        assert_eq!(c.tokens.default_abilities, vec!["read".to_string()]);
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let yaml = r#"
listen: nowhere
upstream: ftp://example
abilities: [read, "bad ability", read]
default_abilities: [write]
tokens:
  prefix: "a|b"
  expiration_minutes: 0
headers:
  user: X-Auth-User
  method: x-auth-user
routes:
  - path: api/x
  - path: /a/**/b
    auth: maybe
  - path: /b
    methods: [get]
    abilities: [read, nope]
    any_ability: [also-nope]
  - path: /c
    auth: none
    abilities: [read]
"#;
        let got = problems(yaml);
        let want = [
            "listen: 'nowhere' is not an address",
            "upstream: 'ftp' upstreams are not supported",
            "abilities[1]: 'bad ability' is not an ability name",
            "abilities[2]: 'read' is declared twice",
            "default_abilities[0]: 'write' is not one of the declared abilities",
            "tokens.prefix: must be at most 64",
            "tokens.expiration_minutes: expiration_minutes must be a positive",
            "headers: 'x-auth-user' is used for two identity headers",
            "routes[0].path: must start with '/'",
            "routes[1].path: '**' may only be the last segment",
            "routes[1].auth: 'maybe' is not one of none, any, token, session",
            "routes[2].methods[0]: 'get' is not an HTTP method",
            "routes[2].abilities[1]: 'nope' is not one of the declared abilities",
            "routes[2].any_ability[0]: 'also-nope' is not one of the declared abilities",
            "routes[3]: a public route (auth: none) cannot require abilities",
        ];
        for w in want {
            assert!(
                got.iter().any(|g| g.starts_with(w)),
                "missing {w:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
    }

    #[test]
    fn unknown_fields_are_refused_with_a_line() {
        let got = problems(
            "upstream: http://127.0.0.1:1\nroutes:\n  - path: /**\n    abilites: [read]\n",
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("line 4 column"), "{got:?}");
        assert!(got[0].contains("unknown field `abilites`"), "{got:?}");
    }

    #[test]
    fn upstream_rules() {
        for (u, msg) in [
            ("http://127.0.0.1:3000/app", "takes no path"),
            ("http://user:pw@127.0.0.1:3000", "credentials"),
            ("127.0.0.1:3000", "needs a scheme"),
            ("ftp://app.internal", "use http:// or https://"),
        ] {
            let got = problems(&format!("upstream: {u}\nroutes:\n  - path: /**\n"));
            assert!(got.iter().any(|g| g.contains(msg)), "{u}: {got:?}");
        }
        assert!(problems("upstream: https://app.internal\nroutes:\n  - path: /**\n").is_empty());
        let got = problems(
            "upstream: http://127.0.0.1:1\nupstream_ca: /etc/ca.pem\nroutes:\n  - path: /**\n",
        );
        assert!(
            got[0].starts_with("upstream_ca: only used with an https://"),
            "{got:?}"
        );
        let got = problems(
            "upstream: https://a\nupstream_ca: /nonexistent/ca.pem\nroutes:\n  - path: /**\n",
        );
        assert!(
            got[0].contains("cannot read /nonexistent/ca.pem"),
            "{got:?}"
        );
        let got = problems(
            "tls:\n  cert: /nonexistent/c.pem\n  key: /nonexistent/k.pem\nupstream: http://127.0.0.1:1\nroutes:\n  - path: /**\n",
        );
        assert!(
            got[0].starts_with("tls: cannot read /nonexistent/c.pem"),
            "{got:?}"
        );
        assert!(problems("routes:\n  - path: /**\n")[0].starts_with("upstream: is required"));
        assert!(problems("upstream: http://127.0.0.1:1\n")[0].starts_with("routes: at least one"));
    }

    #[test]
    fn admin_port_must_differ_from_proxy_port() {
        let got = problems("listen: 0.0.0.0:9000\nadmin:\n  listen: 127.0.0.1:9000\nupstream: http://127.0.0.1:1\nroutes:\n  - path: /**\n");
        assert!(got[0].starts_with("admin.listen: must differ"), "{got:?}");
    }
}
