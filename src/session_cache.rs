//! Cookie sessions at run time: verify a presented cookie against a cache in front of the
//! store, create and revoke sessions keeping that cache coherent, slide the idle expiry and
//! batch `last_seen` writes (like tokens' `last_used_at`).
//!
//! A session is valid while `now < expires_at` (absolute: `sessions.lifetime_minutes` from
//! creation) and `now < last_seen + sessions.idle_minutes` (sliding).

use crate::clock::{Clock, Timestamp};
use crate::credential::session::{generate_cookie_value, CookieValue, SessionHash};
use crate::store::{SessionRecord, Store, StoreError, SHARED_IDLE_SECONDS};
use dashmap::DashMap;
use foldhash::fast::RandomState;
use http::HeaderValue;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// What the `sessions:` config says, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub idle: i64,
    pub lifetime: i64,
}

/// `last_seen` is written to the store at most once per this many seconds per session; in
/// memory it is exact.
pub const LAST_SEEN_RESOLUTION: i64 = 60;

/// A verified, cached session.
#[derive(Debug)]
pub struct Session {
    pub hash: SessionHash,
    user: HeaderValue,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    last_seen: AtomicI64,
    stored_last_seen: AtomicI64,
    dirty: AtomicBool,
}

impl Session {
    fn from_record(record: &SessionRecord) -> Option<Self> {
        Some(Self {
            hash: record.hash,
            user: HeaderValue::from_str(&record.user).ok()?,
            created_at: record.created_at,
            expires_at: record.expires_at,
            last_seen: AtomicI64::new(record.last_seen),
            stored_last_seen: AtomicI64::new(record.last_seen),
            dirty: AtomicBool::new(false),
        })
    }

    pub fn user(&self) -> &str {
        // Built from a `&str` in `from_record`, so always visible ASCII.
        self.user.to_str().unwrap_or_default()
    }

    /// The `X-Auth-User` value.
    pub fn user_value(&self) -> HeaderValue {
        self.user.clone()
    }

    pub fn last_seen(&self) -> Timestamp {
        self.last_seen.load(Ordering::Relaxed)
    }

    fn is_live(&self, now: Timestamp, idle: i64) -> bool {
        now < self.expires_at && now < self.last_seen().saturating_add(idle)
    }
}

/// A new session and the cookie value that is its only key (shown once, never stored).
pub struct NewSession {
    pub cookie_value: String,
    pub session: Arc<Session>,
}

