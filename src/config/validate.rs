//! `validate`: the raw config to the typed `Config`, one function per section. Each writes
//! its problems, with their places, into the one `Problems` and returns its typed part, or
//! `None` when it found a problem. Every section is checked whatever the others hold, so
//! one run reports every problem in the file; a section that depends on another (admin's
//! port on `listen`, routes on the declared abilities) still checks its own values when
//! that one is broken.

use super::raw::{
    RawAccessLog, RawAdmin, RawConfig, RawHeaders, RawLaravel, RawLimits, RawRoute, RawSessions,
    RawStore, RawTimeouts, RawTls, RawTokens,
};
use super::{
    AccessLogFormat, AdminConfig, AdminKey, Config, ConfigError, IdentityHeaders, LaravelDriver,
    LaravelSessionConfig, Limits, Problem, SessionConfig, SqlKind, SqlStoreConfig, StoreConfig,
    TableName, Timeouts, TlsFiles, TokenPolicy, UpstreamTarget,
};
use crate::ability::Ability;
use crate::credential::laravel::{Cipher, Keys};
use crate::routes::{parse_pattern, AuthMode, Route, RouteTable, Segment};
use http::uri::Scheme;
use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

    /// Where a section starts, for `clean_since`.
    fn mark(&self) -> usize {
        self.0.len()
    }

    /// `value` when no problem was added since `mark`.
    fn clean_since<T>(&self, mark: usize, value: T) -> Option<T> {
        (self.0.len() == mark).then_some(value)
    }
}

/// Checks every section and returns the typed config, or every problem found.
pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut p = Problems::default();
    let config = sections(raw, &mut p);
    if !p.0.is_empty() {
        return Err(ConfigError { problems: p.0 });
    }
    // A section returns `None` only after recording why.
    config.ok_or_else(|| ConfigError::one("config", "invalid"))
}

/// Every section, each checked whatever the others hold (its problems follow in this
/// order); the config only when all are valid.
fn sections(raw: RawConfig, p: &mut Problems) -> Option<Config> {
    let listen = listen(p, raw.listen.as_deref());
    let workers = workers(p, raw.workers);
    let upstream = upstream(p, raw.upstream.as_deref());
    let tls = tls(p, raw.tls);
    let upstream_http2 = raw.upstream_http2.unwrap_or(false);
    let upstream_tls = upstream_tls(
        p,
        raw.upstream_ca.as_deref(),
        upstream_http2,
        upstream.as_ref(),
    );
    let store = store(p, raw.store);
    let admin = admin(p, raw.admin, listen);
    let declared = abilities(p, &raw.abilities);
    let default_abilities = default_abilities(p, &raw.default_abilities, &declared);
    let forward_authorization = raw.tokens.forward_authorization.unwrap_or(false);
    let tokens = tokens(p, raw.tokens);
    let sled = matches!(store, Some(StoreConfig::Sled { .. }));
    let sessions = sessions(p, raw.sessions, sled);
    let headers = headers(p, raw.headers);
    let trusted_proxies = trusted_proxies(p, &raw.trusted_proxies);
    let routes = routes(p, raw.routes, &declared);
    let access_log = access_log(p, raw.access_log);
    let shutdown_grace = Duration::from_secs(raw.shutdown_grace_seconds.unwrap_or(30));
    let timeouts = timeouts(p, raw.timeouts);
    let upgrades = upgrades(p, raw.upgrades);
    let limits = limits(p, raw.limits);

    let tokens = tokens?;
    Some(Config {
        listen: listen?,
        workers: workers?,
        upstream: upstream?,
        upstream_http2,
        upstream_tls: upstream_tls?,
        tls: tls?,
        store: store?,
        admin: admin?,
        tokens: TokenPolicy {
            prefix: tokens.prefix,
            lifetime: tokens.lifetime,
            abilities: declared,
            default_abilities: default_abilities?,
            cache_capacity: tokens.cache_capacity,
            max_per_user: tokens.max_per_user,
        },
        forward_authorization,
        sessions: sessions?,
        headers: headers?,
        trusted_proxies: trusted_proxies?,
        routes: routes?,
        access_log: access_log?,
        shutdown_grace,
        timeouts: timeouts?,
        limits: limits?,
        upgrades: upgrades?,
    })
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("'{text}' is not an address like 127.0.0.1:8080 or [::1]:8080"))
}

