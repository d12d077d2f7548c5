//! The test rig for Laravel's own sessions (issue 18): `tests/laravel/session.php` against
//! real servers, checked byte for byte where Laravel's format is fixed. What tokengate does
//! with these sessions is tested elsewhere; this file makes sure the sessions, rows, keys and
//! cookies the rig produces are what a Laravel app produces.
//!
//! - the sessions table of `php artisan session:table`, on PostgreSQL and MariaDB;
//! - login (a row with `user_id`, or NULL with `--no-user-column`), Auth::logout (the row
//!   kept, no user), logout with invalidate (the row deleted), expiry, on both databases;
//! - the same on Redis (the key `laravel_database_laravel_cache:<id>`, its TTL, its value);
//! - each cipher's cookie shape and round trip, XSRF-TOKEN, key rotation, cookie names;
//! - PHP and JSON serialization, encrypted payloads.

mod common;

use base64::Engine;
use common::db::{Database, Kind, Mariadb, Postgres};
use common::laravel::{laravel_key, laravel_session, laravel_session_output, LOGIN_WEB_KEY};
use common::redis::Redis;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

const CIPHERS: [&str; 4] = ["AES-256-CBC", "AES-128-CBC", "AES-256-GCM", "AES-128-GCM"];

/// The script with a set of settings.
#[derive(Clone)]
struct Rig {
    env: Vec<(String, String)>,
}

