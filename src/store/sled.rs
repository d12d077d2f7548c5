//! The embedded sled store: one process, one data directory. The only module that imports
//! sled. Every call runs on tokio's blocking pool, since sled may block on disk.
//!
//! Layout: tree `tokens` (id, 8 bytes big-endian → JSON record), `token_hashes`
//! (SHA-256 → id), `token_last_used` (block of 512 ids → 512 unix seconds, little-endian;
//! 0 = never), `users` (name → JSON), `sessions` (SHA-256 of the cookie value → JSON).
//! `meta` (`next_token_id`). `last_used_at` lives apart so that the batched touch never rewrites (and
//! never races) a token's record, and in blocks because sled's memory grows with the number
//! of keys written: touching 100,000 tokens rewrites 196 values, not 100,000.

use super::{
    ImportBatch, ImportCounts, NewToken, RemovedUser, SessionRecord, Store, StoreError, TokenQuery,
    TokenRecord, UserRecord,
};
use crate::clock::Timestamp;
use crate::credential::session::SessionHash;
use crate::credential::token::{TokenHash, TokenId};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use crate::config::DEFAULT_SLED_CACHE_BYTES as DEFAULT_CACHE_BYTES;

/// The `meta` key of the next token id (8 bytes, big-endian).
const NEXT_TOKEN_ID: &[u8] = b"next_token_id";

/// The file in the store directory that tokengate locks while it has the store open.
const LOCK_FILE: &str = "tokengate.lock";

/// A token's record on disk. The hash is kept as lowercase hex, as in Sanctum's table.
#[derive(Serialize, Deserialize)]
struct Stored {
    user: String,
    name: String,
    hash: String,
    abilities: Vec<String>,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
}

impl From<&TokenRecord> for Stored {
    fn from(token: &TokenRecord) -> Self {
        Self {
            user: token.user.clone(),
            name: token.name.clone(),
            hash: token.hash.to_hex(),
            abilities: token.abilities.clone(),
            created_at: token.created_at,
            expires_at: token.expires_at,
        }
    }
}

/// A user's record on disk (the name is the key).
#[derive(Serialize, Deserialize)]
struct StoredUser {
    password_hash: Option<String>,
    created_at: Timestamp,
}

/// A session's record on disk (the hash is the key).
#[derive(Serialize, Deserialize)]
struct StoredSession {
    user: String,
    created_at: Timestamp,
    expires_at: Timestamp,
    last_seen: Timestamp,
}

/// The store. Clones share one open database.
#[derive(Clone)]
pub struct SledStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    cache_bytes: u64,
    /// `None` only while `release_memory` reopens the database.
    trees: RwLock<Option<Trees>>,
    /// tokengate's own lock on the directory, held for as long as the store is open, so
    /// that reopening sled in this process leaves no gap for another process.
    _lock: File,
}

/// The open database and its trees (each a cheap handle).
#[derive(Clone)]
struct Trees {
    db: sled::Db,
    tokens: sled::Tree,
    hashes: sled::Tree,
    last_used: sled::Tree,
    users: sled::Tree,
    sessions: sled::Tree,
    meta: sled::Tree,
}

impl SledStore {
    /// Opens (or creates) the store directory. Fails with `Locked` when another process
    /// holds it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens the store with sled's page cache bounded to `cache_bytes` (sled's own default
    /// is 1 GiB, which a token store never needs: hot tokens live in tokengate's cache).
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let locked = || StoreError::Locked {
            path: path.display().to_string(),
        };
        std::fs::create_dir_all(path).map_err(|e| StoreError::Io(e.to_string()))?;
        let lock = File::create(path.join(LOCK_FILE)).map_err(|e| StoreError::Io(e.to_string()))?;
        lock.try_lock().map_err(|e| match e {
            TryLockError::WouldBlock => locked(),
            TryLockError::Error(e) => StoreError::Io(e.to_string()),
        })?;
        let trees = Trees::open_when_free(path, cache_bytes)?;
        Ok(Self {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                cache_bytes,
                trees: RwLock::new(Some(trees)),
                _lock: lock,
            }),
        })
    }

    fn trees(&self) -> Result<Trees, StoreError> {
        self.shared
            .trees
            .read()
            .map_err(|_| StoreError::Io("store lock poisoned".into()))?
            .clone()
            .ok_or_else(|| StoreError::Io("store is being reopened".into()))
    }
}

