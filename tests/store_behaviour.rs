//! One behaviour script over the `Store` trait, run against every store: sled, PostgreSQL
//! and MariaDB (real servers from tests/common/db.rs; a missing server fails the test). The
//! same calls must give the same answers, so the token and session caches above the trait
//! cannot tell the stores apart. Then what only a database store does: Sanctum rows of
//! another `tokenable_type` do not exist for it, `read_only`, numeric owners, and a database
//! without `tokengate migrate`.

mod common;

use common::db::{Database, Mariadb, Postgres};
use std::sync::Arc;
use std::time::Duration;
use tokengate::config::{SqlKind, SqlStoreConfig, TableName};
use tokengate::credential::session::SessionHash;
use tokengate::credential::token::{TokenHash, TokenId};
use tokengate::store::{
    ImportBatch, ImportCounts, Imported, NewToken, SessionRecord, SledStore, SqlStore, Store,
    StoreError, TokenQuery, TokenRecord, UserRecord,
};

const T: i64 = 1_700_000_000;

fn new_token(user: &str, name: &str, abilities: &[&str], expires_at: Option<i64>) -> NewToken {
    NewToken {
        user: user.into(),
        name: name.into(),
        hash: TokenHash::of(&format!("{user}/{name}")),
        abilities: abilities.iter().map(|a| a.to_string()).collect(),
        created_at: T,
        expires_at,
    }
}

fn session(n: u8, user: &str) -> SessionRecord {
    SessionRecord {
        hash: SessionHash(TokenHash::of(&format!("session {n}")).0),
        user: user.into(),
        created_at: T,
        expires_at: T + 7200,
        last_seen: T + 5,
    }
}

fn ids(records: &[TokenRecord]) -> Vec<u64> {
    records.iter().map(|r| r.id.0).collect()
}

fn sorted_sessions(mut sessions: Vec<SessionRecord>) -> Vec<SessionRecord> {
    sessions.sort_by_key(|s| s.hash.0);
    sessions
}