fn listen(p: &mut Problems, text: Option<&str>) -> Option<SocketAddr> {
    p.check("listen", socket_addr(text.unwrap_or("0.0.0.0:8080")))
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

fn workers(p: &mut Problems, workers: Option<usize>) -> Option<usize> {
    let workers = workers.unwrap_or_else(default_workers);
    if workers == 0 || workers > 1024 {
        p.add(
            "workers",
            "must be between 1 and 1024 (default: half the CPUs, at least 1)",
        );
        return None;
    }
    Some(workers)
}

fn upstream_url(text: &str) -> Result<UpstreamTarget, String> {
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

fn upstream(p: &mut Problems, text: Option<&str>) -> Option<UpstreamTarget> {
    match text {
        Some(text) => p.check("upstream", upstream_url(text)),
        None => {
            p.add("upstream", "is required: the URL of the app to protect");
            None
        }
    }
}

/// TLS towards the upstream: built for an `https://` one. With no valid upstream (its
/// problem is reported), `upstream_ca` is still read, to report the file's own problems.
fn upstream_tls(
    p: &mut Problems,
    ca: Option<&Path>,
    http2: bool,
    upstream: Option<&UpstreamTarget>,
) -> Option<Option<Arc<rustls::ClientConfig>>> {
    match upstream {
        Some(target) if target.scheme == Scheme::HTTPS => p
            .check("upstream_ca", crate::tls::client_config(ca, http2))
            .map(Some),
        Some(_) => {
            if ca.is_some() {
                p.add("upstream_ca", "only used with an https:// upstream");
                return None;
            }
            Some(None)
        }
        None => {
            if ca.is_some() {
                p.check("upstream_ca", crate::tls::client_config(ca, http2));
            }
            None
        }
    }
}

fn tls(p: &mut Problems, raw: Option<RawTls>) -> Option<Option<TlsFiles>> {
    let Some(raw) = raw else {
        return Some(None);
    };
    let server = p.check("tls", crate::tls::server_config(&raw.cert, &raw.key))?;
    Some(Some(TlsFiles {
        cert: raw.cert,
        key: raw.key,
        server,
    }))
}

/// The store's directory and page cache bytes.
fn store(p: &mut Problems, raw: RawStore) -> Option<StoreConfig> {
    let mark = p.mark();
    let kind = match raw.kind.as_deref().unwrap_or("sled") {
        "sled" => None,
        "postgres" => Some(SqlKind::Postgres),
        "mysql" => Some(SqlKind::Mysql),
        other => {
            p.add(
                "store.kind",
                format!("'{other}' is not a store: sled, postgres or mysql"),
            );
            return None;
        }
    };
    let Some(kind) = kind else {
        for (key, given) in [
            ("url_env", raw.url_env.is_some()),
            ("tokens_table", raw.tokens_table.is_some()),
            ("tokenable_type", raw.tokenable_type.is_some()),
            ("read_only", raw.read_only.is_some()),
            ("sync_interval_ms", raw.sync_interval_ms.is_some()),
            ("max_stale_seconds", raw.max_stale_seconds.is_some()),
        ] {
            if given {
                p.add(
                    format!("store.{key}"),
                    "only for a database store (kind: postgres or mysql)",
                );
            }
        }
        let path = raw
            .path
            .unwrap_or_else(|| PathBuf::from("./data/tokengate"));
        let cache_bytes = match raw.cache_mb {
            None => super::DEFAULT_SLED_CACHE_BYTES,
            Some(0) => {
                p.add("store.cache_mb", "must be at least 1");
                return None;
            }
            Some(mb) => mb.saturating_mul(1024 * 1024),
        };
        return p.clean_since(mark, StoreConfig::Sled { path, cache_bytes });
    };
    for (key, given) in [
        ("path", raw.path.is_some()),
        ("cache_mb", raw.cache_mb.is_some()),
    ] {
        if given {
            p.add(format!("store.{key}"), "only for kind: sled");
        }
    }
    let url_env = raw
        .url_env
        .unwrap_or_else(|| "TOKENGATE_DATABASE_URL".into());
    if url_env.is_empty() {
        p.add("store.url_env", "must name an environment variable");
    }
    let table = raw
        .tokens_table
        .unwrap_or_else(|| "personal_access_tokens".into());
    let tokens_table = TableName::parse(&table);
    if tokens_table.is_none() {
        p.add(
            "store.tokens_table",
            format!(
                "'{table}' is not a table name ([A-Za-z_][A-Za-z0-9_]*, optionally schema.table)"
            ),
        );
    }
    let tokenable_type = raw
        .tokenable_type
        .unwrap_or_else(|| "App\\Models\\User".into());
    if tokenable_type.is_empty() || tokenable_type.len() > 255 {
        p.add("store.tokenable_type", "must be 1 to 255 characters");
    }
    // Revocation reaches every replica within a second: a re-check every second at most.
    let sync_ms = raw.sync_interval_ms.unwrap_or(500);
    if !(10..=1000).contains(&sync_ms) {
        p.add("store.sync_interval_ms", "must be from 10 to 1000");
    }
    let max_stale = raw.max_stale_seconds.unwrap_or(30);
    if max_stale > 86_400 {
        p.add("store.max_stale_seconds", "must be at most 86400");
    }
    p.clean_since(
        mark,
        StoreConfig::Sql(SqlStoreConfig {
            kind,
            url_env,
            tokens_table: tokens_table?,
            tokenable_type,
            read_only: raw.read_only.unwrap_or(false),
            sync_interval: Duration::from_millis(sync_ms),
            max_stale: Duration::from_secs(max_stale),
        }),
    )
}

/// `listen`: the proxy's address when valid, to keep the admin API off its port.
fn admin(p: &mut Problems, raw: RawAdmin, listen: Option<SocketAddr>) -> Option<AdminConfig> {
    let mark = p.mark();
    let admin_listen = p.check(
        "admin.listen",
        socket_addr(raw.listen.as_deref().unwrap_or("127.0.0.1:9090")),
    );
    let key_env = raw.key_env.unwrap_or_else(|| "TOKENGATE_ADMIN_KEY".into());
    if key_env.is_empty() {
        p.add("admin.key_env", "must name an environment variable");
    }
    if let (Some(l), Some(a)) = (listen, admin_listen) {
        // Port 0 is the system's choice for each listener: never the same port.
        if l.port() == a.port()
            && l.port() != 0
            && (l.ip() == a.ip() || l.ip().is_unspecified() || a.ip().is_unspecified())
        {
            p.add(
                "admin.listen",
                "must differ from listen: the admin API never shares the proxy port",
            );
        }
    }
    // Read now, so that a reload reads it again (a rotated Secret). Missing or empty, like
    // an unset variable: no key, the API disabled (check-config on a rendered config runs
    // where the Secret is not mounted); unreadable, or more than one line: a problem.
    let file_key = raw.key_file.as_ref().and_then(|path| {
        let read = match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            Ok(text) => {
                let key = text.trim_end_matches(['\r', '\n']).to_owned();
                if key.chars().any(|c| c.is_control()) {
                    Err(format!("{} holds more than one line", path.display()))
                } else {
                    Ok((!key.is_empty()).then(|| AdminKey::new(key)))
                }
            }
        };
        p.check("admin.key_file", read).flatten()
    });
    p.clean_since(
        mark,
        AdminConfig {
            listen: admin_listen?,
            key_env,
            key_file: raw.key_file,
            file_key,
        },
    )
}

/// The declared abilities: the valid names, once each, even when others are not (the
/// routes and `default_abilities` are checked against these).
fn abilities(p: &mut Problems, names: &[String]) -> Vec<Ability> {
    let mut declared: Vec<Ability> = Vec::new();
    for (i, a) in names.iter().enumerate() {
        match Ability::new(a) {
            None => p.add(
                format!("abilities[{i}]"),
                format!("'{a}' is not an ability name ([A-Za-z0-9:._-]+)"),
            ),
            Some(_) if declared.iter().any(|d| d == a) => p.add(
                format!("abilities[{i}]"),
                format!("'{a}' is declared twice"),
            ),
            Some(ability) => declared.push(ability),
        }
    }
    declared
}

/// The declared ability named `a`; records a problem at `place` when there is none.
fn known(p: &mut Problems, declared: &[Ability], place: String, a: &str) -> Option<Ability> {
    let found = declared.iter().find(|d| *d == a).cloned();
    if found.is_none() {
        p.add(place, format!("'{a}' is not one of the declared abilities"));
    }
    found
}

fn default_abilities(
    p: &mut Problems,
    names: &[String],
    declared: &[Ability],
) -> Option<Vec<Ability>> {
    let mark = p.mark();
    let defaults = names
        .iter()
        .enumerate()
        .filter_map(|(i, a)| known(p, declared, format!("default_abilities[{i}]"), a))
        .collect();
    p.clean_since(mark, defaults)
}

/// The `tokens:` keys that become `TokenPolicy` fields (the abilities come from their own
/// sections, `forward_authorization` goes to `Config`).
struct TokenSection {
    prefix: String,
    lifetime: Option<i64>,
    cache_capacity: usize,
    max_per_user: usize,
}

fn positive(value: i64, what: &str) -> Result<i64, String> {
    if value > 0 {
        Ok(value)
    } else {
        Err(format!("{what} must be a positive number of minutes"))
    }
}

fn tokens(p: &mut Problems, raw: RawTokens) -> Option<TokenSection> {
    let mark = p.mark();
    let prefix = raw.prefix.unwrap_or_default();
    if prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_graphic() && b != b'|') {
        p.add(
            "tokens.prefix",
            "must be at most 64 printable ASCII characters, without '|'",
        );
    }
    let lifetime = raw.expiration_minutes.and_then(|m| {
        p.check(
            "tokens.expiration_minutes",
            positive(m, "expiration_minutes"),
        )
        .map(|m| m.saturating_mul(60))
    });
    let cache_capacity = raw.cache_capacity.unwrap_or(100_000);
    if cache_capacity == 0 {
        p.add("tokens.cache_capacity", "must be at least 1");
    }
    let max_per_user = raw.max_per_user.unwrap_or(1000);
    if max_per_user == 0 {
        p.add("tokens.max_per_user", "must be at least 1");
    }
    p.clean_since(
        mark,
        TokenSection {
            prefix,
            lifetime,
            cache_capacity,
            max_per_user,
        },
    )
}

