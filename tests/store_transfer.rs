//! `tokengate store export` / `store import` between real stores: a sled store with users,
//! 1,500 tokens, a revoked one and a session moves to PostgreSQL, on to MariaDB and back
//! into a new sled store; every export along the way is the same, byte for byte, and the
//! tokens and the session issued at the start keep working with `serve` on each store.
//! Rows of a Laravel app's own `personal_access_tokens`, printed as JSON by each database,
//! move into sled the same way. Real servers (tests/common/db.rs), real processes.

mod common;

use common::db::{sanctum, Database, Mariadb, Postgres};
use common::process::{bin, request, run, seen_identity, Server};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use tokengate::echo::Echo;

const ADMIN_KEY: &str = "transfer-admin-key";

/// A config on `store` (the lines under `store:`), every listener on port 0.
fn write_config(path: &Path, upstream: SocketAddr, store: &str) -> PathBuf {
    std::fs::write(
        path,
        format!(
            "listen: 127.0.0.1:0\nworkers: 1\nupstream: http://{upstream}\nstore:\n{store}\
             admin:\n  listen: 127.0.0.2:0\n  key_env: TOKENGATE_ADMIN_KEY\n\
             tokens:\n  prefix: tg_\nabilities: [read, create]\ndefault_abilities: [read]\n\
             sessions:\n  secure: false\n\
             routes:\n  - path: /api/**\n    abilities: [read]\n  - path: /app/**\n    auth: session\n"
        ),
    )
    .unwrap();
    path.to_path_buf()
}

fn sled_config(dir: &Path, name: &str, upstream: SocketAddr) -> PathBuf {
    let store = format!("  path: {}\n", dir.join(name).display());
    write_config(&dir.join(format!("{name}.yaml")), upstream, &store)
}

fn database_config(dir: &Path, kind: &str, upstream: SocketAddr) -> PathBuf {
    let store = format!("  kind: {kind}\n  url_env: {}\n", common::process::URL_ENV);
    write_config(&dir.join(format!("{kind}.yaml")), upstream, &store)
}

