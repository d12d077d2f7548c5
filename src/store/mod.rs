//! Where tokens live: the `Store` trait and its records. The embedded sled store is one
//! implementation (`sled.rs`, the only module that imports sled); the shared PostgreSQL or
//! MySQL/MariaDB store with Sanctum's `personal_access_tokens` table is the other (`sql.rs`,
//! the only module that imports sqlx), so the trait is async and assumes nothing local (no
//! "only writer", no synchronous calls).

mod homed;
mod sled;
mod sql;

pub use self::sled::{SledStore, DEFAULT_CACHE_BYTES};
pub use self::sql::SqlStore;

use crate::clock::Timestamp;
use crate::config::{StoreConfig, TableName};
use crate::credential::session::SessionHash;
use crate::credential::token::{TokenHash, TokenId};
use async_trait::async_trait;
use std::sync::Arc;

/// On a shared store, a credential a replica has cached but not seen used for this long
/// leaves its cache at the next re-check, and is read again at its next use: the re-check
/// then costs what the credentials in use need, not what the tables hold.
pub const SHARED_IDLE_SECONDS: i64 = 300;

/// Opens the store a config names: the sled directory (`Locked` while another process
/// holds it), or the database (`Setup` until `tokengate migrate` made its tables).
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Sled { path, cache_bytes } => {
            Arc::new(SledStore::open_with_cache(path, *cache_bytes)?)
        }
        // The pool stays on this runtime, whichever worker calls (`homed`).
        StoreConfig::Sql(sql) => Arc::new(homed::Homed::here(Arc::new(SqlStore::open(sql).await?))),
    })
}

/// A personal access token as stored, with its `last_used_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: TokenId,
    /// The owner: an opaque user id of the app's.
    pub user: String,
    pub name: String,
    pub hash: TokenHash,
    /// Sorted and deduplicated; `*` means every ability.
    pub abilities: Vec<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

/// What a store needs to create a token; the store allocates the id.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub user: String,
    pub name: String,
    pub hash: TokenHash,
    pub abilities: Vec<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

/// A user who can log in (with a password) or be given sessions by the app. Token owners
/// need not be users: a token's `user` is the app's opaque user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// argon2id, PHC string; `None`: this user cannot use the built-in login.
    pub password_hash: Option<String>,
    pub created_at: Timestamp,
}

/// A cookie session as stored: only the SHA-256 of the cookie value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub hash: SessionHash,
    pub user: String,
    pub created_at: Timestamp,
    /// The absolute end (`created_at` + `sessions.lifetime_minutes`).
    pub expires_at: Timestamp,
    /// Batched like `last_used_at`; the idle expiry counts from here.
    pub last_seen: Timestamp,
}

impl TokenRecord {
    /// The same token: everything but `last_used_at`, which moves with use.
    pub fn same_as(&self, other: &TokenRecord) -> bool {
        Self {
            last_used_at: None,
            ..self.clone()
        } == Self {
            last_used_at: None,
            ..other.clone()
        }
    }
}

impl SessionRecord {
    /// The same session: everything but `last_seen`, which moves with use.
    pub fn same_as(&self, other: &SessionRecord) -> bool {
        (self.hash, &self.user, self.created_at, self.expires_at)
            == (other.hash, &other.user, other.created_at, other.expires_at)
    }
}

/// Records as another store held them, for `store import`: tokens keep their ids and
/// hashes, so the tokens already issued keep working.
#[derive(Debug, Default)]
pub struct ImportBatch {
    pub users: Vec<UserRecord>,
    pub tokens: Vec<TokenRecord>,
    pub sessions: Vec<SessionRecord>,
}

impl ImportBatch {
    pub fn len(&self) -> usize {
        self.users.len() + self.tokens.len() + self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Of one kind of record in an import: how many were added, and how many were already
/// stored, the same.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub added: usize,
    pub present: usize,
}

/// What an import did, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportCounts {
    pub users: Imported,
    pub tokens: Imported,
    pub sessions: Imported,
}

impl ImportCounts {
    pub fn add(&mut self, other: ImportCounts) {
        for (mine, theirs) in [
            (&mut self.users, other.users),
            (&mut self.tokens, other.tokens),
            (&mut self.sessions, other.sessions),
        ] {
            mine.added += theirs.added;
            mine.present += theirs.present;
        }
    }
}

/// A row of a Laravel app's `sessions` table (`sessions.laravel`).
#[derive(Clone, PartialEq, Eq)]
pub struct LaravelSessionRow {
    /// Written by Laravel's `DatabaseSessionHandler` when a user is logged in.
    pub user_id: Option<i64>,
    /// base64 of the serialized (maybe encrypted) session attributes.
    pub payload: String,
    /// Unix seconds of the session's last request.
    pub last_activity: i64,
}

impl std::fmt::Debug for LaravelSessionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The payload holds the session's CSRF token: never printed.
        f.debug_struct("LaravelSessionRow")
            .field("user_id", &self.user_id)
            .field("last_activity", &self.last_activity)
            .finish_non_exhaustive()
    }
}