/// `sled`: the store is sled, so no database holds Laravel's sessions table.
fn sessions(p: &mut Problems, raw: RawSessions, sled: bool) -> Option<SessionConfig> {
    let mark = p.mark();
    let cookie = raw.cookie.unwrap_or_else(|| "tokengate_session".into());
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
    let idle_minutes = p.check(
        "sessions.idle_minutes",
        positive(raw.idle_minutes.unwrap_or(120), "idle_minutes"),
    );
    let lifetime_minutes = p.check(
        "sessions.lifetime_minutes",
        positive(raw.lifetime_minutes.unwrap_or(1440), "lifetime_minutes"),
    );
    let laravel = raw.laravel.map(|raw| laravel(p, raw, &cookie, sled));
    p.clean_since(
        mark,
        SessionConfig {
            cookie,
            idle_minutes: idle_minutes?,
            lifetime_minutes: lifetime_minutes?,
            secure: raw.secure.unwrap_or(true),
            forward_cookie: raw.forward_cookie.unwrap_or(false),
            laravel: laravel.flatten(),
        },
    )
}

/// `sessions.laravel`; the keys are read from the environment here, so a missing or wrong
/// `APP_KEY` stops the start with the others.
fn laravel(
    p: &mut Problems,
    raw: RawLaravel,
    own_cookie: &str,
    sled: bool,
) -> Option<LaravelSessionConfig> {
    let mark = p.mark();
    let cipher_name = raw.cipher.unwrap_or_else(|| "AES-256-CBC".into());
    let cipher = Cipher::parse(&cipher_name);
    if cipher.is_none() {
        p.add(
            "sessions.laravel.cipher",
            format!(
                "'{cipher_name}' is not one of AES-128-CBC, AES-256-CBC, AES-128-GCM, AES-256-GCM"
            ),
        );
    }
    let key_env = raw.app_key_env.unwrap_or_else(|| "APP_KEY".into());
    let mut written: Vec<String> = Vec::new();
    match std::env::var(&key_env) {
        Ok(key) if !key.trim().is_empty() => written.push(key),
        _ => p.add(
            "sessions.laravel.app_key_env",
            format!(
                "the environment variable {key_env} is not set: it must hold the app's APP_KEY"
            ),
        ),
    }
    if let Some(previous_env) = &raw.previous_keys_env {
        let previous = std::env::var(previous_env).unwrap_or_default();
        written.extend(
            previous
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
        );
    }
    let keys = match (cipher, written.is_empty()) {
        (Some(cipher), false) => {
            let texts: Vec<&str> = written.iter().map(String::as_str).collect();
            p.check(
                "sessions.laravel.app_key_env",
                Keys::new(cipher, &texts)
                    .map_err(|e| format!("{key_env} and the previous keys: {e}")),
            )
        }
        _ => None,
    };
    let cookie = raw.cookie.unwrap_or_else(|| "laravel_session".into());
    if cookie.is_empty()
        || cookie == own_cookie
        || !cookie
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b))
    {
        p.add(
            "sessions.laravel.cookie",
            format!("'{cookie}' is not a cookie name other than sessions.cookie"),
        );
    }
    let driver = match raw.driver.as_deref().unwrap_or("database") {
        "database" => {
            if sled {
                p.add(
                    "sessions.laravel",
                    "reads Laravel's sessions table: store.kind must be the app's database (postgres or mysql), or driver redis",
                );
            }
            let table_name = raw.table.unwrap_or_else(|| "sessions".into());
            let table = TableName::parse(&table_name);
            if table.is_none() {
                p.add(
                    "sessions.laravel.table",
                    format!("'{table_name}' is not a table name ([A-Za-z_][A-Za-z0-9_]*, optionally schema.table)"),
                );
            }
            table.map(|table| LaravelDriver::Database { table })
        }
        "redis" => {
            let url_env = raw
                .redis_url_env
                .unwrap_or_else(|| "TOKENGATE_REDIS_URL".into());
            let url = std::env::var(&url_env).unwrap_or_default();
            // The URL may hold a password: no message repeats it.
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                p.add(
                    "sessions.laravel.redis_url_env",
                    format!("the environment variable {url_env} must hold the redis://… URL of the app's Redis"),
                );
            }
            Some(LaravelDriver::Redis {
                url,
                // Laravel 8–10 with APP_NAME Laravel: the connection's prefix, the cache
                // store's, and ':'.
                prefix: raw
                    .redis_prefix
                    .unwrap_or_else(|| "laravel_database_laravel_cache:".into()),
            })
        }
        other => {
            p.add(
                "sessions.laravel.driver",
                format!("'{other}' is not database or redis"),
            );
            None
        }
    };
    let lifetime_minutes = p.check(
        "sessions.laravel.lifetime_minutes",
        positive(raw.lifetime_minutes.unwrap_or(120), "lifetime_minutes"),
    );
    let json = match raw.serialization.as_deref().unwrap_or("php") {
        "php" => Some(false),
        "json" => Some(true),
        other => {
            p.add(
                "sessions.laravel.serialization",
                format!("'{other}' is not php or json (Laravel's session.serialization)"),
            );
            None
        }
    };
    let login_url = raw.login_url.unwrap_or_else(|| "/login".into());
    if !login_url.starts_with('/')
        || login_url.starts_with("//")
        || login_url.bytes().any(|b| b.is_ascii_control())
    {
        p.add(
            "sessions.laravel.login_url",
            format!("'{login_url}' is not a path on this site (/login)"),
        );
    }
    p.clean_since(
        mark,
        LaravelSessionConfig {
            keys: keys?,
            cookie,
            driver: driver?,
            lifetime_minutes: lifetime_minutes?,
            json: json?,
            encrypt: raw.encrypt.unwrap_or(false),
            login_url,
        },
    )
}

fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|_| format!("'{text}' is not a header name"))
}

fn headers(p: &mut Problems, raw: RawHeaders) -> Option<IdentityHeaders> {
    let mark = p.mark();
    let mut header = |place: &str, value: Option<String>, default: &str| {
        p.check(place, header_name(value.as_deref().unwrap_or(default)))
    };
    let abilities = header("headers.abilities", raw.abilities, "x-token-abilities");
    let user = header("headers.user", raw.user, "x-auth-user");
    let token_id = header("headers.token_id", raw.token_id, "x-auth-token-id");
    let method = header("headers.method", raw.method, "x-auth-method");
    // Two of the valid names alike is a problem whether or not the others are valid.
    let names = [&abilities, &user, &token_id, &method];
    for (i, a) in names.iter().enumerate() {
        if let Some(a) = a {
            if names[..i].iter().any(|b| b.as_ref() == Some(a)) {
                p.add("headers", format!("'{a}' is used for two identity headers"));
            }
        }
    }
    p.clean_since(
        mark,
        IdentityHeaders {
            abilities: abilities?,
            user: user?,
            token_id: token_id?,
            method: method?,
        },
    )
}

fn trusted_proxy(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{text}' is not an IP address or CIDR range"))
}

fn trusted_proxies(p: &mut Problems, list: &[String]) -> Option<Vec<IpNet>> {
    let mark = p.mark();
    let nets = list
        .iter()
        .enumerate()
        .filter_map(|(i, t)| p.check(&format!("trusted_proxies[{i}]"), trusted_proxy(t)))
        .collect();
    p.clean_since(mark, nets)
}