/// The script: every `Store` method, with the answers every store must give.
async fn behaviour(store: Arc<dyn Store>) {
    assert_eq!(store.count_tokens().await.unwrap(), 0);

    // Tokens: ids ascending from creation, records read back as written.
    let a = store
        .create_token(new_token("42", "ci", &["create", "read"], None))
        .await
        .unwrap();
    let b = store
        .create_token(new_token("42", "deploy", &["read"], Some(T + 3600)))
        .await
        .unwrap();
    let c = store
        .create_token(new_token("7", "other", &["*"], None))
        .await
        .unwrap();
    assert!(
        a.id < b.id && b.id < c.id,
        "{:?}",
        ids(&[a.clone(), b.clone(), c.clone()])
    );
    assert_eq!(a.user, "42");
    assert_eq!(a.abilities, vec!["create", "read"]);
    assert_eq!(a.last_used_at, None);
    assert_eq!(store.token(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.token(b.id).await.unwrap(), Some(b.clone()));
    assert_eq!(store.token(TokenId(999_999)).await.unwrap(), None);
    assert_eq!(store.token_by_hash(b.hash).await.unwrap(), Some(b.clone()));
    assert_eq!(
        store.token_by_hash(TokenHash::of("made up")).await.unwrap(),
        None
    );
    let mut duplicate = new_token("42", "again", &["read"], None);
    duplicate.hash = a.hash;
    assert!(matches!(
        store.create_token(duplicate).await,
        Err(StoreError::DuplicateHash)
    ));
    assert_eq!(store.count_tokens().await.unwrap(), 3);

    // Listings: pages by id, by owner.
    let all = store.list_tokens(TokenQuery::all()).await.unwrap();
    assert_eq!(all, vec![a.clone(), b.clone(), c.clone()]);
    let page = |after: Option<TokenId>, user: Option<&str>, limit| TokenQuery {
        user: user.map(str::to_owned),
        after,
        limit,
    };
    assert_eq!(
        ids(&store.list_tokens(page(None, None, 2)).await.unwrap()),
        ids(&[a.clone(), b.clone()])
    );
    assert_eq!(
        ids(&store.list_tokens(page(Some(b.id), None, 2)).await.unwrap()),
        vec![c.id.0]
    );
    assert_eq!(
        ids(&store.list_tokens(page(None, Some("42"), 10)).await.unwrap()),
        ids(&[a.clone(), b.clone()])
    );
    assert_eq!(
        ids(&store
            .list_tokens(page(Some(a.id), Some("42"), 10))
            .await
            .unwrap()),
        vec![b.id.0]
    );
    assert!(store
        .list_tokens(page(None, Some("nobody"), 10))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_tokens(page(Some(TokenId(u64::MAX)), None, 10))
        .await
        .unwrap()
        .is_empty());

    // The batched re-check: only what exists, in any order.
    let mut found = store
        .tokens_by_ids(&[c.id, TokenId(999_999), a.id])
        .await
        .unwrap();
    found.sort_by_key(|r| r.id);
    assert_eq!(found, vec![a.clone(), c.clone()]);
    assert!(store.tokens_by_ids(&[]).await.unwrap().is_empty());

    // Changes.
    let changed = store
        .set_abilities(a.id, vec!["*".into()])
        .await
        .unwrap()
        .expect("a exists");
    assert_eq!(changed.abilities, vec!["*"]);
    assert_eq!(changed.hash, a.hash);
    assert_eq!(
        store.token(a.id).await.unwrap().unwrap().abilities,
        vec!["*"]
    );
    assert_eq!(
        store
            .set_abilities(TokenId(999_999), vec!["read".into()])
            .await
            .unwrap(),
        None
    );
    store
        .touch_tokens(vec![(a.id, T + 10), (TokenId(999_999), T + 10)])
        .await
        .unwrap();
    assert_eq!(
        store.token(a.id).await.unwrap().unwrap().last_used_at,
        Some(T + 10)
    );
    assert_eq!(store.token(b.id).await.unwrap().unwrap().last_used_at, None);
    // Many in one batch (the same id twice: the last value wins).
    store
        .touch_tokens(vec![(b.id, T + 20), (a.id, T + 30), (b.id, T + 25)])
        .await
        .unwrap();
    assert_eq!(
        store.token(a.id).await.unwrap().unwrap().last_used_at,
        Some(T + 30)
    );
    assert_eq!(
        store.token(b.id).await.unwrap().unwrap().last_used_at,
        Some(T + 25)
    );
    assert_eq!(store.token(c.id).await.unwrap().unwrap().last_used_at, None);
    assert!(store.delete_token(c.id).await.unwrap());
    assert!(!store.delete_token(c.id).await.unwrap());
    assert_eq!(store.token(c.id).await.unwrap(), None);
    assert_eq!(store.token_by_hash(c.hash).await.unwrap(), None);
    assert_eq!(store.count_tokens().await.unwrap(), 2);

    // Bulk creation.
    let bulk = store
        .create_tokens(vec![
            new_token("42", "bulk 1", &["read"], None),
            new_token("8", "bulk 2", &["read"], None),
            new_token("8", "bulk 3", &["create"], Some(T + 60)),
        ])
        .await
        .unwrap();
    assert_eq!(bulk.len(), 3);
    assert!(bulk[0].id > c.id && bulk[0].id < bulk[1].id && bulk[1].id < bulk[2].id);
    for record in &bulk {
        assert_eq!(store.token(record.id).await.unwrap().as_ref(), Some(record));
    }
    assert_eq!(store.count_tokens().await.unwrap(), 5);
    store.flush().await.unwrap();

    // Users, in byte order of their names.
    let user = |name: &str, password: Option<&str>| UserRecord {
        name: name.into(),
        password_hash: password.map(str::to_owned),
        created_at: T,
    };
    store.create_user(user("alice", None)).await.unwrap();
    store
        .create_user(user("42", Some("$argon2id$x")))
        .await
        .unwrap();
    store.create_user(user("Bob", None)).await.unwrap();
    assert!(matches!(
        store.create_user(user("alice", Some("other"))).await,
        Err(StoreError::UserExists(name)) if name == "alice"
    ));
    assert_eq!(
        store.user("alice").await.unwrap(),
        Some(user("alice", None))
    );
    assert_eq!(
        store.user("42").await.unwrap(),
        Some(user("42", Some("$argon2id$x")))
    );
    assert_eq!(store.user("ALICE").await.unwrap(), None);
    let names = |users: Vec<UserRecord>| users.into_iter().map(|u| u.name).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_users(None, 10).await.unwrap()),
        vec!["42", "Bob", "alice"]
    );
    assert_eq!(
        names(store.list_users(Some("42".into()), 1).await.unwrap()),
        vec!["Bob"]
    );
    assert!(store
        .set_password("alice", Some("h2".into()))
        .await
        .unwrap());
    assert!(store
        .set_password("alice", Some("h2".into()))
        .await
        .unwrap());
    assert_eq!(
        store.user("alice").await.unwrap().unwrap().password_hash,
        Some("h2".into())
    );
    assert!(!store.set_password("nobody", None).await.unwrap());

    // Sessions.
    let (s1, s2, s3) = (session(1, "alice"), session(2, "alice"), session(3, "42"));
    for s in [&s1, &s2, &s3] {
        store.create_session(s.clone()).await.unwrap();
    }
    assert!(matches!(
        store.create_session(session(4, "nobody")).await,
        Err(StoreError::NoSuchUser(name)) if name == "nobody"
    ));
    assert_eq!(store.session(s1.hash).await.unwrap(), Some(s1.clone()));
    assert_eq!(store.session(session(9, "x").hash).await.unwrap(), None);
    assert_eq!(
        sorted_sessions(
            store
                .sessions_by_hashes(&[s3.hash, session(9, "x").hash, s1.hash])
                .await
                .unwrap()
        ),
        sorted_sessions(vec![s1.clone(), s3.clone()])
    );
    assert_eq!(
        sorted_sessions(store.list_sessions(Some("alice")).await.unwrap()),
        sorted_sessions(vec![s1.clone(), s2.clone()])
    );
    assert_eq!(store.list_sessions(None).await.unwrap().len(), 3);
    // last_seen only moves forward; a gone session is skipped.
    store
        .touch_sessions(vec![
            (s1.hash, T + 100),
            (s1.hash, T + 50),
            (s2.hash, T + 1),
            (session(9, "x").hash, T + 100),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.session(s1.hash).await.unwrap().unwrap().last_seen,
        T + 100
    );
    assert_eq!(
        store.session(s2.hash).await.unwrap().unwrap().last_seen,
        T + 5
    );
    assert_eq!(
        store
            .delete_sessions(vec![s2.hash, session(9, "x").hash])
            .await
            .unwrap(),
        vec![s2.hash]
    );
    assert_eq!(store.session(s2.hash).await.unwrap(), None);

    // Removing a user takes their sessions and the tokens they own, at once.
    let removed = store.delete_user("42").await.unwrap().expect("42 exists");
    let mut removed_tokens = removed.tokens.clone();
    removed_tokens.sort();
    assert_eq!(removed_tokens, vec![a.id, b.id, bulk[0].id]);
    assert_eq!(removed.sessions, vec![s3.hash]);
    assert_eq!(store.user("42").await.unwrap(), None);
    assert_eq!(store.session(s3.hash).await.unwrap(), None);
    assert_eq!(store.token(a.id).await.unwrap(), None);
    assert_eq!(
        ids(&store.list_tokens(TokenQuery::all()).await.unwrap()),
        vec![bulk[1].id.0, bulk[2].id.0]
    );
    assert_eq!(store.count_tokens().await.unwrap(), 2);
    assert!(store.delete_user("42").await.unwrap().is_none());
    let removed = store
        .delete_user("alice")
        .await
        .unwrap()
        .expect("alice exists");
    assert!(removed.tokens.is_empty());
    assert_eq!(removed.sessions, vec![s1.hash]);
    assert!(store.list_sessions(None).await.unwrap().is_empty());
    assert_eq!(
        names(store.list_users(None, 10).await.unwrap()),
        vec!["Bob"]
    );

    // Import: records as another store held them, token ids kept (later ids come after
    // them); the same records again are counted as present; a record that differs from
    // the one under its id, hash or name fails its whole batch.
    let carol = UserRecord {
        name: "carol".into(),
        password_hash: None,
        created_at: T,
    };
    let moved = TokenRecord {
        id: TokenId(900),
        user: "77".into(),
        name: "moved".into(),
        hash: TokenHash::of("moved"),
        abilities: vec!["read".into()],
        created_at: T,
        expires_at: Some(T + 99),
        last_used_at: Some(T + 50),
    };
    let batch = || ImportBatch {
        users: vec![carol.clone()],
        tokens: vec![moved.clone()],
        sessions: vec![session(9, "carol")],
    };
    let added = Imported {
        added: 1,
        present: 0,
    };
    assert_eq!(
        store.import(batch()).await.unwrap(),
        ImportCounts {
            users: added,
            tokens: added,
            sessions: added
        }
    );
    assert_eq!(store.token(moved.id).await.unwrap().as_ref(), Some(&moved));
    assert_eq!(store.user("carol").await.unwrap().as_ref(), Some(&carol));
    assert_eq!(
        store.session(session(9, "carol").hash).await.unwrap(),
        Some(session(9, "carol"))
    );
    let present = Imported {
        added: 0,
        present: 1,
    };
    assert_eq!(
        store.import(batch()).await.unwrap(),
        ImportCounts {
            users: present,
            tokens: present,
            sessions: present
        }
    );
    let after = store
        .create_token(new_token("77", "after import", &["read"], None))
        .await
        .unwrap();
    assert_eq!(after.id, TokenId(901));
    let dave = UserRecord {
        name: "dave".into(),
        password_hash: None,
        created_at: T,
    };
    let conflicts = [
        ImportBatch {
            tokens: vec![TokenRecord {
                hash: TokenHash::of("other secret"),
                ..moved.clone()
            }],
            ..ImportBatch::default()
        },
        ImportBatch {
            tokens: vec![TokenRecord {
                id: TokenId(950),
                ..moved.clone()
            }],
            ..ImportBatch::default()
        },
        ImportBatch {
            users: vec![UserRecord {
                password_hash: Some(
                    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into(),
                ),
                ..carol.clone()
            }],
            ..ImportBatch::default()
        },
        ImportBatch {
            sessions: vec![session(10, "nobody")],
            ..ImportBatch::default()
        },
    ];
    for (n, mut conflict) in conflicts.into_iter().enumerate() {
        conflict.users.push(dave.clone());
        match store.import(conflict).await {
            Err(StoreError::Conflict(_)) => {}
            other => panic!("conflict {n}: {other:?}"),
        }
        assert_eq!(store.user("dave").await.unwrap(), None, "conflict {n}");
    }
    assert_eq!(store.token(TokenId(950)).await.unwrap(), None);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn sql_config(kind: SqlKind, read_only: bool) -> SqlStoreConfig {
    SqlStoreConfig {
        kind,
        url_env: "TOKENGATE_DATABASE_URL".into(),
        tokens_table: TableName::parse("personal_access_tokens").unwrap(),
        tokenable_type: "App\\Models\\User".into(),
        read_only,
        sync_interval: Duration::from_millis(500),
        max_stale: Duration::from_secs(30),
    }
}

fn kind_of(db: &dyn Database) -> SqlKind {
    match db.kind() {
        common::db::Kind::Postgres => SqlKind::Postgres,
        common::db::Kind::Mariadb => SqlKind::Mysql,
    }
}

/// A migrated database store on `db`.
async fn migrated(db: &dyn Database) -> SqlStore {
    let config = sql_config(kind_of(db), false);
    let created = SqlStore::migrate_with_url(&config, &db.url())
        .await
        .unwrap();
    assert_eq!(created.len(), 3, "{created:?}");
    // Idempotent.
    assert!(SqlStore::migrate_with_url(&config, &db.url())
        .await
        .unwrap()
        .is_empty());
    SqlStore::open_with_url(&config, &db.url()).await.unwrap()
}

#[test]
fn sled_store_behaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("store")).unwrap();
    runtime().block_on(behaviour(Arc::new(store)));
}

