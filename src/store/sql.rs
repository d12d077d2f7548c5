//! The shared database store: PostgreSQL, or MySQL 8 / MariaDB 10.6+, for many replicas.
//! The only module that imports sqlx. Tokens live in Laravel Sanctum's own table
//! (`personal_access_tokens` by default), so tokengate reads the tokens a Laravel app mints
//! and the app reads the tokens tokengate mints; users and sessions live in tokengate's own
//! `tokengate_users` and `tokengate_sessions`, created by `tokengate migrate` (`migrate`).
//!
//! One implementation serves both databases: the SQL is written once with `?`
//! placeholders (numbered `$n` for PostgreSQL by `Sql::text`), and `on_pool!` runs the
//! same query code on either pool. Only the DDL and reading a new row's id differ. sqlx's
//! `Any` driver was not used: it cannot bind or read timestamps, and Sanctum's columns are
//! `timestamp` on both databases.
//!
//! Rows of Sanctum's table with another `tokenable_type` than the configured one are never
//! read, changed or deleted: to tokengate they do not exist. Timestamps are written and read
//! as UTC wall-clock time, as Laravel writes them with its default `UTC` timezone. With
//! `read_only`, the tokens table is never written (`touch_tokens` does nothing, other
//! writes fail with `ReadOnly`).

use super::{
    ImportBatch, ImportCounts, LaravelSessionRow, NewToken, RemovedUser, SessionRecord, Store,
    StoreError, TokenQuery, TokenRecord, UserRecord,
};
use crate::clock::Timestamp;
use crate::config::{SqlKind, SqlStoreConfig, TableName};
use crate::credential::session::SessionHash;
use crate::credential::token::{TokenHash, TokenId};
use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::ConnectOptions;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;
use time::{OffsetDateTime, PrimitiveDateTime};

/// Connections per replica: the re-check, cache misses, batched writes and the admin API
/// rarely need more, and a database's connection limit is shared by every replica.
const MAX_CONNECTIONS: u32 = 8;

/// How long a query waits for a connection (including connecting). Short, so that an
/// unreachable database turns into a 503 and a failed re-check quickly.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Ids or hashes per `IN (…)` query: far below both databases' placeholder limits.
const BATCH: usize = 500;

/// tokengate's own tables (the tokens table's name comes from the config).
const USERS: &str = "tokengate_users";
const SESSIONS: &str = "tokengate_sessions";

/// The pool, of whichever kind the config names.
#[derive(Clone)]
enum Pool {
    Pg(PgPool),
    My(MySqlPool),
}

/// Runs the same code on either pool (`$pool` is a `PgPool` or a `MySqlPool`), within
/// `QUERY_TIMEOUT`.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        on_pool!($store, QUERY_TIMEOUT, $pool => $body)
    };
    ($store:expr, $timeout:expr, $pool:ident => $body:expr) => {
        within($timeout, async {
            match &$store.pool {
                Pool::Pg($pool) => $body,
                Pool::My($pool) => $body,
            }
        })
        .await
    };
}

/// How long one store operation may take, connecting included. A database that stops
/// answering (a network partition drops packets rather than refusing them) must turn into
/// errors, so that cache misses get their 503 instead of hanging.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// An operation's result when it ran out of time.
trait TimedOut {
    fn timed_out() -> Self;
}

impl<T> TimedOut for Result<T, StoreError> {
    fn timed_out() -> Self {
        Err(StoreError::Io("the database did not answer in time".into()))
    }
}

impl<T> TimedOut for Result<T, sqlx::Error> {
    fn timed_out() -> Self {
        Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the database did not answer in time".to_owned(),
        )))
    }
}

/// `operation`, or its timeout error past `QUERY_TIMEOUT`. (A dropped sqlx future closes
/// its connection rather than returning it mid-query; a dropped transaction rolls back.)
async fn within<R: TimedOut>(
    timeout: Duration,
    operation: impl std::future::Future<Output = R>,
) -> R {
    tokio::time::timeout(timeout, operation)
        .await
        .unwrap_or_else(|_| R::timed_out())
}

/// The store. Clones share one pool.
#[derive(Clone)]
pub struct SqlStore {
    pool: Pool,
    sql: Sql,
    tokenable_type: String,
    read_only: bool,
}

/// Turns the SQL written once into each database's dialect.
#[derive(Clone)]
struct Sql {
    kind: SqlKind,
    tokens: String,
    users: String,
    sessions: String,
}

impl Sql {
    fn new(kind: SqlKind, tokens: &TableName) -> Self {
        let plain = |name: &str| TableName {
            schema: None,
            table: name.to_owned(),
        };
        Self {
            kind,
            tokens: tokens.quoted(kind),
            users: plain(USERS).quoted(kind),
            sessions: plain(SESSIONS).quoted(kind),
        }
    }