/// The route table, each pattern parsed once: the segments that validated it are the ones
/// the table is compiled from.
fn routes(p: &mut Problems, raw: Vec<RawRoute>, declared: &[Ability]) -> Option<RouteTable> {
    let mark = p.mark();
    if raw.is_empty() {
        p.add(
            "routes",
            "at least one route is needed: a request that matches no route is refused",
        );
    }
    let mut parsed = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        if let Some(route) = route(p, i, r, declared) {
            parsed.push(route);
        }
    }
    p.clean_since(mark, RouteTable::from_parsed(parsed))
}

/// `routes[i]`, with its parsed pattern.
fn route(
    p: &mut Problems,
    i: usize,
    r: RawRoute,
    declared: &[Ability],
) -> Option<(Route, Vec<Segment>)> {
    let place = format!("routes[{i}]");
    let mark = p.mark();
    let segments = p.check(&format!("{place}.path"), parse_pattern(&r.path));
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
    let mut required = |field: &str, list: &[String]| -> Box<[Ability]> {
        list.iter()
            .enumerate()
            .filter_map(|(j, a)| known(p, declared, format!("{place}.{field}[{j}]"), a))
            .collect()
    };
    let all_of = required("abilities", &r.abilities);
    let any_of = required("any_ability", &r.any_ability);
    if auth == Some(AuthMode::None) && !(r.abilities.is_empty() && r.any_ability.is_empty()) {
        p.add(
            &place,
            "a public route (auth: none) cannot require abilities",
        );
    }
    let route = Route {
        index: i,
        pattern: r.path.into(),
        methods,
        auth: auth?,
        all_of,
        any_of,
    };
    p.clean_since(mark, (route, segments?))
}

