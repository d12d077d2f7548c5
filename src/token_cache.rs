//! Personal access tokens at run time: verify a presented token against a cache in front of
//! the store, create/update/revoke while keeping that cache coherent, and batch
//! `last_used_at` writes.
//!
//! A request with a known token costs one SHA-256, one map lookup and a few atomics: no
//! store read, no allocation, no lock. A revocation removes the cache entry before it
//! returns, so the very next request is refused.

use crate::ability::Ability;
use crate::clock::{Clock, Timestamp};
use crate::credential::token::{self, Presented, TokenHash, TokenId};
use crate::store::{NewToken, Store, StoreError, TokenQuery, TokenRecord, SHARED_IDLE_SECONDS};
use bytes::Bytes;
use dashmap::DashMap;
use foldhash::fast::RandomState;
use http::HeaderValue;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// How long a shared store's "no such token" is reused for the same presented token. Short:
/// a token cannot be presented before it exists, but the same secret may come back under
/// an id whose row was being written.
const MISS_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Remembered misses at most (about 80 bytes each).
const MAX_MISSES: usize = 100_000;

pub use crate::config::TokenPolicy;

/// How many cached tokens a full cache compares when one must make room: the least recently
/// used of them leaves, so that a token in use is not the one dropped while a colder one
/// stays (the first entry alone, as before, was as often the busiest token as any other).
const EVICTION_SAMPLE: usize = 16;

/// `last_used_at` is written to the store at most once per this many seconds per token
/// (Jetstream shows it in minutes); in memory it is exact.
pub const LAST_USED_RESOLUTION: i64 = 60;

/// A verified, cached token, holding the bytes of the header values it sends upstream.
/// Kept small (about 270 bytes with its map entries), since up to `cache_capacity` of them
/// live in memory: user id and token id share one buffer, and tokens with the same
/// abilities share that header's buffer.
#[derive(Debug)]
pub struct AccessToken {
    pub id: TokenId,
    hash: TokenHash,
    /// The earlier of its own expiry and `created_at` + the global lifetime.
    valid_until: Timestamp,
    last_used: AtomicI64,
    /// The `last_used_at` the store has (or is being sent).
    stored_last_used: AtomicI64,
    dirty: AtomicBool,
    /// `{user}{id}`.
    identity: Bytes,
    user_len: usize,
    /// Sorted, comma-separated; `*` for every ability.
    abilities: Bytes,
}

/// The identity header values of a token, ready to send.
pub struct IdentityValues {
    pub abilities: HeaderValue,
    pub user: HeaderValue,
    pub token_id: HeaderValue,
}

fn header_value(bytes: Bytes) -> HeaderValue {
    // Checked when the token was cached (`AccessToken::from_record`), so this cannot fail.
    HeaderValue::from_maybe_shared(bytes).unwrap_or(HeaderValue::from_static(""))
}

impl AccessToken {
    fn from_record(record: &TokenRecord, abilities: Bytes, lifetime: Option<i64>) -> Option<Self> {
        let identity = Bytes::from(format!("{}{}", record.user, record.id));
        let valid = |b: &Bytes| HeaderValue::from_maybe_shared(b.clone()).is_ok();
        if !valid(&identity) || !valid(&abilities) || record.user.is_empty() {
            return None;
        }
        let last_used = record.last_used_at.unwrap_or(0);
        Some(Self {
            id: record.id,
            hash: record.hash,
            valid_until: valid_until(record, lifetime),
            last_used: AtomicI64::new(last_used),
            stored_last_used: AtomicI64::new(last_used),
            dirty: AtomicBool::new(false),
            user_len: record.user.len(),
            identity,
            abilities,
        })
    }

    /// The owner: the app's user id.
    pub fn user(&self) -> &str {
        std::str::from_utf8(&self.identity[..self.user_len]).unwrap_or_default()
    }

    /// The `X-Token-Abilities` value: sorted, comma-separated, or `*`.
    pub fn abilities(&self) -> &str {
        std::str::from_utf8(&self.abilities).unwrap_or_default()
    }

    /// Header values for the upstream; no allocation (shared buffers).
    pub fn identity_values(&self) -> IdentityValues {
        IdentityValues {
            abilities: header_value(self.abilities.clone()),
            user: header_value(self.identity.slice(..self.user_len)),
            token_id: header_value(self.identity.slice(self.user_len..)),
        }
    }

    /// Sanctum's `tokenCan`: `*` or exactly this ability (case-sensitive).
    pub fn can(&self, ability: &str) -> bool {
        let list = &self.abilities[..];
        list == b"*" || list.split(|&b| b == b',').any(|a| a == ability.as_bytes())
    }

    fn is_live(&self, now: Timestamp) -> bool {
        now < self.valid_until
    }

    /// Whether `record` still says what this token was cached from (the re-check).
    fn matches(&self, record: &TokenRecord, lifetime: Option<i64>) -> bool {
        self.hash.ct_eq(&record.hash)
            && self.user() == record.user
            && self.abilities() == abilities_header(&record.abilities)
            && self.valid_until == valid_until(record, lifetime)
    }
}

/// The earlier of a token's own expiry and `created_at` + the global lifetime.
fn valid_until(record: &TokenRecord, lifetime: Option<i64>) -> Timestamp {
    let lifetime_end = lifetime.map_or(Timestamp::MAX, |secs| {
        record.created_at.saturating_add(secs)
    });
    record
        .expires_at
        .unwrap_or(Timestamp::MAX)
        .min(lifetime_end)
}