impl Trees {
    /// Opens sled once tokengate's own lock is held. sled's I/O threads may keep its file
    /// (and sled's lock) a moment after a close in this process; no other tokengate can
    /// hold it, so a `Locked` here is waited out for up to 5 seconds.
    fn open_when_free(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let mut attempts = 0;
        loop {
            match Trees::open(path, cache_bytes) {
                Err(StoreError::Locked { .. }) if attempts < 500 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    StoreError::Locked {
                        path: path.display().to_string(),
                    }
                }
                other => StoreError::Io(other.to_string()),
            })?;
        Ok(Self {
            tokens: db.open_tree("tokens").map_err(io)?,
            hashes: db.open_tree("token_hashes").map_err(io)?,
            last_used: db.open_tree("token_last_used").map_err(io)?,
            users: db.open_tree("users").map_err(io)?,
            sessions: db.open_tree("sessions").map_err(io)?,
            meta: db.open_tree("meta").map_err(io)?,
            db,
        })
    }

    fn record(&self, id: TokenId, bytes: &[u8]) -> Result<TokenRecord, StoreError> {
        self.record_with(id, bytes, &mut None)
    }

    /// Decodes a record; `block` keeps the last `last_used_at` block read, so a scan in id
    /// order reads each block once instead of once per token.
    fn record_with(
        &self,
        id: TokenId,
        bytes: &[u8],
        block: &mut Option<([u8; 8], Option<sled::IVec>)>,
    ) -> Result<TokenRecord, StoreError> {
        let mut record = decode_token(id, bytes)?;
        let (key, slot) = last_used_slot(id);
        if block.as_ref().is_none_or(|(k, _)| *k != key) {
            *block = Some((key, self.last_used.get(key).map_err(io)?));
        }
        let last_used_at = block
            .as_ref()
            .and_then(|(_, v)| v.as_ref())
            .and_then(|v| {
                Some(Timestamp::from_le_bytes(
                    v.get(slot..slot + 8)?.try_into().ok()?,
                ))
            })
            .filter(|&at| at != 0);
        record.last_used_at = last_used_at;
        Ok(record)
    }

    /// Reserves `n` consecutive token ids and returns the first. Ids start at 1 and are
    /// never reused, like Sanctum's auto-increment column. (sled's own `generate_id` jumps
    /// by a million at every reopen, which would make ids long for no reason.)
    fn allocate_ids(&self, n: u64) -> Result<u64, StoreError> {
        let highest_stored = match self.tokens.last().map_err(io)? {
            Some((key, _)) => id_of(&key)?.0,
            None => 0,
        };
        let mut first = 0;
        self.meta
            .update_and_fetch(NEXT_TOKEN_ID, |old| {
                let next = old
                    .and_then(|v| v.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(1)
                    .max(highest_stored + 1);
                first = next;
                Some((next + n).to_be_bytes().to_vec())
            })
            .map_err(io)?;
        Ok(first)
    }

    fn session_record(&self, key: &[u8], bytes: &[u8]) -> Result<SessionRecord, StoreError> {
        let hash = SessionHash(
            key.try_into()
                .map_err(|_| StoreError::Corrupt("session key is not 32 bytes".into()))?,
        );
        let stored: StoredSession = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::Corrupt(format!("session: {e}")))?;
        Ok(SessionRecord {
            hash,
            user: stored.user,
            created_at: stored.created_at,
            expires_at: stored.expires_at,
            last_seen: stored.last_seen,
        })
    }

    /// Writes `last_used_at` of many tokens, one atomic read-modify-write per block.
    fn touch(&self, used: Vec<(TokenId, Timestamp)>) -> Result<(), StoreError> {
        let mut by_block: std::collections::BTreeMap<[u8; 8], Vec<(usize, Timestamp)>> =
            std::collections::BTreeMap::new();
        for (id, at) in used {
            let (block, slot) = last_used_slot(id);
            by_block.entry(block).or_default().push((slot, at));
        }
        for (block, slots) in by_block {
            self.last_used
                .update_and_fetch(block, |old| {
                    let mut bytes =
                        old.map_or_else(|| vec![0u8; LAST_USED_BLOCK as usize * 8], <[u8]>::to_vec);
                    bytes.resize(LAST_USED_BLOCK as usize * 8, 0);
                    for &(slot, at) in &slots {
                        bytes[slot..slot + 8].copy_from_slice(&at.to_le_bytes());
                    }
                    Some(bytes)
                })
                .map_err(io)?;
        }
        Ok(())
    }

    fn get(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        match self.tokens.get(id.0.to_be_bytes()).map_err(io)? {
            Some(bytes) => self.record(id, &bytes).map(Some),
            None => Ok(None),
        }
    }
}