    /// `{t}`, `{u}`, `{s}` become the quoted tables; `?` becomes `$1`, `$2`… on PostgreSQL.
    /// (No `?` can come from a table name: those are validated identifiers.)
    fn text(&self, template: &str) -> String {
        let named = template
            .replace("{t}", &self.tokens)
            .replace("{u}", &self.users)
            .replace("{s}", &self.sessions);
        match self.kind {
            SqlKind::Mysql => named,
            SqlKind::Postgres => {
                let mut out = String::with_capacity(named.len() + 16);
                let mut n = 0;
                for c in named.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }
}

/// `?, ?, ?` for an `IN (…)` list of `n`.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// The columns of a token, in the order `token_row` reads them.
const TOKEN_COLUMNS: &str =
    "id, tokenable_id, name, token, abilities, created_at, expires_at, last_used_at";

/// The columns of a session.
const SESSION_COLUMNS: &str = "hash, user_name, created_at, expires_at, last_seen";

impl SqlStore {
    /// Connects to the database whose URL is in the environment variable `url_env` and
    /// checks that `tokengate migrate` has made its tables.
    pub async fn open(config: &SqlStoreConfig) -> Result<Self, StoreError> {
        Self::open_with_url(config, &url_from_env(config)?).await
    }

    /// `open` with the URL given rather than read from `url_env` (tests).
    pub async fn open_with_url(config: &SqlStoreConfig, url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(config, url).await?;
        store.check_tables().await?;
        Ok(store)
    }

    /// Connects without checking the tables (`migrate`).
    async fn connect(config: &SqlStoreConfig, url: &str) -> Result<Self, StoreError> {
        // The URL may hold a password: no error message repeats it.
        let bad_url = |scheme: &str| {
            StoreError::Setup(format!(
                "the URL in {} is not a valid {scheme}:// URL for store.kind {:?}",
                config.url_env, config.kind
            ))
        };
        let pool = match config.kind {
            SqlKind::Postgres => {
                if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                    return Err(bad_url("postgres"));
                }
                let options = PgConnectOptions::from_str(url)
                    .map_err(|_| bad_url("postgres"))?
                    .disable_statement_logging();
                Pool::Pg(
                    PgPoolOptions::new()
                        .max_connections(MAX_CONNECTIONS)
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .connect_with(options)
                        .await
                        .map_err(db)?,
                )
            }
            SqlKind::Mysql => {
                if !url.starts_with("mysql://") && !url.starts_with("mariadb://") {
                    return Err(bad_url("mysql"));
                }
                // sqlx sets the session time zone to UTC (`+00:00`) by default, so Sanctum's
                // `timestamp` columns read back as the UTC Laravel wrote.
                let options = MySqlConnectOptions::from_str(url)
                    .map_err(|_| bad_url("mysql"))?
                    .disable_statement_logging();
                Pool::My(
                    MySqlPoolOptions::new()
                        .max_connections(MAX_CONNECTIONS)
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .connect_with(options)
                        .await
                        .map_err(db)?,
                )
            }
        };
        Ok(Self {
            pool,
            sql: Sql::new(config.kind, &config.tokens_table),
            tokenable_type: config.tokenable_type.clone(),
            read_only: config.read_only,
        })
    }

    /// Each table tokengate needs, and whether it exists.
    async fn tables(&self) -> Result<Vec<(String, bool)>, StoreError> {
        let mut out = Vec::new();
        for (quoted, name) in [
            (&self.sql.tokens, "tokens table"),
            (&self.sql.users, USERS),
            (&self.sql.sessions, SESSIONS),
        ] {
            let probe = format!("SELECT 1 FROM {quoted} WHERE 1 = 0");
            let found =
                on_pool!(self, pool => sqlx::query(&probe).fetch_optional(pool).await.map(|_| ()));
            let exists = match found {
                Ok(_) => true,
                Err(e) if is_missing_table(&e) => false,
                Err(e) => return Err(db(e)),
            };
            let label = if name == "tokens table" {
                format!("{quoted} (store.tokens_table)")
            } else {
                name.to_owned()
            };
            out.push((label, exists));
        }
        Ok(out)
    }

    async fn check_tables(&self) -> Result<(), StoreError> {
        let missing: Vec<String> = self
            .tables()
            .await?
            .into_iter()
            .filter(|(_, exists)| !exists)
            .map(|(name, _)| name)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(StoreError::Setup(format!(
            "the database has no {}: run `tokengate migrate --config <file>` first",
            missing.join(", ")
        )))
    }

    /// Creates what is missing: tokengate's tables and, if absent, the tokens table with
    /// Sanctum 4's current schema (as Laravel's schema builder makes it on this database).
    /// Running it again changes nothing. Returns what it created.
    pub async fn migrate(config: &SqlStoreConfig) -> Result<Vec<String>, StoreError> {
        Self::migrate_with_url(config, &url_from_env(config)?).await
    }

    /// `migrate` with the URL given rather than read from `url_env` (tests).
    pub async fn migrate_with_url(
        config: &SqlStoreConfig,
        url: &str,
    ) -> Result<Vec<String>, StoreError> {
        let store = Self::connect(config, url).await?;
        let before = store.tables().await?;
        let tokens_absent = !before[0].1;
        let mut statements = Vec::new();
        if tokens_absent {
            statements.extend(store.tokens_ddl(&config.tokens_table));
        }
        statements.extend(store.own_ddl());
        // One transaction: on PostgreSQL a failure leaves nothing half made (MySQL commits
        // each CREATE on its own, but there each table is one statement).
        store
            .execute_in_transaction(statements.into_iter().map(|q| (q, Vec::new())).collect())
            .await?;
        Ok(before
            .into_iter()
            .filter(|(_, exists)| !exists)
            .map(|(name, _)| name)
            .collect())
    }

    /// Sanctum 4's `personal_access_tokens` as Laravel 8's schema builder creates it.
    fn tokens_ddl(&self, table: &TableName) -> Vec<String> {
        let t = &self.sql.tokens;
        let index = |suffix: &str| {
            TableName {
                schema: None,
                table: format!("{}_{suffix}", table.table),
            }
            .quoted(self.sql.kind)
        };
        let (morph, unique, expires) = (
            index("tokenable_type_tokenable_id_index"),
            index("token_unique"),
            index("expires_at_index"),
        );
        match self.sql.kind {
            SqlKind::Postgres => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (\
                     id bigserial PRIMARY KEY NOT NULL, \
                     tokenable_type varchar(255) NOT NULL, \
                     tokenable_id bigint NOT NULL, \
                     name text NOT NULL, \
                     token varchar(64) NOT NULL, \
                     abilities text NULL, \
                     last_used_at timestamp(0) without time zone NULL, \
                     expires_at timestamp(0) without time zone NULL, \
                     created_at timestamp(0) without time zone NULL, \
                     updated_at timestamp(0) without time zone NULL, \
                     CONSTRAINT {unique} UNIQUE (token))"
                ),
                format!("CREATE INDEX IF NOT EXISTS {morph} ON {t} (tokenable_type, tokenable_id)"),
                format!("CREATE INDEX IF NOT EXISTS {expires} ON {t} (expires_at)"),
            ],
            SqlKind::Mysql => vec![format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                 tokenable_type varchar(255) NOT NULL, \
                 tokenable_id bigint unsigned NOT NULL, \
                 name text NOT NULL, \
                 token varchar(64) NOT NULL, \
                 abilities text NULL, \
                 last_used_at timestamp NULL, \
                 expires_at timestamp NULL, \
                 created_at timestamp NULL, \
                 updated_at timestamp NULL, \
                 INDEX {morph} (tokenable_type, tokenable_id), \
                 UNIQUE KEY {unique} (token), \
                 INDEX {expires} (expires_at)\
                 ) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )],
        }
    }

    /// tokengate's users and sessions. Names compare byte by byte (as in sled), not by a
    /// case-insensitive collation; a session goes with its user.
    fn own_ddl(&self) -> Vec<String> {
        let (u, s) = (&self.sql.users, &self.sql.sessions);
        match self.sql.kind {
            SqlKind::Postgres => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {u} (\
                     name varchar(255) COLLATE \"C\" PRIMARY KEY NOT NULL, \
                     password_hash text NULL, \
                     created_at timestamp(0) without time zone NOT NULL)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {s} (\
                     hash char(64) COLLATE \"C\" PRIMARY KEY NOT NULL, \
                     user_name varchar(255) COLLATE \"C\" NOT NULL \
                       REFERENCES {u} (name) ON DELETE CASCADE, \
                     created_at timestamp(0) without time zone NOT NULL, \
                     expires_at timestamp(0) without time zone NOT NULL, \
                     last_seen timestamp(0) without time zone NOT NULL)"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS tokengate_sessions_user_name_index ON {s} (user_name)"
                ),
            ],
            SqlKind::Mysql => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {u} (\
                     name varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
                     password_hash text NULL, \
                     created_at datetime NOT NULL\
                     ) DEFAULT CHARACTER SET utf8mb4"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {s} (\
                     hash char(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY, \
                     user_name varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                     created_at datetime NOT NULL, \
                     expires_at datetime NOT NULL, \
                     last_seen datetime NOT NULL, \
                     INDEX tokengate_sessions_user_name_index (user_name), \
                     CONSTRAINT tokengate_sessions_user_name_foreign FOREIGN KEY (user_name) \
                       REFERENCES {u} (name) ON DELETE CASCADE\
                     ) DEFAULT CHARACTER SET utf8mb4"
                ),
            ],
        }
    }

    fn writable(&self) -> Result<(), StoreError> {
        if self.read_only {
            Err(StoreError::ReadOnly)
        } else {
            Ok(())
        }
    }

    async fn tokens_where(
        &self,
        condition: &str,
        bind: Vec<Param>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let q = self.sql.text(&format!(
            "SELECT {TOKEN_COLUMNS} FROM {{t}} WHERE tokenable_type = ? AND {condition}"
        ));
        let mut params = vec![Param::Text(self.tokenable_type.clone())];
        params.extend(bind);
        on_pool!(self, pool => {
            bound(&q, &params)
                .fetch_all(pool)
                .await
                .map_err(db)?
                .iter()
                .map(token_row)
                .collect()
        })
    }

    async fn sessions_where(
        &self,
        condition: &str,
        bind: Vec<Param>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let q = self.sql.text(&format!(
            "SELECT {SESSION_COLUMNS} FROM {{s}} WHERE {condition} ORDER BY hash"
        ));
        on_pool!(self, pool => {
            bound(&q, &bind)
                .fetch_all(pool)
                .await
                .map_err(db)?
                .iter()
                .map(session_row)
                .collect()
        })
    }

    /// Runs statements in one transaction.
    async fn execute_in_transaction(
        &self,
        statements: Vec<(String, Vec<Param>)>,
    ) -> Result<(), StoreError> {
        // Each statement (a batch of up to 500 rows) gets the time of one query.
        let timeout = QUERY_TIMEOUT * (1 + u32::try_from(statements.len()).unwrap_or(u32::MAX / 8));
        on_pool!(self, timeout, pool => {
            let mut tx = pool.begin().await.map_err(db)?;
            for (q, params) in &statements {
                bound(q, params).execute(&mut *tx).await.map_err(db)?;
            }
            tx.commit().await.map_err(db)
        })
    }

    /// Inserts tokens in one transaction.
    async fn insert_tokens(&self, tokens: &[NewToken]) -> Result<Vec<TokenId>, StoreError> {
        let mut rows = Vec::with_capacity(tokens.len());
        for token in tokens {
            let user =
                owner_id(&token.user).ok_or_else(|| StoreError::InvalidUser(token.user.clone()))?;
            let abilities = serde_json::to_string(&token.abilities)
                .map_err(|e| StoreError::Io(e.to_string()))?;
            let created = to_time(token.created_at)?;
            rows.push(vec![
                Param::Text(self.tokenable_type.clone()),
                Param::Int(user),
                Param::Text(token.name.clone()),
                Param::Text(token.hash.to_hex()),
                Param::Text(abilities),
                Param::MaybeTime(token.expires_at.map(to_time).transpose()?),
                Param::Time(created),
                Param::Time(created),
            ]);
        }
        let q = self.sql.text(
            "INSERT INTO {t} (tokenable_type, tokenable_id, name, token, abilities, \
             expires_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        );
        let mut ids = Vec::with_capacity(tokens.len());
        // A bulk import inserts row by row: time for the rows, not for one query.
        let timeout = QUERY_TIMEOUT * (1 + u32::try_from(tokens.len() / 100).unwrap_or(1000));
        within(timeout, async {
            // Only reading the new row's id differs between the databases.
            match &self.pool {
                Pool::Pg(pool) => {
                    let q = format!("{q} RETURNING id");
                    let mut tx = pool.begin().await.map_err(db)?;
                    for params in &rows {
                        let row = bound(&q, params)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(insert_error)?;
                        ids.push(TokenId(u64::try_from(row.int("id")?).map_err(corrupt_id)?));
                    }
                    tx.commit().await.map_err(db)?;
                }
                Pool::My(pool) => {
                    let mut tx = pool.begin().await.map_err(db)?;
                    for params in &rows {
                        let done = bound(&q, params)
                            .execute(&mut *tx)
                            .await
                            .map_err(insert_error)?;
                        ids.push(TokenId(done.last_insert_id()));
                    }
                    tx.commit().await.map_err(db)?;
                }
            }
            Ok::<(), StoreError>(())
        })
        .await?;
        Ok(ids)
    }
}