#[test]
fn postgres_store_behaves() {
    let db = Postgres::start();
    runtime().block_on(async {
        behaviour(Arc::new(migrated(&db).await)).await;
    });
}

#[test]
fn mariadb_store_behaves() {
    let db = Mariadb::start();
    runtime().block_on(async {
        behaviour(Arc::new(migrated(&db).await)).await;
    });
}

/// What only a database store does, on one server.
async fn database_only(db: &dyn Database) {
    let kind = kind_of(db);
    let config = sql_config(kind, false);

    // Not migrated: refused, naming the command.
    let refused = SqlStore::open_with_url(&config, &db.url())
        .await
        .err()
        .expect("an empty database is refused");
    assert!(
        refused.to_string().contains("tokengate migrate"),
        "{refused}"
    );
    let store = migrated(db).await;

    // Sanctum's owner is a number.
    assert!(matches!(
        store
            .create_token(new_token("alice", "t", &["read"], None))
            .await,
        Err(StoreError::InvalidUser(user)) if user == "alice"
    ));

    // A token as Laravel writes it, and a row of another model type that must not exist
    // for tokengate.
    let mine = store
        .create_token(new_token("5", "mine", &["read"], Some(T + 60)))
        .await
        .unwrap();
    let row = db.sql(&format!(
        "SELECT tokenable_id, name, token, abilities, expires_at, created_at, updated_at \
         FROM personal_access_tokens WHERE id = {}",
        mine.id
    ));
    assert_eq!(
        row,
        format!(
            "5\tmine\t{}\t[\"read\"]\t2023-11-14 22:14:20\t2023-11-14 22:13:20\t2023-11-14 22:13:20",
            mine.hash.to_hex()
        )
    );
    // The batched last_used_at write changes that column only.
    store.touch_tokens(vec![(mine.id, T + 30)]).await.unwrap();
    assert_eq!(
        db.sql(&format!(
            "SELECT last_used_at, updated_at FROM personal_access_tokens WHERE id = {}",
            mine.id
        )),
        "2023-11-14 22:13:50\t2023-11-14 22:13:20"
    );
    let mine = store.token(mine.id).await.unwrap().unwrap();
    assert_eq!(mine.last_used_at, Some(T + 30));
    // (Backslashes read differently in each client: matched by pattern.)
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM personal_access_tokens WHERE tokenable_type LIKE 'App_Models_User'"),
        "1"
    );
    let other_hash = TokenHash::of("a team's token");
    db.sql(&format!(
        "INSERT INTO personal_access_tokens (tokenable_type, tokenable_id, name, token, abilities, created_at, updated_at) \
         VALUES ('App\\Models\\Team', 5, 'team', '{}', '[\"*\"]', '2024-01-01 00:00:00', '2024-01-01 00:00:00')",
        other_hash.to_hex()
    ));
    let other = TokenId(
        db.sql(&format!(
            "SELECT id FROM personal_access_tokens WHERE token = '{}'",
            other_hash.to_hex()
        ))
        .trim()
        .parse()
        .unwrap(),
    );
    assert_eq!(store.token(other).await.unwrap(), None);
    assert_eq!(store.token_by_hash(other_hash).await.unwrap(), None);
    assert!(store.tokens_by_ids(&[other]).await.unwrap().is_empty());
    assert_eq!(
        ids(&store.list_tokens(TokenQuery::all()).await.unwrap()),
        vec![mine.id.0]
    );
    assert_eq!(store.count_tokens().await.unwrap(), 1);
    assert!(!store.delete_token(other).await.unwrap());
    assert_eq!(
        store
            .set_abilities(other, vec!["read".into()])
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT abilities FROM personal_access_tokens WHERE id = {other}"
        )),
        "[\"*\"]"
    );

    // A bulk import: one transaction per 10,000, ids in order, every row readable.
    let many: Vec<NewToken> = (0..2_000)
        .map(|i| {
            new_token(
                &(1_000 + i % 7).to_string(),
                &format!("bulk {i}"),
                &["read"],
                None,
            )
        })
        .collect();
    let start = std::time::Instant::now();
    let imported = store.create_tokens(many).await.unwrap();
    let took = start.elapsed();
    println!("{kind:?}: 2,000 tokens imported in {took:?}");
    assert_eq!(imported.len(), 2_000);
    assert!(imported.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(store.count_tokens().await.unwrap(), 2_001);
    let ids: Vec<TokenId> = imported.iter().map(|r| r.id).collect();
    assert_eq!(store.tokens_by_ids(&ids).await.unwrap().len(), 2_000);
    let touched: Vec<(TokenId, i64)> = ids.iter().map(|&id| (id, T + 77)).collect();
    store.touch_tokens(touched).await.unwrap();
    assert_eq!(
        store.token(ids[1_999]).await.unwrap().unwrap().last_used_at,
        Some(T + 77)
    );

    // read_only: token writes refused, last_used_at never written; users and sessions are
    // tokengate's own and stay writable.
    let read_only = SqlStore::open_with_url(&sql_config(kind, true), &db.url())
        .await
        .unwrap();
    assert!(matches!(
        read_only
            .create_token(new_token("5", "ro", &["read"], None))
            .await,
        Err(StoreError::ReadOnly)
    ));
    assert!(matches!(
        read_only.set_abilities(mine.id, vec!["*".into()]).await,
        Err(StoreError::ReadOnly)
    ));
    assert!(matches!(
        read_only.delete_token(mine.id).await,
        Err(StoreError::ReadOnly)
    ));
    let import = ImportBatch {
        tokens: vec![TokenRecord {
            id: TokenId(77_777),
            ..mine.clone()
        }],
        ..ImportBatch::default()
    };
    assert!(matches!(
        read_only.import(import).await,
        Err(StoreError::ReadOnly)
    ));
    read_only
        .touch_tokens(vec![(mine.id, T + 999)])
        .await
        .unwrap();
    assert_eq!(read_only.token(mine.id).await.unwrap(), Some(mine.clone()));
    read_only
        .create_user(UserRecord {
            name: "5".into(),
            password_hash: None,
            created_at: T,
        })
        .await
        .unwrap();
    let removed = read_only.delete_user("5").await.unwrap().unwrap();
    assert!(
        removed.tokens.is_empty(),
        "read_only keeps the app's tokens"
    );
    assert_eq!(read_only.token(mine.id).await.unwrap(), Some(mine));
}