impl Rig {
    fn new(env: &[(&str, &str)]) -> Rig {
        Rig {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn with(&self, name: &str, value: &str) -> Rig {
        let mut rig = self.clone();
        rig.env.retain(|(k, _)| k != name);
        rig.env.push((name.into(), value.into()));
        rig
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn run(&self, args: &[&str]) -> Value {
        laravel_session(&self.pairs(), args)
    }

    /// Exit code and stderr of a run expected to fail.
    fn fails(&self, args: &[&str]) -> (i32, String) {
        let output = laravel_session_output(&self.pairs(), args);
        assert!(
            !output.status.success(),
            "session.php {args:?} succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        (
            output.status.code().expect("exit code"),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {value}"))
}

/// A PHP-serialized string.
fn s(value: &str) -> String {
    format!("s:{}:\"{value}\";", value.len())
}

/// The string a PHP-serialized string (`s:N:"…";`) holds, its length checked.
fn php_string(serialized: &str) -> &str {
    let bad = || panic!("not a PHP-serialized string: {serialized}");
    let Some((len, rest)) = serialized
        .strip_prefix("s:")
        .and_then(|rest| rest.split_once(":\""))
    else {
        bad()
    };
    let Some(inner) = rest.strip_suffix("\";") else {
        bad()
    };
    assert_eq!(len.parse::<usize>().ok(), Some(inner.len()), "{serialized}");
    inner
}

const FLASH: &str = r#"s:6:"_flash";a:2:{s:3:"old";a:0:{}s:3:"new";a:0:{}}"#;

/// The session after `login`, PHP-serialized (Laravel 8's Store::save): `_token`, then
/// `_previous` and `_flash` from the login page, then the guard's key. `user` is the value
/// as PHP serializes it (`i:42;` or `s:…`).
fn logged_in(token: &str, user: &str) -> String {
    format!(
        "a:4:{{{}{}{}a:1:{{{}{}}}{FLASH}{}{user}}}",
        s("_token"),
        s(token),
        s("_previous"),
        s("url"),
        s("http://localhost/dashboard"),
        s(LOGIN_WEB_KEY)
    )
}

/// A session without a user: `_token`, `_previous` (if a page was loaded), `_flash`.
fn guest(token: &str, previous: Option<&str>) -> String {
    match previous {
        Some(url) => format!(
            "a:3:{{{}{}{}a:1:{{{}{}}}{FLASH}}}",
            s("_token"),
            s(token),
            s("_previous"),
            s("url"),
            s(url)
        ),
        None => format!("a:2:{{{}{}{FLASH}}}", s("_token"), s(token)),
    }
}

/// Store::generateSessionId: Str::random(40), letters and digits.
fn assert_session_id(id: &str) {
    assert!(
        id.len() == 40 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "not a Laravel session id: {id:?}"
    );
}

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {text:?}"))
}

fn b64_text(text: &str) -> String {
    String::from_utf8(b64(text)).expect("UTF-8")
}

/// PHP's rawurlencode (Symfony's Cookie encodes values with it): all but A-Z a-z 0-9 - _ . ~
const RAWURLENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// An encrypted cookie as sent in the Cookie header: rawurlencode(base64(JSON)). Returns
/// the Encrypter payload's JSON, checked for the shape of `cipher`.
fn cookie_payload(cookie: &str, cipher: &str) -> Value {
    let decoded = percent_encoding::percent_decode_str(cookie)
        .decode_utf8()
        .expect("UTF-8")
        .into_owned();
    assert_eq!(
        percent_encoding::utf8_percent_encode(&decoded, RAWURLENCODE).to_string(),
        cookie,
        "the cookie is rawurlencode()d"
    );
    let payload: Value = serde_json::from_str(&b64_text(&decoded)).expect("JSON payload");
    encrypter_payload_shape(&payload, cipher);
    payload
}

/// Encrypter::encrypt's JSON: {iv, value, mac, tag} in that order; CBC: a 16-byte IV, the
/// hex HMAC-SHA256, an empty tag; GCM: a 12-byte IV, no MAC, a 16-byte tag.
fn encrypter_payload_shape(payload: &Value, cipher: &str) {
    let keys: Vec<&str> = payload
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, ["iv", "mac", "tag", "value"], "{payload}");
    let gcm = cipher.ends_with("GCM");
    assert_eq!(b64(str_of(payload, "iv")).len(), if gcm { 12 } else { 16 });
    assert!(!b64(str_of(payload, "value")).is_empty());
    let mac = str_of(payload, "mac");
    let tag = str_of(payload, "tag");
    if gcm {
        assert_eq!(mac, "", "{payload}");
        assert_eq!(b64(tag).len(), 16, "{payload}");
    } else {
        assert!(
            mac.len() == 64 && mac.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{payload}"
        );
        assert_eq!(tag, "", "{payload}");
    }
}

/// The cookies of a login or logout: the session cookie decrypts (Laravel's EncryptCookies)
/// to `<sha1 hmac>|<id>`, is refused under another cookie name, and XSRF-TOKEN holds the
/// session's CSRF token.
fn check_cookies(rig: &Rig, state: &Value, cookie_name: &str) {
    let id = str_of(state, "id");
    let cookie = str_of(state, "cookie");
    assert_eq!(str_of(state, "cookie_name"), cookie_name);
    let seen = rig.run(&["decrypt-cookie", cookie_name, cookie]);
    assert_eq!(seen["value"], json!(id), "{seen}");
    let decrypted = str_of(&seen, "decrypted");
    let (prefix, rest) = decrypted.split_once('|').expect("prefix|value");
    assert!(
        prefix.len() == 40
            && prefix
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{decrypted}"
    );
    assert_eq!(rest, id);
    // Another cookie name: the same plaintext, but the prefix is not that name's.
    let moved = rig.run(&["decrypt-cookie", "XSRF-TOKEN", cookie]);
    assert_eq!(moved["value"], Value::Null, "{moved}");
    assert_eq!(moved["decrypted"], json!(decrypted));

    let xsrf = str_of(state, "xsrf_cookie");
    let token = str_of(state, "csrf_token");
    assert_eq!(token.len(), 40);
    let seen = rig.run(&["decrypt-cookie", "XSRF-TOKEN", xsrf]);
    assert_eq!(seen["value"], json!(token), "{seen}");
    assert_eq!(
        str_of(state, "xsrf_header"),
        percent_encoding::percent_decode_str(xsrf)
            .decode_utf8()
            .unwrap(),
        "Axios sends the cookie decoded"
    );
    let set_cookie = state["set_cookie"].as_array().expect("set_cookie");
    assert!(
        set_cookie.iter().any(|c| c
            .as_str()
            .unwrap()
            .starts_with(&format!("{cookie_name}={cookie}; expires="))
            && c.as_str()
                .unwrap()
                .ends_with("; path=/; httponly; samesite=lax")),
        "{set_cookie:?}"
    );
    assert!(
        set_cookie.iter().any(|c| c
            .as_str()
            .unwrap()
            .starts_with(&format!("XSRF-TOKEN={xsrf}; expires="))
            && c.as_str().unwrap().ends_with("; path=/; samesite=lax")),
        "XSRF-TOKEN is readable by scripts (not httponly): {set_cookie:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Databases.

struct Row {
    user_id: Option<i64>,
    ip_address: Option<String>,
    user_agent: Option<String>,
    last_activity: i64,
    payload: String,
}

fn nullable(field: &str) -> Option<String> {
    // psql -A prints NULL as an empty field, mariadb --batch as NULL.
    (!field.is_empty() && field != "NULL").then(|| field.to_owned())
}

fn row(db: &dyn Database, table: &str, id: &str) -> Option<Row> {
    assert_session_id(id);
    let line = db.sql(&format!(
        "SELECT user_id, ip_address, user_agent, last_activity, payload FROM {table} WHERE id = '{id}'"
    ));
    if line.is_empty() {
        return None;
    }
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields.len(), 5, "{line}");
    Some(Row {
        user_id: nullable(fields[0]).map(|v| v.parse().expect("user_id")),
        ip_address: nullable(fields[1]),
        user_agent: nullable(fields[2]),
        last_activity: fields[3].parse().expect("last_activity"),
        payload: fields[4].to_owned(),
    })
}

fn count(db: &dyn Database, table: &str) -> usize {
    db.sql(&format!("SELECT count(*) FROM {table}"))
        .parse()
        .unwrap()
}

/// The columns and indexes of the table, as the server describes them.
fn schema(db: &dyn Database, table: &str) -> (String, String) {
    match db.kind() {
        Kind::Postgres => (
            db.sql(&format!(
                "SELECT column_name, data_type, coalesce(character_maximum_length::text, '-'), is_nullable \
                 FROM information_schema.columns WHERE table_name = '{table}' ORDER BY ordinal_position"
            )),
            db.sql(&format!(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = '{table}' ORDER BY indexname"
            )),
        ),
        Kind::Mariadb => (
            db.sql(&format!(
                "SELECT column_name, column_type, is_nullable FROM information_schema.columns \
                 WHERE table_schema = DATABASE() AND table_name = '{table}' ORDER BY ordinal_position"
            )),
            db.sql(&format!(
                "SELECT index_name, column_name, non_unique FROM information_schema.statistics \
                 WHERE table_schema = DATABASE() AND table_name = '{table}' ORDER BY column_name"
            )),
        ),
    }
}

fn expected_schema(kind: Kind, table: &str) -> (String, String) {
    match kind {
        Kind::Postgres => (
            [
                "id\tcharacter varying\t255\tNO",
                "user_id\tbigint\t-\tYES",
                "ip_address\tcharacter varying\t45\tYES",
                "user_agent\ttext\t-\tYES",
                "payload\ttext\t-\tNO",
                "last_activity\tinteger\t-\tNO",
            ]
            .join("\n"),
            [
                format!("{table}_last_activity_index\tCREATE INDEX {table}_last_activity_index ON public.{table} USING btree (last_activity)"),
                format!("{table}_pkey\tCREATE UNIQUE INDEX {table}_pkey ON public.{table} USING btree (id)"),
                format!("{table}_user_id_index\tCREATE INDEX {table}_user_id_index ON public.{table} USING btree (user_id)"),
            ]
            .join("\n"),
        ),
        Kind::Mariadb => (
            [
                "id\tvarchar(255)\tNO",
                "user_id\tbigint(20) unsigned\tYES",
                "ip_address\tvarchar(45)\tYES",
                "user_agent\ttext\tYES",
                "payload\ttext\tNO",
                "last_activity\tint(11)\tNO",
            ]
            .join("\n"),
            [
                "PRIMARY\tid\t0".to_owned(),
                format!("{table}_last_activity_index\tlast_activity\t1"),
                format!("{table}_user_id_index\tuser_id\t1"),
            ]
            .join("\n"),
        ),
    }
}

/// Everything the rig does with the database driver, on one server.
fn database_sessions(db: &dyn Database) {
    let key = laravel_key("AES-256-CBC");
    let url = db.url();
    let rig = Rig::new(&[("APP_KEY", &key), ("DB_URL", &url)]);

    // migrate: the table of `php artisan session:table`, once.
    assert_eq!(
        rig.run(&["migrate"]),
        json!({"migrated": "sessions", "created": true})
    );
    assert_eq!(
        rig.run(&["migrate"]),
        json!({"migrated": "sessions", "created": false})
    );
    assert_eq!(
        schema(db, "sessions"),
        expected_schema(db.kind(), "sessions")
    );

    // login: one row (the login page's guest session was destroyed by the login), the
    // user in user_id and in the payload.
    let before = now();
    let login = rig.run(&["login", "42"]);
    let after = now();
    let id = str_of(&login, "id");
    let token = str_of(&login, "csrf_token");
    assert_eq!(login["user"], json!(42));
    assert_eq!(
        login["storage"],
        json!({"driver": "database", "table": "sessions"})
    );
    assert_eq!(count(db, "sessions"), 1);
    let stored = row(db, "sessions", id).expect("the session's row");
    assert_eq!(stored.user_id, Some(42));
    assert_eq!(stored.ip_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        stored.user_agent.as_deref(),
        Some("tokengate tests (tests/laravel/session.php)")
    );
    assert!((before..=after).contains(&stored.last_activity));
    // DatabaseSessionHandler stores the serialized session base64-encoded.
    assert_eq!(b64_text(&stored.payload), logged_in(token, "i:42;"));
    check_cookies(&rig, &login, "laravel_session");
    let shown = rig.run(&["show", id]);
    assert_eq!(shown["attributes"][LOGIN_WEB_KEY], json!(42));
    assert_eq!(shown["stored"]["data"], json!(logged_in(token, "i:42;")));

    // --no-user-column: user_id NULL, the user only in the payload (here a UUID, a string).
    let uuid = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d";
    let other = rig.run(&["login", uuid, "--no-user-column"]);
    let other_id = str_of(&other, "id");
    let stored = row(db, "sessions", other_id).expect("row");
    assert_eq!(stored.user_id, None);
    assert_eq!(
        b64_text(&stored.payload),
        logged_in(str_of(&other, "csrf_token"), &s(uuid))
    );
    // Another guard: its own key, and user_id (the default guard's) NULL.
    let admin = rig.run(&["login", "5", "--guard", "admin"]);
    let stored = row(db, "sessions", str_of(&admin, "id")).expect("row");
    assert_eq!(stored.user_id, None);
    assert!(b64_text(&stored.payload)
        .ends_with(r#"s:52:"login_admin_59ba36addc2b2f9401580f014c7f58ea4e30989d";i:5;}"#));

    // clear-user (Auth::logout without invalidate): the same row, no user.
    let cleared = rig.run(&["clear-user", id]);
    assert_eq!(str_of(&cleared, "id"), id);
    assert_eq!(cleared["user"], Value::Null);
    let stored = row(db, "sessions", id).expect("the row stays");
    assert_eq!(stored.user_id, None);
    assert_eq!(
        b64_text(&stored.payload),
        guest(token, Some("http://localhost/home"))
    );

    // logout (Auth::logout, invalidate, regenerateToken): the row deleted; the browser now
    // holds a new guest session.
    // (A UUID in the bigint user_id would fail, in Laravel too: the same app config.)
    let logout = rig.run(&["logout", other_id, "--no-user-column"]);
    assert_eq!(str_of(&logout, "destroyed"), other_id);
    assert!(row(db, "sessions", other_id).is_none());
    let fresh = str_of(&logout, "id");
    let stored = row(db, "sessions", fresh).expect("the new session's row");
    assert_eq!(stored.user_id, None);
    assert_eq!(
        b64_text(&stored.payload),
        guest(str_of(&logout, "csrf_token"), None)
    );
    check_cookies(&rig, &logout, "laravel_session");
    let (code, stderr) = rig.fails(&["logout", other_id]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no session"), "{stderr}");

    // expire: last_activity older than the lifetime; Laravel reads nothing from the row.
    let login = rig.run(&["login", "43"]);
    let id = str_of(&login, "id");
    let before = now();
    let expired = rig.run(&["expire", id]);
    let stored = row(db, "sessions", id).expect("the row stays");
    assert_eq!(json!(stored.last_activity), expired["last_activity"]);
    assert!((before - 7201..=now() - 7201).contains(&stored.last_activity));
    assert_eq!(rig.run(&["show", id])["attributes"], json!([]));
    // Within the lifetime: read as before.
    rig.run(&["expire", id, "--ago", "7100"]);
    // Again (likely the same second, so the same value: MySQL reports no row changed).
    rig.run(&["expire", id, "--ago", "7100"]);
    assert_eq!(
        rig.run(&["show", id])["attributes"][LOGIN_WEB_KEY],
        json!(43)
    );
    let short = rig.with("SESSION_LIFETIME", "1");
    short.run(&["expire", id, "--ago", "61"]);
    assert_eq!(short.run(&["show", id])["attributes"], json!([]));

    // JSON serialization (Laravel 9+): json_encode of the same attributes, base64-encoded.
    let json_rig = rig.with("SESSION_SERIALIZATION", "json");
    let login = json_rig.run(&["login", "42"]);
    let stored = row(db, "sessions", str_of(&login, "id")).expect("row");
    assert_eq!(
        b64_text(&stored.payload),
        format!(
            r#"{{"_token":"{}","_previous":{{"url":"http:\/\/localhost\/dashboard"}},"_flash":{{"old":[],"new":[]}},"{LOGIN_WEB_KEY}":42}}"#,
            str_of(&login, "csrf_token")
        )
    );
    assert_eq!(stored.user_id, Some(42));

    // Encrypted payloads, JSON, in another table: the column holds base64 of an Encrypter
    // payload; its plaintext is the JSON PHP-serialized as a string.
    let encrypted = json_rig
        .with("SESSION_ENCRYPT", "1")
        .with("SESSION_TABLE", "app_sessions");
    assert_eq!(
        encrypted.run(&["migrate"]),
        json!({"migrated": "app_sessions", "created": true})
    );
    assert_eq!(
        schema(db, "app_sessions"),
        expected_schema(db.kind(), "app_sessions")
    );
    let login = encrypted.run(&["login", "42"]);
    let id = str_of(&login, "id");
    assert_eq!(count(db, "app_sessions"), 1);
    let stored = row(db, "app_sessions", id).expect("row");
    assert_eq!(stored.user_id, Some(42));
    let payload: Value =
        serde_json::from_str(&b64_text(&b64_text(&stored.payload))).expect("Encrypter payload");
    encrypter_payload_shape(&payload, "AES-256-CBC");
    let json_text = format!(
        r#"{{"_token":"{}","_previous":{{"url":"http:\/\/localhost\/dashboard"}},"_flash":{{"old":[],"new":[]}},"{LOGIN_WEB_KEY}":42}}"#,
        str_of(&login, "csrf_token")
    );
    let shown = encrypted.run(&["show", id]);
    assert_eq!(shown["stored"]["plaintext"], json!(s(&json_text)));
    assert_eq!(shown["attributes"][LOGIN_WEB_KEY], json!(42));
    encrypted.run(&["logout", id]);
    assert!(row(db, "app_sessions", id).is_none());
}

#[test]
fn database_driver_on_postgres() {
    database_sessions(&Postgres::start());
}

#[test]
fn database_driver_on_mariadb() {
    database_sessions(&Mariadb::start());
}

// ---------------------------------------------------------------------------------------
// Redis.

#[test]
fn redis_driver() {
    let redis = Redis::start();
    let key = laravel_key("AES-256-CBC");
    let url = redis.url();
    let rig = Rig::new(&[
        ("APP_KEY", &key),
        ("SESSION_DRIVER", "redis"),
        ("REDIS_URL", &url),
    ]);

    // login: one key (the login page's session was destroyed), Laravel 8's default
    // prefixes, TTL = the lifetime, the value PHP-serialized a second time by RedisStore.
    let login = rig.run(&["login", "42"]);
    let id = str_of(&login, "id");
    let token = str_of(&login, "csrf_token");
    let redis_key = format!("laravel_database_laravel_cache:{id}");
    assert_eq!(
        login["storage"],
        json!({"driver": "redis", "key": redis_key, "database": 0})
    );
    assert_eq!(redis.keys("*"), std::slice::from_ref(&redis_key));
    assert!((7190..=7200).contains(&redis.ttl(&redis_key)));
    assert_eq!(
        String::from_utf8(redis.get(&redis_key).unwrap()).unwrap(),
        s(&logged_in(token, "i:42;"))
    );
    check_cookies(&rig, &login, "laravel_session");
    let shown = rig.run(&["show", id]);
    assert_eq!(shown["attributes"][LOGIN_WEB_KEY], json!(42));

    // clear-user: the key stays, without the user.
    let cleared = rig.run(&["clear-user", id]);
    assert_eq!(str_of(&cleared, "id"), id);
    assert_eq!(
        String::from_utf8(redis.get(&redis_key).unwrap()).unwrap(),
        s(&guest(token, Some("http://localhost/home")))
    );

    // logout: the key deleted, a new guest session's key.
    let logout = rig.run(&["logout", id]);
    assert!(!redis.exists(&redis_key));
    let fresh = format!("laravel_database_laravel_cache:{}", str_of(&logout, "id"));
    assert_eq!(redis.keys("*"), std::slice::from_ref(&fresh));
    assert_eq!(
        String::from_utf8(redis.get(&fresh).unwrap()).unwrap(),
        s(&guest(str_of(&logout, "csrf_token"), None))
    );
    check_cookies(&rig, &logout, "laravel_session");

    // expire: the TTL runs out, the key is gone.
    let login = rig.run(&["login", "7"]);
    let id = str_of(&login, "id");
    let redis_key = format!("laravel_database_laravel_cache:{id}");
    assert!(redis.exists(&redis_key));
    rig.run(&["expire", id]);
    assert!(!redis.exists(&redis_key));
    let shown = rig.run(&["show", id]);
    assert_eq!(shown["exists"], json!(false));
    let (code, stderr) = rig.fails(&["clear-user", id]);
    assert_eq!(code, 1, "{stderr}");

    // Other prefixes, database and lifetime; an encrypted payload, PHP-serialized.
    let other = rig
        .with("REDIS_URL", &format!("{url}/3"))
        .with("REDIS_PREFIX", "")
        .with("CACHE_PREFIX", "shop_cache")
        .with("SESSION_LIFETIME", "5")
        .with("SESSION_ENCRYPT", "1");
    let login = other.run(&["login", "8"]);
    let id = str_of(&login, "id");
    let redis_key = format!("shop_cache:{id}");
    assert_eq!(
        login["storage"],
        json!({"driver": "redis", "key": redis_key, "database": 3})
    );
    assert_eq!(redis.keys_in(3, "*"), std::slice::from_ref(&redis_key));
    assert!((290..=300).contains(&redis.command_in(3, &["TTL", &redis_key]).int()));
    let value = redis.command_in(3, &["GET", &redis_key]).text().unwrap();
    // s:N:"<Encrypter payload>"; whose plaintext is s:N:"a:4:{…}";
    let payload: Value =
        serde_json::from_str(&b64_text(php_string(&value))).expect("Encrypter payload");
    encrypter_payload_shape(&payload, "AES-256-CBC");
    let shown = other.run(&["show", id]);
    assert_eq!(
        shown["stored"]["plaintext"],
        json!(s(&logged_in(str_of(&login, "csrf_token"), "i:8;")))
    );
    assert!(redis.keys("*").len() == 1, "database 0 unchanged");

    // A Laravel 11/12 app's key (no ':' after the cache prefix), made with 8.83's RedisStore.
    let newer = rig
        .with("REDIS_PREFIX", "laravel_database_laravel_cache_")
        .with("CACHE_PREFIX", "");
    let login = newer.run(&["login", "11"]);
    let redis_key = format!("laravel_database_laravel_cache_{}", str_of(&login, "id"));
    assert_eq!(login["storage"]["key"], json!(redis_key));
    assert_eq!(
        String::from_utf8(redis.get(&redis_key).unwrap()).unwrap(),
        s(&logged_in(str_of(&login, "csrf_token"), "i:11;"))
    );
}

// ---------------------------------------------------------------------------------------
// Ciphers and cookies.

#[test]
fn every_cipher_makes_laravels_cookies() {
    let redis = Redis::start();
    let url = redis.url();
    for cipher in CIPHERS {
        let key = laravel_key(cipher);
        let raw_key = b64(key.strip_prefix("base64:").expect("base64: key"));
        assert_eq!(raw_key.len(), if cipher.contains("256") { 32 } else { 16 });
        let rig = Rig::new(&[
            ("APP_KEY", &key),
            ("SESSION_CIPHER", cipher),
            ("SESSION_DRIVER", "redis"),
            ("REDIS_URL", &url),
            ("SESSION_COOKIE", "shop_session"),
        ]);
        let login = rig.run(&["login", "42"]);
        let id = str_of(&login, "id");
        assert_session_id(id);
        cookie_payload(str_of(&login, "cookie"), cipher);
        cookie_payload(str_of(&login, "xsrf_cookie"), cipher);
        check_cookies(&rig, &login, "shop_session");

        // The prefix is HMAC-SHA1 of the cookie name and "v2" under the raw key, in hex.
        let seen = rig.run(&["decrypt-cookie", "shop_session", str_of(&login, "cookie")]);
        let expected = std::process::Command::new("php")
            .args([
                "-r",
                "echo hash_hmac('sha1', 'shop_sessionv2', base64_decode($argv[1]));",
            ])
            .arg(key.strip_prefix("base64:").unwrap())
            .output()
            .expect("php");
        assert_eq!(
            str_of(&seen, "decrypted"),
            format!("{}|{id}", String::from_utf8_lossy(&expected.stdout))
        );

        // Another key of the same cipher: refused.
        let wrong = rig.with("APP_KEY", &laravel_key(cipher));
        let refused = wrong.run(&["decrypt-cookie", "shop_session", str_of(&login, "cookie")]);
        assert_eq!(refused["value"], Value::Null, "{refused}");
        assert_eq!(refused["decrypted"], Value::Null, "{refused}");
        assert!(refused["error"].is_string(), "{refused}");

        // Any value round-trips; the cookie is its own name's.
        let made = rig.run(&["encrypt-cookie", "remember", "a value; with ü + / ="]);
        let cookie = str_of(&made, "cookie");
        cookie_payload(cookie, cipher);
        assert_eq!(
            rig.run(&["decrypt-cookie", "remember", cookie])["value"],
            json!("a value; with ü + / =")
        );
        assert_eq!(
            rig.run(&["decrypt-cookie", "shop_session", cookie])["value"],
            Value::Null
        );

        // The payload encrypted with this cipher.
        let encrypted = rig.with("SESSION_ENCRYPT", "1");
        let login = encrypted.run(&["login", "9"]);
        let shown = encrypted.run(&["show", str_of(&login, "id")]);
        assert_eq!(
            shown["stored"]["plaintext"],
            json!(s(&logged_in(str_of(&login, "csrf_token"), "i:9;")))
        );
    }
}

#[test]
fn previous_keys_decrypt_cookies_of_the_old_key() {
    for cipher in ["AES-256-CBC", "AES-256-GCM"] {
        let old = laravel_key(cipher);
        let new = laravel_key(cipher);
        let unrelated = laravel_key(cipher);
        let id = "a".repeat(20) + &"B1".repeat(10);
        let before = Rig::new(&[("APP_KEY", &old), ("SESSION_CIPHER", cipher)]);
        let cookie = before.run(&["encrypt-cookie", "laravel_session", &id]);
        let cookie = str_of(&cookie, "cookie");

        let after = Rig::new(&[("APP_KEY", &new), ("SESSION_CIPHER", cipher)]);
        assert_eq!(
            after.run(&["decrypt-cookie", "laravel_session", cookie])["value"],
            Value::Null
        );
        for previous in [old.clone(), format!("{unrelated},{old}")] {
            let rotated = after.with("APP_PREVIOUS_KEYS", &previous);
            let seen = rotated.run(&["decrypt-cookie", "laravel_session", cookie]);
            assert_eq!(seen["value"], json!(id), "{cipher} {seen}");
            // The prefix is the old key's; a cookie of the new key is read too.
            let fresh = rotated.run(&["encrypt-cookie", "laravel_session", &id]);
            assert_eq!(
                after.run(&[
                    "decrypt-cookie",
                    "laravel_session",
                    str_of(&fresh, "cookie")
                ])["value"],
                json!(id)
            );
        }
        let only_unrelated = after.with("APP_PREVIOUS_KEYS", &unrelated);
        assert_eq!(
            only_unrelated.run(&["decrypt-cookie", "laravel_session", cookie])["value"],
            Value::Null
        );
    }
}

#[test]
fn bad_usage_and_missing_settings() {
    let key = laravel_key("AES-256-CBC");
    let rig = Rig::new(&[("APP_KEY", &key)]);
    let cases: [&[&str]; 8] = [
        &["frobnicate"],
        &[],
        &["login"],
        &["logout"],
        &["decrypt-cookie", "only-a-name"],
        &["expire", "x", "--ago"],
        &["show", "x", "--ago", "1"],
        &["login", "1", "--no-such-option"],
    ];
    for args in cases {
        let (code, stderr) = rig.fails(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
    for (name, value) in [
        ("SESSION_DRIVER", "file"),
        ("SESSION_CIPHER", "AES-192-CBC"),
        ("SESSION_SERIALIZATION", "igbinary"),
        ("SESSION_ENCRYPT", "yes"),
    ] {
        let (code, stderr) = rig.with(name, value).fails(&["key"]);
        assert_eq!(code, 2, "{name}={value}: {stderr}");
    }
    // The database driver without DB_URL.
    let (code, stderr) = rig.fails(&["login", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("DB_URL"), "{stderr}");
    // No APP_KEY, or one of the wrong size for the cipher: Laravel refuses (exit 1).
    let (code, stderr) = Rig::new(&[]).fails(&["encrypt-cookie", "a", "b"]);
    assert_eq!(code, 1, "{stderr}");
    let (code, stderr) =
        rig.with("SESSION_CIPHER", "AES-128-CBC")
            .fails(&["encrypt-cookie", "a", "b"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("incorrect key length"), "{stderr}");
}
