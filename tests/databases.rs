//! The database rig's own tests: a real PostgreSQL and a real MariaDB started by the test
//! (tests/common/db.rs), Sanctum 4's `personal_access_tokens` created by Laravel's schema
//! builder and filled by Sanctum's token code (tests/laravel/sanctum.php), and a server
//! stopped and started again on its data. A missing server or PHP driver fails them.

mod common;

use common::db::{sanctum, sanctum_on_table, Database, Kind, Mariadb, Postgres};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Instant;

/// The columns of `table` as `name type nullable`, in order.
fn columns(db: &dyn Database, table: &str) -> Vec<String> {
    let sql = match db.kind() {
        Kind::Postgres => format!(
            "SELECT column_name, format_type(atttypid, atttypmod), is_nullable \
             FROM information_schema.columns c \
             JOIN pg_attribute a ON a.attrelid = '{table}'::regclass AND a.attname = c.column_name \
             WHERE c.table_name = '{table}' ORDER BY ordinal_position"
        ),
        Kind::Mariadb => format!(
            "SELECT column_name, column_type, is_nullable FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = '{table}' ORDER BY ordinal_position"
        ),
    };
    lines(&db.sql(&sql))
}

/// The indexes of `table` as `name unique|index (columns)`, sorted (in Rust: the servers'
/// collations order `_` and capitals differently).
fn indexes(db: &dyn Database, table: &str) -> Vec<String> {
    let sql = match db.kind() {
        Kind::Postgres => format!(
            "SELECT i.relname, CASE WHEN x.indisunique THEN 'unique' ELSE 'index' END, \
                    '(' || string_agg(a.attname, ',' ORDER BY k.n) || ')' \
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
             CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum \
             WHERE x.indrelid = '{table}'::regclass \
             GROUP BY i.relname, x.indisunique"
        ),
        Kind::Mariadb => format!(
            "SELECT index_name, IF(non_unique = 0, 'unique', 'index'), \
                    CONCAT('(', GROUP_CONCAT(column_name ORDER BY seq_in_index), ')') \
             FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND table_name = '{table}' \
             GROUP BY index_name, non_unique"
        ),
    };
    let mut indexes = lines(&db.sql(&sql));
    indexes.sort();
    indexes
}

fn lines(out: &str) -> Vec<String> {
    out.lines().map(|l| l.replace('\t', " ")).collect()
}

/// Sanctum 4's table as Laravel 8.83's schema builder creates it on `kind`.
fn expected_schema(kind: Kind, table: &str, sanctum_4_0: bool) -> (Vec<String>, Vec<String>) {
    let name = if sanctum_4_0 {
        "character varying(255)"
    } else {
        "text"
    };
    let columns = match kind {
        Kind::Postgres => vec![
            "id bigint NO".to_string(),
            "tokenable_type character varying(255) NO".into(),
            "tokenable_id bigint NO".into(),
            format!("name {name} NO"),
            "token character varying(64) NO".into(),
            "abilities text YES".into(),
            "last_used_at timestamp(0) without time zone YES".into(),
            "expires_at timestamp(0) without time zone YES".into(),
            "created_at timestamp(0) without time zone YES".into(),
            "updated_at timestamp(0) without time zone YES".into(),
        ],
        Kind::Mariadb => vec![
            "id bigint(20) unsigned NO".to_string(),
            "tokenable_type varchar(255) NO".into(),
            "tokenable_id bigint(20) unsigned NO".into(),
            format!(
                "name {} NO",
                if sanctum_4_0 { "varchar(255)" } else { "text" }
            ),
            "token varchar(64) NO".into(),
            "abilities text YES".into(),
            "last_used_at timestamp YES".into(),
            "expires_at timestamp YES".into(),
            "created_at timestamp YES".into(),
            "updated_at timestamp YES".into(),
        ],
    };
    let primary = match kind {
        Kind::Postgres => format!("{table}_pkey unique (id)"),
        Kind::Mariadb => "PRIMARY unique (id)".into(),
    };
    let mut indexes = vec![primary];
    if !sanctum_4_0 {
        indexes.push(format!("{table}_expires_at_index index (expires_at)"));
    }
    indexes.push(format!("{table}_token_unique unique (token)"));
    indexes.push(format!(
        "{table}_tokenable_type_tokenable_id_index index (tokenable_type,tokenable_id)"
    ));
    indexes.sort();
    (columns, indexes)
}

