//! A Laravel app's own sessions, accepted as sessions (`sessions.laravel`): Laravel's
//! encrypted session cookie opened with the app's keys (`credential::laravel`), the row of
//! its `sessions` table read from the store's database (or its key in the app's Redis),
//! the user taken from the payload's `SessionGuard` login entry or, where the payload has
//! none, from the row's `user_id`.
//!
//! What a cookie stands for is kept for at most `store.sync_interval_ms`, so a logout in
//! Laravel (the row deleted or its user cleared) is refused on every replica within that
//! and a query. Anything that fails at any step is no session, never an error: only the
//! store failing is one. The session id and the payload never leave this module's values
//! (their `Debug` says nothing of them).

use crate::clock::Clock;
use crate::config::{LaravelDriver, LaravelSessionConfig as Settings};
use crate::cookies;
use crate::credential::php::{self, Value};
use crate::store::{LaravelSessionRow, Store, StoreError};
use base64::Engine;
use dashmap::DashMap;
use foldhash::fast::RandomState;
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The payload key `SessionGuard` keeps the user id under, for the `web` guard:
/// `login_web_` and the SHA-1 of `Illuminate\Auth\SessionGuard`.
pub const LOGIN_KEY: &str = "login_web_59ba36addc2b2f9401580f014c7f58ea4e30989d";

/// Remembered cookies at most; past it the memory starts over.
const MAX_REMEMBERED: usize = 100_000;

/// A Laravel session a request's cookie stands for, with a user logged in.
pub struct LaravelSession {
    id: Box<str>,
    user: Box<str>,
    user_value: HeaderValue,
    /// The session's `_token` (Laravel's CSRF token).
    csrf: Option<Box<[u8]>>,
    /// `last_activity` + the lifetime.
    expires_at: i64,
}

impl std::fmt::Debug for LaravelSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaravelSession")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl LaravelSession {
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The `X-Auth-User` value.
    pub fn user_value(&self) -> HeaderValue {
        self.user_value.clone()
    }

    /// Laravel's `VerifyCsrfToken` on the headers: `X-CSRF-TOKEN` as it is, or
    /// `X-XSRF-TOKEN` decrypted with the app's keys and its prefix removed, equal (in
    /// constant time) to the session's token.
    pub fn xsrf_matches(&self, settings: &Settings, headers: &HeaderMap) -> bool {
        let Some(csrf) = &self.csrf else {
            return false;
        };
        let given = match headers.get("x-csrf-token") {
            Some(plain) => plain.as_bytes().to_vec(),
            None => match headers.get(crate::reserved::XSRF_HEADER) {
                // As Laravel reads it: the header's bytes, not URL-decoded.
                Some(encrypted) => match settings.keys.open_xsrf_header(encrypted.as_bytes()) {
                    Some(token) => token,
                    None => return false,
                },
                None => return false,
            },
        };
        csrf.len() == given.len() && bool::from(csrf.ct_eq(&given))
    }
}

/// What a cookie was found to stand for, and when.
struct Remembered {
    session: Option<Arc<LaravelSession>>,
    at: Instant,
}