/// Rows per multi-row `INSERT` of an import (9 values each: far below the placeholder limits).
const INSERT_ROWS: usize = 200;

impl SqlStore {
    /// `{select} WHERE {column} IN (…)` over `keys`, `BATCH` keys per query.
    fn lookups(&self, select: &str, column: &str, keys: Vec<Param>) -> Vec<(String, Vec<Param>)> {
        let mut keys = keys.into_iter().peekable();
        let mut queries = Vec::new();
        while keys.peek().is_some() {
            let chunk: Vec<Param> = keys.by_ref().take(BATCH).collect();
            let q = format!("{select} WHERE {column} IN ({})", placeholders(chunk.len()));
            queries.push((self.sql.text(&q), chunk));
        }
        queries
    }

    /// `{insert} VALUES (…), (…), …` for rows of `width` values, `INSERT_ROWS` per statement.
    fn inserts(
        &self,
        insert: &str,
        width: usize,
        rows: Vec<Vec<Param>>,
    ) -> Vec<(String, Vec<Param>)> {
        let row = format!("({})", placeholders(width));
        let mut rows = rows.into_iter().peekable();
        let mut statements = Vec::new();
        while rows.peek().is_some() {
            let chunk: Vec<Vec<Param>> = rows.by_ref().take(INSERT_ROWS).collect();
            let q = format!(
                "{insert} VALUES {}",
                vec![row.as_str(); chunk.len()].join(", ")
            );
            statements.push((self.sql.text(&q), chunk.into_iter().flatten().collect()));
        }
        statements
    }

