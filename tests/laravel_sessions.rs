//! tokengate in front of a Laravel app, unchanged: the app's own encrypted session cookie,
//! made by Laravel 8.83's own classes (tests/laravel/session.php: EncryptCookies,
//! StartSession, SessionGuard::login, DatabaseSessionHandler) in a real PostgreSQL and
//! MariaDB, is a session to a real `tokengate serve`: accepted on `auth: session` and
//! `auth: any` routes with the session headers, refused after Laravel's logout (within a
//! second), once the user is cleared, once expired, with a tampered MAC, another key, a
//! cookie moved to another name, an id of the wrong shape, or two candidates; accepted after
//! a key rotation through the previous keys; and its unsafe requests pass tokengate's CSRF
//! rules with Laravel's `X-XSRF-TOKEN` as an SPA sends it.

mod common;

use common::db::{Database, Mariadb, Postgres};
use common::laravel::{laravel_key, laravel_session};
use common::process::{bin, request, run, seen_identity, Server, URL_ENV};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokengate::echo::Echo;

const ADMIN_KEY: &str = "laravel-admin-key";

fn write_config(dir: &Path, kind: &str, upstream: SocketAddr) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nworkers: 1\nupstream: http://{upstream}\n\
             store:\n  kind: {kind}\n  url_env: {URL_ENV}\n  sync_interval_ms: 500\n\
             admin:\n  listen: 127.0.0.2:0\n  key_env: TOKENGATE_ADMIN_KEY\n\
             abilities: [read]\n\
             sessions:\n  laravel:\n    app_key_env: APP_KEY\n    previous_keys_env: APP_PREVIOUS_KEYS\n\
             \x20   cookie: laravel_session\n    lifetime_minutes: 120\n    login_url: /login\n\
             routes:\n  - path: /app/**\n    auth: session\n  - path: /api/**\n    abilities: [read]\n"
        ),
    )
    .unwrap();
    path
}

/// The status of a request and, when it reached the app, the identity it was sent with.
fn ask(
    gate: SocketAddr,
    echo: &Echo,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, Option<(String, String)>) {
    let before = echo.arrived();
    let (status, _) = request(gate, method, path, headers, "");
    let seen = (echo.arrived() > before).then(|| seen_identity(echo));
    (status, seen)
}

fn cookie(value: &str) -> String {
    format!("Cookie: laravel_session={value}\r\n")
}

/// Polls until `gate` refuses the session cookie; how long that took. Fails past 5 s.
fn refused_after(gate: SocketAddr, echo: &Echo, value: &str) -> Duration {
    let start = Instant::now();
    while ask(gate, echo, "GET", "/app/home", &cookie(value)).0 != 401 {
        assert!(start.elapsed() < Duration::from_secs(5), "never refused");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

fn laravel_app(db: &dyn Database, kind: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(async {
        Echo::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), kind, echo.addr);
    let url = db.url();
    let key = laravel_key("AES-256-CBC");
    let env = [
        ("APP_KEY", key.as_str()),
        ("DB_URL", url.as_str()),
        ("SESSION_DRIVER", "database"),
    ];
    laravel_session(&env, &["migrate"]);
    // The config needs the key wherever it is loaded.
    let migrated = bin(&url)
        .args(["migrate", "--config", cfg.to_str().unwrap()])
        .env("APP_KEY", &key)
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    let without_key = run(&url, &["migrate", "--config", cfg.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&without_key.stderr);
    assert_eq!(without_key.status.code(), Some(64), "{said}");
    assert!(
        said.contains("sessions.laravel.app_key_env") && said.contains("APP_KEY"),
        "{said}"
    );
    let server = Server::start_with(&url, &cfg, ADMIN_KEY, &[("APP_KEY", &key)]);
    let gate = server.addr;

    // Logged in by Laravel: a session on session and token routes, as the session's user.
    let alice = laravel_session(&env, &["login", "42"]);
    let alice_cookie = alice["cookie"].as_str().unwrap().to_owned();
    assert_eq!(
        ask(gate, &echo, "GET", "/app/home", &cookie(&alice_cookie)),
        (200, Some(("42".into(), "*".into())))
    );
    assert_eq!(
        ask(gate, &echo, "GET", "/api/items", &cookie(&alice_cookie)).0,
        200
    );
    let seen = echo.last().unwrap();
    assert_eq!(seen.headers["x-auth-method"], "session");
    // The cookie goes on to the app, which needs it.
    let forwarded = seen.headers["cookie"].to_str().unwrap();
    assert!(forwarded.contains(&alice_cookie), "{forwarded}");
    // The user from the payload when the row's user_id is empty.
    let bob = laravel_session(&env, &["login", "43", "--no-user-column"]);
    let bob_cookie = bob["cookie"].as_str().unwrap().to_owned();
    assert_eq!(
        ask(gate, &echo, "GET", "/app/home", &cookie(&bob_cookie)),
        (200, Some(("43".into(), "*".into())))
    );

    // A tokengate session of its own beside the app's cookie: the app could act for
    // another user than the one tokengate names, so the request is refused; alone, it works.
    let keyed = |args: &[&str]| {
        let out = bin(&url).args(args).env("APP_KEY", &key).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    keyed(&["user", "add", "--config", cfg.to_str().unwrap(), "carol"]);
    let own = keyed(&[
        "session",
        "create",
        "--config",
        cfg.to_str().unwrap(),
        "--user",
        "carol",
    ]);
    let own = own.lines().last().unwrap().to_owned();
    let own_cookie = format!("Cookie: tokengate_session={own}\r\n");
    assert_eq!(
        ask(gate, &echo, "GET", "/app/home", &own_cookie),
        (200, Some(("carol".into(), "*".into())))
    );
    let both = format!("Cookie: tokengate_session={own}; laravel_session={alice_cookie}\r\n");
    assert_eq!(ask(gate, &echo, "GET", "/app/home", &both), (400, None));

    // Refused: no session, a browser sent to the app's login page; a tampered MAC; another
    // key; the cookie moved to another name; an id of the wrong shape; two candidates.
    assert_eq!(ask(gate, &echo, "GET", "/app/home", "").0, 401);
    let (status, _) = request(gate, "GET", "/app/home", "Accept: text/html\r\n", "");
    assert_eq!(status, 302);
    let mut tampered = percent_decoded(&alice_cookie).into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let id = alice["id"].as_str().unwrap();
    let other_key = laravel_key("AES-256-CBC");
    let other_env = [("APP_KEY", other_key.as_str())];
    let wrong_key = laravel_session(&other_env, &["encrypt-cookie", "laravel_session", id]);
    let moved = laravel_session(&env, &["encrypt-cookie", "other_cookie", id]);
    let short = laravel_session(&env, &["encrypt-cookie", "laravel_session", "abc"]);
    for (what, value) in [
        ("a tampered MAC", tampered.as_str()),
        ("another key", wrong_key["cookie"].as_str().unwrap()),
        ("another cookie's value", moved["cookie"].as_str().unwrap()),
        (
            "an id of the wrong shape",
            short["cookie"].as_str().unwrap(),
        ),
    ] {
        assert_eq!(
            ask(gate, &echo, "GET", "/app/home", &cookie(value)),
            (401, None),
            "{what}"
        );
    }
    let twice = format!("Cookie: laravel.session={bob_cookie}; laravel_session={alice_cookie}\r\n");
    assert_eq!(ask(gate, &echo, "GET", "/app/home", &twice).0, 401);

    // CSRF: an unsafe request needs Sec-Fetch-Site, its own Origin, or Laravel's token as
    // an SPA sends it (the XSRF-TOKEN cookie, decoded, in X-XSRF-TOKEN).
    assert_eq!(
        ask(gate, &echo, "POST", "/app/posts", &cookie(&alice_cookie)).0,
        419
    );
    let xsrf = percent_decoded(alice["xsrf_cookie"].as_str().unwrap());
    let with_token = format!("{}X-XSRF-TOKEN: {xsrf}\r\n", cookie(&alice_cookie));
    assert_eq!(ask(gate, &echo, "POST", "/app/posts", &with_token).0, 200);
    let bobs_token = percent_decoded(bob["xsrf_cookie"].as_str().unwrap());
    let wrong_token = format!("{}X-XSRF-TOKEN: {bobs_token}\r\n", cookie(&alice_cookie));
    assert_eq!(ask(gate, &echo, "POST", "/app/posts", &wrong_token).0, 419);
    let plain = format!(
        "{}X-CSRF-TOKEN: {}\r\n",
        cookie(&alice_cookie),
        alice["csrf_token"].as_str().unwrap()
    );
    assert_eq!(ask(gate, &echo, "POST", "/app/posts", &plain).0, 200);

    // Laravel's logout, a cleared user, an expiry: refused within a second.
    laravel_session(&env, &["logout", id]);
    let logged_out = refused_after(gate, &echo, &alice_cookie);
    assert!(logged_out < Duration::from_secs(1), "{logged_out:?}");
    laravel_session(
        &env,
        &[
            "clear-user",
            bob["id"].as_str().unwrap(),
            "--no-user-column",
        ],
    );
    let cleared = refused_after(gate, &echo, &bob_cookie);
    assert!(cleared < Duration::from_secs(1), "{cleared:?}");
    let carol = laravel_session(&env, &["login", "44"]);
    let carol_cookie = carol["cookie"].as_str().unwrap().to_owned();
    assert_eq!(
        ask(gate, &echo, "GET", "/app/home", &cookie(&carol_cookie)).0,
        200
    );
    laravel_session(&env, &["expire", carol["id"].as_str().unwrap()]);
    let expired = refused_after(gate, &echo, &carol_cookie);
    assert!(expired < Duration::from_secs(1), "{expired:?}");
    println!("{kind}: Laravel's logout refused after {logged_out:?}, cleared user {cleared:?}, expiry {expired:?}");
    drop(server);

    // The key rotated: cookies made with the old key work through APP_PREVIOUS_KEYS.
    let dave = laravel_session(&env, &["login", "45"]);
    let dave_cookie = dave["cookie"].as_str().unwrap().to_owned();
    let new_key = laravel_key("AES-256-CBC");
    let rotated = Server::start_with(
        &url,
        &cfg,
        ADMIN_KEY,
        &[("APP_KEY", &new_key), ("APP_PREVIOUS_KEYS", &key)],
    );
    assert_eq!(
        ask(
            rotated.addr,
            &echo,
            "GET",
            "/app/home",
            &cookie(&dave_cookie)
        ),
        (200, Some(("45".into(), "*".into())))
    );
    let without = Server::start_with(&url, &cfg, ADMIN_KEY, &[("APP_KEY", &new_key)]);
    assert_eq!(
        ask(
            without.addr,
            &echo,
            "GET",
            "/app/home",
            &cookie(&dave_cookie)
        )
        .0,
        401
    );
}

#[test]
fn laravel_sessions_on_postgres() {
    let db = Postgres::start();
    laravel_app(&db, "postgres");
}

#[test]
fn laravel_sessions_on_mariadb() {
    let db = Mariadb::start();
    laravel_app(&db, "mysql");
}

/// One way a Laravel app may keep its sessions: a login works through tokengate with the
/// session's user, a logout is refused within a second.
struct Variant<'a> {
    what: &'a str,
    cipher: &'a str,
    /// Lines under `sessions.laravel:` beyond the key and cookie.
    laravel: &'a str,
    /// The `store:` lines.
    store: &'a str,
    /// For session.php.
    env: Vec<(&'a str, &'a str)>,
    /// For tokengate beyond APP_KEY.
    gate_env: Vec<(&'a str, &'a str)>,
    db_url: &'a str,
}

fn variant(v: Variant<'_>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(async {
        Echo::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nworkers: 1\nupstream: http://{}\nstore:\n{}\
             admin:\n  listen: 127.0.0.2:0\n  key_env: TOKENGATE_ADMIN_KEY\n\
             sessions:\n  laravel:\n    app_key_env: APP_KEY\n    cipher: {}\n{}\
             routes:\n  - path: /app/**\n    auth: session\n",
            echo.addr, v.store, v.cipher, v.laravel
        ),
    )
    .unwrap();
    let key = laravel_key(v.cipher);
    let mut env = v.env.clone();
    env.extend([("APP_KEY", key.as_str()), ("SESSION_CIPHER", v.cipher)]);
    let mut gate_env = v.gate_env.clone();
    gate_env.push(("APP_KEY", &key));
    if v.store.contains("postgres") {
        let migrated = bin(v.db_url)
            .args(["migrate", "--config", cfg.to_str().unwrap()])
            .envs(gate_env.iter().copied())
            .output()
            .unwrap();
        assert!(migrated.status.success(), "{migrated:?}");
    }
    let server = Server::start_with(v.db_url, &cfg, ADMIN_KEY, &gate_env);
    let login = laravel_session(&env, &["login", "77"]);
    let value = login["cookie"].as_str().unwrap().to_owned();
    assert_eq!(
        ask(server.addr, &echo, "GET", "/app/home", &cookie(&value)),
        (200, Some(("77".into(), "*".into()))),
        "{}",
        v.what
    );
    laravel_session(&env, &["logout", login["id"].as_str().unwrap()]);
    let after = refused_after(server.addr, &echo, &value);
    assert!(after < Duration::from_secs(1), "{}: {after:?}", v.what);
    if v.laravel.contains("driver: redis") {
        reload_keeps_the_redis_connection(&server, &cfg, &env, &echo);
    }
}

/// A reload naming another Redis URL (another database of the same server, where Laravel's
/// sessions are not) keeps the open connection and logs that the setting needs a restart:
/// a session Laravel makes after the reload is still found.
fn reload_keeps_the_redis_connection(
    server: &Server,
    cfg: &Path,
    env: &[(&str, &str)],
    echo: &Echo,
) {
    let yaml = std::fs::read_to_string(cfg).unwrap();
    let moved = yaml.replace(
        "redis_url_env: TOKENGATE_REDIS_URL\n",
        "redis_url_env: TOKENGATE_REDIS_URL_DB1\n",
    );
    assert_ne!(moved, yaml);
    std::fs::write(cfg, moved).unwrap();
    common::signal(server.child.id(), "-HUP");
    common::eventually_blocking(
        "the reload names the Redis URL as needing a restart",
        || server.log().contains("sessions.laravel.redis_url_env"),
    );
    let login = laravel_session(env, &["login", "78"]);
    let value = login["cookie"].as_str().unwrap();
    assert_eq!(
        ask(server.addr, echo, "GET", "/app/home", &cookie(value)),
        (200, Some(("78".into(), "*".into())))
    );
}

/// The other ciphers, JSON and encrypted payloads, in the database; and the Redis driver
/// (with a sled store: it needs no database).
#[test]
fn laravel_session_variants() {
    let pg = Postgres::start();
    let redis = common::redis::Redis::start();
    let (pg_url, redis_url) = (pg.url(), redis.url());
    let redis_db1 = format!("{redis_url}/1");
    let database = [("DB_URL", pg_url.as_str()), ("SESSION_DRIVER", "database")];
    let store = format!("  kind: postgres\n  url_env: {URL_ENV}\n");
    laravel_session(&database, &["migrate"]);
    let dir = tempfile::tempdir().unwrap();
    let sled = format!("  path: {}\n", dir.path().join("store").display());
    let variants = [
        Variant {
            what: "AES-256-GCM, JSON payload",
            cipher: "AES-256-GCM",
            laravel: "    serialization: json\n",
            store: &store,
            env: [&database[..], &[("SESSION_SERIALIZATION", "json")]].concat(),
            gate_env: vec![],
            db_url: &pg_url,
        },
        Variant {
            what: "AES-128-CBC, encrypted payload",
            cipher: "AES-128-CBC",
            laravel: "    encrypt: true\n",
            store: &store,
            env: [&database[..], &[("SESSION_ENCRYPT", "1")]].concat(),
            gate_env: vec![],
            db_url: &pg_url,
        },
        Variant {
            what: "AES-128-GCM, Redis, encrypted JSON payload",
            cipher: "AES-128-GCM",
            laravel: "    driver: redis\n    redis_url_env: TOKENGATE_REDIS_URL\n    serialization: json\n    encrypt: true\n",
            store: &sled,
            env: vec![
                ("SESSION_DRIVER", "redis"),
                ("REDIS_URL", redis_url.as_str()),
                ("SESSION_SERIALIZATION", "json"),
                ("SESSION_ENCRYPT", "1"),
            ],
            gate_env: vec![
                ("TOKENGATE_REDIS_URL", redis_url.as_str()),
                ("TOKENGATE_REDIS_URL_DB1", redis_db1.as_str()),
            ],
            db_url: "",
        },
        Variant {
            what: "AES-256-CBC, Redis",
            cipher: "AES-256-CBC",
            laravel: "    driver: redis\n    redis_url_env: TOKENGATE_REDIS_URL\n",
            store: &sled,
            env: vec![("SESSION_DRIVER", "redis"), ("REDIS_URL", redis_url.as_str())],
            gate_env: vec![
                ("TOKENGATE_REDIS_URL", redis_url.as_str()),
                ("TOKENGATE_REDIS_URL_DB1", redis_db1.as_str()),
            ],
            db_url: "",
        },
    ];
    for v in variants {
        variant(v);
    }
}