/// Runs tokengate with `input` on stdin; fails the test unless it succeeds.
fn run_with_input(url: &str, args: &[&str], input: &str) -> Output {
    let mut child = bin(url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tokengate runs");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

fn succeeded(output: Output, what: &str) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{what} failed: {:?}\n{stdout}\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

fn export(url: &str, cfg: &Path) -> (String, String) {
    succeeded(
        run(url, &["store", "export", "--config", cfg.to_str().unwrap()]),
        "store export",
    )
}

fn import(url: &str, cfg: &Path, dump: &str) -> String {
    let output = run_with_input(
        url,
        &["store", "import", "--config", cfg.to_str().unwrap()],
        dump,
    );
    succeeded(output, "store import").1
}

/// `token create` on `cfg`'s store; its output.
fn create_token(url: &str, cfg: &Path, args: &[&str]) -> String {
    let mut all = vec!["token", "create", "--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    succeeded(run(url, &all), "token create").0
}

fn migrate(url: &str, cfg: &Path) {
    succeeded(
        run(url, &["migrate", "--config", cfg.to_str().unwrap()]),
        "migrate",
    );
}

/// The status of `path` with these headers, and what the upstream saw as (user, abilities).
fn ask(gate: SocketAddr, echo: &Echo, path: &str, headers: &str) -> (u16, String, String) {
    let before = echo.arrived();
    let (status, _) = request(gate, "GET", path, headers, "");
    if echo.arrived() == before {
        return (status, String::new(), String::new());
    }
    let (user, abilities) = seen_identity(echo);
    (status, user, abilities)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// What was issued on the first store, to be used on every other.
struct Issued {
    first: String,
    last: String,
    revoked: String,
    expiring: String,
    cookie: String,
}

/// Checks that what was issued works (and the revoked token does not) on `cfg`'s store.
fn issued_work(url: &str, cfg: &Path, echo: &Echo, issued: &Issued) {
    let server = Server::start(url, cfg, ADMIN_KEY);
    let gate = server.addr;
    assert_eq!(
        ask(gate, echo, "/api/x", &bearer(&issued.first)),
        (200, "1".into(), "read".into())
    );
    assert_eq!(
        ask(gate, echo, "/api/x", &bearer(&issued.last)),
        (200, "3".into(), "read".into())
    );
    assert_eq!(
        ask(gate, echo, "/api/x", &bearer(&issued.expiring)),
        (200, "7".into(), "create,read".into())
    );
    assert_eq!(ask(gate, echo, "/api/x", &bearer(&issued.revoked)).0, 401);
    let cookie = format!("Cookie: tokengate_session={}\r\n", issued.cookie);
    assert_eq!(
        ask(gate, echo, "/app/home", &cookie),
        (200, "alice".into(), "*".into())
    );
}

#[test]
fn a_sled_store_moves_to_postgres_then_mariadb_and_back() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(async {
        Echo::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let sled_a = sled_config(dir.path(), "a", echo.addr);
    let a = sled_a.to_str().unwrap();

    // The first store: two users, 1,500 tokens of three owners, one revoked, one expiring
    // with two abilities, a session.
    succeeded(
        run_with_input(
            "",
            &["user", "add", "--config", a, "alice", "--password-stdin"],
            "a long password\n",
        ),
        "user add alice",
    );
    succeeded(
        run("", &["user", "add", "--config", a, "bob"]),
        "user add bob",
    );
    let lines: String = (1..=1500)
        .map(|n| {
            format!(
                "{{\"user\":\"{}\",\"name\":\"bulk {n}\"}}\n",
                1 + (n - 1) * 3 / 1500
            )
        })
        .collect();
    let (plaintexts, _) = succeeded(
        run_with_input("", &["token", "import", "--config", a], &lines),
        "token import",
    );
    let plaintexts: Vec<&str> = plaintexts.lines().collect();
    assert_eq!(plaintexts.len(), 1500);
    succeeded(
        run("", &["token", "revoke", "--config", a, "2"]),
        "token revoke",
    );
    let created = create_token(
        "",
        &sled_a,
        &[
            "--user",
            "7",
            "--name",
            "expiring",
            "--abilities",
            "read,create",
            "--expires-in",
            "30d",
        ],
    );
    let (session, _) = succeeded(
        run("", &["session", "create", "--config", a, "--user", "alice"]),
        "session create",
    );
    let issued = Issued {
        first: plaintexts[0].to_owned(),
        last: plaintexts[1499].to_owned(),
        revoked: plaintexts[1].to_owned(),
        expiring: created.lines().last().unwrap().to_owned(),
        cookie: session.lines().last().unwrap().to_owned(),
    };
    issued_work("", &sled_a, &echo, &issued);

    let (dump, said) = export("", &sled_a);
    assert!(
        said.contains("exported 2 users, 1500 tokens, 1 sessions"),
        "{said}"
    );
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(
        lines[0],
        r#"{"type":"header","format":"tokengate-store","version":1}"#
    );
    assert_eq!(lines.len(), 1 + 2 + 1500 + 1);
    for secret in [
        &issued.first,
        &issued.last,
        &issued.expiring,
        &issued.cookie,
    ] {
        let secret = secret.rsplit('|').next().unwrap();
        assert!(!dump.contains(secret), "no plaintext secret in the dump");
    }
    // A `last_used_at` travels too.
    let dump = dump.replacen(
        r#""last_used_at":null"#,
        r#""last_used_at":"2026-11-29T10:00:00Z""#,
        1,
    );

    // Into PostgreSQL, twice: the second time everything is already there.
    let pg = Postgres::start();
    let pg_url = pg.url();
    let pg_cfg = database_config(dir.path(), "postgres", echo.addr);
    migrate(&pg_url, &pg_cfg);
    let said = import(&pg_url, &pg_cfg, &dump);
    assert!(
        said.contains("imported 2 users (0 already there), 1500 tokens (0 already there), 1 sessions (0 already there)"),
        "{said}"
    );
    let said = import(&pg_url, &pg_cfg, &dump);
    assert!(
        said.contains("imported 0 users (2 already there), 0 tokens (1500 already there), 0 sessions (1 already there)"),
        "{said}"
    );
    assert_eq!(
        export(&pg_url, &pg_cfg).0,
        dump,
        "PostgreSQL holds what sled held"
    );
    issued_work(&pg_url, &pg_cfg, &echo, &issued);
    // A token made after the import gets an id after every imported one.
    let created = create_token(&pg_url, &pg_cfg, &["--user", "9", "--name", "after"]);
    assert!(created.contains("Created token 1502 'after'"), "{created}");
    succeeded(
        run(
            &pg_url,
            &[
                "token",
                "revoke",
                "--config",
                pg_cfg.to_str().unwrap(),
                "1502",
            ],
        ),
        "token revoke",
    );

    // A dump that disagrees with the store is refused, naming the record, and nothing of
    // its batch is written.
    let first_hash = dump
        .lines()
        .nth(3)
        .unwrap()
        .split("\"hash\":\"")
        .nth(1)
        .unwrap()[..64]
        .to_owned();
    let altered = dump.replacen(&first_hash, &"0".repeat(64), 1).replacen(
        "\n",
        "\n{\"type\":\"user\",\"name\":\"carol\",\"password_hash\":null,\"created_at\":\"2026-11-30T00:00:00Z\"}\n",
        1,
    );
    let refused = run_with_input(
        &pg_url,
        &["store", "import", "--config", pg_cfg.to_str().unwrap()],
        &altered,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("lines 1 to ")
            && stderr.contains("token 1: the store has a different token with this id"),
        "{stderr}"
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM tokengate_users WHERE name = 'carol'"),
        "0"
    );

    // On to MariaDB, and back into a new sled store.
    let maria = Mariadb::start();
    let maria_url = maria.url();
    let maria_cfg = database_config(dir.path(), "mysql", echo.addr);
    migrate(&maria_url, &maria_cfg);
    import(&maria_url, &maria_cfg, &dump);
    assert_eq!(
        export(&maria_url, &maria_cfg).0,
        dump,
        "MariaDB holds what sled held"
    );
    issued_work(&maria_url, &maria_cfg, &echo, &issued);

    let sled_b = sled_config(dir.path(), "b", echo.addr);
    import("", &sled_b, &dump);
    assert_eq!(
        export("", &sled_b).0,
        dump,
        "the new sled store holds what the first held"
    );
    issued_work("", &sled_b, &echo, &issued);
    let created = create_token("", &sled_b, &["--user", "9", "--name", "after"]);
    assert!(created.contains("Created token 1502 'after'"), "{created}");

    // A sled store held by a running server is not opened behind its back.
    let _server = Server::start("", &sled_b, ADMIN_KEY);
    let held = run(
        "",
        &["store", "export", "--config", sled_b.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&held.stderr);
    assert_eq!(held.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stop the server that holds it first"),
        "{stderr}"
    );
}

/// Mints tokens with Laravel's own code into `db`'s Sanctum table; returns their plaintexts.
fn laravel_tokens(db: &dyn Database) -> Vec<String> {
    let url = db.url();
    sanctum(&url, &["migrate"]);
    [
        vec![
            "create-token",
            "42",
            "current",
            r#"["read","create"]"#,
            "--prefix",
            "tg_",
        ],
        vec!["create-token", "43", "legacy", r#"["read"]"#, "--legacy"],
        vec!["create-token", "44", "everything", r#"["*"]"#],
    ]
    .iter()
    .map(|args| {
        sanctum(&url, args)["plaintext"]
            .as_str()
            .unwrap()
            .to_owned()
    })
    .collect()
}

/// Rows printed by `db` (one JSON object per line) go into a new sled store, and the
/// tokens Laravel minted work there. A row of another model is refused.
fn laravel_rows_into_sled(db: &dyn Database, select: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(async {
        Echo::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let plaintexts = laravel_tokens(db);
    let rows = db.sql(select);
    assert_eq!(rows.lines().count(), 3, "{rows}");
    let cfg = sled_config(dir.path(), "laravel", echo.addr);
    let said = import("", &cfg, &rows);
    assert!(said.contains("3 tokens (0 already there)"), "{said}");
    let server = Server::start("", &cfg, ADMIN_KEY);
    for (plaintext, identity) in
        plaintexts
            .iter()
            .zip([("42", "create,read"), ("43", "read"), ("44", "*")])
    {
        let seen = ask(server.addr, &echo, "/api/x", &bearer(plaintext));
        assert_eq!(
            seen,
            (200, identity.0.into(), identity.1.into()),
            "{plaintext}"
        );
    }
    drop(server);

    db.sql(
        "UPDATE personal_access_tokens SET tokenable_type = REPLACE(tokenable_type, 'User', 'Team') \
         WHERE tokenable_id = 43",
    );
    let rows = db.sql(select);
    let other = dir.path().join("other.yaml");
    let other = write_config(
        &other,
        echo.addr,
        &format!("  path: {}\n", dir.path().join("other").display()),
    );
    let refused = run_with_input(
        "",
        &["store", "import", "--config", other.to_str().unwrap()],
        &rows,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("line 2: a token of tokenable_type App\\Models\\Team, not App\\Models\\User"),
        "{stderr}"
    );
}

#[test]
fn laravel_rows_from_postgres_move_into_sled() {
    let pg = Postgres::start();
    laravel_rows_into_sled(
        &pg,
        "SELECT row_to_json(t) FROM personal_access_tokens t ORDER BY id",
    );
}

#[test]
fn laravel_rows_from_mariadb_move_into_sled() {
    let maria = Mariadb::start();
    laravel_rows_into_sled(
        &maria,
        "SELECT JSON_OBJECT('id', id, 'tokenable_type', tokenable_type, \
         'tokenable_id', tokenable_id, 'name', name, 'token', token, 'abilities', abilities, \
         'last_used_at', last_used_at, 'expires_at', expires_at, 'created_at', created_at, \
         'updated_at', updated_at) FROM personal_access_tokens ORDER BY id",
    );
}