/// The `X-Token-Abilities` value of a stored ability list: sorted, deduplicated, joined;
/// `*` when it holds `*`. A stored string that is not an ability name (the Laravel app may
/// have written `"read,admin"`, `" *"` or a line break) is left out: Sanctum's `tokenCan`
/// compares whole strings, so it grants nothing there, and joined here it would read as
/// abilities of its own to tokengate's `can` and to the upstream.
fn abilities_header(abilities: &[String]) -> String {
    if abilities.iter().any(|a| a == "*") {
        return "*".to_owned();
    }
    let mut sorted: Vec<&str> = abilities
        .iter()
        .map(String::as_str)
        .filter(|a| Ability::is_name(a))
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.join(",")
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
    policy: RwLock<Arc<TokenPolicy>>,
    by_id: DashMap<TokenId, Arc<AccessToken>, RandomState>,
    /// Bare tokens (no `id|`) by the first 8 bytes of their hash; the entry's full hash is
    /// still compared. Half the memory of keying by the whole hash.
    by_hash: DashMap<u64, TokenId, RandomState>,
    /// One shared header value per distinct ability list.
    ability_values: DashMap<String, Bytes, RandomState>,
    /// Bumped by every change to a stored token, so that a cache fill racing a revocation
    /// never leaves the revoked token cached.
    generation: AtomicU64,
    /// The cache holds every stored token (`warm` loaded them all, the store is exclusive
    /// and nothing was evicted since): a miss then means "no such token", with no store read.
    complete: AtomicBool,
    /// Tokens whose `last_used_at` moved since the last flush.
    dirty: Mutex<Vec<Arc<AccessToken>>>,
    touch_writes: AtomicU64,
    /// How many tokens each user owns: counted from the store by `warm`, then kept
    /// exact by create, import and revoke, so that `max_per_user` holds whatever the
    /// concurrency (a place is taken before the token is stored).
    owned: DashMap<String, usize, RandomState>,
    /// `owned` holds every user's count (set by `warm` or `count_owned`).
    counted: AtomicBool,
    /// When the cache cannot hold every token: what is stored, so that a made-up token
    /// costs no store read (`Stored`).
    stored: RwLock<Option<Stored>>,
    /// Presented tokens the cache did not hold, looked up in the store.
    store_reads: AtomicU64,
    /// Presented tokens a shared store did not hold, until when that answer is reused:
    /// a flood of the same made-up token costs one store read a `MISS_TTL`.
    misses: DashMap<TokenHash, std::time::Instant, RandomState>,
    /// False once a shared store has gone unchecked for longer than it may (`spawn_sync`):
    /// cached tokens are then no longer trusted, and every request gets "store unavailable".
    fresh: AtomicBool,
    /// False while a shared store's last re-check failed (`set_reachable`).
    reachable: AtomicBool,
}

/// Every stored token's id and the first eight bytes of its hash, kept for an exclusive
/// store: a token the cache does not hold whose id is not stored, or whose hash does not
/// match the stored one, or a bare token whose hash is not stored, is refused without
/// reading the store (a flood of made-up tokens costs no store reads and never waits on
/// one, however many tokens are stored). Exact: built by `warm`, kept so by create, import,
/// revoke and user removal. About 16 bytes a token.
#[derive(Debug, Default)]
struct Stored {
    /// Indexed by id: the short hash (never 0, see `key`), or 0 for no such token.
    by_id: Vec<u64>,
    /// Short hashes, sorted (for tokens presented without their id).
    hashes: Vec<u64>,
}

impl Stored {
    /// Ids up to this many times the count of tokens (plus a margin) are kept in a table
    /// indexed by id; a store with sparser ids gets no filter.
    const SPREAD: u64 = 16;

    /// A short hash as kept: 0 means "no token" in `by_id`.
    fn key(short: u64) -> u64 {
        short | 1
    }

    /// Whether ids up to `most` fit a table for `count` tokens.
    fn dense(most: u64, count: usize) -> bool {
        most <= Self::SPREAD * count as u64 + 65_536
    }

    fn build(tokens: &[(TokenId, u64)]) -> Option<Self> {
        let most = tokens.iter().map(|(id, _)| id.0).max().unwrap_or(0);
        if !Self::dense(most, tokens.len()) {
            return None;
        }
        let mut stored = Stored {
            by_id: vec![0; usize::try_from(most).ok()? + 1],
            hashes: tokens.iter().map(|(_, short)| Self::key(*short)).collect(),
        };
        for (id, short) in tokens {
            stored.by_id[id.0 as usize] = Self::key(*short);
        }
        stored.hashes.sort_unstable();
        Some(stored)
    }

    /// Adds stored tokens. False: their ids are too sparse for a table (drop the filter).
    #[must_use]
    fn add_all(&mut self, tokens: impl IntoIterator<Item = (TokenId, u64)>) -> bool {
        tokens.into_iter().all(|(id, short)| self.add(id, short))
    }

