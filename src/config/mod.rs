//! The typed configuration the rest of tokengate uses, and its entry points: `Config::load`
//! and `Config::parse` read the YAML into the raw structs of `raw` (every one
//! `deny_unknown_fields`, since a typo in an auth config is a hole), and `validate` checks
//! every section, reporting every problem with its place in the file at once.

mod raw;
mod validate;

use crate::ability::Ability;
use crate::routes::RouteTable;
use http::uri::{Authority, Scheme};
use http::HeaderName;
use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
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
    pub store: StoreConfig,
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

/// sled's page cache when the config says nothing. Small on purpose: requests are served
/// from the token cache, and sled is read only for writes, listings and cache misses.
pub const DEFAULT_SLED_CACHE_BYTES: u64 = 2 * 1024 * 1024;

/// What the token rules of the config say (see `tokens:` and `abilities:`).
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// Sanctum's `token_prefix`.
    pub prefix: String,
    /// Sanctum's global `expiration`, in seconds from creation.
    pub lifetime: Option<i64>,
    /// The declared abilities; others are dropped when a token is created or updated.
    pub abilities: Vec<Ability>,
    /// What a token gets when its creator names no abilities.
    pub default_abilities: Vec<Ability>,
    /// At most this many tokens are cached; beyond it an arbitrary entry is evicted.
    pub cache_capacity: usize,
    /// A user may own at most this many tokens (`tokens.max_per_user`).
    pub max_per_user: usize,
}

/// Where tokens, users and sessions live (`store:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded default: one process, one directory.
    Sled {
        path: PathBuf,
        /// Bytes of sled's page cache.
        cache_bytes: u64,
    },
    /// A database shared by replicas, with Sanctum's token table.
    Sql(SqlStoreConfig),
}

impl StoreConfig {
    /// How long what was read from a shared store may be reused (`sync_interval_ms`); an
    /// exclusive store has no other writer, but the same half second is used.
    pub fn sync_interval(&self) -> std::time::Duration {
        match self {
            StoreConfig::Sql(sql) => sql.sync_interval,
            StoreConfig::Sled { .. } => std::time::Duration::from_millis(500),
        }
    }

    /// The sled directory, for a sled store.
    pub fn sled_path(&self) -> Option<&std::path::Path> {
        match self {
            StoreConfig::Sled { path, .. } => Some(path),
            StoreConfig::Sql(_) => None,
        }
    }
}

/// A PostgreSQL or MySQL/MariaDB store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlStoreConfig {
    pub kind: SqlKind,
    /// The environment variable holding the database URL (never the URL itself).
    pub url_env: String,
    /// Sanctum's `personal_access_tokens`, or another name; `schema.table` allowed.
    pub tokens_table: TableName,
    /// Written on create; on verify, a row of another type is refused.
    pub tokenable_type: String,
    /// tokengate never writes the tokens table (the app manages tokens).
    pub read_only: bool,
    /// How often cached entries are re-checked against the database.
    pub sync_interval: Duration,
    /// With the database unreachable, cached credentials keep working this long.
    pub max_stale: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlKind {
    Postgres,
    /// MySQL 8 and MariaDB 10.6+.
    Mysql,
}

/// A table name checked when the config is read: one or two parts (`schema.table`), each
/// `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes, so that quoting it as an identifier is
/// always safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub table: String,
}

impl TableName {
    pub fn parse(name: &str) -> Option<TableName> {
        let part = |p: &str| {
            let mut bytes = p.bytes();
            let first = bytes.next()?;
            let valid = (first.is_ascii_alphabetic() || first == b'_')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && p.len() <= 63;
            valid.then(|| p.to_owned())
        };
        match name.split_once('.') {
            None => Some(TableName {
                schema: None,
                table: part(name)?,
            }),
            Some((schema, table)) => Some(TableName {
                schema: Some(part(schema)?),
                table: part(table)?,
            }),
        }
    }

