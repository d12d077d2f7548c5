//! Personal access tokens at run time: verify a presented token against a cache in front of
//! the store, create/update/revoke while keeping that cache coherent, and batch
//! `last_used_at` writes.
//!
//! A request with a known token costs one SHA-256, one map lookup and a few atomics: no
//! store read, no allocation, no lock. A revocation removes the cache entry before it
//! returns, so the very next request is refused.

use crate::auth::token::{self, Presented, TokenHash, TokenId};
use crate::auth::Ability;
use crate::clock::{Clock, Timestamp};
use crate::store::{NewToken, Store, StoreError, TokenRecord};
use dashmap::DashMap;
use http::HeaderValue;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the token rules of the config say (see `tokens:` and `abilities:`).
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// Sanctum's `token_prefix`.
    pub prefix: String,
    /// Sanctum's global `expiration`, in seconds from creation.
    pub lifetime: Option<i64>,
    /// The declared abilities; others are dropped when a token is created or updated.
    pub abilities: Vec<Ability>,
    /// What a token gets when its creator names no abilities.
    pub default_abilities: Vec<Ability>,
    /// At most this many tokens are cached; beyond it an arbitrary entry is evicted.
    pub cache_capacity: usize,
}

/// A verified, cached token with the header values it sends upstream already built.
#[derive(Debug)]
pub struct AccessToken {
    pub id: TokenId,
    pub user: Box<str>,
    hash: TokenHash,
    /// Sorted; never contains `*` (that is `all`).
    abilities: Box<[Box<str>]>,
    all: bool,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
    last_used: AtomicI64,
    dirty: AtomicBool,
    pub abilities_value: HeaderValue,
    pub user_value: HeaderValue,
    pub id_value: HeaderValue,
}

impl AccessToken {
    fn from_record(record: &TokenRecord) -> Option<Self> {
        let all = record.abilities.iter().any(|a| a == "*");
        let mut abilities: Vec<Box<str>> = if all {
            Vec::new()
        } else {
            record.abilities.iter().map(|a| a.as_str().into()).collect()
        };
        abilities.sort();
        abilities.dedup();
        let joined = if all {
            "*".to_owned()
        } else {
            abilities.join(",")
        };
        Some(Self {
            id: record.id,
            user: record.user.as_str().into(),
            hash: record.hash,
            all,
            created_at: record.created_at,
            expires_at: record.expires_at,
            last_used: AtomicI64::new(record.last_used_at.unwrap_or(0)),
            dirty: AtomicBool::new(false),
            abilities_value: HeaderValue::from_str(&joined).ok()?,
            user_value: HeaderValue::from_str(&record.user).ok()?,
            id_value: HeaderValue::from(record.id.0),
            abilities: abilities.into(),
        })
    }

    /// Sanctum's `tokenCan`: `*` or exactly this ability (case-sensitive).
    pub fn can(&self, ability: &str) -> bool {
        self.all
            || self
                .abilities
                .binary_search_by(|a| (**a).cmp(ability))
                .is_ok()
    }

    fn is_live(&self, now: Timestamp, lifetime: Option<i64>) -> bool {
        self.expires_at.is_none_or(|at| now < at)
            && lifetime.is_none_or(|secs| now < self.created_at.saturating_add(secs))
    }
}

/// A token request as the CLI or API makes it.
#[derive(Debug, Clone)]
pub struct CreateToken {
    pub user: String,
    pub name: String,
    /// `None`: the configured default abilities.
    pub abilities: Option<Vec<String>>,
    pub expires_at: Option<Timestamp>,
}