fn check_schema(db: &dyn Database, table: &str, sanctum_4_0: bool) {
    let (columns_wanted, indexes_wanted) = expected_schema(db.kind(), table, sanctum_4_0);
    assert_eq!(
        columns(db, table),
        columns_wanted,
        "{:?} columns",
        db.kind()
    );
    assert_eq!(
        indexes(db, table),
        indexes_wanted,
        "{:?} indexes",
        db.kind()
    );
    if db.kind() == Kind::Postgres {
        // `id()` is bigserial: bigint with the sequence's default.
        assert_eq!(
            db.sql(&format!("SELECT pg_get_serial_sequence('{table}', 'id')")),
            format!("public.{table}_id_seq")
        );
    } else {
        let extra = db.sql(&format!(
            "SELECT extra FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = '{table}' AND column_name = 'id'"
        ));
        assert_eq!(extra, "auto_increment");
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a token with the PHP side; its id and `id|secret` plaintext.
fn create_token(
    db: &dyn Database,
    user: u64,
    name: &str,
    abilities: &str,
    extra: &[&str],
) -> (u64, String) {
    let user = user.to_string();
    let mut args = vec!["create-token", &user, name, abilities];
    args.extend_from_slice(extra);
    let created = sanctum(&db.url(), &args);
    let id = created["id"].as_u64().expect("id");
    let plaintext = created["plaintext"].as_str().expect("plaintext").to_owned();
    (id, plaintext)
}

/// The whole Laravel round trip on one server.
fn sanctum_round_trip(db: &dyn Database) {
    let url = db.url();
    assert_eq!(
        sanctum(&url, &["migrate"]),
        json!({"migrated": "personal_access_tokens", "schema": "current"})
    );
    check_schema(db, "personal_access_tokens", false);

    // A Sanctum 4 token: `{id}|{prefix}{40 random}{crc32b of the 40}`, its SHA-256 stored.
    let (current_id, current) = create_token(
        db,
        42,
        "ci deploy",
        r#"["read","create"]"#,
        &["--prefix", "tg_"],
    );
    let (id_part, secret) = current.split_once('|').expect("id|secret");
    assert_eq!(id_part, current_id.to_string());
    let entropy = secret
        .strip_prefix("tg_")
        .expect("prefix")
        .get(..40)
        .expect("40 chars");
    assert!(
        entropy.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{secret}"
    );
    assert_eq!(
        &secret[3 + 40..],
        format!("{:08x}", crc32fast::hash(entropy.as_bytes())),
        "crc32b suffix of {secret}"
    );
    let stored = db.sql(&format!(
        "SELECT token, tokenable_type, tokenable_id, name, abilities FROM personal_access_tokens WHERE id = {current_id}"
    ));
    assert_eq!(
        stored,
        format!(
            "{}\tApp\\Models\\User\t42\tci deploy\t[\"read\",\"create\"]",
            sha256_hex(secret)
        )
    );

    // A Sanctum 2.x token: 40 random characters, no prefix, no checksum; and a `*` token.
    let (legacy_id, legacy) = create_token(db, 7, "old app", r#"["*"]"#, &["--legacy"]);
    let legacy_secret = legacy.split_once('|').expect("id|secret").1;
    assert_eq!(legacy_secret.len(), 40, "{legacy}");
    assert!(
        legacy_secret.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{legacy}"
    );
    let (_, expiring) = create_token(
        db,
        7,
        "short",
        r#"["read"]"#,
        &["--expires-at", "2030-01-02 03:04:05"],
    );

    // findToken finds each back: by id with the secret, or by the bare token's hash.
    let found = sanctum(&url, &["find-token", &current]);
    assert_eq!(found["id"], current_id);
    assert_eq!(found["tokenable_id"], 42);
    assert_eq!(found["tokenable_type"], "App\\Models\\User");
    assert_eq!(found["abilities"], json!(["read", "create"]));
    assert_eq!(found["token"], sha256_hex(secret));
    assert_eq!(found["expires_at"], Value::Null);
    assert_eq!(sanctum(&url, &["find-token", &legacy])["id"], legacy_id);
    assert_eq!(
        sanctum(&url, &["find-token", legacy_secret])["id"],
        legacy_id
    );
    assert_eq!(
        sanctum(&url, &["find-token", &expiring])["expires_at"],
        "2030-01-02 03:04:05"
    );
    // A wrong secret for a real id, or a token of another id, is not found.
    let wrong = format!("{current_id}|{legacy_secret}");
    assert_eq!(sanctum(&url, &["find-token", &wrong]), Value::Null);
    assert_eq!(sanctum(&url, &["find-token", "999|nothing"]), Value::Null);

    // The app changes abilities, then revokes (a DELETE): findToken follows.
    let updated = sanctum(
        &url,
        &["set-abilities", &legacy_id.to_string(), r#"["reports"]"#],
    );
    assert_eq!(updated["abilities_text"], r#"["reports"]"#);
    assert_eq!(
        sanctum(&url, &["find-token", &legacy])["abilities"],
        json!(["reports"])
    );
    assert_eq!(
        sanctum(&url, &["delete-token", &current_id.to_string()]),
        json!({"deleted": 1})
    );
    assert_eq!(sanctum(&url, &["find-token", &current]), Value::Null);
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM personal_access_tokens WHERE id = {current_id}"
        )),
        "0"
    );
    assert_eq!(db.sql("SELECT count(*) FROM personal_access_tokens"), "2");

    // The table as Sanctum 4.0.0 created it (name varchar(255), expires_at not indexed),
    // under another name (tokengate's `tokens_table`).
    assert_eq!(
        sanctum_on_table(&url, "pat_sanctum_40", &["migrate", "--schema", "4.0"]),
        json!({"migrated": "pat_sanctum_40", "schema": "4.0"})
    );
    check_schema(db, "pat_sanctum_40", true);
}

#[test]
fn postgres_runs_sanctum() {
    let started = Instant::now();
    let db = Postgres::start();
    eprintln!("postgres started in {:?}", db.startup_time());
    sanctum_round_trip(&db);
    eprintln!("postgres round trip: {:?} in all", started.elapsed());
}

#[test]
fn mariadb_runs_sanctum() {
    let started = Instant::now();
    let db = Mariadb::start();
    eprintln!("mariadb started in {:?}", db.startup_time());
    sanctum_round_trip(&db);
    eprintln!("mariadb round trip: {:?} in all", started.elapsed());
}

/// Stops the server: connections are refused on its port; starts it again on the same port
/// and data: the token is still there and found through the same URL.
fn stop_and_restart(db: &mut dyn Database) {
    let url = db.url();
    sanctum(&url, &["migrate"]);
    let (id, token) = create_token(db, 5, "survives", r#"["read"]"#, &[]);

    db.stop();
    let refused = std::net::TcpStream::connect(("127.0.0.1", db.port()))
        .expect_err("connected to a stopped server");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );

    db.restart();
    eprintln!("{:?} restarted in {:?}", db.kind(), db.startup_time());
    assert_eq!(db.url(), url);
    assert_eq!(sanctum(&url, &["find-token", &token])["id"], id);
    // One log across both runs: the server said it was ready twice.
    let ready = match db.kind() {
        Kind::Postgres => "database system is ready to accept connections",
        Kind::Mariadb => "ready for connections",
    };
    assert_eq!(db.log().matches(ready).count(), 2, "{}", db.log());
}

#[test]
fn postgres_stops_and_restarts_on_its_data() {
    stop_and_restart(&mut Postgres::start());
}

#[test]
fn mariadb_stops_and_restarts_on_its_data() {
    stop_and_restart(&mut Mariadb::start());
}

/// Dropping a server stops it and removes its directory.
#[test]
fn dropped_servers_leave_nothing() {
    let pg = Postgres::start();
    let maria = Mariadb::start();
    let dirs = [pg.data_dir(), maria.data_dir()];
    let ports = [pg.port(), maria.port()];
    drop(pg);
    drop(maria);
    for dir in dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something still listens on {port}"
        );
    }
}