/// Ids per `token_last_used` block.
const LAST_USED_BLOCK: u64 = 512;

/// The block key of an id's `last_used_at`, and the byte offset of its slot in the block.
fn last_used_slot(id: TokenId) -> ([u8; 8], usize) {
    (
        (id.0 / LAST_USED_BLOCK).to_be_bytes(),
        (id.0 % LAST_USED_BLOCK) as usize * 8,
    )
}

/// A token's record without its `last_used_at` (which is kept apart).
fn decode_token(id: TokenId, bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    let stored: Stored = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("token {id}: {e}")))?;
    let hash = TokenHash::from_hex(&stored.hash)
        .ok_or_else(|| StoreError::Corrupt(format!("token {id}: bad hash")))?;
    Ok(TokenRecord {
        id,
        user: stored.user,
        name: stored.name,
        hash,
        abilities: stored.abilities,
        created_at: stored.created_at,
        expires_at: stored.expires_at,
        last_used_at: None,
    })
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn id_of(key: &[u8]) -> Result<TokenId, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::Corrupt("token key is not 8 bytes".into()))?;
    Ok(TokenId(u64::from_be_bytes(bytes)))
}

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("a record always serializes")
}

/// Rewrites one JSON record in place, atomically (sled's `update_and_fetch`). `Ok(None)`:
/// no such key (a deleted record stays deleted). A record that does not decode is left as
/// it is and reported as the decoder's message.
fn update_json<T: Serialize + serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    key: impl AsRef<[u8]>,
    change: impl Fn(&mut T),
) -> Result<Result<Option<sled::IVec>, String>, StoreError> {
    let mut corrupt = None;
    let updated = tree
        .update_and_fetch(key, |old| {
            let old = old?;
            match serde_json::from_slice::<T>(old) {
                Ok(mut record) => {
                    change(&mut record);
                    Some(encode(&record))
                }
                Err(e) => {
                    corrupt = Some(e.to_string());
                    Some(old.to_vec())
                }
            }
        })
        .map_err(io)?;
    Ok(match corrupt {
        Some(e) => Err(e),
        None => Ok(updated),
    })
}

fn user_record(name: &[u8], bytes: &[u8]) -> Result<UserRecord, StoreError> {
    let name = String::from_utf8(name.to_vec())
        .map_err(|_| StoreError::Corrupt("user name is not UTF-8".into()))?;
    let stored: StoredUser = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("user {name}: {e}")))?;
    Ok(UserRecord {
        name,
        password_hash: stored.password_hash,
        created_at: stored.created_at,
    })
}

fn transaction_error(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(e) => io(e),
        TransactionError::Abort(()) => StoreError::Io("transaction aborted".into()),
    }
}