fn access_log(p: &mut Problems, raw: RawAccessLog) -> Option<Option<AccessLogFormat>> {
    match raw.format.as_deref().unwrap_or("text") {
        _ if !raw.enabled.unwrap_or(false) => Some(None),
        "text" => Some(Some(AccessLogFormat::Text)),
        "json" => Some(Some(AccessLogFormat::Json)),
        other => {
            p.add(
                "access_log.format",
                format!("'{other}' is not a format: text or json"),
            );
            None
        }
    }
}

/// `value` (or `default`) seconds, when it is a sensible timeout.
fn seconds(p: &mut Problems, place: &str, value: Option<f64>, default: f64) -> Option<Duration> {
    let value = value.unwrap_or(default);
    if value.is_finite() && value > 0.0 && value <= 86_400.0 {
        Some(Duration::from_secs_f64(value))
    } else {
        p.add(place, "must be a number of seconds above 0, at most 86400");
        None
    }
}

fn timeouts(p: &mut Problems, raw: RawTimeouts) -> Option<Timeouts> {
    let upstream_connect = seconds(
        p,
        "timeouts.upstream_connect_seconds",
        raw.upstream_connect_seconds,
        5.0,
    );
    let upstream_response = seconds(
        p,
        "timeouts.upstream_response_seconds",
        raw.upstream_response_seconds,
        60.0,
    );
    let client_header = seconds(
        p,
        "timeouts.client_header_seconds",
        raw.client_header_seconds,
        30.0,
    );
    let idle = seconds(p, "timeouts.idle_seconds", raw.idle_seconds, 60.0);
    let client_body = seconds(
        p,
        "timeouts.client_body_seconds",
        raw.client_body_seconds,
        60.0,
    );
    let client_send = seconds(
        p,
        "timeouts.client_send_seconds",
        raw.client_send_seconds,
        60.0,
    );
    let upstream_body_idle = seconds(
        p,
        "timeouts.upstream_body_idle_seconds",
        raw.upstream_body_idle_seconds,
        300.0,
    );
    let tunnel_idle = seconds(
        p,
        "timeouts.tunnel_idle_seconds",
        raw.tunnel_idle_seconds,
        300.0,
    );
    Some(Timeouts {
        upstream_connect: upstream_connect?,
        upstream_response: upstream_response?,
        client_header: client_header?,
        idle: idle?,
        client_body: client_body?,
        client_send: client_send?,
        upstream_body_idle: upstream_body_idle?,
        tunnel_idle: tunnel_idle?,
    })
}