/// A new token: its record and the plaintext, which exists only here.
#[derive(Debug)]
pub struct Created {
    pub record: TokenRecord,
    pub plaintext: String,
    /// Requested abilities that were not declared and so were dropped.
    pub dropped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Tokens {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: TokenPolicy,
    by_id: DashMap<TokenId, Arc<AccessToken>>,
    by_hash: DashMap<TokenHash, TokenId>,
    /// Bumped by every change to a stored token, so that a cache fill racing a revocation
    /// never leaves the revoked token cached.
    generation: AtomicU64,
    /// Tokens whose `last_used_at` moved since the last flush.
    dirty: Mutex<Vec<Arc<AccessToken>>>,
    touch_writes: AtomicU64,
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, policy: TokenPolicy) -> Self {
        Self {
            store,
            clock,
            policy,
            by_id: DashMap::new(),
            by_hash: DashMap::new(),
            generation: AtomicU64::new(0),
            dirty: Mutex::new(Vec::new()),
            touch_writes: AtomicU64::new(0),
        }
    }

    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The token behind a presented credential, if it is valid now. `Ok(None)` for any
    /// unknown, malformed, mismatched or expired token: callers need not know which.
    pub async fn authenticate(
        &self,
        presented: &str,
    ) -> Result<Option<Arc<AccessToken>>, StoreError> {
        let Some(presented) = Presented::parse(presented) else {
            return Ok(None);
        };
        let hash = TokenHash::of(presented.secret());
        let cached = match presented {
            Presented::WithId { id, .. } => self.by_id.get(&id).map(|t| Arc::clone(&t)),
            Presented::Bare { .. } => self
                .by_hash
                .get(&hash)
                .and_then(|id| self.by_id.get(&*id).map(|t| Arc::clone(&t))),
        };
        let token = match cached {
            Some(token) => token,
            None => match self.load(presented, hash).await? {
                Some(token) => token,
                None => return Ok(None),
            },
        };
        let now = self.clock.now();
        if !token.hash.ct_eq(&hash) || !token.is_live(now, self.policy.lifetime) {
            return Ok(None);
        }
        self.mark_used(&token, now);
        Ok(Some(token))
    }