    fn insert_users(&self, users: &[&UserRecord]) -> Result<Vec<(String, Vec<Param>)>, StoreError> {
        let rows = users
            .iter()
            .map(|u| {
                Ok(vec![
                    Param::Text(u.name.clone()),
                    Param::MaybeText(u.password_hash.clone()),
                    Param::Time(to_time(u.created_at)?),
                ])
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(self.inserts("INSERT INTO {u} (name, password_hash, created_at)", 3, rows))
    }

    /// Tokens with their ids, as another store held them.
    fn insert_imported_tokens(
        &self,
        tokens: &[&TokenRecord],
    ) -> Result<Vec<(String, Vec<Param>)>, StoreError> {
        let rows = tokens
            .iter()
            .map(|t| {
                let owner =
                    owner_id(&t.user).ok_or_else(|| StoreError::InvalidUser(t.user.clone()))?;
                let abilities = serde_json::to_string(&t.abilities)
                    .map_err(|e| StoreError::Io(e.to_string()))?;
                let created = to_time(t.created_at)?;
                Ok(vec![
                    int_params(&[t.id])?.remove(0),
                    Param::Text(self.tokenable_type.clone()),
                    Param::Int(owner),
                    Param::Text(t.name.clone()),
                    Param::Text(t.hash.to_hex()),
                    Param::Text(abilities),
                    Param::MaybeTime(t.last_used_at.map(to_time).transpose()?),
                    Param::MaybeTime(t.expires_at.map(to_time).transpose()?),
                    Param::Time(created),
                    Param::Time(created),
                ])
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(self.inserts(
            "INSERT INTO {t} (id, tokenable_type, tokenable_id, name, token, abilities, \
             last_used_at, expires_at, created_at, updated_at)",
            10,
            rows,
        ))
    }

    fn insert_sessions(
        &self,
        sessions: &[&SessionRecord],
    ) -> Result<Vec<(String, Vec<Param>)>, StoreError> {
        let rows = sessions
            .iter()
            .map(|s| {
                Ok(vec![
                    Param::Text(session_hex(&s.hash)),
                    Param::Text(s.user.clone()),
                    Param::Time(to_time(s.created_at)?),
                    Param::Time(to_time(s.expires_at)?),
                    Param::Time(to_time(s.last_seen)?),
                ])
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(self.inserts(&format!("INSERT INTO {{s}} ({SESSION_COLUMNS})"), 5, rows))
    }
}

/// A query with its parameters bound.
fn bound<'q, DB>(
    q: &'q str,
    params: &'q [Param],
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    PrimitiveDateTime: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<PrimitiveDateTime>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    params.iter().fold(sqlx::query(q), |query, p| match p {
        Param::Int(n) => query.bind(*n),
        Param::Text(s) => query.bind(s.as_str()),
        Param::Time(t) => query.bind(*t),
        Param::MaybeText(s) => query.bind(s.as_deref()),
        Param::MaybeTime(t) => query.bind(*t),
    })
}

/// An import's insert failed: a repeated id or hash (within the import, or written
/// meanwhile by another process) is a conflict.
fn import_error(e: sqlx::Error) -> StoreError {
    if e.as_database_error()
        .is_some_and(|d| d.is_unique_violation() || d.is_foreign_key_violation())
    {
        StoreError::Conflict(format!(
            "the import repeats a token id, token hash, user or session, or another process wrote one meanwhile: {e}"
        ))
    } else {
        db(e)
    }
}

/// The `tokenable_id` a token owner stands for: a number written as Laravel reads it back
/// (`42`, not `042` or `+42`), so that an owner's tokens keep the owner they were made for.
fn owner_id(user: &str) -> Option<i64> {
    user.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0 && n.to_string() == user)
}

/// The database URL from the environment variable the config names.
fn url_from_env(config: &SqlStoreConfig) -> Result<String, StoreError> {
    let url = std::env::var(&config.url_env).unwrap_or_default();
    if url.trim().is_empty() {
        return Err(StoreError::Setup(format!(
            "the environment variable {} (store.url_env) is not set: it must hold the database URL",
            config.url_env
        )));
    }
    Ok(url)
}

/// A value to bind, of the few types the queries use.
enum Param {
    Int(i64),
    Text(String),
    Time(PrimitiveDateTime),
    MaybeText(Option<String>),
    MaybeTime(Option<PrimitiveDateTime>),
}

/// Reading columns the same way from either database's rows.
trait RowExt {
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    /// A nullable integer column of any width (Laravel's `integer` and `foreignId`).
    fn maybe_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn time(&self, column: &str) -> Result<Option<Timestamp>, StoreError>;
}

impl RowExt for PgRow {
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        use sqlx::Row;
        self.try_get::<i64, _>(column).map_err(db)
    }

    fn maybe_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        use sqlx::Row;
        match self.try_get::<Option<i64>, _>(column) {
            Ok(n) => Ok(n),
            Err(_) => Ok(self
                .try_get::<Option<i32>, _>(column)
                .map_err(db)?
                .map(i64::from)),
        }
    }

    fn text(&self, column: &str) -> Result<Option<String>, StoreError> {
        use sqlx::Row;
        self.try_get::<Option<String>, _>(column).map_err(db)
    }

    fn time(&self, column: &str) -> Result<Option<Timestamp>, StoreError> {
        use sqlx::Row;
        match self.try_get::<Option<PrimitiveDateTime>, _>(column) {
            Ok(t) => Ok(t.map(|t| t.assume_utc().unix_timestamp())),
            // A `timestamp with time zone` column, if the app made one.
            Err(_) => Ok(self
                .try_get::<Option<OffsetDateTime>, _>(column)
                .map_err(db)?
                .map(OffsetDateTime::unix_timestamp)),
        }
    }
}

impl RowExt for MySqlRow {
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        use sqlx::Row;
        // Laravel makes ids `bigint unsigned` on MySQL, which sqlx reads only as u64.
        match self.try_get::<i64, _>(column) {
            Ok(n) => Ok(n),
            Err(_) => {
                let n = self.try_get::<u64, _>(column).map_err(db)?;
                i64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{column} {n} too large")))
            }
        }
    }

    fn maybe_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        use sqlx::Row;
        if let Ok(n) = self.try_get::<Option<i64>, _>(column) {
            return Ok(n);
        }
        if let Ok(n) = self.try_get::<Option<i32>, _>(column) {
            return Ok(n.map(i64::from));
        }
        match self.try_get::<Option<u64>, _>(column).map_err(db)? {
            Some(n) => i64::try_from(n)
                .map(Some)
                .map_err(|_| StoreError::Corrupt(format!("{column} {n} too large"))),
            None => Ok(None),
        }
    }

