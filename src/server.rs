//! The server's life: start-up (the token and session caches loaded, the admin listener,
//! the flusher of batched writes, SIGHUP reloads, the proxy's workers), serving until a
//! shutdown signal, and the orderly stop (drain, final flush). The CLI's `serve` and the
//! demo both run it.

use crate::accept::Workers;
use crate::admin;
use crate::app::{App, FLUSH_INTERVAL};
use crate::store::StoreError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Why the server could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot load tokens and sessions: {0}")]
    Warm(StoreError),
    #[error("cannot listen on admin.listen {addr}: {error}")]
    AdminListen { addr: SocketAddr, error: io::Error },
    #[error("{0}")]
    Listen(io::Error),
    #[error("serving failed: {0}")]
    Workers(io::Error),
    #[error("final flush of the store: {0}")]
    Flush(StoreError),
}

/// Serves `app` until `shutdown` resolves, then drains connections and flushes batched
/// writes and the store.
pub async fn run(app: Arc<App>, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    start(app).await?.run_until(shutdown).await
}

/// A server that has started: caches loaded, both listeners bound, the background tasks
/// (admin API, flusher, SIGHUP reloads, the re-check of a shared store) running.
pub struct Server {
    app: Arc<App>,
    workers: Workers,
    admin_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

/// Loads the caches, binds the admin listener and the proxy's workers, and starts the
/// background tasks.
pub async fn start(app: Arc<App>) -> Result<Server, ServeError> {
    let started = std::time::Instant::now();
    let (cached, sessions) = app.warm().await.map_err(ServeError::Warm)?;
    tracing::info!(
        tokens = cached,
        sessions,
        authoritative = app.tokens.is_complete(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "token cache loaded"
    );
    let config = app.config();
    let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .map_err(|error| ServeError::AdminListen {
            addr: config.admin.listen,
            error,
        })?;
    let key = config.admin.key();
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|error| ServeError::AdminListen {
            addr: config.admin.listen,
            error,
        })?;
    match &key {
        Some(_) => tracing::info!(addr = %admin_addr, "admin listener (API enabled)"),
        None => tracing::warn!(
            addr = %admin_addr,
            "admin listener: health checks only; the admin API is disabled until {} holds its key",
            config.admin.key_source()
        ),
    }
    let mut tasks = vec![
        tokio::spawn(admin::run(
            admin_listener,
            Arc::clone(&app),
            key,
            std::future::pending(),
        )),
        app.spawn_flusher(FLUSH_INTERVAL),
        tokio::spawn(reload_on_sighup(Arc::clone(&app))),
    ];
    tasks.extend(app.spawn_store_sync());
    let workers = match Workers::start(Arc::clone(&app), config.workers).await {
        Ok(workers) => workers,
        Err(e) => {
            stop_tasks(&app, &tasks).await?;
            return Err(ServeError::Listen(e));
        }
    };
    tracing::info!(
        listen = %workers.local_addr(),
        upstream = %config.upstream,
        routes = config.routes.routes().len(),
        workers = config.workers,
        "tokengate serving"
    );
    Ok(Server {
        app,
        workers,
        admin_addr,
        tasks,
    })
}

impl Server {
    /// The proxy's address (the system's port where the config says 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.workers.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown` resolves, then drains the workers' connections, stops the
    /// background tasks and flushes.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        shutdown.await;
        let drained = self.workers.stop().await.map_err(ServeError::Workers);
        stop_tasks(&self.app, &self.tasks).await?;
        drained?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Stops the background tasks, then flushes batched writes and the store.
async fn stop_tasks(app: &App, tasks: &[JoinHandle<()>]) -> Result<(), ServeError> {
    for task in tasks {
        task.abort();
    }
    app.flush().await.map_err(ServeError::Flush)
}

/// Re-reads the config file on every SIGHUP.
async fn reload_on_sighup(app: Arc<App>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload through the admin API instead");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            app.reload_from_file();
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
