//! The shared state of a running tokengate, passed explicitly as `Arc<App>`: the validated
//! config, the token, session and user services over the store, the login throttle and the
//! clock, the open streams tied to a credential; and the background jobs that flush
//! batched `last_used_at`/`last_seen` writes and end streams whose credential ended. (Upstream connection pools belong to each
//! server worker, see `server`.)

use crate::auth::Principal;
use crate::clock::{Clock, SystemClock};
use crate::config::StoreConfig;
use crate::config::{Config, ConfigError, LaravelDriver};
use crate::laravel_sessions::LaravelSessions;
use crate::metrics::Metrics;
use crate::session_cache::{SessionPolicy, Sessions};
use crate::store::{RemovedUser, Store, StoreError};
use crate::streams::Streams;
use crate::throttle::LoginThrottle;
use crate::token_cache::Tokens;
use crate::users::Users;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often batched `last_used_at` values are written to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Failed logins allowed per user name and per client address within `LOGIN_WINDOW`.
pub const LOGIN_ATTEMPTS: u32 = 5;
/// Seconds.
pub const LOGIN_WINDOW: i64 = 60;

pub struct App {
    /// The config in force; a reload swaps it whole. A request takes one snapshot and
    /// finishes under it.
    config: RwLock<Arc<Config>>,
    /// Bumped by every successful reload (workers rebuild what they derived from it).
    generation: AtomicU64,
    /// The file the config came from, re-read by a reload.
    config_path: Mutex<Option<PathBuf>>,
    pub tokens: Tokens,
    pub sessions: Sessions,
    /// The Laravel app's own sessions (`sessions.laravel`).
    pub laravel: LaravelSessions,
    pub users: Users,
    pub login_throttle: LoginThrottle,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// WebSocket tunnels and event streams, ended when their credential ends.
    pub streams: Arc<Streams>,
    /// The task that checks `streams` runs (`spawn_stream_checker`).
    checking_streams: AtomicBool,
    /// A shared store's last re-check failed (`spawn_store_sync`); cached credentials are
    /// still trusted until `tokens.is_fresh()` says otherwise.
    store_unreachable: AtomicBool,
}