pub struct LaravelSessions {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The runtime that opens the Redis connection (its driver task runs there, whichever
    /// worker asks), and the connection once opened, with the URL it was opened to.
    home: Option<tokio::runtime::Handle>,
    redis: tokio::sync::OnceCell<(String, redis::aio::ConnectionManager)>,
    /// By the SHA-256 of the session id.
    remembered: DashMap<[u8; 32], Remembered, RandomState>,
}

impl LaravelSessions {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            home: tokio::runtime::Handle::try_current().ok(),
            redis: tokio::sync::OnceCell::new(),
            remembered: DashMap::default(),
        }
    }

    /// The Laravel session of a request's cookies, if one with a user is open. `fresh_for`:
    /// how long an answer may be reused.
    pub async fn authenticate(
        &self,
        settings: &Settings,
        fresh_for: Duration,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<LaravelSession>>, StoreError> {
        // The one cookie PHP would read under the name; none when several could be it.
        let Some(value) = cookies::value_read_as(headers, &settings.cookie) else {
            return Ok(None);
        };
        let decoded = url_decode(value);
        let Some(id) = settings.keys.open_cookie(&settings.cookie, &decoded) else {
            return Ok(None);
        };
        // `Store::isValidId`: 40 letters and digits.
        let Ok(id) = String::from_utf8(id) else {
            return Ok(None);
        };
        if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(None);
        }
        self.by_id(settings, fresh_for, &id).await
    }

    /// The session as it stands now (an open stream's check).
    pub async fn current(
        &self,
        settings: &Settings,
        fresh_for: Duration,
        session: &LaravelSession,
    ) -> Result<Option<Arc<LaravelSession>>, StoreError> {
        self.by_id(settings, fresh_for, &session.id).await
    }

    async fn by_id(
        &self,
        settings: &Settings,
        fresh_for: Duration,
        id: &str,
    ) -> Result<Option<Arc<LaravelSession>>, StoreError> {
        let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let now = self.clock.now();
        if let Some(known) = self.remembered.get(&key) {
            if known.at.elapsed() < fresh_for {
                return Ok(known
                    .session
                    .clone()
                    .filter(|session| now < session.expires_at));
            }
        }
        let row = match &settings.driver {
            LaravelDriver::Database { table } => self
                .store
                .laravel_session(table, id)
                .await?
                .map(Found::from_row),
            LaravelDriver::Redis { url, prefix } => self.read_redis(url, prefix, id).await?,
        };
        let session = row
            .and_then(|row| session_of(settings, id, &row, now))
            .map(Arc::new);
        if self.remembered.len() >= MAX_REMEMBERED {
            self.remembered.clear();
        }
        self.remembered.insert(
            key,
            Remembered {
                session: session.clone(),
                at: Instant::now(),
            },
        );
        Ok(session)
    }
}

impl LaravelSessions {
    /// The URL of the Redis connection, once one is open: it stays until a restart.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis.get().map(|(url, _)| url.as_str())
    }

    /// A session as Laravel's Redis cache store keeps it: under `prefix` + id, the session
    /// string PHP-serialized once more, expired by Redis itself (so no `last_activity`).
    async fn read_redis(
        &self,
        url: &str,
        prefix: &str,
        id: &str,
    ) -> Result<Option<Found>, StoreError> {
        // The kind only: a message could repeat the URL.
        let unreachable = |e: redis::RedisError| StoreError::Io(format!("redis: {:?}", e.kind()));
        let (_, connection) = self
            .redis
            .get_or_try_init(|| async {
                let client = redis::Client::open(url).map_err(unreachable)?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1);
                let open = async move { client.get_connection_manager_with_config(config).await };
                let opened = match &self.home {
                    Some(home) => home
                        .spawn(open)
                        .await
                        .map_err(|e| StoreError::Io(format!("redis: {e}")))?
                        .map_err(unreachable),
                    None => open.await.map_err(unreachable),
                };
                opened.map(|connection| (url.to_owned(), connection))
            })
            .await?;
        let mut connection = connection.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(format!("{prefix}{id}"))
            .query_async(&mut connection)
            .await
            .map_err(unreachable)?;
        let Some(value) = value else {
            return Ok(None);
        };
        let Some(Value::Str(payload)) = php::unserialize(&value) else {
            return Ok(None);
        };
        Ok(Some(Found {
            user_id: None,
            payload,
            last_activity: None,
        }))
    }
}

/// A session as its driver keeps it.
struct Found {
    user_id: Option<i64>,
    /// The session string (serialized, maybe encrypted).
    payload: Vec<u8>,
    /// None where the driver expires sessions itself (Redis).
    last_activity: Option<i64>,
}

impl Found {
    /// A row of the sessions table; its payload column is base64.
    fn from_row(row: LaravelSessionRow) -> Found {
        Found {
            user_id: row.user_id,
            payload: base64::engine::general_purpose::STANDARD
                .decode(row.payload.trim())
                .unwrap_or_default(),
            last_activity: Some(row.last_activity),
        }
    }
}

/// The session a row stands for, if it is open and has a user (as Laravel's
/// `DatabaseSessionHandler::read` and `SessionGuard::user` would find).
fn session_of(settings: &Settings, id: &str, row: &Found, now: i64) -> Option<LaravelSession> {
    let expires_at = row.last_activity.map_or(i64::MAX, |at| {
        at.saturating_add(settings.lifetime_minutes.saturating_mul(60))
    });
    if now >= expires_at {
        return None;
    }
    let attributes = attributes(settings, &row.payload);
    // The payload's entry is what Laravel's `web` guard reads; the row's `user_id` is the
    // default guard's as of the last write, taken only when the payload has no entry.
    let from_payload = attributes
        .as_ref()
        .and_then(|a| a.get(LOGIN_KEY))
        .and_then(Value::as_text);
    let user = match (from_payload, row.user_id) {
        (Some(user), _) => user,
        (None, Some(user)) => user.to_string(),
        (None, None) => return None,
    };
    crate::token_cache::check_user(&user).ok()?;
    let csrf = attributes
        .as_ref()
        .and_then(|a| a.get("_token"))
        .and_then(Value::as_text)
        .map(|t| t.into_bytes().into_boxed_slice());
    Some(LaravelSession {
        id: id.into(),
        user_value: HeaderValue::from_str(&user).ok()?,
        user: user.into(),
        csrf,
        expires_at,
    })
}