#[test]
fn postgres_store_keeps_to_its_tokens() {
    let db = Postgres::start();
    runtime().block_on(database_only(&db));
}

#[test]
fn mariadb_store_keeps_to_its_tokens() {
    let db = Mariadb::start();
    runtime().block_on(database_only(&db));
}

/// The postmaster (from its pid file) and its children: every process of `db`.
fn postgres_processes(db: &Postgres) -> Vec<String> {
    let pid_file = std::fs::read_to_string(db.data_dir().join("postmaster.pid")).unwrap();
    let postmaster = pid_file.lines().next().unwrap().trim().to_owned();
    let mut pids = vec![postmaster.clone()];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so read after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(postmaster.as_str()) {
            pids.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    pids
}

fn signal_all(pids: &[String], signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .args(pids)
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pids:?}");
}

/// A database that stops answering without refusing anything (its processes frozen, as
/// behind a network partition that drops packets): every operation gives up within the
/// store's timeout instead of hanging, and works again once the database answers.
#[test]
fn a_database_that_does_not_answer_is_an_error_not_a_hang() {
    let db = Postgres::start();
    let token = runtime().block_on(async {
        let store = migrated(&db).await;
        let token = store
            .create_token(new_token("1", "t", &["read"], None))
            .await
            .unwrap();
        let frozen = postgres_processes(&db);
        signal_all(&frozen, "-STOP");
        let start = std::time::Instant::now();
        let outcome = store.token(token.id).await;
        let waited = start.elapsed();
        signal_all(&frozen, "-CONT");
        println!("a frozen database: {outcome:?} after {waited:?}");
        assert!(matches!(outcome, Err(StoreError::Io(_))), "{outcome:?}");
        assert!(waited < Duration::from_secs(8), "{waited:?}");
        assert_eq!(store.token(token.id).await.unwrap(), Some(token.clone()));
        token
    });

    // A query that waits (here on a lock another session holds) is given up too.
    let rt = runtime();
    let store = rt
        .block_on(SqlStore::open_with_url(
            &sql_config(SqlKind::Postgres, false),
            &db.url(),
        ))
        .unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            db.sql(
                "BEGIN; LOCK TABLE personal_access_tokens IN ACCESS EXCLUSIVE MODE; \
                 SELECT pg_sleep(6.5); COMMIT;",
            )
        });
        rt.block_on(async {
            let locked = std::time::Instant::now() + Duration::from_secs(5);
            while db
                .sql("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND locktype = 'relation'")
                == "0"
            {
                assert!(std::time::Instant::now() < locked, "the lock was never taken");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let start = std::time::Instant::now();
            let outcome = store.token(token.id).await;
            let waited = start.elapsed();
            println!("a query waiting on a lock: {outcome:?} after {waited:?}");
            assert!(matches!(outcome, Err(StoreError::Io(_))), "{outcome:?}");
            assert!(
                waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
                "{waited:?}"
            );
        });
    });
}

