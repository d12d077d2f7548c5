//! Where tokens live: the `Store` trait and its records. The embedded sled store is one
//! implementation (`sled.rs`, the only module that imports sled); a shared PostgreSQL store
//! with Sanctum's `personal_access_tokens` table is meant to be another, so the trait is
//! async and assumes nothing local (no "only writer", no synchronous calls).

mod sled;

pub use self::sled::{SledStore, DEFAULT_CACHE_BYTES};

use crate::auth::token::{TokenHash, TokenId};
use crate::clock::Timestamp;
use async_trait::async_trait;

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
    async fn create_token(&self, token: NewToken) -> Result<TokenRecord, StoreError>;
    /// Stores many new tokens with one flush at the end (bulk import).
    async fn create_tokens(&self, tokens: Vec<NewToken>) -> Result<Vec<TokenRecord>, StoreError>;
    async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError>;
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
    /// Lets go of whatever the store keeps in memory from earlier reads (called once the
    /// token cache is loaded). Nothing to do by default.
    async fn release_memory(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
