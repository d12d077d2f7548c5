//! A store whose every call runs on one runtime, its home: the one that opened it.
//!
//! A database pool's connections belong to the runtime whose task opened them (their
//! sockets are registered with its I/O driver). The proxy's workers each run their own
//! single-threaded runtime, and a cache miss, a login or the token page calls the store
//! from there: a connection opened on a worker is then driven by that worker's runtime,
//! and is dead once the workers stop, which is when the final flush needs the pool. So
//! each call is spawned on the home runtime, and the pool never leaves it. (A call
//! dropped by its caller still runs to its end there, bounded by the store's own timeouts.)

use super::{
    ImportBatch, ImportCounts, LaravelSessionRow, NewToken, RemovedUser, SessionRecord, Store,
    StoreError, TokenQuery, TokenRecord, UserRecord,
};
use crate::clock::Timestamp;
use crate::config::TableName;
use crate::credential::session::SessionHash;
use crate::credential::token::{TokenHash, TokenId};
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use tokio::runtime::Handle;

pub(super) struct Homed {
    inner: Arc<dyn Store>,
    home: Handle,
}

impl Homed {
    /// `inner`, called on the current runtime from now on.
    pub(super) fn here(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            home: Handle::current(),
        }
    }

    async fn run<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.home
            .spawn(call(Arc::clone(&self.inner)))
            .await
            .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
    }
}

#[async_trait]
impl Store for Homed {
    async fn create_tokens(&self, tokens: Vec<NewToken>) -> Result<Vec<TokenRecord>, StoreError> {
        self.run(|s| async move { s.create_tokens(tokens).await })
            .await
    }

    async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.run(|s| async move { s.token(id).await }).await
    }

    async fn tokens_by_ids(&self, ids: &[TokenId]) -> Result<Vec<TokenRecord>, StoreError> {
        let ids = ids.to_vec();
        self.run(|s| async move { s.tokens_by_ids(&ids).await })
            .await
    }

    async fn token_by_hash(&self, hash: TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        self.run(|s| async move { s.token_by_hash(hash).await })
            .await
    }

    async fn list_tokens(&self, query: TokenQuery) -> Result<Vec<TokenRecord>, StoreError> {
        self.run(|s| async move { s.list_tokens(query).await })
            .await
    }

    async fn set_abilities(
        &self,
        id: TokenId,
        abilities: Vec<String>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.run(|s| async move { s.set_abilities(id, abilities).await })
            .await
    }

    async fn delete_token(&self, id: TokenId) -> Result<bool, StoreError> {
        self.run(|s| async move { s.delete_token(id).await }).await
    }

    async fn touch_tokens(&self, used: Vec<(TokenId, Timestamp)>) -> Result<(), StoreError> {
        self.run(|s| async move { s.touch_tokens(used).await })
            .await
    }

    async fn count_tokens(&self) -> Result<u64, StoreError> {
        self.run(|s| async move { s.count_tokens().await }).await
    }

    fn is_exclusive(&self) -> bool {
        self.inner.is_exclusive()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.run(|s| async move { s.flush().await }).await
    }

    async fn create_user(&self, user: UserRecord) -> Result<(), StoreError> {
        self.run(|s| async move { s.create_user(user).await }).await
    }

    async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let name = name.to_owned();
        self.run(|s| async move { s.user(&name).await }).await
    }

    async fn list_users(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        self.run(|s| async move { s.list_users(after, limit).await })
            .await
    }

    async fn set_password(&self, name: &str, hash: Option<String>) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.run(|s| async move { s.set_password(&name, hash).await })
            .await
    }

    async fn delete_user(&self, name: &str) -> Result<Option<RemovedUser>, StoreError> {
        let name = name.to_owned();
        self.run(|s| async move { s.delete_user(&name).await })
            .await
    }

    async fn create_session(&self, session: SessionRecord) -> Result<(), StoreError> {
        self.run(|s| async move { s.create_session(session).await })
            .await
    }

    async fn session(&self, hash: SessionHash) -> Result<Option<SessionRecord>, StoreError> {
        self.run(|s| async move { s.session(hash).await }).await
    }

    async fn sessions_by_hashes(
        &self,
        hashes: &[SessionHash],
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let hashes = hashes.to_vec();
        self.run(|s| async move { s.sessions_by_hashes(&hashes).await })
            .await
    }

    async fn list_sessions(&self, user: Option<&str>) -> Result<Vec<SessionRecord>, StoreError> {
        let user = user.map(str::to_owned);
        self.run(|s| async move { s.list_sessions(user.as_deref()).await })
            .await
    }

    async fn delete_sessions(
        &self,
        hashes: Vec<SessionHash>,
    ) -> Result<Vec<SessionHash>, StoreError> {
        self.run(|s| async move { s.delete_sessions(hashes).await })
            .await
    }

    async fn touch_sessions(&self, seen: Vec<(SessionHash, Timestamp)>) -> Result<(), StoreError> {
        self.run(|s| async move { s.touch_sessions(seen).await })
            .await
    }

    async fn import(&self, batch: ImportBatch) -> Result<ImportCounts, StoreError> {
        self.run(|s| async move { s.import(batch).await }).await
    }

    async fn release_memory(&self) -> Result<(), StoreError> {
        self.run(|s| async move { s.release_memory().await }).await
    }

    async fn laravel_session(
        &self,
        table: &TableName,
        id: &str,
    ) -> Result<Option<LaravelSessionRow>, StoreError> {
        let (table, id) = (table.clone(), id.to_owned());
        self.run(|s| async move { s.laravel_session(&table, &id).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call made from another runtime runs on the home runtime.
    #[test]
    fn calls_run_on_the_home_runtime() {
        let home = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("home")
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sled: Arc<dyn Store> = Arc::new(super::super::SledStore::open(dir.path()).unwrap());
        let homed = home.block_on(async { Homed::here(sled) });
        let elsewhere = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let where_it_ran = elsewhere.block_on(async {
            homed
                .run(|_| async { Ok(std::thread::current().name().map(str::to_owned)) })
                .await
                .unwrap()
        });
        assert_eq!(where_it_ran.as_deref(), Some("home"));
        assert_eq!(elsewhere.block_on(homed.count_tokens()).unwrap(), 0);
    }
}