pub struct Sessions {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: RwLock<SessionPolicy>,
    cache: DashMap<SessionHash, Arc<Session>, RandomState>,
    /// Bumped by every revocation, so that a store read racing one does not resurrect it.
    generation: AtomicU64,
    /// The cache holds every stored session: a miss means "no such session".
    complete: AtomicBool,
    dirty: Mutex<Vec<Arc<Session>>>,
    /// False once a shared store has gone unchecked for too long (`Tokens::set_fresh`).
    fresh: AtomicBool,
    /// False while a shared store's last re-check failed (`Tokens::set_reachable`).
    reachable: AtomicBool,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, policy: SessionPolicy) -> Self {
        Self {
            store,
            clock,
            policy: RwLock::new(policy),
            cache: DashMap::default(),
            generation: AtomicU64::new(0),
            complete: AtomicBool::new(false),
            dirty: Mutex::new(Vec::new()),
            fresh: AtomicBool::new(true),
            reachable: AtomicBool::new(true),
        }
    }

    fn policy(&self) -> SessionPolicy {
        *self.policy.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies reloaded idle and absolute lifetimes (to existing sessions too).
    pub fn set_policy(&self, policy: SessionPolicy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// The session behind a cookie value, if it is valid now (and then it was just seen).
    pub async fn authenticate(
        &self,
        value: CookieValue<'_>,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        let session = self.find(value.hash()).await?;
        if let Some(session) = &session {
            self.mark_seen(session, self.clock.now());
        }
        Ok(session)
    }

    /// A session as it stands now, if it is still valid: not ended, not expired (an open
    /// stream's check, `streams`; not a sighting, so it does not slide the idle expiry).
    pub async fn current(&self, session: &Session) -> Result<Option<Arc<Session>>, StoreError> {
        self.find(session.hash).await
    }

    /// The valid session whose cookie value hashes to `hash`.
    async fn find(&self, hash: SessionHash) -> Result<Option<Arc<Session>>, StoreError> {
        if !self.fresh.load(Ordering::Relaxed) {
            return Err(StoreError::Stale);
        }
        let cached = self.cache.get(&hash).map(|s| Arc::clone(&s));
        let session = match cached {
            Some(session) => session,
            None if self.complete.load(Ordering::Acquire) => return Ok(None),
            None if !self.reachable.load(Ordering::Relaxed) => return Err(StoreError::Unreachable),
            None => match self.load(hash).await? {
                Some(session) => session,
                None => return Ok(None),
            },
        };
        Ok(session
            .is_live(self.clock.now(), self.policy().idle)
            .then_some(session))
    }

    /// The first valid session among a request's cookie values (a client may send the
    /// session cookie's name more than once), with the value that named it.
    pub async fn from_cookies<'v>(
        &self,
        values: Vec<&'v str>,
    ) -> Result<Option<(Arc<Session>, CookieValue<'v>)>, StoreError> {
        for value in values {
            let Some(cookie) = CookieValue::parse(value) else {
                continue;
            };
            if let Some(session) = self.authenticate(cookie).await? {
                return Ok(Some((session, cookie)));
            }
        }
        Ok(None)
    }

    async fn load(&self, hash: SessionHash) -> Result<Option<Arc<Session>>, StoreError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let Some(record) = self.store.session(hash).await? else {
            return Ok(None);
        };
        let Some(session) = Session::from_record(&record) else {
            return Ok(None);
        };
        let session = Arc::new(session);
        self.cache.insert(hash, Arc::clone(&session));
        if self.generation.load(Ordering::SeqCst) != generation {
            // A revocation ran meanwhile; it may have been this session's.
            self.cache.remove(&hash);
            return Ok(None);
        }
        Ok(Some(session))
    }

    /// Re-checks every cached session against the store, in batches: a session deleted
    /// there (a logout on another replica) leaves the cache, another owner replaces it,
    /// and a later `last_seen` written by another replica is taken (so the idle expiry
    /// counts every replica's sightings). Returns how many sessions were dropped or
    /// replaced. A session not seen for `SHARED_IDLE_SECONDS` (here or, as far as the last
    /// re-check told, anywhere) and held by nothing but the cache (an open stream holds its
    /// session) leaves the cache instead, to be read again at its next use.
    pub async fn sync(&self) -> Result<usize, StoreError> {
        const BATCH: usize = 1_000;
        let idle_since = self.clock.now().saturating_sub(SHARED_IDLE_SECONDS);
        let (mut hashes, mut idle) = (Vec::new(), Vec::new());
        for session in self.cache.iter() {
            // Held elsewhere too (an open stream's grant, a request under way): in use.
            let unused = Arc::strong_count(session.value()) == 1;
            match unused && session.last_seen() < idle_since {
                true => idle.push(*session.key()),
                false => hashes.push(*session.key()),
            }
        }
        for hash in idle {
            self.cache.remove(&hash);
        }
        let mut changed = 0;
        for batch in hashes.chunks(BATCH) {
            let generation = self.generation.load(Ordering::SeqCst);
            let records = self.store.sessions_by_hashes(batch).await?;
            let raced = self.generation.load(Ordering::SeqCst) != generation;
            let found: std::collections::HashMap<SessionHash, &SessionRecord> =
                records.iter().map(|r| (r.hash, r)).collect();
            for hash in batch {
                let Some(cached) = self.cache.get(hash).map(|s| Arc::clone(&s)) else {
                    continue;
                };
                match found.get(hash) {
                    Some(record)
                        if record.user == cached.user()
                            && record.expires_at == cached.expires_at =>
                    {
                        cached
                            .last_seen
                            .fetch_max(record.last_seen, Ordering::Relaxed);
                        cached
                            .stored_last_seen
                            .fetch_max(record.last_seen, Ordering::Relaxed);
                        continue;
                    }
                    Some(record) if !raced => match Session::from_record(record) {
                        Some(session) => {
                            self.cache.insert(*hash, Arc::new(session));
                        }
                        None => self.forget(&[*hash]),
                    },
                    _ => self.forget(&[*hash]),
                }
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Whether the last re-check reached the store (see `Tokens::set_reachable`).
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    /// Marks cached sessions trusted, or not (see `Tokens::set_fresh`); returns the old mark.
    pub fn set_fresh(&self, fresh: bool) -> bool {
        self.fresh.swap(fresh, Ordering::Relaxed)
    }

    /// Loads every stored session before serving, dropping expired ones from the store.
    /// With an exclusive store the cache then becomes authoritative.
    pub async fn warm(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut expired = Vec::new();
        for record in self.store.list_sessions(None).await? {
            match Session::from_record(&record) {
                Some(session) if session.is_live(now, self.policy().idle) => {
                    self.cache.insert(record.hash, Arc::new(session));
                }
                _ => expired.push(record.hash),
            }
        }
        if !expired.is_empty() {
            self.store.delete_sessions(expired).await?;
        }
        self.complete
            .store(self.store.is_exclusive(), Ordering::Release);
        Ok(self.cache.len())
    }

    /// Starts a session for an existing user (`StoreError::NoSuchUser` otherwise).
    pub async fn create(&self, user: &str) -> Result<NewSession, StoreError> {
        let cookie_value = generate_cookie_value();
        let hash = CookieValue::parse(&cookie_value)
            .map(|v| v.hash())
            .ok_or_else(|| StoreError::Io("generated cookie value is malformed".into()))?;
        let now = self.clock.now();
        let record = SessionRecord {
            hash,
            user: user.to_owned(),
            created_at: now,
            expires_at: now.saturating_add(self.policy().lifetime),
            last_seen: now,
        };
        let session = Arc::new(
            Session::from_record(&record)
                .ok_or_else(|| StoreError::Io("user name cannot be sent as a header".into()))?,
        );
        self.store.create_session(record).await?;
        self.cache.insert(hash, Arc::clone(&session));
        Ok(NewSession {
            cookie_value,
            session,
        })
    }

    /// Ends a session; the next request with its cookie is refused. False if it did not exist.
    pub async fn revoke(&self, hash: SessionHash) -> Result<bool, StoreError> {
        self.forget(&[hash]);
        let removed = self.store.delete_sessions(vec![hash]).await?;
        Ok(!removed.is_empty())
    }

    /// Ends every session of a user; returns how many there were.
    pub async fn revoke_user(&self, user: &str) -> Result<usize, StoreError> {
        let hashes: Vec<SessionHash> = self
            .store
            .list_sessions(Some(user))
            .await?
            .into_iter()
            .map(|r| r.hash)
            .collect();
        self.forget(&hashes);
        Ok(self.store.delete_sessions(hashes).await?.len())
    }

    /// A user's sessions as stored (with `last_seen` as of the last flush).
    pub async fn list(&self, user: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.store.list_sessions(Some(user)).await
    }

    /// Drops sessions from the cache (they were removed from the store).
    pub fn forget(&self, hashes: &[SessionHash]) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for hash in hashes {
            self.cache.remove(hash);
        }
    }

    /// How many valid sessions the cache holds.
    pub fn active(&self) -> usize {
        let now = self.clock.now();
        self.cache
            .iter()
            .filter(|s| s.is_live(now, self.policy().idle))
            .count()
    }

    fn mark_seen(&self, session: &Arc<Session>, now: Timestamp) {
        session.last_seen.fetch_max(now, Ordering::Relaxed);
        let stale = now - session.stored_last_seen.load(Ordering::Relaxed) >= LAST_SEEN_RESOLUTION;
        if stale
            && !session.dirty.load(Ordering::Relaxed)
            && !session.dirty.swap(true, Ordering::SeqCst)
        {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::clone(session));
        }
    }

    /// Writes the `last_seen` of every session seen since the last call in one store write,
    /// and removes sessions that have expired. Returns how many were written.
    pub async fn flush_last_seen(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let expired: Vec<SessionHash> = self
            .cache
            .iter()
            .filter(|s| !s.is_live(now, self.policy().idle))
            .map(|s| s.hash)
            .collect();
        if !expired.is_empty() {
            for hash in &expired {
                self.cache.remove(hash);
            }
            self.store.delete_sessions(expired).await?;
        }
        let batch = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return Ok(0);
        }
        let seen: Vec<(SessionHash, Timestamp)> = batch
            .iter()
            .map(|s| {
                s.dirty.store(false, Ordering::SeqCst);
                let at = s.last_seen();
                s.stored_last_seen.store(at, Ordering::SeqCst);
                (s.hash, at)
            })
            .collect();
        let count = seen.len();
        self.store.touch_sessions(seen).await?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::{SledStore, UserRecord};

    const T0: Timestamp = 1_767_225_600;
    const POLICY: SessionPolicy = SessionPolicy {
        idle: 600,
        lifetime: 3600,
    };

    struct Fixture {
        sessions: Sessions,
        store: Arc<dyn Store>,
        clock: Arc<ManualClock>,
        _dir: tempfile::TempDir,
    }

    /// Sessions over a fresh sled store holding users `alice` and `bob`, at `T0`.
    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
        for name in ["alice", "bob"] {
            store
                .create_user(UserRecord {
                    name: name.into(),
                    password_hash: None,
                    created_at: T0,
                })
                .await
                .unwrap();
        }
        let clock = Arc::new(ManualClock::new(T0));
        let sessions = Sessions::new(Arc::clone(&store), clock.clone(), POLICY);
        Fixture {
            sessions,
            store,
            clock,
            _dir: dir,
        }
    }

    async fn valid(sessions: &Sessions, cookie: &str) -> bool {
        let value = CookieValue::parse(cookie).expect("a well-formed cookie value");
        sessions.authenticate(value).await.unwrap().is_some()
    }

    #[tokio::test]
    async fn a_session_lives_until_its_idle_time_or_its_lifetime_ends() {
        // Each case: the cookie presented at these seconds after creation, and whether it
        // is valid then (idle 600 s, sliding; lifetime 3600 s, absolute).
        let cases: &[(&str, &[(i64, bool)])] = &[
            ("just inside the idle time", &[(599, true)]),
            ("at the idle time", &[(600, false)]),
            (
                "each sighting slides the idle expiry",
                &[(500, true), (1000, true), (1599, true)],
            ),
            (
                "a refused cookie is no sighting",
                &[(600, false), (601, false)],
            ),
            (
                "the lifetime ends a session in steady use",
                &[
                    (500, true),
                    (1000, true),
                    (1500, true),
                    (2000, true),
                    (2500, true),
                    (3000, true),
                    (3500, true),
                    (3599, true),
                    (3600, false),
                ],
            ),
        ];
        for (what, presented) in cases {
            let f = fixture().await;
            let new = f.sessions.create("alice").await.unwrap();
            for &(at, want) in *presented {
                f.clock.set(T0 + at);
                assert_eq!(
                    valid(&f.sessions, &new.cookie_value).await,
                    want,
                    "{what}: at +{at} s"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_check_of_an_open_stream_does_not_slide_the_idle_expiry() {
        let f = fixture().await;
        let new = f.sessions.create("alice").await.unwrap();
        f.clock.set(T0 + 500);
        assert!(f.sessions.current(&new.session).await.unwrap().is_some());
        assert_eq!(new.session.last_seen(), T0, "current() is not a sighting");
        f.clock.set(T0 + 600);
        assert!(f.sessions.current(&new.session).await.unwrap().is_none());
        assert!(!valid(&f.sessions, &new.cookie_value).await);
    }

    #[tokio::test]
    async fn revocation_refuses_the_cookie_at_once_and_only_that_cookie() {
        let f = fixture().await;
        let a1 = f.sessions.create("alice").await.unwrap();
        let a2 = f.sessions.create("alice").await.unwrap();
        let b = f.sessions.create("bob").await.unwrap();
        assert_eq!(f.sessions.active(), 3);

        assert!(f.sessions.revoke(a1.session.hash).await.unwrap());
        assert!(!valid(&f.sessions, &a1.cookie_value).await);
        assert!(f.store.session(a1.session.hash).await.unwrap().is_none());
        assert!(
            !f.sessions.revoke(a1.session.hash).await.unwrap(),
            "a second revocation finds nothing"
        );
        assert!(valid(&f.sessions, &a2.cookie_value).await);

        assert_eq!(f.sessions.revoke_user("alice").await.unwrap(), 1);
        assert!(!valid(&f.sessions, &a2.cookie_value).await);
        assert!(valid(&f.sessions, &b.cookie_value).await, "bob's stays");
        assert_eq!(f.sessions.active(), 1);
    }

    #[tokio::test]
    async fn a_cache_miss_reads_the_store_until_the_cache_is_complete() {
        let f = fixture().await;
        let new = f.sessions.create("alice").await.unwrap();
        // Another `Sessions` over the same store: its empty cache is not yet complete, so
        // it looks the cookie up in the store.
        let other = Sessions::new(Arc::clone(&f.store), f.clock.clone(), POLICY);
        assert!(
            valid(&other, &new.cookie_value).await,
            "read from the store"
        );

        let warmed = Sessions::new(Arc::clone(&f.store), f.clock.clone(), POLICY);
        assert_eq!(warmed.warm().await.unwrap(), 1);
        assert!(valid(&warmed, &new.cookie_value).await);
        // Stored behind the warmed cache's back: its complete (authoritative) cache says
        // there is no such session, without asking the store.
        let later = f.sessions.create("bob").await.unwrap();
        assert!(valid(&f.sessions, &later.cookie_value).await);
        assert!(!valid(&warmed, &later.cookie_value).await);
        // Unknown or malformed cookie values are refused.
        assert!(!valid(&f.sessions, &generate_cookie_value()).await);
        assert!(CookieValue::parse("not a cookie value").is_none());
    }

    #[tokio::test]
    async fn warming_drops_expired_sessions_from_the_store() {
        let f = fixture().await;
        let old = f.sessions.create("alice").await.unwrap();
        f.clock.set(T0 + 500);
        let fresh = f.sessions.create("bob").await.unwrap();
        f.clock.set(T0 + 700); // alice's idle time is over, bob's is not
        let warmed = Sessions::new(Arc::clone(&f.store), f.clock.clone(), POLICY);
        assert_eq!(warmed.warm().await.unwrap(), 1);
        assert!(f.store.session(old.session.hash).await.unwrap().is_none());
        assert!(f.store.session(fresh.session.hash).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_first_valid_cookie_of_several_wins() {
        let f = fixture().await;
        let new = f.sessions.create("bob").await.unwrap();
        let unknown = generate_cookie_value();
        let values = vec!["garbage", unknown.as_str(), new.cookie_value.as_str()];
        let (session, cookie) = f
            .sessions
            .from_cookies(values)
            .await
            .unwrap()
            .expect("the third value names a session");
        assert_eq!(session.user(), "bob");
        assert_eq!(cookie.hash(), new.session.hash);
        assert!(f
            .sessions
            .from_cookies(vec!["garbage", unknown.as_str()])
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn last_seen_is_written_in_batches_at_most_once_a_resolution() {
        let f = fixture().await;
        let new = f.sessions.create("alice").await.unwrap();
        let stored = |f: &Fixture| {
            let store = Arc::clone(&f.store);
            let hash = new.session.hash;
            async move { store.session(hash).await.unwrap().unwrap().last_seen }
        };
        // Seen within the resolution: exact in memory, nothing to write.
        f.clock.set(T0 + LAST_SEEN_RESOLUTION - 1);
        assert!(valid(&f.sessions, &new.cookie_value).await);
        assert_eq!(new.session.last_seen(), T0 + LAST_SEEN_RESOLUTION - 1);
        assert_eq!(f.sessions.flush_last_seen().await.unwrap(), 0);
        assert_eq!(stored(&f).await, T0);
        // A resolution after the stored value: written once, however often seen.
        f.clock.set(T0 + LAST_SEEN_RESOLUTION);
        assert!(valid(&f.sessions, &new.cookie_value).await);
        f.clock.set(T0 + LAST_SEEN_RESOLUTION + 5);
        assert!(valid(&f.sessions, &new.cookie_value).await);
        assert_eq!(f.sessions.flush_last_seen().await.unwrap(), 1);
        assert_eq!(stored(&f).await, T0 + LAST_SEEN_RESOLUTION + 5);
        assert_eq!(f.sessions.flush_last_seen().await.unwrap(), 0);
        // Past its idle time, the flush removes it from the store.
        f.clock.set(T0 + LAST_SEEN_RESOLUTION + 5 + POLICY.idle);
        assert_eq!(f.sessions.flush_last_seen().await.unwrap(), 0);
        assert!(f.store.session(new.session.hash).await.unwrap().is_none());
        assert_eq!(f.sessions.active(), 0);
    }

    /// A session not seen for `SHARED_IDLE_SECONDS` leaves the cache at the re-check and
    /// is read again at its next use; one seen stays.
    #[tokio::test]
    async fn sync_lets_idle_sessions_go() {
        let f = fixture().await;
        // Only its hash and cookie kept: the session itself is the cache's alone.
        let idle = f.sessions.create("alice").await.unwrap();
        let (idle_hash, idle_cookie) = (idle.session.hash, idle.cookie_value.clone());
        drop(idle);
        let busy = f.sessions.create("bob").await.unwrap();
        f.clock.advance(SHARED_IDLE_SECONDS + 1);
        assert!(valid(&f.sessions, &busy.cookie_value).await);
        f.sessions.flush_last_seen().await.unwrap();
        assert_eq!(f.sessions.sync().await.unwrap(), 0);
        assert!(f.sessions.cache.contains_key(&busy.session.hash));
        assert!(!f.sessions.cache.contains_key(&idle_hash));
        assert!(
            valid(&f.sessions, &idle_cookie).await,
            "read again from the store (idle 600 s not yet reached)"
        );
        assert!(f.sessions.cache.contains_key(&idle_hash));
    }

    /// The re-check against a store others change: a session deleted there (a logout on
    /// another replica) is refused after it, a later sighting written by another replica
    /// is taken, and an untrusted cache refuses everything as "store unavailable".
    #[tokio::test]
    async fn sync_follows_logouts_and_sightings_made_elsewhere() {
        let f = fixture().await;
        let gone = f.sessions.create("alice").await.unwrap();
        let seen = f.sessions.create("alice").await.unwrap();
        let kept = f.sessions.create("bob").await.unwrap();
        let deleted = f
            .store
            .delete_sessions(vec![gone.session.hash])
            .await
            .unwrap();
        assert_eq!(deleted, [gone.session.hash]);
        let later = seen.session.last_seen() + 600;
        f.store
            .touch_sessions(vec![(seen.session.hash, later)])
            .await
            .unwrap();
        assert!(
            valid(&f.sessions, &gone.cookie_value).await,
            "until the re-check"
        );

        assert_eq!(f.sessions.sync().await.unwrap(), 1);
        assert!(!valid(&f.sessions, &gone.cookie_value).await);
        assert!(valid(&f.sessions, &kept.cookie_value).await);
        let cached = f
            .sessions
            .cache
            .get(&seen.session.hash)
            .map(|s| s.last_seen());
        assert_eq!(cached, Some(later), "another replica's sighting counts");
        assert_eq!(f.sessions.sync().await.unwrap(), 0);

        assert!(f.sessions.set_fresh(false));
        let cookie = CookieValue::parse(&kept.cookie_value).unwrap();
        assert!(matches!(
            f.sessions.authenticate(cookie).await,
            Err(StoreError::Stale)
        ));
        f.sessions.set_fresh(true);
        assert!(valid(&f.sessions, &kept.cookie_value).await);
    }
}