/// Runs a sled operation on the blocking pool.
async fn blocking<T, F>(store: &SledStore, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(Trees) -> Result<T, StoreError> + Send + 'static,
{
    let trees = store.trees()?;
    tokio::task::spawn_blocking(move || f(trees))
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
}

#[async_trait]
impl Store for SledStore {
    async fn create_tokens(&self, tokens: Vec<NewToken>) -> Result<Vec<TokenRecord>, StoreError> {
        blocking(self, move |s| {
            let mut records = Vec::with_capacity(tokens.len());
            // Bounded transactions: one per chunk, one flush for all.
            for chunk in tokens.chunks(10_000) {
                let first = s.allocate_ids(chunk.len() as u64)?;
                let made: Vec<TokenRecord> = (first..)
                    .map(TokenId)
                    .zip(chunk)
                    .map(|(id, token)| TokenRecord {
                        id,
                        user: token.user.clone(),
                        name: token.name.clone(),
                        hash: token.hash,
                        abilities: token.abilities.clone(),
                        created_at: token.created_at,
                        expires_at: token.expires_at,
                        last_used_at: None,
                    })
                    .collect();
                let rows: Vec<Vec<u8>> = made.iter().map(|t| encode(&Stored::from(t))).collect();
                let result = (&s.tokens, &s.hashes).transaction(|(t, h)| {
                    for (value, token) in rows.iter().zip(&made) {
                        if h.get(token.hash.0)?.is_some() {
                            return Err(ConflictableTransactionError::Abort(()));
                        }
                        t.insert(&token.id.0.to_be_bytes(), value.as_slice())?;
                        h.insert(&token.hash.0, &token.id.0.to_be_bytes())?;
                    }
                    Ok(())
                });
                match result {
                    Ok(()) => {}
                    Err(TransactionError::Abort(())) => return Err(StoreError::DuplicateHash),
                    Err(TransactionError::Storage(e)) => return Err(io(e)),
                }
                records.extend(made);
            }
            s.db.flush().map_err(io)?;
            Ok(records)
        })
        .await
    }

    async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        blocking(self, move |s| s.get(id)).await
    }

    async fn tokens_by_ids(&self, ids: &[TokenId]) -> Result<Vec<TokenRecord>, StoreError> {
        let ids = ids.to_vec();
        blocking(self, move |s| {
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                found.extend(s.get(id)?);
            }
            Ok(found)
        })
        .await
    }

    async fn token_by_hash(&self, hash: TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        blocking(self, move |s| match s.hashes.get(hash.0).map_err(io)? {
            Some(id) => s.get(id_of(&id)?),
            None => Ok(None),
        })
        .await
    }

    async fn list_tokens(&self, query: TokenQuery) -> Result<Vec<TokenRecord>, StoreError> {
        blocking(self, move |s| {
            let start = query.after.map_or(0, |id| id.0.saturating_add(1));
            let mut out = Vec::new();
            if query.after.is_some_and(|id| id.0 == u64::MAX) {
                return Ok(out);
            }
            let mut block = None;
            for entry in s.tokens.range(start.to_be_bytes()..) {
                if out.len() >= query.limit {
                    break;
                }
                let (key, value) = entry.map_err(io)?;
                let record = s.record_with(id_of(&key)?, &value, &mut block)?;
                if query.user.as_deref().is_none_or(|u| u == record.user) {
                    out.push(record);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn set_abilities(
        &self,
        id: TokenId,
        abilities: Vec<String>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        blocking(self, move |s| {
            let updated = update_json(&s.tokens, id.0.to_be_bytes(), |stored: &mut Stored| {
                stored.abilities = abilities.clone();
            })?
            .map_err(|e| StoreError::Corrupt(format!("token {id}: {e}")))?;
            s.db.flush().map_err(io)?;
            updated.map(|bytes| s.record(id, &bytes)).transpose()
        })
        .await
    }

    async fn delete_token(&self, id: TokenId) -> Result<bool, StoreError> {
        blocking(self, move |s| {
            let key = id.0.to_be_bytes();
            // The `last_used_at` slot stays: ids are never reused, so it is never read.
            let existed = (&s.tokens, &s.hashes)
                .transaction(|(tokens, hashes)| {
                    let Some(old) = tokens.remove(&key)? else {
                        return Ok(false);
                    };
                    if let Ok(stored) = serde_json::from_slice::<Stored>(&old) {
                        if let Some(hash) = TokenHash::from_hex(&stored.hash) {
                            hashes.remove(&hash.0)?;
                        }
                    }
                    Ok(true)
                })
                .map_err(|e: TransactionError<()>| match e {
                    TransactionError::Storage(e) => io(e),
                    TransactionError::Abort(()) => StoreError::Io("delete aborted".into()),
                })?;
            s.db.flush().map_err(io)?;
            Ok(existed)
        })
        .await
    }

    async fn touch_tokens(&self, used: Vec<(TokenId, Timestamp)>) -> Result<(), StoreError> {
        blocking(self, move |s| s.touch(used)).await
    }

    async fn count_tokens(&self) -> Result<u64, StoreError> {
        blocking(self, |s| Ok(s.tokens.len() as u64)).await
    }

    fn is_exclusive(&self) -> bool {
        true
    }

    async fn create_user(&self, user: UserRecord) -> Result<(), StoreError> {
        blocking(self, move |s| {
            let stored = encode(&StoredUser {
                password_hash: user.password_hash,
                created_at: user.created_at,
            });
            let inserted = s
                .users
                .compare_and_swap(user.name.as_bytes(), None::<&[u8]>, Some(stored))
                .map_err(io)?;
            if inserted.is_err() {
                return Err(StoreError::UserExists(user.name));
            }
            s.db.flush().map_err(io)?;
            Ok(())
        })
        .await
    }

    async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let name = name.to_owned();
        blocking(self, move |s| {
            s.users
                .get(name.as_bytes())
                .map_err(io)?
                .map(|v| user_record(name.as_bytes(), &v))
                .transpose()
        })
        .await
    }

    async fn list_users(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        blocking(self, move |s| {
            let range = match &after {
                Some(name) => s.users.range::<&[u8], _>((
                    std::ops::Bound::Excluded(name.as_bytes()),
                    std::ops::Bound::Unbounded,
                )),
                None => s.users.iter(),
            };
            range
                .take(limit)
                .map(|entry| {
                    let (key, value) = entry.map_err(io)?;
                    user_record(&key, &value)
                })
                .collect()
        })
        .await
    }

    async fn set_password(&self, name: &str, hash: Option<String>) -> Result<bool, StoreError> {
        let name = name.to_owned();
        blocking(self, move |s| {
            let updated = update_json(&s.users, name.as_bytes(), |stored: &mut StoredUser| {
                stored.password_hash = hash.clone();
            })?
            .map_err(|e| StoreError::Corrupt(format!("user {name}: {e}")))?;
            s.db.flush().map_err(io)?;
            Ok(updated.is_some())
        })
        .await
    }

    async fn delete_user(&self, name: &str) -> Result<Option<RemovedUser>, StoreError> {
        let name = name.to_owned();
        blocking(self, move |s| {
            let mut tokens = Vec::new();
            for entry in s.tokens.iter() {
                let (key, value) = entry.map_err(io)?;
                let stored: Stored = serde_json::from_slice(&value)
                    .map_err(|e| StoreError::Corrupt(format!("token: {e}")))?;
                if stored.user == name {
                    tokens.push((id_of(&key)?, TokenHash::from_hex(&stored.hash)));
                }
            }
            let mut sessions = Vec::new();
            for entry in s.sessions.iter() {
                let (key, value) = entry.map_err(io)?;
                let record = s.session_record(&key, &value)?;
                if record.user == name {
                    sessions.push(record.hash);
                }
            }
            let existed = (&s.users, &s.tokens, &s.hashes, &s.sessions)
                .transaction(|(users, token_tree, hashes, session_tree)| {
                    if users.remove(name.as_bytes())?.is_none() {
                        return Ok(false);
                    }
                    for (id, hash) in &tokens {
                        token_tree.remove(&id.0.to_be_bytes())?;
                        if let Some(hash) = hash {
                            hashes.remove(&hash.0)?;
                        }
                    }
                    for hash in &sessions {
                        session_tree.remove(&hash.0)?;
                    }
                    Ok(true)
                })
                .map_err(transaction_error)?;
            if !existed {
                return Ok(None);
            }
            s.db.flush().map_err(io)?;
            Ok(Some(RemovedUser {
                tokens: tokens.into_iter().map(|(id, _)| id).collect(),
                sessions,
            }))
        })
        .await
    }

    async fn create_session(&self, session: SessionRecord) -> Result<(), StoreError> {
        blocking(self, move |s| {
            let stored = encode(&StoredSession {
                user: session.user.clone(),
                created_at: session.created_at,
                expires_at: session.expires_at,
                last_seen: session.last_seen,
            });
            let created = (&s.users, &s.sessions)
                .transaction(|(users, sessions)| {
                    if users.get(session.user.as_bytes())?.is_none() {
                        return Ok(false);
                    }
                    sessions.insert(&session.hash.0, stored.as_slice())?;
                    Ok(true)
                })
                .map_err(transaction_error)?;
            if !created {
                return Err(StoreError::NoSuchUser(session.user));
            }
            s.db.flush().map_err(io)?;
            Ok(())
        })
        .await
    }

    async fn sessions_by_hashes(
        &self,
        hashes: &[SessionHash],
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let hashes = hashes.to_vec();
        blocking(self, move |s| {
            let mut found = Vec::with_capacity(hashes.len());
            for hash in hashes {
                if let Some(v) = s.sessions.get(hash.0).map_err(io)? {
                    found.push(s.session_record(&hash.0, &v)?);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn session(&self, hash: SessionHash) -> Result<Option<SessionRecord>, StoreError> {
        blocking(self, move |s| {
            s.sessions
                .get(hash.0)
                .map_err(io)?
                .map(|v| s.session_record(&hash.0, &v))
                .transpose()
        })
        .await
    }

    async fn list_sessions(&self, user: Option<&str>) -> Result<Vec<SessionRecord>, StoreError> {
        let user = user.map(str::to_owned);
        blocking(self, move |s| {
            let mut out = Vec::new();
            for entry in s.sessions.iter() {
                let (key, value) = entry.map_err(io)?;
                let record = s.session_record(&key, &value)?;
                if user.as_deref().is_none_or(|u| u == record.user) {
                    out.push(record);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_sessions(
        &self,
        hashes: Vec<SessionHash>,
    ) -> Result<Vec<SessionHash>, StoreError> {
        blocking(self, move |s| {
            let mut removed = Vec::new();
            for hash in hashes {
                if s.sessions.remove(hash.0).map_err(io)?.is_some() {
                    removed.push(hash);
                }
            }
            s.db.flush().map_err(io)?;
            Ok(removed)
        })
        .await
    }

    async fn touch_sessions(&self, seen: Vec<(SessionHash, Timestamp)>) -> Result<(), StoreError> {
        blocking(self, move |s| {
            for (hash, at) in seen {
                // A session deleted meanwhile stays deleted; an undecodable one is skipped.
                let _ = update_json(&s.sessions, hash.0, |stored: &mut StoredSession| {
                    stored.last_seen = stored.last_seen.max(at);
                })?;
            }
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        blocking(self, |s| s.db.flush().map(|_| ()).map_err(io)).await
    }

    async fn import(&self, batch: ImportBatch) -> Result<ImportCounts, StoreError> {
        blocking(self, move |s| {
            let imported = (&s.users, &s.tokens, &s.hashes, &s.sessions).transaction(
                |(users, tokens, hashes, sessions)| {
                    let mut counts = ImportCounts::default();
                    let conflict = |what: String| ConflictableTransactionError::Abort(what);
                    for user in &batch.users {
                        match users.get(user.name.as_bytes())? {
                            Some(old) => match user_record(user.name.as_bytes(), &old) {
                                Ok(old) if old == *user => counts.users.present += 1,
                                _ => {
                                    return Err(conflict(format!(
                                        "user {}: the store has a different user of this name",
                                        user.name
                                    )))
                                }
                            },
                            None => {
                                let stored = StoredUser {
                                    password_hash: user.password_hash.clone(),
                                    created_at: user.created_at,
                                };
                                users.insert(user.name.as_bytes(), encode(&stored))?;
                                counts.users.added += 1;
                            }
                        }
                    }
                    for token in &batch.tokens {
                        let key = token.id.0.to_be_bytes();
                        if let Some(old) = tokens.get(key)? {
                            match decode_token(token.id, &old) {
                                Ok(old) if old.same_as(token) => {
                                    counts.tokens.present += 1;
                                    continue;
                                }
                                _ => {
                                    return Err(conflict(format!(
                                        "token {}: the store has a different token with this id",
                                        token.id
                                    )))
                                }
                            }
                        }
                        if let Some(other) = hashes.get(token.hash.0)? {
                            let other =
                                id_of(&other).map_or_else(|_| "?".into(), |id| id.to_string());
                            return Err(conflict(format!(
                                "token {}: the store has token {other} with the same hash",
                                token.id
                            )));
                        }
                        tokens.insert(&key, encode(&Stored::from(token)))?;
                        hashes.insert(&token.hash.0, &key)?;
                        counts.tokens.added += 1;
                    }
                    for session in &batch.sessions {
                        if let Some(old) = sessions.get(session.hash.0)? {
                            match s.session_record(&session.hash.0, &old) {
                                Ok(old) if old.same_as(session) => {
                                    counts.sessions.present += 1;
                                    continue;
                                }
                                _ => return Err(conflict(
                                    "a session: the store has a different session with this hash"
                                        .into(),
                                )),
                            }
                        }
                        if users.get(session.user.as_bytes())?.is_none() {
                            return Err(conflict(format!(
                                "a session of user {}: no such user in the store or the import",
                                session.user
                            )));
                        }
                        let stored = StoredSession {
                            user: session.user.clone(),
                            created_at: session.created_at,
                            expires_at: session.expires_at,
                            last_seen: session.last_seen,
                        };
                        sessions.insert(&session.hash.0, encode(&stored))?;
                        counts.sessions.added += 1;
                    }
                    Ok(counts)
                },
            );
            let counts = match imported {
                Ok(counts) => counts,
                Err(TransactionError::Abort(what)) => return Err(StoreError::Conflict(what)),
                Err(TransactionError::Storage(e)) => return Err(io(e)),
            };
            let used = batch
                .tokens
                .iter()
                .filter_map(|t| Some((t.id, t.last_used_at?)))
                .collect();
            s.touch(used)?;
            s.db.flush().map_err(io)?;
            Ok(counts)
        })
        .await
    }

    /// Closes and reopens sled, which lets go of every page it holds. sled's LRU evicts a
    /// page only after 64 accesses have queued in its shard (of 256), so the one pass that
    /// loads the token cache leaves every page it read resident (16 MiB at 100,000
    /// tokens) however small `cache_capacity` is. tokengate's own lock stays held, so no
    /// other process can take the store in between.
    async fn release_memory(&self) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let mut slot = shared
                .trees
                .write()
                .map_err(|_| StoreError::Io("store lock poisoned".into()))?;
            if let Some(trees) = slot.take() {
                trees.db.flush().map_err(io)?;
            }
            *slot = Some(Trees::open_when_free(&shared.path, shared.cache_bytes)?);
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_token(user: &str) -> NewToken {
        NewToken {
            user: user.into(),
            name: "t".into(),
            hash: TokenHash::of(user),
            abilities: vec!["read".into()],
            created_at: 1_000,
            expires_at: None,
        }
    }

    #[tokio::test]
    async fn releasing_memory_keeps_the_data_and_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = SledStore::open(&path).unwrap();
        let created = store.create_token(new_token("alice")).await.unwrap();
        store.touch_tokens(vec![(created.id, 2_000)]).await.unwrap();
        assert!(matches!(
            SledStore::open(&path),
            Err(StoreError::Locked { .. })
        ));

        store.release_memory().await.unwrap();

        assert!(matches!(
            SledStore::open(&path),
            Err(StoreError::Locked { .. })
        ));
        let read = store.token(created.id).await.unwrap().unwrap();
        assert_eq!(read.hash, created.hash);
        assert_eq!(read.last_used_at, Some(2_000));
        let second = store.create_token(new_token("bob")).await.unwrap();
        assert!(second.id > created.id);
        drop(store);
        let reopened = SledStore::open(&path).unwrap();
        assert_eq!(reopened.count_tokens().await.unwrap(), 2);
    }
}