    /// The name quoted as an identifier (`"schema"."table"`, or with backquotes for MySQL).
    pub fn quoted(&self, kind: SqlKind) -> String {
        let q = match kind {
            SqlKind::Postgres => '"',
            SqlKind::Mysql => '`',
        };
        match &self.schema {
            Some(schema) => format!("{q}{schema}{q}.{q}{}{q}", self.table),
            None => format!("{q}{}{q}", self.table),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub key_env: String,
    /// `admin.key_file`: the key is this file's content (a mounted Secret), read when the
    /// config loads (so again at each reload), and the environment variable is not used.
    pub key_file: Option<PathBuf>,
    /// The key read from `key_file`.
    pub file_key: Option<AdminKey>,
}

/// An admin key as read from a file: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey(String);

impl AdminKey {
    pub fn new(key: String) -> Self {
        Self(key)
    }
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(redacted)")
    }
}

impl AdminConfig {
    /// The admin API's key: from `key_file` if set, else from the environment variable
    /// `key_env` names (read now). `None`: no key, the API is disabled.
    pub fn key(&self) -> Option<String> {
        match &self.key_file {
            Some(_) => self.file_key.as_ref().map(|k| k.0.clone()),
            None => std::env::var(&self.key_env).ok().filter(|k| !k.is_empty()),
        }
    }

    /// Where the key comes from, for messages.
    pub fn key_source(&self) -> String {
        match &self.key_file {
            Some(path) => format!("the file {} (admin.key_file)", path.display()),
            None => format!("the environment variable {}", self.key_env),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub cookie: String,
    pub idle_minutes: i64,
    pub lifetime_minutes: i64,
    pub secure: bool,
    pub forward_cookie: bool,
    /// A Laravel app's own session cookie, accepted as a session (`sessions.laravel`).
    pub laravel: Option<LaravelSessionConfig>,
}

/// Where a Laravel app keeps its sessions.
#[derive(Clone)]
pub enum LaravelDriver {
    /// Laravel's `sessions` table, in the database of `store` (which must be one).
    Database { table: TableName },
    /// Laravel's Redis cache store: the session under `prefix` + its id.
    Redis {
        /// `redis://…`, from the environment; it may hold a password: never printed.
        url: String,
        prefix: String,
    },
}

impl std::fmt::Debug for LaravelDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaravelDriver::Database { table } => write!(f, "Database({table:?})"),
            LaravelDriver::Redis { prefix, .. } => write!(f, "Redis(prefix {prefix:?})"),
        }
    }
}

/// `sessions.laravel`: how to read the session cookie of the Laravel app behind tokengate.
#[derive(Debug, Clone)]
pub struct LaravelSessionConfig {
    /// `APP_KEY` then `APP_PREVIOUS_KEYS`, read from the environment when the config loads.
    pub keys: crate::credential::laravel::Keys,
    pub cookie: String,
    /// Where Laravel keeps its sessions (`session.driver`).
    pub driver: LaravelDriver,
    /// `session.lifetime`: a row whose `last_activity` is older is no session.
    pub lifetime_minutes: i64,
    /// `session.serialization`: PHP's `serialize` (Laravel's default) or JSON.
    pub json: bool,
    /// `session.encrypt`: payloads encrypted with the app's key.
    pub encrypt: bool,
    /// Where a browser without a session is sent (the app's login page).
    pub login_url: String,
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
        let raw: raw::RawConfig = serde_yaml::from_str(text).map_err(|e| {
            let place = match e.location() {
                Some(at) => format!("line {} column {}", at.line(), at.column()),
                None => "config".into(),
            };
            ConfigError::one(place, e.to_string())
        })?;
        validate::validate(raw)
    }
}

/// Every problem `parse` reports for `yaml`, as `place: message` (the section tests').
#[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::AuthMode;

    const MINIMAL: &str = "upstream: http://127.0.0.1:3000\nroutes:\n  - path: /**\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.upstream.to_string(), "http://127.0.0.1:3000");
        assert_eq!(
            c.store,
            StoreConfig::Sled {
                path: PathBuf::from("./data/tokengate"),
                cache_bytes: DEFAULT_SLED_CACHE_BYTES
            }
        );
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
        let text = include_str!("../../config.example.yaml");
        let c = Config::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.tokens.prefix, "tg_");
        assert_eq!(c.tokens.default_abilities, vec!["read".to_string()]);
    }

    #[test]
    fn a_file_that_cannot_be_read_is_one_problem_at_its_path() {
        let e = Config::load(Path::new("/nonexistent/tokengate.yaml")).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].place, "/nonexistent/tokengate.yaml");
    }
}