/// The session's attributes from its string: (`session.encrypt`) decrypted and
/// unserialized once, then PHP-unserialized or JSON.
fn attributes(settings: &Settings, payload: &[u8]) -> Option<Value> {
    let decrypted;
    let raw = if settings.encrypt {
        let (plain, _) = settings.keys.decrypt(payload)?;
        // `Encrypter::encrypt` serialized the string it was given.
        decrypted = match php::unserialize(&plain)? {
            Value::Str(inner) => inner,
            _ => return None,
        };
        &decrypted[..]
    } else {
        payload
    };
    if settings.json {
        let json: serde_json::Value = serde_json::from_slice(raw).ok()?;
        Some(from_json(&json, 0)?)
    } else {
        php::unserialize(raw)
    }
}

/// A JSON session payload as the PHP values it stands for.
fn from_json(json: &serde_json::Value, depth: usize) -> Option<Value> {
    if depth > 64 {
        return None;
    }
    Some(match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64()?),
        },
        serde_json::Value::String(s) => Value::Str(s.clone().into_bytes()),
        serde_json::Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| Some((Value::Int(i as i64), from_json(v, depth + 1)?)))
                .collect::<Option<_>>()?,
        ),
        serde_json::Value::Object(entries) => Value::Array(
            entries
                .iter()
                .map(|(k, v)| Some((Value::Str(k.clone().into_bytes()), from_json(v, depth + 1)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

/// PHP's `urldecode`, as `$_COOKIE` and Laravel read a cookie or header: `%XX` decoded and
/// `+` read as a space.
fn url_decode(value: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = value
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&spaced).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TableName;
    use crate::credential::laravel::{Cipher, Keys};

    fn settings() -> Settings {
        Settings {
            keys: Keys::new(Cipher::Aes256Cbc, &[&"k".repeat(32)]).unwrap(),
            cookie: "laravel_session".into(),
            driver: LaravelDriver::Database {
                table: TableName::parse("sessions").unwrap(),
            },
            lifetime_minutes: 120,
            json: false,
            encrypt: false,
            login_url: "/login".into(),
        }
    }

    fn found(user_id: Option<i64>, payload: &str, last_activity: i64) -> Found {
        Found {
            user_id,
            payload: payload.as_bytes().to_vec(),
            last_activity: Some(last_activity),
        }
    }

    fn user(row: &Found, now: i64) -> Option<String> {
        session_of(&settings(), &"a".repeat(40), row, now).map(|s| s.user().to_owned())
    }

    #[test]
    fn the_user_is_the_web_guards_then_the_rows() {
        let with_login = format!(r#"a:2:{{s:6:"_token";s:3:"abc";s:50:"{LOGIN_KEY}";i:42;}}"#);
        let without = r#"a:1:{s:6:"_token";s:3:"abc";}"#;
        let now = 1_000_000;
        assert_eq!(
            user(&found(None, &with_login, now), now).as_deref(),
            Some("42")
        );
        assert_eq!(
            user(&found(Some(5), &with_login, now), now).as_deref(),
            Some("42"),
            "the payload is what the web guard reads"
        );
        assert_eq!(
            user(&found(Some(5), without, now), now).as_deref(),
            Some("5")
        );
        assert_eq!(
            user(&found(None, without, now), now),
            None,
            "no user: no session"
        );
        assert_eq!(
            user(&found(Some(5), "garbage", now), now).as_deref(),
            Some("5")
        );
        // The lifetime counts from last_activity.
        assert!(user(&found(Some(5), without, now - 7199), now).is_some());
        assert_eq!(user(&found(Some(5), without, now - 7200), now), None);
        // A user id that cannot travel in a header is no session.
        let spaced = format!(r#"a:1:{{s:50:"{LOGIN_KEY}";s:3:"a b";}}"#);
        assert_eq!(user(&found(None, &spaced, now), now), None);
    }
}