    /// Adds a stored token (again: no change). False as for `add_all`.
    #[must_use]
    fn add(&mut self, id: TokenId, short: u64) -> bool {
        if !Self::dense(id.0, self.hashes.len() + 1) {
            return false;
        }
        let Ok(at) = usize::try_from(id.0) else {
            return false;
        };
        if at >= self.by_id.len() {
            self.by_id.resize(at + 1, 0);
        }
        let key = Self::key(short);
        if self.by_id[at] == key {
            return true;
        }
        self.remove(id);
        self.by_id[at] = key;
        let place = self.hashes.partition_point(|h| *h < key);
        self.hashes.insert(place, key);
        true
    }

    fn remove(&mut self, id: TokenId) {
        let Some(slot) = usize::try_from(id.0)
            .ok()
            .and_then(|at| self.by_id.get_mut(at))
        else {
            return;
        };
        let key = std::mem::take(slot);
        if key != 0 {
            if let Ok(place) = self.hashes.binary_search(&key) {
                self.hashes.remove(place);
            }
        }
    }

    /// Whether the store may hold the presented token (if not, it surely does not).
    fn may_hold(&self, presented: &Presented<'_>, hash: &TokenHash) -> bool {
        let key = Self::key(hash.short());
        match presented {
            Presented::WithId { id, .. } => usize::try_from(id.0)
                .ok()
                .and_then(|at| self.by_id.get(at))
                .is_some_and(|stored| *stored == key),
            Presented::Bare { .. } => self.hashes.binary_search(&key).is_ok(),
        }
    }
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, policy: TokenPolicy) -> Self {
        Self {
            store,
            clock,
            policy: RwLock::new(Arc::new(policy)),
            by_id: DashMap::default(),
            by_hash: DashMap::default(),
            ability_values: DashMap::default(),
            generation: AtomicU64::new(0),
            complete: AtomicBool::new(false),
            misses: DashMap::default(),
            fresh: AtomicBool::new(true),
            reachable: AtomicBool::new(true),
            dirty: Mutex::new(Vec::new()),
            touch_writes: AtomicU64::new(0),
            owned: DashMap::default(),
            counted: AtomicBool::new(false),
            stored: RwLock::new(None),
            store_reads: AtomicU64::new(0),
        }
    }

    /// How many presented tokens were looked up in the store (cache misses that the
    /// filter of stored tokens let through).
    pub fn store_reads(&self) -> u64 {
        self.store_reads.load(Ordering::Relaxed)
    }

    /// The token rules in force (swapped by a config reload).
    pub fn policy(&self) -> Arc<TokenPolicy> {
        Arc::clone(&self.policy.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Applies reloaded token rules: declared and default abilities and the prefix apply
    /// to tokens created from now on (stored tokens keep their abilities).
    pub fn set_policy(&self, policy: TokenPolicy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
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
        let token = self.find(presented, hash).await?;
        if let Some(token) = &token {
            self.mark_used(token, self.clock.now());
        }
        Ok(token)
    }

    /// A token as it stands now (its abilities may have changed), if it is still valid:
    /// not revoked, not expired (an open stream's check, `streams`; not a use).
    pub async fn current(
        &self,
        token: &AccessToken,
    ) -> Result<Option<Arc<AccessToken>>, StoreError> {
        let presented = Presented::WithId {
            id: token.id,
            secret: "",
        };
        self.find(presented, token.hash).await
    }

    /// The token a presented credential (whose secret hashes to `hash`) names, if valid.
    async fn find(
        &self,
        presented: Presented<'_>,
        hash: TokenHash,
    ) -> Result<Option<Arc<AccessToken>>, StoreError> {
        if !self.fresh.load(Ordering::Relaxed) {
            return Err(StoreError::Stale);
        }
        let cached = match presented {
            Presented::WithId { id, .. } => self.by_id.get(&id).map(|t| Arc::clone(&t)),
            Presented::Bare { .. } => self
                .by_hash
                .get(&hash.short())
                .and_then(|id| self.by_id.get(&*id).map(|t| Arc::clone(&t))),
        };
        // A bare token whose short hash a cached token with another full hash holds: this
        // one may still be stored, even in a complete cache (`by_hash` keeps one per short
        // hash).
        let shared = matches!(presented, Presented::Bare { .. })
            && cached.as_ref().is_some_and(|t| !t.hash.ct_eq(&hash));
        let token = match cached {
            Some(token) if !shared => token,
            _ if !shared && self.complete.load(Ordering::Acquire) => return Ok(None),
            _ if !self.may_be_stored(&presented, &hash) => return Ok(None),
            _ => {
                if self.recently_missed(&hash) {
                    return Ok(None);
                }
                if !self.reachable.load(Ordering::Relaxed) {
                    return Err(StoreError::Unreachable);
                }
                match self.load(presented, hash).await? {
                    Some(token) => token,
                    None => {
                        self.missed(hash);
                        return Ok(None);
                    }
                }
            }
        };
        if !token.hash.ct_eq(&hash) || !token.is_live(self.clock.now()) {
            return Ok(None);
        }
        Ok(Some(token))
    }

    /// Whether a shared store said "no such token" to this hash within `MISS_TTL`.
    fn recently_missed(&self, hash: &TokenHash) -> bool {
        self.misses
            .get(hash)
            .is_some_and(|until| std::time::Instant::now() < *until)
    }

    /// Remembers a shared store's "no such token" for `MISS_TTL` (an exclusive store's
    /// misses are answered by `Stored` instead). Bounded: past `MAX_MISSES` the memory
    /// starts over.
    fn missed(&self, hash: TokenHash) {
        if self.store.is_exclusive() {
            return;
        }
        if self.misses.len() >= MAX_MISSES {
            self.misses.clear();
        }
        self.misses
            .insert(hash, std::time::Instant::now() + MISS_TTL);
    }

    /// Whether a token the cache does not hold may be in the store (`Stored`; without it,
    /// the store must be asked).
    fn may_be_stored(&self, presented: &Presented<'_>, hash: &TokenHash) -> bool {
        self.stored
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|stored| stored.may_hold(presented, hash))
    }

    /// Applies a change to `Stored`, if it is kept; a change that returns false drops it
    /// (the store is then asked about every token the cache does not hold).
    fn restock(&self, change: impl FnOnce(&mut Stored) -> bool) {
        let mut stored = self.stored.write().unwrap_or_else(|e| e.into_inner());
        if stored.as_mut().is_some_and(|s| !change(s)) {
            *stored = None;
        }
    }

    async fn load(
        &self,
        presented: Presented<'_>,
        hash: TokenHash,
    ) -> Result<Option<Arc<AccessToken>>, StoreError> {
        let generation = self.generation.load(Ordering::SeqCst);
        self.store_reads.fetch_add(1, Ordering::Relaxed);
        let record = match presented {
            Presented::WithId { id, .. } => self.store.token(id).await?,
            Presented::Bare { .. } => self.store.token_by_hash(hash).await?,
        };
        let Some(record) = record else {
            return Ok(None);
        };
        let Some(token) = self.entry(&record) else {
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

    /// The shared buffer of an ability list's header value.
    fn abilities_value(&self, abilities: &[String]) -> Bytes {
        let joined = abilities_header(abilities);
        if let Some(value) = self.ability_values.get(&joined) {
            return value.clone();
        }
        let value = Bytes::from(joined.clone());
        // Bounded: past this many distinct lists, buffers are simply not shared.
        if self.ability_values.len() < 10_000 {
            self.ability_values.insert(joined, value.clone());
        }
        value
    }

    /// Loads stored tokens into the cache, up to its capacity, before serving. When all of
    /// them fit and the store is exclusive, the cache becomes authoritative (see `complete`).
    /// Returns how many tokens were loaded. The store then lets go of the pages it read.
    /// A shared store loads nothing: its table may hold millions of rows (a Laravel app's
    /// every token), so a replica caches tokens at their first use and starts at once.
    pub async fn warm(&self) -> Result<usize, StoreError> {
        if !self.store.is_exclusive() {
            return Ok(0);
        }
        let loaded = self.load_all().await?;
        self.store.release_memory().await?;
        Ok(loaded)
    }

    /// Reads every stored token, a page at a time, counting each user's; `each` sees
    /// every record.
    async fn read_all(&self, mut each: impl FnMut(&TokenRecord)) -> Result<(), StoreError> {
        const PAGE: usize = 1_000;
        let mut after = None;
        self.owned.clear();
        loop {
            let page = self
                .store
                .list_tokens(TokenQuery {
                    user: None,
                    after,
                    limit: PAGE,
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for record in &page {
                *self.owned.entry(record.user.clone()).or_insert(0) += 1;
                each(record);
            }
            if page.len() < PAGE {
                break;
            }
        }
        self.counted.store(true, Ordering::Release);
        Ok(())
    }

    /// Reads every stored token: caches as many as fit and counts each user's.
    async fn load_all(&self) -> Result<usize, StoreError> {
        let mut loaded = 0;
        let mut all_fit = true;
        let mut every = Vec::new();
        self.read_all(|record| {
            every.push((record.id, record.hash.short()));
            if loaded >= self.policy().cache_capacity {
                all_fit = false;
                return;
            }
            if let Some(token) = self.entry(record) {
                self.insert(&Arc::new(token), true);
                loaded += 1;
            }
        })
        .await?;
        let exclusive = self.store.is_exclusive();
        self.complete.store(all_fit && exclusive, Ordering::Release);
        // What is stored stays known when the cache no longer holds it all.
        *self.stored.write().unwrap_or_else(|e| e.into_inner()) =
            exclusive.then(|| Stored::build(&every)).flatten();
        Ok(loaded)
    }

    /// Counts every user's tokens, if `warm` has not (a CLI run on the store itself).
    async fn count_owned(&self) -> Result<(), StoreError> {
        if self.counted.load(Ordering::Acquire) {
            return Ok(());
        }
        self.read_all(|_| {}).await
    }

    /// Takes places for `count` new tokens of `user` under `max_per_user`, or refuses them.
    /// An exclusive store's counts are kept here, exact whatever the concurrency. A shared
    /// store is asked each time, since other replicas and the app make tokens too (there
    /// two creations at once may both pass).
    async fn reserve(&self, user: &str, count: usize) -> Result<(), TokenError> {
        let most = self.policy().max_per_user;
        if !self.store.is_exclusive() {
            let stored = self
                .store
                .list_tokens(TokenQuery {
                    user: Some(user.to_owned()),
                    after: None,
                    limit: most.saturating_add(1),
                })
                .await?
                .len();
            return match stored + count > most {
                true => Err(too_many(user, stored, most)),
                false => Ok(()),
            };
        }
        self.count_owned().await?;
        let mut owned = self.owned.entry(user.to_owned()).or_insert(0);
        if *owned + count > most {
            return Err(too_many(user, *owned, most));
        }
        *owned += count;
        Ok(())
    }

    /// Gives back places taken by `reserve` (the tokens were not stored, or are gone).
    fn release(&self, user: &str, count: usize) {
        if let Some(mut owned) = self.owned.get_mut(user) {
            *owned = owned.saturating_sub(count);
        }
    }

    /// Forgets a removed user's tokens (`App::remove_user`): `ids`, gone from the store.
    pub fn forget_user(&self, user: &str, ids: &[TokenId]) {
        self.owned.remove(user);
        self.restock(|stored| {
            ids.iter().for_each(|id| stored.remove(*id));
            true
        });
        for id in ids {
            self.evict(*id);
        }
    }

    /// How many tokens the cache holds (every stored token while `is_complete`).
    pub fn cached(&self) -> usize {
        self.by_id.len()
    }

    /// Re-checks every cached token against the store, in batches: a token deleted there
    /// leaves the cache, a changed one is replaced. What keeps replicas on a shared store
    /// honest about revocations made elsewhere (`spawn_sync`). A token unused for
    /// `SHARED_IDLE_SECONDS`, and held by nothing but the cache (an open stream holds its
    /// token), leaves the cache instead of being re-checked, so the re-check
    /// costs what the tokens in use need, not what the table holds. Returns how many cached
    /// tokens were dropped or replaced (idle ones not counted).
    pub async fn sync(&self) -> Result<usize, StoreError> {
        const BATCH: usize = 1_000;
        let idle_since = self.clock.now().saturating_sub(SHARED_IDLE_SECONDS);
        let (mut ids, mut idle) = (Vec::new(), Vec::new());
        for token in self.by_id.iter() {
            // Held elsewhere too (an open stream's grant, a request under way): in use.
            let unused = Arc::strong_count(token.value()) == 1;
            match unused && token.last_used.load(Ordering::Relaxed) < idle_since {
                true => idle.push(*token.key()),
                false => ids.push(*token.key()),
            }
        }
        // Its last use, if not yet written, stays queued for the flusher.
        for id in idle {
            self.evict(id);
        }
        let lifetime = self.policy().lifetime;
        let mut changed = 0;
        for batch in ids.chunks(BATCH) {
            let generation = self.generation.load(Ordering::SeqCst);
            let records = self.store.tokens_by_ids(batch).await?;
            // A change made here while the batch was read: its records may be older than
            // the cache, so a difference only evicts.
            let raced = self.generation.load(Ordering::SeqCst) != generation;
            let found: std::collections::HashMap<TokenId, &TokenRecord> =
                records.iter().map(|r| (r.id, r)).collect();
            for id in batch {
                let Some(cached) = self.by_id.get(id).map(|t| Arc::clone(&t)) else {
                    continue;
                };
                match found.get(id) {
                    None => self.changed(*id),
                    Some(record) if !cached.matches(record, lifetime) => {
                        if raced {
                            self.changed(*id);
                        } else {
                            self.cache_record(record);
                        }
                    }
                    Some(_) => continue,
                }
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Marks cached tokens trusted, or not (a shared store unreachable for too long:
    /// every request is then refused as "store unavailable"). Returns the old mark.
    pub fn set_fresh(&self, fresh: bool) -> bool {
        self.fresh.swap(fresh, Ordering::Relaxed)
    }

    /// Whether the last re-check reached the store (`spawn_sync`). While not, a token the
    /// cache does not hold is refused as unavailable at once.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    /// Whether cached tokens are trusted (false: a shared store unreachable for too long).
    pub fn is_fresh(&self) -> bool {
        self.fresh.load(Ordering::Relaxed)
    }

    /// Whether a cache miss is known to mean "no such token".
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    fn entry(&self, record: &TokenRecord) -> Option<AccessToken> {
        let abilities = self.abilities_value(&record.abilities);
        let token = AccessToken::from_record(record, abilities, self.policy().lifetime);
        if token.is_none() {
            tracing::warn!(token_id = %record.id, "stored token has a user or abilities that cannot be sent as a header; refusing it");
        }
        token
    }

    /// Puts a created or changed token's record in the cache, keeping usage not yet flushed.
    fn cache_record(&self, record: &TokenRecord) {
        let Some(token) = self.entry(record) else {
            self.evict(record.id);
            return;
        };
        if let Some(old) = self.by_id.get(&record.id).map(|t| Arc::clone(&t)) {
            token
                .last_used
                .fetch_max(old.last_used.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.insert(&Arc::new(token), true);
    }

    fn insert(&self, token: &Arc<AccessToken>, by_hash: bool) {
        if self.by_id.len() >= self.policy().cache_capacity && !self.by_id.contains_key(&token.id) {
            // Something must go, so the cache no longer holds every token.
            self.complete.store(false, Ordering::Release);
            let victim = self
                .by_id
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|t| t.last_used.load(Ordering::Relaxed))
                .map(|t| t.id);
            if let Some(victim) = victim {
                self.evict(victim);
            }
        }
        self.by_id.insert(token.id, Arc::clone(token));
        if by_hash {
            if let Some(other) = self.by_hash.insert(token.hash.short(), token.id) {
                if other != token.id {
                    // Two tokens share a short hash: the other one's bare form must now
                    // be found in the store.
                    self.complete.store(false, Ordering::Release);
                }
            }
        }
    }

    /// Drops a token from the cache; the next request for it reads the store.
    pub fn evict(&self, id: TokenId) {
        if let Some((_, token)) = self.by_id.remove(&id) {
            self.by_hash
                .remove_if(&token.hash.short(), |_, id| *id == token.id);
        }
    }

    /// Forgets every cached token (for example when another writer changed the store).
    pub fn evict_all(&self) {
        self.complete.store(false, Ordering::Release);
        *self.stored.write().unwrap_or_else(|e| e.into_inner()) = None;
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
        let stale = now - token.stored_last_used.load(Ordering::Relaxed) >= LAST_USED_RESOLUTION;
        if stale
            && !token.dirty.load(Ordering::Relaxed)
            && !token.dirty.swap(true, Ordering::SeqCst)
        {
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
                let at = t.last_used.load(Ordering::SeqCst);
                t.stored_last_used.store(at, Ordering::SeqCst);
                (t.id, at)
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
            if ability == "*"
                || self
                    .policy()
                    .abilities
                    .iter()
                    .any(|a| a.as_str() == ability)
            {
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
            None => self
                .policy()
                .default_abilities
                .iter()
                .map(|a| a.to_string())
                .collect(),
        };
        let (abilities, dropped) = self.filter_abilities(&requested);
        let secret = token::generate_secret(&self.policy().prefix);
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
        self.prepare(request.clone(), now)?;
        self.reserve(&request.user, 1).await?;
        loop {
            let (new, secret, dropped) = self.prepare(request.clone(), now)?;
            match self.store.create_token(new).await {
                Ok(record) => {
                    self.restock(|stored| stored.add(record.id, record.hash.short()));
                    self.cache_record(&record);
                    let plaintext = token::plaintext(record.id, &secret);
                    return Ok(Created {
                        record,
                        plaintext,
                        dropped,
                    });
                }
                // 238 bits of entropy: a collision means a broken RNG, but retrying is free.
                Err(StoreError::DuplicateHash) => continue,
                Err(e) => {
                    self.release(&request.user, 1);
                    return Err(e.into());
                }
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
        let mut per_user: std::collections::HashMap<&str, usize> = Default::default();
        for new in &news {
            *per_user.entry(new.user.as_str()).or_insert(0) += 1;
        }
        let mut reserved: Vec<(&str, usize)> = Vec::new();
        for (user, count) in per_user {
            if let Err(e) = self.reserve(user, count).await {
                for (user, count) in reserved {
                    self.release(user, count);
                }
                return Err(e);
            }
            reserved.push((user, count));
        }
        let users: Vec<(String, usize)> =
            reserved.iter().map(|(u, c)| (u.to_string(), *c)).collect();
        let records = match self.store.create_tokens(news).await {
            Ok(records) => records,
            Err(e) => {
                for (user, count) in &users {
                    self.release(user, *count);
                }
                return Err(e.into());
            }
        };
        self.restock(|stored| stored.add_all(records.iter().map(|r| (r.id, r.hash.short()))));
        if self.is_complete() {
            for record in &records {
                self.cache_record(record);
            }
        }
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

    pub async fn list(&self, query: TokenQuery) -> Result<Vec<TokenRecord>, StoreError> {
        let mut tokens = self.store.list_tokens(query).await?;
        for record in &mut tokens {
            self.with_recent_use(record);
        }
        Ok(tokens)
    }

    /// One token's record, with its latest use.
    pub async fn get(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        let mut record = self.store.token(id).await?;
        if let Some(record) = &mut record {
            self.with_recent_use(record);
        }
        Ok(record)
    }

    /// Usage not yet flushed is newer than the store's.
    fn with_recent_use(&self, record: &mut TokenRecord) {
        if let Some(cached) = self.by_id.get(&record.id).map(|t| Arc::clone(&t)) {
            let seen = cached.last_used.load(Ordering::Relaxed);
            if seen > record.last_used_at.unwrap_or(0) {
                record.last_used_at = Some(seen);
            }
        }
    }

    /// Replaces a token's abilities (undeclared ones dropped). `Ok(None)`: no such token.
    pub async fn set_abilities(
        &self,
        id: TokenId,
        requested: &[String],
    ) -> Result<Option<(TokenRecord, Vec<String>)>, StoreError> {
        let (abilities, dropped) = self.filter_abilities(requested);
        let updated = self.store.set_abilities(id, abilities).await;
        self.generation.fetch_add(1, Ordering::SeqCst);
        match &updated {
            // Replaced in place: the token never looks unknown in between.
            Ok(Some(record)) => self.cache_record(record),
            _ => self.evict(id),
        }
        Ok(updated?.map(|record| (record, dropped)))
    }

    /// Deletes a token; effective for the very next request. False: there was none.
    pub async fn revoke(&self, id: TokenId) -> Result<bool, StoreError> {
        let owner = self.store.token(id).await.ok().flatten().map(|r| r.user);
        let deleted = self.store.delete_token(id).await;
        self.restock(|stored| {
            stored.remove(id);
            true
        });
        self.changed(id);
        if let (Ok(true), Some(owner)) = (&deleted, owner) {
            self.release(&owner, 1);
        }
        deleted
    }
}

fn too_many(user: &str, owned: usize, most: usize) -> TokenError {
    TokenError::Invalid(format!(
        "user {user} already has {owned} tokens; at most {most} are allowed (tokens.max_per_user)"
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ability_names_reach_the_header() {
        let header = |list: &[&str]| {
            abilities_header(&list.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(header(&["read", "create", "read"]), "create,read");
        assert_eq!(header(&["*"]), "*");
        // Strings the app may have stored that are no ability: never split into others.
        assert_eq!(header(&["read,admin"]), "");
        assert_eq!(header(&["read, admin", "read"]), "read");
        assert_eq!(
            header(&[" *", "read\r\nX-Auth-User: 1", "", "tr\u{e4}de"]),
            ""
        );
    }

    #[test]
    fn the_filter_of_stored_tokens_is_exact() {
        let hash = |s: &str| TokenHash::of(s);
        let with_id = |id: u64| Presented::WithId {
            id: TokenId(id),
            secret: "",
        };
        let bare = Presented::Bare { secret: "" };
        let mut stored = Stored::build(&[
            (TokenId(1), hash("a").short()),
            (TokenId(3), hash("c").short()),
        ])
        .expect("dense ids");
        assert!(stored.may_hold(&with_id(1), &hash("a")));
        assert!(!stored.may_hold(&with_id(1), &hash("b")), "a wrong secret");
        assert!(!stored.may_hold(&with_id(2), &hash("a")), "no token 2");
        assert!(
            !stored.may_hold(&with_id(99), &hash("a")),
            "beyond the table"
        );
        assert!(stored.may_hold(&bare, &hash("c")));
        assert!(!stored.may_hold(&bare, &hash("zz")));
        assert!(stored.add(TokenId(7), hash("g").short()));
        assert!(
            stored.add(TokenId(7), hash("g").short()),
            "again: no change"
        );
        assert!(stored.add_all([(TokenId(8), hash("h").short())]));
        assert!(stored.may_hold(&with_id(7), &hash("g")) && stored.may_hold(&bare, &hash("h")));
        stored.remove(TokenId(1));
        assert!(!stored.may_hold(&with_id(1), &hash("a")));
        assert!(!stored.may_hold(&bare, &hash("a")));
        assert!(stored.may_hold(&bare, &hash("c")));
        stored.remove(TokenId(7));
        assert!(
            !stored.may_hold(&bare, &hash("g")),
            "added twice, removed once"
        );
        // Ids too sparse for a table: no filter, the store decides.
        assert!(Stored::build(&[(TokenId(u64::MAX / 2), 1)]).is_none());
        assert!(!stored.add(TokenId(u64::MAX / 2), 1));
        // Two tokens with one short hash: removing one leaves the other.
        let mut stored = Stored::build(&[(TokenId(1), 42), (TokenId(2), 42)]).unwrap();
        stored.remove(TokenId(1));
        assert!(stored.hashes.binary_search(&Stored::key(42)).is_ok());
        assert_eq!(stored.by_id[2], Stored::key(42));
    }

    fn policy(cache_capacity: usize) -> TokenPolicy {
        TokenPolicy {
            prefix: String::new(),
            lifetime: None,
            abilities: Vec::new(),
            default_abilities: Vec::new(),
            cache_capacity,
            max_per_user: 1000,
        }
    }

    /// A bare token whose first eight hash bytes another token shares: whichever holds
    /// the short hash's place in the cache, each is found by its own secret, and a secret
    /// of neither is refused.
    #[tokio::test]
    async fn a_bare_token_sharing_its_short_hash_is_still_found() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let real = TokenHash::of("bare-secret");
        let mut twin = real;
        twin.0[31] ^= 1;
        assert_eq!(real.short(), twin.short());
        let new = |hash| NewToken {
            user: "u".into(),
            name: "n".into(),
            hash,
            abilities: vec!["*".into()],
            created_at: 0,
            expires_at: None,
        };
        let records = store
            .create_tokens(vec![new(real), new(twin)])
            .await
            .unwrap();
        for capacity in [10, 1] {
            let clock = Arc::new(crate::clock::ManualClock::new(0));
            let tokens = Tokens::new(Arc::clone(&store), clock, policy(capacity));
            tokens.warm().await.unwrap();
            // The twin takes the short hash's place in the cache.
            tokens.cache_record(&records[1]);
            assert_eq!(
                tokens.by_hash.get(&real.short()).map(|id| *id),
                Some(records[1].id)
            );
            let found = tokens.authenticate("bare-secret").await.unwrap();
            assert_eq!(
                found.map(|t| t.id),
                Some(records[0].id),
                "capacity {capacity}"
            );
            assert!(tokens.authenticate("another").await.unwrap().is_none());
        }
    }

    /// A full cache makes room by dropping the least recently used token it compared, never
    /// the one in use: a token presented before every new one stays cached throughout, while
    /// each new token costs one store read.
    #[tokio::test]
    async fn a_full_cache_keeps_the_token_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let clock = Arc::new(crate::clock::ManualClock::new(1_000));
        let tokens = Tokens::new(Arc::clone(&store), clock.clone(), policy(4));
        let mut made = Vec::new();
        for n in 0..30 {
            let request = CreateToken {
                user: "7".into(),
                name: format!("t{n}"),
                abilities: None,
                expires_at: None,
            };
            made.push(tokens.create(request).await.unwrap().plaintext);
        }
        let busy = tokens.authenticate(&made[0]).await.unwrap().unwrap().id;
        for plaintext in &made[1..] {
            clock.advance(1);
            assert!(tokens.authenticate(&made[0]).await.unwrap().is_some());
            let reads = tokens.store_reads();
            assert!(tokens.authenticate(plaintext).await.unwrap().is_some());
            assert_eq!(tokens.store_reads(), reads + 1, "a token not cached");
            assert_eq!(tokens.cached(), 4);
            assert!(
                tokens.by_id.contains_key(&busy),
                "the token in use was dropped"
            );
        }
    }

    /// A shared store's re-check lets a token unused for `SHARED_IDLE_SECONDS` leave the
    /// cache (its next use reads the store again), and keeps one in use.
    #[tokio::test]
    async fn sync_lets_idle_tokens_go() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let clock = Arc::new(crate::clock::ManualClock::new(1_000));
        let tokens = Tokens::new(Arc::clone(&store), clock.clone(), policy(100));
        let mut made = Vec::new();
        for name in ["idle", "busy"] {
            let request = CreateToken {
                user: "7".into(),
                name: name.into(),
                abilities: None,
                expires_at: None,
            };
            made.push(tokens.create(request).await.unwrap().plaintext);
        }
        for plaintext in &made {
            assert!(tokens.authenticate(plaintext).await.unwrap().is_some());
        }
        clock.advance(SHARED_IDLE_SECONDS);
        assert!(tokens.authenticate(&made[1]).await.unwrap().is_some());
        assert_eq!(tokens.sync().await.unwrap(), 0);
        assert_eq!(tokens.cached(), 2, "used within the idle time: both stay");
        clock.advance(1);
        assert_eq!(tokens.sync().await.unwrap(), 0);
        assert_eq!(tokens.cached(), 2, "last uses not yet written: still held");
        tokens.flush_last_used().await.unwrap();
        assert_eq!(tokens.sync().await.unwrap(), 0);
        assert_eq!(tokens.cached(), 1, "the idle one left");
        let reads = tokens.store_reads();
        let held = tokens.authenticate(&made[0]).await.unwrap().unwrap();
        assert_eq!(
            tokens.store_reads(),
            reads + 1,
            "read again at its next use"
        );
        clock.advance(SHARED_IDLE_SECONDS * 2);
        tokens.flush_last_used().await.unwrap();
        assert_eq!(tokens.sync().await.unwrap(), 0);
        assert_eq!(
            tokens.cached(),
            1,
            "held elsewhere (an open stream): in use"
        );
        drop(held);
        assert_eq!(tokens.sync().await.unwrap(), 0);
        assert_eq!(tokens.cached(), 0, "both idle now");
    }

    /// The re-check against a store that others change: a token deleted there leaves the
    /// cache, a changed one is replaced, an unchanged one stays; a store unchecked for too
    /// long makes every token "store unavailable" until a re-check succeeds.
    #[tokio::test]
    async fn sync_follows_changes_made_behind_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let clock = Arc::new(crate::clock::ManualClock::new(0));
        let tokens = Tokens::new(Arc::clone(&store), clock, policy(100));
        let mut made = Vec::new();
        for name in ["deleted", "changed", "kept", "expired"] {
            let created = tokens
                .create(CreateToken {
                    user: "7".into(),
                    name: name.into(),
                    abilities: Some(vec!["*".into()]),
                    expires_at: None,
                })
                .await
                .unwrap();
            made.push(created);
        }
        let [deleted, changed, kept, expired] = &made[..] else {
            unreachable!()
        };
        // Behind the cache's back, as another replica or the app would.
        assert!(store.delete_token(deleted.record.id).await.unwrap());
        store
            .set_abilities(changed.record.id, vec!["read".into()])
            .await
            .unwrap();
        let mut shortened = expired.record.clone();
        store.delete_token(expired.record.id).await.unwrap();
        shortened.expires_at = Some(-1);
        let reinserted = store
            .create_token(NewToken {
                user: shortened.user.clone(),
                name: shortened.name.clone(),
                hash: shortened.hash,
                abilities: shortened.abilities.clone(),
                created_at: shortened.created_at,
                expires_at: shortened.expires_at,
            })
            .await
            .unwrap();
        // Until the re-check, the cache still answers from what it holds.
        for c in &made {
            assert!(tokens.authenticate(&c.plaintext).await.unwrap().is_some());
        }
        assert_eq!(
            tokens.sync().await.unwrap(),
            3,
            "deleted, changed, expired's id gone"
        );
        assert!(tokens
            .authenticate(&deleted.plaintext)
            .await
            .unwrap()
            .is_none());
        let now_read = tokens
            .authenticate(&changed.plaintext)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now_read.abilities(), "read");
        assert!(tokens
            .authenticate(&kept.plaintext)
            .await
            .unwrap()
            .is_some());
        assert!(tokens
            .authenticate(&expired.plaintext)
            .await
            .unwrap()
            .is_none());
        // The same secret under its new id is expired (valid_until is compared too).
        let under_new_id = format!(
            "{}|{}",
            reinserted.id,
            expired.plaintext.split_once('|').unwrap().1
        );
        assert!(tokens.authenticate(&under_new_id).await.unwrap().is_none());
        assert_eq!(tokens.sync().await.unwrap(), 0, "nothing left to change");

        assert!(tokens.set_fresh(false));
        assert!(matches!(
            tokens.authenticate(&kept.plaintext).await,
            Err(StoreError::Stale)
        ));
        tokens.set_fresh(true);
        assert!(tokens
            .authenticate(&kept.plaintext)
            .await
            .unwrap()
            .is_some());
    }
}