    async fn load(
        &self,
        presented: Presented<'_>,
        hash: TokenHash,
    ) -> Result<Option<Arc<AccessToken>>, StoreError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let record = match presented {
            Presented::WithId { id, .. } => self.store.token(id).await?,
            Presented::Bare { .. } => self.store.token_by_hash(hash).await?,
        };
        let Some(record) = record else {
            return Ok(None);
        };
        let Some(token) = AccessToken::from_record(&record) else {
            tracing::warn!(token_id = %record.id, "stored token has a user or abilities that cannot be sent as a header; refusing it");
            return Ok(None);
        };
        let token = Arc::new(token);
        self.insert(&token, matches!(presented, Presented::Bare { .. }));
        if self.generation.load(Ordering::SeqCst) != generation {
            // A token changed while we read: what we cached may be stale.
            self.evict(token.id);
        }
        Ok(Some(token))
    }

    fn insert(&self, token: &Arc<AccessToken>, by_hash: bool) {
        if self.by_id.len() >= self.policy.cache_capacity {
            let victim = self.by_id.iter().next().map(|t| t.id);
            if let Some(victim) = victim {
                self.evict(victim);
            }
        }
        self.by_id.insert(token.id, Arc::clone(token));
        if by_hash {
            self.by_hash.insert(token.hash, token.id);
        }
    }

    /// Drops a token from the cache; the next request for it reads the store.
    pub fn evict(&self, id: TokenId) {
        if let Some((_, token)) = self.by_id.remove(&id) {
            self.by_hash.remove(&token.hash);
        }
    }

    /// Forgets every cached token (for example when another writer changed the store).
    pub fn evict_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.by_id.clear();
        self.by_hash.clear();
    }

    fn changed(&self, id: TokenId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.evict(id);
    }

    fn mark_used(&self, token: &Arc<AccessToken>, now: Timestamp) {
        if token.last_used.load(Ordering::Relaxed) < now {
            token.last_used.store(now, Ordering::Relaxed);
        }
        if !token.dirty.load(Ordering::Relaxed) && !token.dirty.swap(true, Ordering::SeqCst) {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::clone(token));
        }
    }

    /// Writes the `last_used_at` of every token used since the last call, in one store
    /// write. Returns how many tokens it wrote.
    pub async fn flush_last_used(&self) -> Result<usize, StoreError> {
        let batch = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return Ok(0);
        }
        let used: Vec<(TokenId, Timestamp)> = batch
            .iter()
            .map(|t| {
                t.dirty.store(false, Ordering::SeqCst);
                (t.id, t.last_used.load(Ordering::SeqCst))
            })
            .collect();
        let count = used.len();
        self.store.touch_tokens(used).await?;
        self.touch_writes.fetch_add(1, Ordering::Relaxed);
        Ok(count)
    }

    /// How many batched `last_used_at` writes have reached the store.
    pub fn touch_writes(&self) -> u64 {
        self.touch_writes.load(Ordering::Relaxed)
    }

    /// Keeps the declared abilities (and `*`) of a request, in order, without repeats;
    /// returns them and the dropped rest (Jetstream's `validPermissions`).
    pub fn filter_abilities(&self, requested: &[String]) -> (Vec<String>, Vec<String>) {
        let mut kept: Vec<String> = Vec::new();
        let mut dropped = Vec::new();
        for ability in requested {
            if ability == "*" || self.policy.abilities.iter().any(|a| a.as_str() == ability) {
                if !kept.contains(ability) {
                    kept.push(ability.clone());
                }
            } else {
                dropped.push(ability.clone());
            }
        }
        kept.sort();
        (kept, dropped)
    }

    /// Checks a request and turns it into a new token and its secret.
    fn prepare(
        &self,
        request: CreateToken,
        now: Timestamp,
    ) -> Result<(NewToken, String, Vec<String>), TokenError> {
        check_user(&request.user)?;
        let name = request.name.trim();
        if name.is_empty() || name.chars().count() > 255 {
            return Err(TokenError::Invalid(
                "a token name must be 1 to 255 characters".into(),
            ));
        }
        if request.expires_at.is_some_and(|at| at <= now) {
            return Err(TokenError::Invalid(
                "a token's expiry must be in the future".into(),
            ));
        }
        let requested = match request.abilities {
            Some(list) => list,
            None => self.policy.default_abilities.clone(),
        };
        let (abilities, dropped) = self.filter_abilities(&requested);
        let secret = token::generate_secret(&self.policy.prefix);
        let new = NewToken {
            user: request.user,
            name: name.to_owned(),
            hash: TokenHash::of(&secret),
            abilities,
            created_at: now,
            expires_at: request.expires_at,
        };
        Ok((new, secret, dropped))
    }

    pub async fn create(&self, request: CreateToken) -> Result<Created, TokenError> {
        let now = self.clock.now();
        loop {
            let (new, secret, dropped) = self.prepare(request.clone(), now)?;
            match self.store.create_token(new).await {
                Ok(record) => {
                    let plaintext = token::plaintext(record.id, &secret);
                    return Ok(Created {
                        record,
                        plaintext,
                        dropped,
                    });
                }
                // 238 bits of entropy: a collision means a broken RNG, but retrying is free.
                Err(StoreError::DuplicateHash) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Creates many tokens with one durable write (bulk import). Every request is checked
    /// before anything is stored.
    pub async fn import(&self, requests: Vec<CreateToken>) -> Result<Vec<Created>, TokenError> {
        let now = self.clock.now();
        let mut news = Vec::with_capacity(requests.len());
        let mut secrets = Vec::with_capacity(requests.len());
        for (line, request) in requests.into_iter().enumerate() {
            let (new, secret, dropped) = self
                .prepare(request, now)
                .map_err(|e| TokenError::Invalid(format!("token {}: {e}", line + 1)))?;
            news.push(new);
            secrets.push((secret, dropped));
        }
        let records = self.store.create_tokens(news).await?;
        Ok(records
            .into_iter()
            .zip(secrets)
            .map(|(record, (secret, dropped))| Created {
                plaintext: token::plaintext(record.id, &secret),
                record,
                dropped,
            })
            .collect())
    }

    pub async fn list(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
        let mut tokens = self.store.list_tokens(user).await?;
        // Usage not yet flushed is newer than the store's.
        for record in &mut tokens {
            if let Some(cached) = self.by_id.get(&record.id).map(|t| Arc::clone(&t)) {
                let seen = cached.last_used.load(Ordering::Relaxed);
                if seen > record.last_used_at.unwrap_or(0) {
                    record.last_used_at = Some(seen);
                }
            }
        }
        Ok(tokens)
    }

    /// Replaces a token's abilities (undeclared ones dropped). `Ok(None)`: no such token.
    pub async fn set_abilities(
        &self,
        id: TokenId,
        requested: &[String],
    ) -> Result<Option<(TokenRecord, Vec<String>)>, StoreError> {
        let (abilities, dropped) = self.filter_abilities(requested);
        let updated = self.store.set_abilities(id, abilities).await;
        self.changed(id);
        Ok(updated?.map(|record| (record, dropped)))
    }

    /// Deletes a token; effective for the very next request. False: there was none.
    pub async fn revoke(&self, id: TokenId) -> Result<bool, StoreError> {
        let deleted = self.store.delete_token(id).await;
        self.changed(id);
        deleted
    }
}

/// User ids are the app's opaque ids; they travel in a header, so printable ASCII only.
pub fn check_user(user: &str) -> Result<(), TokenError> {
    if user.is_empty() || user.len() > 255 || !user.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Invalid(
            "a user id must be 1 to 255 printable ASCII characters without spaces".into(),
        ));
    }
    Ok(())
}