    fn text(&self, column: &str) -> Result<Option<String>, StoreError> {
        use sqlx::Row;
        // Binary collations (`utf8mb4_bin`) carry MySQL's BINARY flag, which sqlx's type
        // check refuses for `String`; the bytes are still UTF-8 text.
        self.try_get_unchecked::<Option<String>, _>(column)
            .map_err(db)
    }

    fn time(&self, column: &str) -> Result<Option<Timestamp>, StoreError> {
        use sqlx::Row;
        // sqlx reads `timestamp` columns only as OffsetDateTime (in the session's UTC),
        // `datetime` columns (tokengate's own) as either.
        Ok(self
            .try_get::<Option<OffsetDateTime>, _>(column)
            .map_err(db)?
            .map(OffsetDateTime::unix_timestamp))
    }
}

fn token_row(row: &impl RowExt) -> Result<TokenRecord, StoreError> {
    let id = row.int("id")?;
    let id = TokenId(u64::try_from(id).map_err(corrupt_id)?);
    let hash_hex = row.text("token")?.unwrap_or_default();
    let hash = TokenHash::from_hex(&hash_hex).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "token {id}: the token column is not a SHA-256 in hex"
        ))
    })?;
    let mut abilities: Vec<String> = match row.text("abilities")? {
        Some(json) if !json.trim().is_empty() => serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("token {id}: abilities: {e}")))?,
        _ => Vec::new(),
    };
    abilities.sort();
    abilities.dedup();
    Ok(TokenRecord {
        id,
        user: row.int("tokenable_id")?.to_string(),
        name: row.text("name")?.unwrap_or_default(),
        hash,
        abilities,
        // Laravel leaves `created_at` NULL only when timestamps are turned off.
        created_at: row.time("created_at")?.unwrap_or(0),
        expires_at: row.time("expires_at")?,
        last_used_at: row.time("last_used_at")?,
    })
}

fn session_row(row: &impl RowExt) -> Result<SessionRecord, StoreError> {
    let hex = row.text("hash")?.unwrap_or_default();
    let hash = SessionHash(
        TokenHash::from_hex(&hex)
            .ok_or_else(|| StoreError::Corrupt("a session hash is not a SHA-256 in hex".into()))?
            .0,
    );
    let required = |column: &str| {
        row.time(column)?
            .ok_or_else(|| StoreError::Corrupt(format!("session without {column}")))
    };
    Ok(SessionRecord {
        hash,
        user: row.text("user_name")?.unwrap_or_default(),
        created_at: required("created_at")?,
        expires_at: required("expires_at")?,
        last_seen: required("last_seen")?,
    })
}

fn user_row(row: &impl RowExt) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        name: row.text("name")?.unwrap_or_default(),
        password_hash: row.text("password_hash")?,
        created_at: row.time("created_at")?.unwrap_or(0),
    })
}

fn session_hex(hash: &SessionHash) -> String {
    TokenHash(hash.0).to_hex()
}

/// A unix time as the UTC wall-clock time the `timestamp` columns hold.
fn to_time(at: Timestamp) -> Result<PrimitiveDateTime, StoreError> {
    let t = OffsetDateTime::from_unix_timestamp(at)
        .map_err(|_| StoreError::Io(format!("timestamp {at} out of range")))?;
    Ok(PrimitiveDateTime::new(t.date(), t.time()))
}

fn corrupt_id(_: std::num::TryFromIntError) -> StoreError {
    StoreError::Corrupt("a negative token id".into())
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn is_missing_table(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "42P01" || code == "42S02")
}

fn insert_error(e: sqlx::Error) -> StoreError {
    if e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
    {
        StoreError::DuplicateHash
    } else {
        db(e)
    }
}

fn int_params(ids: &[TokenId]) -> Result<Vec<Param>, StoreError> {
    ids.iter()
        .map(|id| {
            i64::try_from(id.0)
                .map(Param::Int)
                .map_err(|_| StoreError::Io(format!("token id {id} out of range")))
        })
        .collect()
}

#[async_trait]
impl Store for SqlStore {
    async fn create_tokens(&self, tokens: Vec<NewToken>) -> Result<Vec<TokenRecord>, StoreError> {
        self.writable()?;
        let mut records = Vec::with_capacity(tokens.len());
        // Bounded transactions, as in sled.
        for chunk in tokens.chunks(10_000) {
            let ids = self.insert_tokens(chunk).await?;
            records.extend(ids.into_iter().zip(chunk).map(|(id, token)| TokenRecord {
                id,
                user: token.user.clone(),
                name: token.name.clone(),
                hash: token.hash,
                abilities: token.abilities.clone(),
                created_at: token.created_at,
                expires_at: token.expires_at,
                last_used_at: None,
            }));
        }
        Ok(records)
    }