/// The `Upgrade` protocols allowed, in lower case (WebSocket when not given).
fn upgrades(p: &mut Problems, list: Option<Vec<String>>) -> Option<Vec<String>> {
    let Some(list) = list else {
        return Some(vec!["websocket".to_owned()]);
    };
    let mark = p.mark();
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
    p.clean_since(
        mark,
        list.into_iter().map(|p| p.to_ascii_lowercase()).collect(),
    )
}

fn limits(p: &mut Problems, raw: RawLimits) -> Option<Limits> {
    let mark = p.mark();
    let max_header_bytes = raw.max_header_bytes.unwrap_or(64 * 1024);
    if !(8192..=1024 * 1024).contains(&max_header_bytes) {
        p.add(
            "limits.max_header_bytes",
            "must be between 8192 and 1048576",
        );
    }
    let max_connections = raw.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        p.add("limits.max_connections", "must be at least 1");
    }
    let body_scan_bytes = raw.body_scan_bytes.unwrap_or(64 * 1024);
    if !(1024..=16 * 1024 * 1024).contains(&body_scan_bytes) {
        p.add(
            "limits.body_scan_bytes",
            "must be between 1024 and 16777216",
        );
    }
    p.clean_since(
        mark,
        Limits {
            max_header_bytes,
            max_connections,
            body_scan_bytes,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::{problems, Config};

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
    fn upstream_ca_is_read_when_the_upstream_is_broken() {
        let got = problems(
            "upstream: htps:/a\nupstream_ca: /nonexistent/ca.pem\nroutes:\n  - path: /**\n",
        );
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(got[0].starts_with("upstream: "), "{got:#?}");
        assert!(
            got[1].starts_with("upstream_ca: cannot read /nonexistent/ca.pem"),
            "{got:#?}"
        );
    }

    #[test]
    fn admin_port_must_differ_from_proxy_port() {
        let got = problems("listen: 0.0.0.0:9000\nadmin:\n  listen: 127.0.0.1:9000\nupstream: http://127.0.0.1:1\nroutes:\n  - path: /**\n");
        assert!(got[0].starts_with("admin.listen: must differ"), "{got:?}");
        let got = problems("listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nroutes:\n  - path: /**\n");
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn duplicate_identity_headers_are_found_beside_a_bad_one() {
        let got = problems("upstream: http://127.0.0.1:1\nheaders:\n  abilities: \"bad header\"\n  user: X-Same\n  method: x-same\nroutes:\n  - path: /**\n");
        assert_eq!(
            got,
            [
                "headers.abilities: 'bad header' is not a header name",
                "headers: 'x-same' is used for two identity headers"
            ]
        );
    }

    const ROUTES: &str = "upstream: http://127.0.0.1:1\nroutes:\n  - path: /**\n";

    #[test]
    fn a_database_store_takes_sanctums_defaults() {
        let c = Config::parse(&format!("store:\n  kind: postgres\n{ROUTES}")).unwrap();
        let super::StoreConfig::Sql(sql) = &c.store else {
            panic!("{:?}", c.store)
        };
        assert_eq!(sql.kind, super::SqlKind::Postgres);
        assert_eq!(sql.url_env, "TOKENGATE_DATABASE_URL");
        assert_eq!(
            sql.tokens_table.quoted(sql.kind),
            "\"personal_access_tokens\""
        );
        assert_eq!(sql.tokenable_type, "App\\Models\\User");
        assert!(!sql.read_only);
        assert_eq!(sql.sync_interval, std::time::Duration::from_millis(500));
        assert_eq!(sql.max_stale, std::time::Duration::from_secs(30));
        let c = Config::parse(&format!(
            "store:\n  kind: mysql\n  tokens_table: app.tokens\n  read_only: true\n{ROUTES}"
        ))
        .unwrap();
        let super::StoreConfig::Sql(sql) = &c.store else {
            panic!("{:?}", c.store)
        };
        assert_eq!(sql.tokens_table.quoted(sql.kind), "`app`.`tokens`");
        assert!(sql.read_only);
    }

    #[test]
    fn store_keys_belong_to_their_kind() {
        let got = problems(&format!(
            "store:\n  path: /x\n  url_env: DB\n  sync_interval_ms: 100\n{ROUTES}"
        ));
        assert_eq!(
            got,
            [
                "store.url_env: only for a database store (kind: postgres or mysql)",
                "store.sync_interval_ms: only for a database store (kind: postgres or mysql)",
            ]
        );
        let got = problems(&format!(
            "store:\n  kind: postgres\n  path: /x\n  cache_mb: 4\n{ROUTES}"
        ));
        assert_eq!(
            got,
            [
                "store.path: only for kind: sled",
                "store.cache_mb: only for kind: sled"
            ]
        );
        let got = problems(&format!("store:\n  kind: oracle\n{ROUTES}"));
        assert_eq!(
            got,
            ["store.kind: 'oracle' is not a store: sled, postgres or mysql"]
        );
    }

    #[test]
    fn table_names_are_identifiers_and_nothing_else() {
        for (name, valid) in [
            ("personal_access_tokens", true),
            ("public.personal_access_tokens", true),
            ("_t1", true),
            ("t; DROP TABLE users", false),
            ("\"t\"", false),
            ("`t`", false),
            ("a.b.c", false),
            ("1t", false),
            ("", false),
            (".t", false),
            ("t.", false),
            ("tökens", false),
            (&"t".repeat(64), false),
        ] {
            let got = problems(&format!(
                "store:\n  kind: postgres\n  tokens_table: '{name}'\n{ROUTES}"
            ));
            assert_eq!(got.is_empty(), valid, "{name:?}: {got:?}");
        }
    }

    #[test]
    fn the_re_check_keeps_the_one_second_promise() {
        for (ms, valid) in [
            (10, true),
            (1000, true),
            (0, false),
            (9, false),
            (1001, false),
        ] {
            let got = problems(&format!(
                "store:\n  kind: mysql\n  sync_interval_ms: {ms}\n{ROUTES}"
            ));
            assert_eq!(got.is_empty(), valid, "{ms}: {got:?}");
        }
        let got = problems(&format!(
            "store:\n  kind: mysql\n  max_stale_seconds: 86401\n  url_env: ''\n{ROUTES}"
        ));
        assert_eq!(
            got,
            [
                "store.url_env: must name an environment variable",
                "store.max_stale_seconds: must be at most 86400"
            ]
        );
    }
}
