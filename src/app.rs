//! The shared state of a running tokengate, passed explicitly as `Arc<App>`: the validated
//! config, the token service over the store and the clock; and the background job that
//! flushes batched `last_used_at` writes. (Upstream connection pools belong to each
//! server worker, see `server`.)

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::store::{SledStore, Store, StoreError};
use crate::tokens::Tokens;
use std::sync::Arc;
use std::time::Duration;

/// How often batched `last_used_at` values are written to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

pub struct App {
    pub config: Config,
    pub tokens: Tokens,
    pub clock: Arc<dyn Clock>,
}

impl App {
    pub fn new(config: Config, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Arc<Self> {
        let tokens = Tokens::new(store, Arc::clone(&clock), config.tokens.clone());
        Arc::new(Self {
            config,
            tokens,
            clock,
        })
    }

    /// Opens the sled store the config names, with the system clock.
    pub fn open(config: Config) -> Result<Arc<Self>, StoreError> {
        let store = SledStore::open(&config.store_path)?;
        Ok(Self::new(config, Arc::new(store), Arc::new(SystemClock)))
    }

    /// Writes what is batched in memory and makes the store durable (at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.tokens.flush_last_used().await?;
        self.tokens.store().flush().await
    }

    /// Flushes batched `last_used_at` every `every` until the app is dropped elsewhere.
    pub fn spawn_flusher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(app) = app.upgrade() else { return };
                if let Err(e) = app.tokens.flush_last_used().await {
                    tracing::warn!(error = %e, "could not write last_used_at; will retry");
                }
            }
        })
    }
}
