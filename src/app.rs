//! The shared state of a running tokengate, passed explicitly as `Arc<App>`: the validated
//! config, the token, session and user services over the store, the login throttle and the
//! clock; and the background job that flushes batched `last_used_at`/`last_seen` writes. (Upstream connection pools belong to each
//! server worker, see `server`.)

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::sessions::{SessionPolicy, Sessions};
use crate::store::{RemovedUser, SledStore, Store, StoreError};
use crate::throttle::LoginThrottle;
use crate::tokens::Tokens;
use crate::users::Users;
use std::sync::Arc;
use std::time::Duration;

/// How often batched `last_used_at` values are written to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Failed logins allowed per user name and per client address within `LOGIN_WINDOW`.
pub const LOGIN_ATTEMPTS: u32 = 5;
/// Seconds.
pub const LOGIN_WINDOW: i64 = 60;

pub struct App {
    pub config: Config,
    pub tokens: Tokens,
    pub sessions: Sessions,
    pub users: Users,
    pub login_throttle: LoginThrottle,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
}

impl App {
    pub fn new(config: Config, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Arc<Self> {
        let tokens = Tokens::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            config.tokens.clone(),
        );
        let sessions = Sessions::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            SessionPolicy {
                idle: config.sessions.idle_minutes * 60,
                lifetime: config.sessions.lifetime_minutes * 60,
            },
        );
        let users = Users::new(store, Arc::clone(&clock));
        let metrics = Metrics::new(&config.routes);
        metrics.reload(true, clock.now());
        Arc::new(Self {
            config,
            tokens,
            sessions,
            users,
            login_throttle: LoginThrottle::new(LOGIN_ATTEMPTS, LOGIN_WINDOW),
            metrics,
            clock,
        })
    }

    /// Loads the token and session caches before serving.
    pub async fn warm(&self) -> Result<(usize, usize), StoreError> {
        let sessions = self.sessions.warm().await?;
        let tokens = self.tokens.warm().await?;
        Ok((tokens, sessions))
    }

    /// Removes a user with all their tokens and sessions; the next request with any of
    /// them is refused. `None` if there was no such user.
    pub async fn remove_user(&self, name: &str) -> Result<Option<RemovedUser>, StoreError> {
        let removed = self.tokens.store().delete_user(name).await?;
        if let Some(removed) = &removed {
            for id in &removed.tokens {
                self.tokens.evict(*id);
            }
            self.sessions.forget(&removed.sessions);
        }
        Ok(removed)
    }

    /// Opens the sled store the config names, with the system clock.
    pub fn open(config: Config) -> Result<Arc<Self>, StoreError> {
        let store = SledStore::open(&config.store_path)?;
        Ok(Self::new(config, Arc::new(store), Arc::new(SystemClock)))
    }

    /// Writes what is batched in memory and makes the store durable (at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.tokens.flush_last_used().await?;
        self.sessions.flush_last_seen().await?;
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
                if let Err(e) = app.sessions.flush_last_seen().await {
                    tracing::warn!(error = %e, "could not write session last_seen; will retry");
                }
            }
        })
    }
}