    async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.tokens_by_ids(&[id]).await?.pop())
    }

    async fn tokens_by_ids(&self, ids: &[TokenId]) -> Result<Vec<TokenRecord>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let condition = format!("id IN ({})", placeholders(chunk.len()));
            found.extend(self.tokens_where(&condition, int_params(chunk)?).await?);
        }
        Ok(found)
    }

    async fn token_by_hash(&self, hash: TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .tokens_where("token = ?", vec![Param::Text(hash.to_hex())])
            .await?
            .pop())
    }

    async fn list_tokens(&self, query: TokenQuery) -> Result<Vec<TokenRecord>, StoreError> {
        let after = match query.after {
            None => -1,
            Some(id) => match i64::try_from(id.0) {
                Ok(n) => n,
                Err(_) => return Ok(Vec::new()),
            },
        };
        let mut condition = String::from("id > ?");
        let mut params = vec![Param::Int(after)];
        if let Some(user) = &query.user {
            // tokenable_id is a number: any other owner owns nothing here.
            let Some(user) = owner_id(user) else {
                return Ok(Vec::new());
            };
            condition.push_str(" AND tokenable_id = ?");
            params.push(Param::Int(user));
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        condition.push_str(" ORDER BY id LIMIT ?");
        params.push(Param::Int(limit));
        self.tokens_where(&condition, params).await
    }

    async fn set_abilities(
        &self,
        id: TokenId,
        abilities: Vec<String>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.writable()?;
        let json = serde_json::to_string(&abilities).map_err(|e| StoreError::Io(e.to_string()))?;
        let Ok(n) = i64::try_from(id.0) else {
            return Ok(None);
        };
        let now = to_time(OffsetDateTime::now_utc().unix_timestamp())?;
        let q = self.sql.text(
            "UPDATE {t} SET abilities = ?, updated_at = ? WHERE id = ? AND tokenable_type = ?",
        );
        on_pool!(self, pool => sqlx::query(&q)
            .bind(&json)
            .bind(now)
            .bind(n)
            .bind(&self.tokenable_type)
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(db)?;
        self.token(id).await
    }

    async fn delete_token(&self, id: TokenId) -> Result<bool, StoreError> {
        self.writable()?;
        let Ok(n) = i64::try_from(id.0) else {
            return Ok(false);
        };
        let q = self
            .sql
            .text("DELETE FROM {t} WHERE id = ? AND tokenable_type = ?");
        let affected = on_pool!(self, pool => sqlx::query(&q)
            .bind(n)
            .bind(&self.tokenable_type)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
        .map_err(db)?;
        Ok(affected > 0)
    }

    async fn touch_tokens(&self, used: Vec<(TokenId, Timestamp)>) -> Result<(), StoreError> {
        // The app owns the table: `last_used_at` is its to write, or nobody's.
        if self.read_only || used.is_empty() {
            return Ok(());
        }
        // One UPDATE of that column per chunk, all in one transaction.
        let mut latest = std::collections::BTreeMap::new();
        for (id, at) in used {
            // The last value given for an id wins, as in sled.
            if let Ok(n) = i64::try_from(id.0) {
                latest.insert(n, at);
            }
        }
        let rows: Vec<(i64, Timestamp)> = latest.into_iter().collect();
        let mut statements = Vec::new();
        for chunk in rows.chunks(BATCH) {
            let q = self.sql.text(&format!(
                "UPDATE {{t}} SET last_used_at = CASE id {} END \
                 WHERE tokenable_type = ? AND id IN ({})",
                vec!["WHEN ? THEN ?"; chunk.len()].join(" "),
                placeholders(chunk.len())
            ));
            let mut params = Vec::with_capacity(chunk.len() * 3 + 1);
            for &(id, at) in chunk {
                params.push(Param::Int(id));
                params.push(Param::Time(to_time(at)?));
            }
            params.push(Param::Text(self.tokenable_type.clone()));
            params.extend(chunk.iter().map(|&(id, _)| Param::Int(id)));
            statements.push((q, params));
        }
        self.execute_in_transaction(statements).await
    }

    async fn count_tokens(&self) -> Result<u64, StoreError> {
        let q = self
            .sql
            .text("SELECT COUNT(*) AS n FROM {t} WHERE tokenable_type = ?");
        let n = on_pool!(self, pool => sqlx::query(&q)
            .bind(&self.tokenable_type)
            .fetch_one(pool)
            .await
            .map_err(db)?
            .int("n"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn is_exclusive(&self) -> bool {
        false
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write has committed before it returned.
        Ok(())
    }

    async fn import(&self, batch: ImportBatch) -> Result<ImportCounts, StoreError> {
        if !batch.tokens.is_empty() {
            self.writable()?;
        }
        let names = |names: &mut dyn Iterator<Item = &String>| {
            names.map(|n| Param::Text(n.clone())).collect::<Vec<_>>()
        };
        let find_users = self.lookups(
            "SELECT name, password_hash, created_at FROM {u}",
            "name",
            names(&mut batch.users.iter().map(|u| &u.name)),
        );
        let token_select = format!("SELECT tokenable_type, {TOKEN_COLUMNS} FROM {{t}}");
        let mut find_tokens = self.lookups(
            &token_select,
            "id",
            int_params(&batch.tokens.iter().map(|t| t.id).collect::<Vec<_>>())?,
        );
        find_tokens.extend(
            self.lookups(
                &token_select,
                "token",
                batch
                    .tokens
                    .iter()
                    .map(|t| Param::Text(t.hash.to_hex()))
                    .collect(),
            ),
        );
        let find_sessions = self.lookups(
            &format!("SELECT {SESSION_COLUMNS} FROM {{s}}"),
            "hash",
            batch
                .sessions
                .iter()
                .map(|s| Param::Text(session_hex(&s.hash)))
                .collect(),
        );
        let find_owners = self.lookups(
            "SELECT name, password_hash, created_at FROM {u}",
            "name",
            names(&mut batch.sessions.iter().map(|s| &s.user)),
        );
        // The PostgreSQL sequence behind `id` moves past the imported ids, never back
        // (MySQL's AUTO_INCREMENT does so by itself).
        let advance_ids = (self.sql.kind == SqlKind::Postgres).then(|| {
            "SELECT setval(pg_get_serial_sequence($1, 'id'), GREATEST($2, \
             COALESCE(pg_sequence_last_value(pg_get_serial_sequence($1, 'id')::regclass), 0)))"
        });
        // Time for the rows, not for one query.
        let timeout = QUERY_TIMEOUT * (1 + u32::try_from(batch.len() / 100).unwrap_or(1000));
        on_pool!(self, timeout, pool => {
            let mut tx = pool.begin().await.map_err(db)?;
            let mut counts = ImportCounts::default();

            let mut stored_users = HashMap::new();
            for (q, params) in &find_users {
                for row in bound(q, params).fetch_all(&mut *tx).await.map_err(db)? {
                    let user = user_row(&row)?;
                    stored_users.insert(user.name.clone(), user);
                }
            }
            let mut new_users = Vec::new();
            for user in &batch.users {
                match stored_users.get(&user.name) {
                    Some(old) if old == user => counts.users.present += 1,
                    Some(_) => {
                        return Err(StoreError::Conflict(format!(
                            "user {}: the store has a different user of this name",
                            user.name
                        )))
                    }
                    None => new_users.push(user),
                }
            }

            let (mut by_id, mut by_hash) = (HashMap::new(), HashMap::new());
            for (q, params) in &find_tokens {
                for row in bound(q, params).fetch_all(&mut *tx).await.map_err(db)? {
                    let ours = row.text("tokenable_type")?.as_deref()
                        == Some(self.tokenable_type.as_str());
                    let token = token_row(&row)?;
                    by_hash.insert(token.hash, token.id);
                    by_id.insert(token.id, ours.then_some(token));
                }
            }
            let mut new_tokens = Vec::new();
            for token in &batch.tokens {
                match by_id.get(&token.id) {
                    Some(Some(old)) if old.same_as(token) => {
                        counts.tokens.present += 1;
                        continue;
                    }
                    Some(_) => {
                        return Err(StoreError::Conflict(format!(
                            "token {}: the store has a different token with this id",
                            token.id
                        )))
                    }
                    None => {}
                }
                if let Some(other) = by_hash.get(&token.hash) {
                    return Err(StoreError::Conflict(format!(
                        "token {}: the store has token {other} with the same hash",
                        token.id
                    )));
                }
                new_tokens.push(token);
            }

            let mut stored_sessions = HashMap::new();
            for (q, params) in &find_sessions {
                for row in bound(q, params).fetch_all(&mut *tx).await.map_err(db)? {
                    let session = session_row(&row)?;
                    stored_sessions.insert(session.hash, session);
                }
            }
            let mut owners: HashSet<String> = new_users.iter().map(|u| u.name.clone()).collect();
            for (q, params) in &find_owners {
                for row in bound(q, params).fetch_all(&mut *tx).await.map_err(db)? {
                    owners.insert(user_row(&row)?.name);
                }
            }
            let mut new_sessions = Vec::new();
            for session in &batch.sessions {
                match stored_sessions.get(&session.hash) {
                    Some(old) if old.same_as(session) => counts.sessions.present += 1,
                    Some(_) => {
                        return Err(StoreError::Conflict(
                            "a session: the store has a different session with this hash".into(),
                        ))
                    }
                    None if !owners.contains(&session.user) => {
                        return Err(StoreError::Conflict(format!(
                            "a session of user {}: no such user in the store or the import",
                            session.user
                        )))
                    }
                    None => new_sessions.push(session),
                }
            }

            let mut inserts = self.insert_users(&new_users)?;
            inserts.extend(self.insert_imported_tokens(&new_tokens)?);
            inserts.extend(self.insert_sessions(&new_sessions)?);
            for (q, params) in &inserts {
                bound(q, params).execute(&mut *tx).await.map_err(import_error)?;
            }
            if let (Some(q), Some(highest)) = (advance_ids, new_tokens.iter().map(|t| t.id.0).max()) {
                sqlx::query(q)
                    .bind(&self.sql.tokens)
                    .bind(i64::try_from(highest).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
            tx.commit().await.map_err(db)?;
            counts.users.added = new_users.len();
            counts.tokens.added = new_tokens.len();
            counts.sessions.added = new_sessions.len();
            Ok(counts)
        })
    }

    async fn laravel_session(
        &self,
        table: &TableName,
        id: &str,
    ) -> Result<Option<LaravelSessionRow>, StoreError> {
        let q = self.sql.text(&format!(
            "SELECT user_id, payload, last_activity FROM {} WHERE id = ?",
            table.quoted(self.sql.kind)
        ));
        on_pool!(self, pool => {
            let Some(row) = sqlx::query(&q).bind(id).fetch_optional(pool).await.map_err(db)? else {
                return Ok(None);
            };
            Ok(Some(LaravelSessionRow {
                user_id: row.maybe_int("user_id")?,
                payload: row.text("payload")?.unwrap_or_default(),
                last_activity: row.maybe_int("last_activity")?.unwrap_or(0),
            }))
        })
    }

    async fn create_user(&self, user: UserRecord) -> Result<(), StoreError> {
        let q = self
            .sql
            .text("INSERT INTO {u} (name, password_hash, created_at) VALUES (?, ?, ?)");
        let created = to_time(user.created_at)?;
        let done = on_pool!(self, pool => sqlx::query(&q)
            .bind(&user.name)
            .bind(&user.password_hash)
            .bind(created)
            .execute(pool)
            .await
            .map(|_| ()));
        match done {
            Ok(()) => Ok(()),
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                Err(StoreError::UserExists(user.name))
            }
            Err(e) => Err(db(e)),
        }
    }

    async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let q = self
            .sql
            .text("SELECT name, password_hash, created_at FROM {u} WHERE name = ?");
        on_pool!(self, pool => sqlx::query(&q)
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(user_row)
            .transpose())
    }

    async fn list_users(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let q = self.sql.text(match after {
            Some(_) => {
                "SELECT name, password_hash, created_at FROM {u} WHERE name > ? ORDER BY name LIMIT ?"
            }
            None => "SELECT name, password_hash, created_at FROM {u} ORDER BY name LIMIT ?",
        });
        on_pool!(self, pool => {
            let mut query = sqlx::query(&q);
            if let Some(after) = &after {
                query = query.bind(after.as_str());
            }
            query
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(db)?
                .iter()
                .map(user_row)
                .collect()
        })
    }

    async fn set_password(&self, name: &str, hash: Option<String>) -> Result<bool, StoreError> {
        let q = self
            .sql
            .text("UPDATE {u} SET password_hash = ? WHERE name = ?");
        let affected = on_pool!(self, pool => sqlx::query(&q)
            .bind(&hash)
            .bind(name)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
        .map_err(db)?;
        if affected > 0 {
            return Ok(true);
        }
        // MySQL counts changed rows, not matched ones: the same hash again changes none.
        Ok(self.user(name).await?.is_some())
    }

    async fn delete_user(&self, name: &str) -> Result<Option<RemovedUser>, StoreError> {
        // The user's tokens, when the name can be a tokenable_id; with read_only the app
        // owns the tokens table and they stay.
        let owner = owner_id(name).filter(|_| !self.read_only);
        let lock_user = self
            .sql
            .text("SELECT name FROM {u} WHERE name = ? FOR UPDATE");
        let select_sessions = self.sql.text("SELECT hash FROM {s} WHERE user_name = ?");
        let delete_sessions = self.sql.text("DELETE FROM {s} WHERE user_name = ?");
        let delete_user = self.sql.text("DELETE FROM {u} WHERE name = ?");
        let select_tokens = self
            .sql
            .text("SELECT id FROM {t} WHERE tokenable_type = ? AND tokenable_id = ? FOR UPDATE");
        let delete_tokens = self
            .sql
            .text("DELETE FROM {t} WHERE tokenable_type = ? AND tokenable_id = ?");
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(db)?;
            let exists = sqlx::query(&lock_user)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?
                .is_some();
            if !exists {
                return Ok(None);
            }
            let mut removed = RemovedUser::default();
            for row in sqlx::query(&select_sessions)
                .bind(name)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?
            {
                let hex = row.text("hash")?.unwrap_or_default();
                let hash = TokenHash::from_hex(&hex)
                    .ok_or_else(|| StoreError::Corrupt("a session hash is not a SHA-256 in hex".into()))?;
                removed.sessions.push(SessionHash(hash.0));
            }
            sqlx::query(&delete_sessions).bind(name).execute(&mut *tx).await.map_err(db)?;
            if let Some(owner) = owner {
                for row in sqlx::query(&select_tokens)
                    .bind(&self.tokenable_type)
                    .bind(owner)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db)?
                {
                    removed.tokens.push(TokenId(u64::try_from(row.int("id")?).map_err(corrupt_id)?));
                }
                sqlx::query(&delete_tokens)
                    .bind(&self.tokenable_type)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
            sqlx::query(&delete_user).bind(name).execute(&mut *tx).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(Some(removed))
        })
    }

    async fn create_session(&self, session: SessionRecord) -> Result<(), StoreError> {
        // Only for a user who exists, in one statement (the foreign key holds it after).
        let q = self.sql.text(
            "INSERT INTO {s} (hash, user_name, created_at, expires_at, last_seen) \
             SELECT ?, name, ?, ?, ? FROM {u} WHERE name = ?",
        );
        let hex = session_hex(&session.hash);
        let (created, expires, seen) = (
            to_time(session.created_at)?,
            to_time(session.expires_at)?,
            to_time(session.last_seen)?,
        );
        let affected = on_pool!(self, pool => sqlx::query(&q)
            .bind(&hex)
            .bind(created)
            .bind(expires)
            .bind(seen)
            .bind(&session.user)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()));
        match affected {
            Ok(0) => Err(StoreError::NoSuchUser(session.user)),
            Ok(_) => Ok(()),
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_foreign_key_violation()) =>
            {
                Err(StoreError::NoSuchUser(session.user))
            }
            Err(e) => Err(db(e)),
        }
    }

    async fn session(&self, hash: SessionHash) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.sessions_by_hashes(&[hash]).await?.pop())
    }

    async fn sessions_by_hashes(
        &self,
        hashes: &[SessionHash],
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut found = Vec::with_capacity(hashes.len());
        for chunk in hashes.chunks(BATCH) {
            let condition = format!("hash IN ({})", placeholders(chunk.len()));
            let params = chunk.iter().map(|h| Param::Text(session_hex(h))).collect();
            found.extend(self.sessions_where(&condition, params).await?);
        }
        Ok(found)
    }

    async fn list_sessions(&self, user: Option<&str>) -> Result<Vec<SessionRecord>, StoreError> {
        match user {
            Some(user) => {
                self.sessions_where("user_name = ?", vec![Param::Text(user.to_owned())])
                    .await
            }
            None => self.sessions_where("1 = 1", Vec::new()).await,
        }
    }

    async fn delete_sessions(
        &self,
        hashes: Vec<SessionHash>,
    ) -> Result<Vec<SessionHash>, StoreError> {
        let mut removed = Vec::new();
        for chunk in hashes.chunks(BATCH) {
            let list = placeholders(chunk.len());
            let select = self.sql.text(&format!(
                "SELECT hash FROM {{s}} WHERE hash IN ({list}) FOR UPDATE"
            ));
            let delete = self
                .sql
                .text(&format!("DELETE FROM {{s}} WHERE hash IN ({list})"));
            let hexes: Vec<String> = chunk.iter().map(session_hex).collect();
            let existed: Vec<String> = on_pool!(self, pool => {
                let mut tx = pool.begin().await.map_err(db)?;
                let mut query = sqlx::query(&select);
                for hex in &hexes {
                    query = query.bind(hex.as_str());
                }
                let rows = query.fetch_all(&mut *tx).await.map_err(db)?;
                let mut query = sqlx::query(&delete);
                for hex in &hexes {
                    query = query.bind(hex.as_str());
                }
                query.execute(&mut *tx).await.map_err(db)?;
                tx.commit().await.map_err(db)?;
                rows.iter()
                    .map(|row| row.text("hash").map(Option::unwrap_or_default))
                    .collect::<Result<Vec<String>, StoreError>>()
            })?;
            removed.extend(
                chunk
                    .iter()
                    .filter(|h| existed.contains(&session_hex(h)))
                    .copied(),
            );
        }
        Ok(removed)
    }

    async fn touch_sessions(&self, seen: Vec<(SessionHash, Timestamp)>) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut latest = std::collections::BTreeMap::new();
        for (hash, at) in seen {
            let slot = latest.entry(session_hex(&hash)).or_insert(at);
            *slot = (*slot).max(at);
        }
        let rows: Vec<(String, Timestamp)> = latest.into_iter().collect();
        let mut statements = Vec::new();
        for chunk in rows.chunks(BATCH) {
            // `last_seen` only moves forward; a session deleted meanwhile stays deleted.
            let q = self.sql.text(&format!(
                "UPDATE {{s}} SET last_seen = GREATEST(last_seen, CASE hash {} END) \
                 WHERE hash IN ({})",
                vec!["WHEN ? THEN ?"; chunk.len()].join(" "),
                placeholders(chunk.len())
            ));
            let mut params = Vec::with_capacity(chunk.len() * 3);
            for (hash, at) in chunk {
                params.push(Param::Text(hash.clone()));
                params.push(Param::Time(to_time(*at)?));
            }
            params.extend(chunk.iter().map(|(hash, _)| Param::Text(hash.clone())));
            statements.push((q, params));
        }
        self.execute_in_transaction(statements).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let table = TableName::parse("app.personal_access_tokens").unwrap();
        let pg = Sql::new(SqlKind::Postgres, &table);
        assert_eq!(
            pg.text("SELECT id FROM {t} WHERE a = ? AND b IN (?, ?)"),
            r#"SELECT id FROM "app"."personal_access_tokens" WHERE a = $1 AND b IN ($2, $3)"#
        );
        let my = Sql::new(SqlKind::Mysql, &table);
        assert_eq!(
            my.text("DELETE FROM {s} WHERE hash = ? AND x = ?"),
            "DELETE FROM `tokengate_sessions` WHERE hash = ? AND x = ?"
        );
    }

    #[test]
    fn token_owners_are_canonical_numbers() {
        for (user, id) in [
            ("42", Some(42)),
            ("0", Some(0)),
            ("042", None),
            ("+42", None),
        ] {
            assert_eq!(owner_id(user), id, "{user}");
        }
        for user in ["-1", "4 2", "alice", "", "99999999999999999999"] {
            assert_eq!(owner_id(user), None, "{user}");
        }
    }

    #[test]
    fn timestamps_round_trip_as_utc() {
        for at in [0, 1_700_000_000, 4_102_444_800] {
            assert_eq!(to_time(at).unwrap().assume_utc().unix_timestamp(), at);
        }
    }
}