/// `tokengate migrate` makes the tokens table exactly as Laravel's migration does (same
/// columns, types, indexes and their names), and its own tables beside it; run again, it
/// changes nothing.
fn tokengate_migrates_like_laravel(db: &dyn Database) {
    use tokengate::config::{SqlKind, SqlStoreConfig, TableName};
    use tokengate::store::SqlStore;
    let config = SqlStoreConfig {
        kind: match db.kind() {
            Kind::Postgres => SqlKind::Postgres,
            Kind::Mariadb => SqlKind::Mysql,
        },
        url_env: "UNUSED".into(),
        tokens_table: TableName::parse("tg_tokens").unwrap(),
        tokenable_type: "App\\Models\\User".into(),
        read_only: false,
        sync_interval: std::time::Duration::from_millis(500),
        max_stale: std::time::Duration::from_secs(30),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let created = runtime
        .block_on(SqlStore::migrate_with_url(&config, &db.url()))
        .unwrap();
    assert_eq!(created.len(), 3, "{created:?}");
    check_schema(db, "tg_tokens", false);
    assert!(runtime
        .block_on(SqlStore::migrate_with_url(&config, &db.url()))
        .unwrap()
        .is_empty());
    check_schema(db, "tg_tokens", false);
    // Laravel's code works on the table tokengate made.
    let (id, plaintext) = {
        let created = sanctum_on_table(
            &db.url(),
            "tg_tokens",
            &["create-token", "9", "on tokengate's table", r#"["read"]"#],
        );
        (
            created["id"].as_u64().unwrap(),
            created["plaintext"].as_str().unwrap().to_owned(),
        )
    };
    let found = sanctum_on_table(&db.url(), "tg_tokens", &["find-token", &plaintext]);
    assert_eq!(found["id"], id, "{found}");
}

#[test]
fn postgres_tokengate_migrate_matches_laravel() {
    let db = Postgres::start();
    tokengate_migrates_like_laravel(&db);
}

#[test]
fn mariadb_tokengate_migrate_matches_laravel() {
    let db = Mariadb::start();
    tokengate_migrates_like_laravel(&db);
}