/// What went with a removed user.
#[derive(Debug, Default)]
pub struct RemovedUser {
    pub tokens: Vec<TokenId>,
    pub sessions: Vec<SessionHash>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {path} is in use by another process (a running tokengate holds it)")]
    Locked { path: String },
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("a token with this hash already exists")]
    DuplicateHash,
    /// A shared store did not answer the last re-check: what the cache does not hold is not
    /// looked up (it would wait for the connection attempt to give up) until one succeeds.
    #[error("the store did not answer the last re-check")]
    Unreachable,
    /// A shared store went unchecked for longer than `store.max_stale_seconds`.
    #[error("the store has been unreachable for longer than max_stale_seconds")]
    Stale,
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("no user {0}")]
    NoSuchUser(String),
    /// `store.read_only`: the app owns the tokens table and tokengate never writes it.
    #[error("the tokens table is read-only here (store.read_only): the app manages tokens")]
    ReadOnly,
    /// Sanctum's `tokenable_id` is a number: a token's owner must be one.
    #[error("user {0:?} cannot own a token in a database store: tokenable_id is numeric")]
    InvalidUser(String),
    /// An imported record differs from the one stored under its id, hash or name.
    #[error("{0}")]
    Conflict(String),
    /// The database store cannot be used as configured (no URL, tables not migrated).
    #[error("{0}")]
    Setup(String),
}

/// Which tokens a listing wants.
#[derive(Debug, Clone, Default)]
pub struct TokenQuery {
    pub user: Option<String>,
    /// Only ids greater than this (the last id of the previous page).
    pub after: Option<TokenId>,
    pub limit: usize,
}

impl TokenQuery {
    pub fn all() -> Self {
        Self {
            limit: usize::MAX,
            ..Self::default()
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new token and returns only once it is durable.
    async fn create_token(&self, token: NewToken) -> Result<TokenRecord, StoreError> {
        let mut created = self.create_tokens(vec![token]).await?;
        created
            .pop()
            .ok_or_else(|| StoreError::Io("token not created".into()))
    }
    /// Stores many new tokens with one flush at the end (bulk import).
    async fn create_tokens(&self, tokens: Vec<NewToken>) -> Result<Vec<TokenRecord>, StoreError>;
    async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError>;
    /// The stored tokens among `ids`, in any order (an id not stored is simply absent): the
    /// token cache's batched re-check against a shared store.
    async fn tokens_by_ids(&self, ids: &[TokenId]) -> Result<Vec<TokenRecord>, StoreError>;
    async fn token_by_hash(&self, hash: TokenHash) -> Result<Option<TokenRecord>, StoreError>;
    /// A page of tokens by ascending id: those after `query.after`, of `query.user` if set,
    /// at most `query.limit`.
    async fn list_tokens(&self, query: TokenQuery) -> Result<Vec<TokenRecord>, StoreError>;
    async fn set_abilities(
        &self,
        id: TokenId,
        abilities: Vec<String>,
    ) -> Result<Option<TokenRecord>, StoreError>;
    /// Deletes a token (Sanctum deletes revoked tokens); false if there was none.
    async fn delete_token(&self, id: TokenId) -> Result<bool, StoreError>;
    /// Records `last_used_at` for many tokens in one write. An id that no longer exists
    /// may be recorded; it is never read back.
    async fn touch_tokens(&self, used: Vec<(TokenId, Timestamp)>) -> Result<(), StoreError>;
    async fn count_tokens(&self) -> Result<u64, StoreError>;
    /// True when no other process can change the store while this one has it open (sled
    /// holds an exclusive lock). Then a cache holding every token is authoritative: a token
    /// it does not hold does not exist. A shared database returns false.
    fn is_exclusive(&self) -> bool;
    /// Makes every earlier write durable.
    async fn flush(&self) -> Result<(), StoreError>;
    /// Adds a user; `UserExists` if the name is taken.
    async fn create_user(&self, user: UserRecord) -> Result<(), StoreError>;
    async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// A page of users by name: those after `after`, at most `limit`.
    async fn list_users(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError>;
    /// Replaces a user's password hash; false if there is no such user.
    async fn set_password(&self, name: &str, hash: Option<String>) -> Result<bool, StoreError>;
    /// Removes a user with every token they own and every session they have, in one
    /// transaction; `None` if there was no such user.
    async fn delete_user(&self, name: &str) -> Result<Option<RemovedUser>, StoreError>;
    /// Stores a new session (durable before it returns); `NoSuchUser` if its user is gone.
    async fn create_session(&self, session: SessionRecord) -> Result<(), StoreError>;
    async fn session(&self, hash: SessionHash) -> Result<Option<SessionRecord>, StoreError>;
    /// The stored sessions among `hashes`, in any order: the session cache's re-check.
    async fn sessions_by_hashes(
        &self,
        hashes: &[SessionHash],
    ) -> Result<Vec<SessionRecord>, StoreError>;
    /// Every session, or those of one user.
    async fn list_sessions(&self, user: Option<&str>) -> Result<Vec<SessionRecord>, StoreError>;
    /// Deletes sessions; returns those that existed.
    async fn delete_sessions(
        &self,
        hashes: Vec<SessionHash>,
    ) -> Result<Vec<SessionHash>, StoreError>;
    /// Records `last_seen` for many sessions in one write; gone sessions are skipped.
    async fn touch_sessions(&self, seen: Vec<(SessionHash, Timestamp)>) -> Result<(), StoreError>;
    /// Stores records exactly as another store held them (`store import`), in one
    /// transaction: users, then tokens (with their ids; ids made later come after them),
    /// then sessions. A record already stored the same (`same_as`) is counted as present;
    /// one that differs from what is stored under its id, hash or name fails the batch
    /// with `Conflict`, and nothing of the batch is written. So an import can be run again.
    async fn import(&self, batch: ImportBatch) -> Result<ImportCounts, StoreError>;
    /// The row of a Laravel app's sessions table with this session id, if any. Only a
    /// database store holds one (the config allows `sessions.laravel` with no other).
    async fn laravel_session(
        &self,
        _table: &TableName,
        _id: &str,
    ) -> Result<Option<LaravelSessionRow>, StoreError> {
        Ok(None)
    }
    /// Lets go of whatever the store keeps in memory from earlier reads (called once the
    /// token cache is loaded). Nothing to do by default.
    async fn release_memory(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