/// How a store stands, for `/readyz` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreHealth {
    Reachable,
    /// A shared store's re-check fails; cached credentials keep working for now.
    Unreachable,
    /// Unreachable for longer than `store.max_stale_seconds`: every credential is refused.
    Stale,
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
            session_policy(&config),
        );
        let laravel = LaravelSessions::new(Arc::clone(&store), Arc::clone(&clock));
        let users = Users::new(store, Arc::clone(&clock));
        let metrics = Metrics::new(&config.routes);
        metrics.reload(true, clock.now());
        Arc::new(Self {
            config: RwLock::new(Arc::new(config)),
            generation: AtomicU64::new(0),
            config_path: Mutex::new(None),
            tokens,
            sessions,
            laravel,
            users,
            login_throttle: LoginThrottle::new(LOGIN_ATTEMPTS, LOGIN_WINDOW),
            metrics,
            clock,
            streams: Arc::default(),
            checking_streams: AtomicBool::new(false),
            store_unreachable: AtomicBool::new(false),
        })
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many successful reloads have happened.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers the file the config came from, for reloads.
    pub fn set_config_path(&self, path: &Path) {
        *self.config_path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.to_path_buf());
    }

    /// Reloads from the remembered file (see `reload`); `None` without one.
    pub fn reload_from_file(&self) -> Option<Result<Vec<&'static str>, ConfigError>> {
        let path = self
            .config_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let outcome = self.reload(&path);
        match &outcome {
            Ok(restart) if restart.is_empty() => tracing::info!("config reloaded"),
            Ok(restart) => tracing::warn!(
                needs_restart = restart.join(", "),
                "config reloaded; these settings keep their old values until a restart"
            ),
            Err(e) => {
                tracing::error!(problems = %e, "config reload refused; the old config stays in force")
            }
        }
        Some(outcome)
    }

    /// Re-reads the config file and, if it is valid, swaps it in: routes, abilities,
    /// headers, sessions, upstream, timeouts, TLS files, access log. Settings that cannot
    /// change while running keep their old values and are returned by name (a restart
    /// applies them). An invalid file changes nothing.
    pub fn reload(&self, path: &Path) -> Result<Vec<&'static str>, ConfigError> {
        let loaded = Config::load(path);
        let mut new = match loaded {
            Ok(new) => new,
            Err(e) => {
                self.metrics.reload(false, self.clock.now());
                return Err(e);
            }
        };
        let old = self.config();
        let mut restart = Vec::new();
        macro_rules! keep {
            ($($field:ident).+, $name:literal) => {
                if new.$($field).+ != old.$($field).+ {
                    restart.push($name);
                    new.$($field).+ = old.$($field).+.clone();
                }
            };
        }
        keep!(listen, "listen");
        keep!(workers, "workers");
        keep!(store, "store");
        keep!(admin.listen, "admin.listen");
        keep!(admin.key_env, "admin.key_env");
        keep!(tokens.cache_capacity, "tokens.cache_capacity");
        keep!(tokens.lifetime, "tokens.expiration_minutes");
        keep!(limits.max_connections, "limits.max_connections");
        if let Some(connected) = self.laravel.redis_url() {
            if keep_redis_url(&mut new, connected) {
                restart.push("sessions.laravel.redis_url_env");
            }
        }
        self.tokens.set_policy(new.tokens.clone());
        self.sessions.set_policy(session_policy(&new));
        self.metrics.set_routes(&new.routes);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.metrics.reload(true, self.clock.now());
        Ok(restart)
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
            self.tokens.forget_user(name, &removed.tokens);
            self.sessions.forget(&removed.sessions);
        }
        Ok(removed)
    }

    /// Opens the store the config names, with the system clock.
    pub async fn open(config: Config) -> Result<Arc<Self>, StoreError> {
        let store = crate::store::open(&config.store).await?;
        Ok(Self::new(config, store, Arc::new(SystemClock)))
    }

    /// For a store shared with other replicas, the task that re-checks cached tokens and
    /// sessions against it every `store.sync_interval_ms` (`Tokens::sync`,
    /// `Sessions::sync`); an exclusive store
    /// needs none. While the re-check fails, cached tokens keep working for
    /// `store.max_stale_seconds` after the last success, then every request is refused as
    /// "store unavailable" until a re-check succeeds again.
    pub fn spawn_store_sync(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let StoreConfig::Sql(sql) = &self.config().store else {
            return None;
        };
        let (every, max_stale) = (sql.sync_interval, sql.max_stale);
        let app = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_success = tokio::time::Instant::now();
            let mut failing = false;
            loop {
                tick.tick().await;
                let Some(app) = app.upgrade() else { return };
                let sync = async {
                    let tokens = app.tokens.sync().await?;
                    app.sessions.sync().await.map(|sessions| tokens + sessions)
                };
                tokio::pin!(sync);
                // A re-check against an unreachable database can take a while to fail (a
                // connect timeout; a black-holed network, longer): max_stale_seconds is kept
                // meanwhile, without cancelling the re-check.
                let stale_at = last_success + max_stale;
                let mut marked = false;
                let synced = loop {
                    tokio::select! {
                        synced = &mut sync => break synced,
                        () = tokio::time::sleep_until(stale_at), if !marked => {
                            marked = true;
                            app.store_unreachable.store(true, Ordering::Relaxed);
                            app.distrust_cache();
                        }
                    }
                };
                match synced {
                    Ok(changed) => {
                        if failing {
                            tracing::info!(
                                changed,
                                "store reachable again: cached tokens and sessions re-checked"
                            );
                        }
                        failing = false;
                        app.store_unreachable.store(false, Ordering::Relaxed);
                        app.metrics.store_synced(true);
                        last_success = tokio::time::Instant::now();
                        app.tokens.set_fresh(true);
                        app.sessions.set_fresh(true);
                        app.tokens.set_reachable(true);
                        app.sessions.set_reachable(true);
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, max_stale_seconds = max_stale.as_secs(), "cannot re-check cached tokens and sessions against the store; they stay valid for max_stale_seconds");
                        }
                        failing = true;
                        app.store_unreachable.store(true, Ordering::Relaxed);
                        app.tokens.set_reachable(false);
                        app.sessions.set_reachable(false);
                        app.metrics.store_synced(false);
                        if last_success.elapsed() > max_stale {
                            app.distrust_cache();
                        }
                    }
                }
            }
        }))
    }

    /// Stops trusting cached tokens and sessions (a shared store unanswered past
    /// `max_stale_seconds`): every request is refused as "store unavailable" until a
    /// re-check succeeds.
    fn distrust_cache(&self) {
        if self.tokens.set_fresh(false) | self.sessions.set_fresh(false) {
            tracing::error!("store unreachable past max_stale_seconds: refusing every token and session until it answers");
        }
    }

    /// How the store stands (an exclusive store is reachable while it is open).
    pub fn store_health(&self) -> StoreHealth {
        if !self.tokens.is_fresh() {
            StoreHealth::Stale
        } else if self.store_unreachable.load(Ordering::Relaxed) {
            StoreHealth::Unreachable
        } else {
            StoreHealth::Reachable
        }
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

impl App {
    /// Starts, unless it runs, the task that ends open streams whose credential ended
    /// (`streams`), every `streams::SWEEP` until the app is dropped elsewhere.
    pub fn spawn_stream_checker(self: &Arc<Self>) {
        if self.checking_streams.swap(true, Ordering::AcqRel) {
            return;
        }
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            // Cleared however the task ends (its runtime may stop), so a server started
            // again starts it again.
            let _running = Running(app.clone());
            let mut tick = tokio::time::interval(crate::streams::SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(app) = app.upgrade() else { return };
                if app.streams.is_empty() {
                    continue;
                }
                let ended = app.streams.sweep(|principal| app.current(principal)).await;
                for _ in 0..ended {
                    app.metrics.closed(crate::metrics::Closed::Credential);
                }
            }
        });
    }

    /// A principal as it stands now, if its credential is still valid.
    async fn current(&self, principal: Principal) -> Result<Option<Principal>, StoreError> {
        Ok(match principal {
            Principal::Token(token) => self.tokens.current(&token).await?.map(Principal::Token),
            Principal::Session(session) => self
                .sessions
                .current(&session)
                .await?
                .map(Principal::Session),
            Principal::Laravel(session) => {
                let config = self.config();
                match &config.sessions.laravel {
                    Some(settings) => self
                        .laravel
                        .current(settings, config.store.sync_interval(), &session)
                        .await?
                        .map(Principal::Laravel),
                    None => None,
                }
            }
        })
    }
}

/// Marks the stream checker stopped when dropped.
struct Running(std::sync::Weak<App>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(app) = self.0.upgrade() {
            app.checking_streams.store(false, Ordering::Release);
        }
    }
}

/// The Laravel sessions' Redis connection is opened once, at its first use: a reload that
/// names another URL keeps the one `connected` to (true: it needs a restart). Everything
/// else of `sessions.laravel`, the key prefix included, applies at once.
fn keep_redis_url(new: &mut Config, connected: &str) -> bool {
    match new.sessions.laravel.as_mut().map(|l| &mut l.driver) {
        Some(LaravelDriver::Redis { url, .. }) if url != connected => {
            connected.clone_into(url);
            true
        }
        _ => false,
    }
}

fn session_policy(config: &Config) -> SessionPolicy {
    SessionPolicy {
        idle: config.sessions.idle_minutes * 60,
        lifetime: config.sessions.lifetime_minutes * 60,
    }
}