/// On a shared store a cache miss reads the database, and its "no such token" is reused for
/// a second: the same made-up token sent 200 times costs one read, a second made-up token
/// one more, and a real token created behind the cache's back is still found at its first
/// use.
#[test]
fn a_flood_of_one_made_up_token_costs_one_database_read() {
    let db = Postgres::start();
    runtime().block_on(async {
        let store: Arc<dyn tokengate::store::Store> = Arc::new(migrated(&db).await);
        let clock = Arc::new(tokengate::clock::SystemClock);
        let policy = tokengate::config::TokenPolicy {
            prefix: String::new(),
            lifetime: None,
            abilities: Vec::new(),
            default_abilities: Vec::new(),
            cache_capacity: 1_000,
            max_per_user: 1_000,
        };
        let tokens = tokengate::token_cache::Tokens::new(Arc::clone(&store), clock, policy);
        tokens.warm().await.unwrap();
        let before = tokens.store_reads();
        for _ in 0..200 {
            let found = tokens.authenticate("7|made-up-secret").await.unwrap();
            assert!(found.is_none());
        }
        assert_eq!(tokens.store_reads() - before, 1, "one read for 200 tries");
        assert!(tokens.authenticate("8|another").await.unwrap().is_none());
        assert_eq!(tokens.store_reads() - before, 2);
        // Made elsewhere (another replica, the app): found at its first use.
        let secret = "real-secret-from-elsewhere";
        let record = store
            .create_token(tokengate::store::NewToken {
                user: "42".into(),
                name: "elsewhere".into(),
                hash: TokenHash::of(secret),
                abilities: vec!["*".into()],
                created_at: 1_767_225_600,
                expires_at: None,
            })
            .await
            .unwrap();
        let found = tokens
            .authenticate(&format!("{}|{secret}", record.id))
            .await
            .unwrap();
        assert_eq!(found.map(|t| t.id), Some(record.id));
    });
}
