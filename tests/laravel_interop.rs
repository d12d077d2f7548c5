//! tokengate in front of a Laravel app's own database: Sanctum's table made by Laravel's
//! migration, tokens minted, revoked and changed by Laravel's own code
//! (tests/laravel/sanctum.php), a real `tokengate serve` process on a real PostgreSQL and
//! MariaDB (tests/common/db.rs) accepting them with the right identity headers and following
//! the app's changes within a second; and a token tokengate mints found by Sanctum's
//! `findToken`. Then three replicas on one database: what one creates or revokes, the others
//! honour within a second.

mod common;

use common::db::{sanctum, Database, Mariadb, Postgres};
use common::eventually_blocking;
use common::process::{request, run, seen_identity, Server, URL_ENV};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokengate::echo::Echo;

/// The promise: every replica follows a change made anywhere within this.
const FOLLOW_WITHIN: Duration = Duration::from_secs(1);

/// A config for `kind` (`postgres` or `mysql`) with every listener on a free port.
fn write_config(dir: &Path, kind: &str, upstream: SocketAddr) -> PathBuf {
    write_config_with(dir, kind, upstream, "")
}

/// `write_config` with more `store:` keys (each line indented by two spaces).
fn write_config_with(dir: &Path, kind: &str, upstream: SocketAddr, store: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nworkers: 1\nupstream: http://{upstream}\n\
             store:\n  kind: {kind}\n  url_env: {URL_ENV}\n  sync_interval_ms: 500\n{store}\
             admin:\n  listen: 127.0.0.2:0\n  key_env: TOKENGATE_ADMIN_KEY\n\
             tokens:\n  prefix: tg_\nabilities: [read, create]\ndefault_abilities: [read]\n\
             routes:\n  - path: /api/**\n    abilities: [read]\n  - path: /app/**\n    auth: session\n"
        ),
    )
    .unwrap();
    path
}

fn get(gate: SocketAddr, token: &str) -> u16 {
    request(
        gate,
        "GET",
        "/api/items",
        &format!("Authorization: Bearer {token}\r\n"),
        "",
    )
    .0
}

/// Polls until `gate` answers `want` for `token`; how long that took. Fails past 5 s.
fn time_until(gate: SocketAddr, token: &str, want: u16) -> Duration {
    let start = Instant::now();
    loop {
        if get(gate, token) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never answered {want}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn php_token(db: &dyn Database, user: u64, abilities: &str, extra: &[&str]) -> (u64, String) {
    let user = user.to_string();
    let mut args = vec!["create-token", &user, "from laravel", abilities];
    args.extend_from_slice(extra);
    let created = sanctum(&db.url(), &args);
    (
        created["id"].as_u64().expect("id"),
        created["plaintext"].as_str().expect("plaintext").to_owned(),
    )
}

fn interop(db: &dyn Database, kind: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(async {
        Echo::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), kind, echo.addr);
    let cfg_str = cfg.to_str().unwrap();
    let url = db.url();

    // Laravel's own migration makes Sanctum's table; tokengate's tables are still missing,
    // and serve says which command makes them.
    sanctum(&url, &["migrate"]);
    let refused = run(&url, &["serve", "--config", cfg_str]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("tokengate migrate"), "{stderr}");
    assert!(!stderr.contains(&url), "the URL is never shown");
    let migrated = run(&url, &["migrate", "--config", cfg_str]);
    assert!(migrated.status.success(), "{:?}", migrated);
    let out = String::from_utf8_lossy(&migrated.stdout);
    assert!(
        out.contains("tokengate_users") && !out.contains("personal_access_tokens"),
        "{out}"
    );
    let again = run(&url, &["migrate", "--config", cfg_str]);
    assert!(again.status.success(), "{:?}", again);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already"));

    // Tokens as Laravel mints them: Sanctum 4 (prefix + crc32b), 2.x (no crc), and `*`.
    let (current_id, current) = php_token(db, 42, r#"["read","create"]"#, &["--prefix", "tg_"]);
    let (legacy_id, legacy) = php_token(db, 43, r#"["read"]"#, &["--legacy"]);
    let (_, star) = php_token(db, 44, r#"["*"]"#, &[]);
    // Strings the app stored that are no ability names grant nothing, as in Sanctum's
    // whole-string `tokenCan`: "create,read" is not "read", and never reaches the upstream
    // to be split there.
    let (_, odd) = php_token(db, 45, r#"["create,read","read ","*\n"]"#, &[]);
    let (_, mixed) = php_token(db, 46, r#"["read","read,admin"]"#, &[]);

    let mut server = Server::start(&url, &cfg, "interop-admin-key");
    let gate = server.addr;
    assert_eq!(get(gate, &current), 200);
    assert_eq!(seen_identity(&echo), ("42".into(), "create,read".into()));
    assert_eq!(get(gate, &legacy), 200);
    assert_eq!(seen_identity(&echo), ("43".into(), "read".into()));
    assert_eq!(get(gate, &star), 200);
    assert_eq!(seen_identity(&echo), ("44".into(), "*".into()));
    assert_eq!(get(gate, "999|made-up"), 401);
    assert_eq!(get(gate, &odd), 403);
    assert_eq!(get(gate, &mixed), 200);
    assert_eq!(seen_identity(&echo), ("46".into(), "read".into()));

    // Laravel revokes one and changes another's abilities: followed within a second.
    sanctum(&url, &["delete-token", &current_id.to_string()]);
    let revoked_after = time_until(gate, &current, 401);
    sanctum(
        &url,
        &["set-abilities", &legacy_id.to_string(), r#"["create"]"#],
    );
    let changed_after = time_until(gate, &legacy, 403);
    println!(
        "{kind}: Laravel's revocation refused after {revoked_after:?}, ability change after {changed_after:?}"
    );
    assert!(revoked_after < FOLLOW_WITHIN, "{revoked_after:?}");
    assert!(changed_after < FOLLOW_WITHIN, "{changed_after:?}");
    assert_eq!(get(gate, &star), 200, "the others still work");

    // A token tokengate mints is Sanctum's: found by findToken, and used at once.
    let created = run(
        &url,
        &[
            "token",
            "create",
            "--config",
            cfg_str,
            "--user",
            "45",
            "--name",
            "from tokengate",
            "--abilities",
            "read,create",
        ],
    );
    assert!(created.status.success(), "{:?}", created);
    let plaintext = String::from_utf8_lossy(&created.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let found = sanctum(&url, &["find-token", &plaintext]);
    assert_eq!(found["tokenable_id"], 45, "{found}");
    assert_eq!(found["tokenable_type"], "App\\Models\\User", "{found}");
    assert_eq!(found["name"], "from tokengate", "{found}");
    assert_eq!(
        found["abilities"],
        serde_json::json!(["create", "read"]),
        "{found}"
    );
    assert_eq!(get(gate, &plaintext), 200);
    assert_eq!(seen_identity(&echo), ("45".into(), "create,read".into()));

    // A token for an owner that cannot be a tokenable_id: 422 from the admin API.
    let (status, body) = request(
        server.admin,
        "POST",
        "/admin/tokens",
        "Authorization: Bearer interop-admin-key\r\nContent-Type: application/json\r\n",
        r#"{"user":"alice","name":"x"}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("numeric"), "{body}");
    server.stop();
}

#[test]
fn laravel_tokens_on_postgres() {
    let db = Postgres::start();
    interop(&db, "postgres");
}

#[test]
fn laravel_tokens_on_mariadb() {
    let db = Mariadb::start();
    interop(&db, "mysql");
}

/// `n`-th percentile of sorted durations.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// Three `serve` replicas on one database: a token created through A's admin API works on
/// B and C at its first use; revoked through C, it is refused on A and B within a second
/// (measured over `ROUNDS` revocations at random moments, each token cached on every
/// replica first).
fn replicas(db: &dyn Database, kind: &str) {
    const ROUNDS: usize = 100;
    const KEY: &str = "replica-admin-key";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(async {
        Echo::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), kind, echo.addr);
    let url = db.url();
    let migrated = run(&url, &["migrate", "--config", cfg.to_str().unwrap()]);
    assert!(migrated.status.success(), "{:?}", migrated);
    let mut servers: Vec<Server> = (0..3).map(|_| Server::start(&url, &cfg, KEY)).collect();
    let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
    let admin = |server: &Server, method: &str, path: &str, body: &str| {
        request(
            server.admin,
            method,
            path,
            &format!("Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"),
            body,
        )
    };

    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        let (status, body) = admin(
            a,
            "POST",
            "/admin/tokens",
            &format!(
                r#"{{"user":"{}","name":"replica {round}","abilities":["read"]}}"#,
                100 + round
            ),
        );
        assert_eq!(status, 201, "{body}");
        let created: serde_json::Value = serde_json::from_str(&body).unwrap();
        let token = created["plaintext"].as_str().unwrap().to_owned();
        let id = created["token"]["id"].as_u64().unwrap();
        for server in [b, c, a] {
            assert_eq!(get(server.addr, &token), 200);
            assert_eq!(seen_identity(&echo).0, (100 + round).to_string());
        }
        // At a random moment of the replicas' re-check cycle: each round would otherwise
        // revoke at the same phase of it, and measure one delay a hundred times.
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 500));
        let (status, body) = admin(c, "DELETE", &format!("/admin/tokens/{id}"), "");
        assert!(status == 200 || status == 204, "{status} {body}");
        assert_eq!(
            get(c.addr, &token),
            401,
            "refused at once where it was revoked"
        );
        let start = Instant::now();
        let mut refused = [None, None];
        while refused.iter().any(Option::is_none) {
            for (i, server) in [a, b].into_iter().enumerate() {
                if refused[i].is_none() && get(server.addr, &token) == 401 {
                    refused[i] = Some(start.elapsed());
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "never refused on every replica"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        delays.extend(refused.into_iter().flatten());
    }
    // The same for a session: started through A, used on B and C, ended through C.
    let (status, body) = admin(b, "POST", "/admin/users", r#"{"name":"alice"}"#);
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin(a, "POST", "/admin/sessions", r#"{"user":"alice"}"#);
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cookie = format!(
        "Cookie: {}={}\r\n",
        created["cookie"]["name"].as_str().unwrap(),
        created["cookie"]["value"].as_str().unwrap()
    );
    let session_id = created["session"]["id"].as_str().unwrap().to_owned();
    let page = |server: &Server| request(server.addr, "GET", "/app/home", &cookie, "").0;
    for server in [b, c, a] {
        assert_eq!(page(server), 200);
        assert_eq!(seen_identity(&echo).0, "alice");
    }
    let (status, body) = admin(c, "DELETE", &format!("/admin/sessions/{session_id}"), "");
    assert_eq!(status, 204, "{body}");
    assert_ne!(page(c), 200);
    let start = Instant::now();
    let mut ended = [None, None];
    while ended.iter().any(Option::is_none) {
        for (i, server) in [a, b].into_iter().enumerate() {
            if ended[i].is_none() && page(server) != 200 {
                ended[i] = Some(start.elapsed());
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "session never ended everywhere"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let session_delays: Vec<Duration> = ended.into_iter().flatten().collect();
    println!("{kind}: session ended on C, refused on A and B after {session_delays:?}");
    assert!(
        session_delays.iter().all(|d| *d < FOLLOW_WITHIN),
        "{session_delays:?}"
    );

    delays.sort();
    let (p50, p99, max) = (
        percentile(&delays, 50),
        percentile(&delays, 99),
        *delays.last().unwrap(),
    );
    println!(
        "{kind}: revocation on C refused on A and B after p50 {p50:?}, p99 {p99:?}, max {max:?} ({} measurements)",
        delays.len()
    );
    assert!(max < FOLLOW_WITHIN, "slowest {max:?}");
    for server in &mut servers {
        server.stop();
    }
}

#[test]
fn three_replicas_on_postgres() {
    let db = Postgres::start();
    replicas(&db, "postgres");
}

#[test]
fn three_replicas_on_mariadb() {
    let db = Mariadb::start();
    replicas(&db, "mysql");
}

/// A GET with a token; the whole response head, lowercased (status line and headers).
fn head_of(gate: SocketAddr, path: &str, token: &str) -> String {
    let mut s = TcpStream::connect(gate).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut text);
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn admin_get(server: &Server, path: &str) -> (u16, String) {
    request(server.admin, "GET", path, "", "")
}

/// The database stops under a running replica: cached tokens keep working until
/// `max_stale_seconds`, uncached ones get 503 + Retry-After at once (never 401), /readyz and the
/// metrics say so; past max_stale every token gets 503; the database returns and
/// everything works again, and a revocation is followed within a second.
fn outage(db: &mut dyn Database, kind: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(async {
        Echo::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_with(dir.path(), kind, echo.addr, "  max_stale_seconds: 8\n");
    let url = db.url();
    sanctum(&url, &["migrate"]);
    assert!(run(&url, &["migrate", "--config", cfg.to_str().unwrap()])
        .status
        .success());
    let (cached_id, cached) = php_token(db, 1, r#"["read"]"#, &[]);
    let mut server = Server::start(&url, &cfg, "outage-key");
    let gate = server.addr;
    // Minted after the replica loaded its cache, and not used before the outage.
    let (_, uncached) = php_token(db, 2, r#"["read"]"#, &[]);
    assert_eq!(get(gate, &cached), 200);
    assert_eq!(admin_get(&server, "/readyz").0, 200);

    db.stop();
    let stopped = Instant::now();
    assert_eq!(get(gate, &cached), 200, "cached: still works");
    eventually_blocking("readyz says degraded", || {
        let (status, body) = admin_get(&server, "/readyz");
        status == 200 && body.contains("degraded")
    });
    let (_, metrics) = admin_get(&server, "/metrics");
    assert!(
        metrics.contains("\ntokengate_store_reachable 0"),
        "{metrics}"
    );
    let reads = |server: &Server| {
        let (_, metrics) = admin_get(server, "/metrics");
        common::metric_value(&metrics, "tokengate_token_store_reads_total").unwrap()
    };
    let reads_before = reads(&server);
    let head = head_of(gate, "/api/items", &uncached);
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("\r\nretry-after: "), "{head}");
    // Refused at once: while the re-check fails, a token not in the cache is not looked
    // up (which would wait for the connection attempt to give up).
    assert_eq!(reads(&server), reads_before, "no store read");
    println!(
        "{kind}: uncached token answered 503 {:?} after the database stopped",
        stopped.elapsed()
    );
    if stopped.elapsed() < Duration::from_secs(7) {
        assert_eq!(get(gate, &cached), 200, "cached: works within max_stale");
    }
    // Past max_stale_seconds: refused as unavailable, never as unauthenticated.
    while get(gate, &cached) != 503 {
        assert!(stopped.elapsed() < Duration::from_secs(20), "never stale");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stale_after = stopped.elapsed();
    println!("{kind}: cached token refused (503) {stale_after:?} after the database stopped (max_stale_seconds 8)");
    // max_stale_seconds counts from the last successful re-check, up to one
    // sync_interval (500 ms) before the stop.
    assert!(
        stale_after >= Duration::from_millis(7400),
        "{stale_after:?}"
    );
    assert!(stale_after < Duration::from_secs(9), "{stale_after:?}");
    assert_eq!(admin_get(&server, "/readyz").0, 503);

    db.restart();
    let back = Instant::now();
    while get(gate, &cached) != 200 {
        assert!(back.elapsed() < Duration::from_secs(15), "never recovered");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "{kind}: cached token accepted again {:?} after the database restarted",
        back.elapsed()
    );
    assert_eq!(get(gate, &uncached), 200);
    assert_eq!(admin_get(&server, "/readyz").0, 200);
    sanctum(&url, &["delete-token", &cached_id.to_string()]);
    let revoked_after = time_until(gate, &cached, 401);
    assert!(revoked_after < FOLLOW_WITHIN, "{revoked_after:?}");
    server.stop();
}

#[test]
fn postgres_outage() {
    let mut db = Postgres::start();
    outage(&mut db, "postgres");
}

#[test]
fn mariadb_outage() {
    let mut db = Mariadb::start();
    outage(&mut db, "mysql");
}

/// `read_only: true`: tokengate serves the app's tokens and never writes the table: token
/// writes through the admin API answer 409, the CLI says why, `last_used_at` stays NULL.
fn read_only(db: &dyn Database, kind: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(async {
        Echo::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_with(dir.path(), kind, echo.addr, "  read_only: true\n");
    let cfg_str = cfg.to_str().unwrap();
    let url = db.url();
    sanctum(&url, &["migrate"]);
    assert!(run(&url, &["migrate", "--config", cfg_str])
        .status
        .success());
    let (id, token) = php_token(db, 3, r#"["read"]"#, &[]);
    let mut server = Server::start(&url, &cfg, "ro-key");
    assert_eq!(get(server.addr, &token), 200);
    let auth = "Authorization: Bearer ro-key\r\nContent-Type: application/json\r\n";
    let (status, body) = request(
        server.admin,
        "POST",
        "/admin/tokens",
        auth,
        r#"{"user":"3","name":"x"}"#,
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("read-only"), "{body}");
    let (status, body) = request(
        server.admin,
        "DELETE",
        &format!("/admin/tokens/{id}"),
        auth,
        "",
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = request(
        server.admin,
        "PATCH",
        &format!("/admin/tokens/{id}"),
        auth,
        r#"{"abilities":["create"]}"#,
    );
    assert_eq!(status, 409, "{body}");
    let out = run(
        &url,
        &["token", "revoke", "--config", cfg_str, &id.to_string()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read-only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(server.addr, &token), 200, "the token is untouched");
    // SIGTERM flushes batched last_used_at, which read_only never writes.
    server.stop();
    let found = sanctum(&url, &["find-token", &token]);
    assert!(found["last_used_at"].is_null(), "{found}");
}

#[test]
fn postgres_read_only() {
    let db = Postgres::start();
    read_only(&db, "postgres");
}

#[test]
fn mariadb_read_only() {
    let db = Mariadb::start();
    read_only(&db, "mysql");
}

/// No URL in the environment variable the config names: serve and migrate refuse, naming it.
#[test]
fn a_missing_database_url_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "postgres", "127.0.0.1:9".parse().unwrap());
    for command in ["serve", "migrate"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args([command, "--config", cfg.to_str().unwrap()])
            .env_remove(URL_ENV)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(URL_ENV) && stderr.contains("not set"),
            "{command}: {stderr}"
        );
    }
    // A URL of the other database's kind is refused without repeating it.
    let out = run(
        "mysql://tokengate:s3cret-password@127.0.0.1:9/db",
        &["serve", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("postgres://"), "{stderr}");
    assert!(!stderr.contains("s3cret-password"), "{stderr}");
}

/// The workers' cache misses open database connections; the last writes after they stop
/// (the final flush of `last_used_at`) must still reach the database, and serve exit 0.
/// (A pool whose connections belonged to the stopped workers' runtimes failed that flush,
/// "A Tokio 1.x context was found, but it is being shutdown", about one run in four.)
fn workers_leave_the_pool_usable(db: &dyn Database, kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), kind, "127.0.0.1:9".parse().unwrap());
    let yaml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, yaml.replace("workers: 1", "workers: 2")).unwrap();
    let cfg_str = cfg.to_str().unwrap();
    let url = db.url();
    assert!(run(&url, &["migrate", "--config", cfg_str])
        .status
        .success());
    let tokens: Vec<String> = (0..40)
        .map(|n| php_token(db, 500 + n, r#"["read"]"#, &[]).1)
        .collect();
    for round in 0..5 {
        let mut server = Server::start(&url, &cfg, "pool-admin-key");
        let gate = server.addr;
        // Many first uses at once: each a cache miss, read on a worker.
        std::thread::scope(|scope| {
            for token in &tokens {
                scope.spawn(move || {
                    // The upstream (port 9) is not there: 502, after the token passed.
                    assert_eq!(get(gate, token), 502);
                });
            }
        });
        // A few re-checks on the main runtime pass the connections around the pool.
        std::thread::sleep(std::time::Duration::from_millis(1200));
        for token in &tokens {
            assert_eq!(get(gate, token), 502);
        }
        server.stop();
        let unused = db.sql(
            "SELECT count(*) FROM personal_access_tokens \
             WHERE tokenable_id >= 500 AND last_used_at IS NULL",
        );
        assert_eq!(
            unused, "0",
            "round {round}: every last_used_at written at the stop"
        );
        db.sql("UPDATE personal_access_tokens SET last_used_at = NULL WHERE tokenable_id >= 500");
    }
}

#[test]
fn postgres_pool_outlives_the_workers() {
    let db = Postgres::start();
    sanctum(&db.url(), &["migrate"]);
    workers_leave_the_pool_usable(&db, "postgres");
}

#[test]
fn mariadb_pool_outlives_the_workers() {
    let db = Mariadb::start();
    sanctum(&db.url(), &["migrate"]);
    workers_leave_the_pool_usable(&db, "mysql");
}
