//! The proxy listener. Each worker is one thread with a single-threaded tokio runtime, its
//! own `SO_REUSEPORT` listener and its own upstream connection pool, so a request is
//! accepted, checked and forwarded on one core without cross-thread hand-offs. Each
//! connection is a task served by hyper-util's auto builder (HTTP/1.1, and HTTP/2 with prior
//! knowledge on the same port; over TLS when `tls:` is set, with ALPN `h2` and `http/1.1`).
//! Shutdown stops accepting and lets in-flight requests finish.

use crate::app::App;
use crate::config::Config;
use crate::headers::ConnInfo;
use crate::proxy;
use crate::upstream::{Dedicated, Upstream};
use crate::watchdog::{self, Activity, Guard};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_util::either::Either;

/// Threads per worker for blocking store reads (cache misses).
const MAX_BLOCKING_THREADS: usize = 4;
/// Pending connections the kernel queues per listener.
const BACKLOG: u32 = 4096;

fn builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The connection's watchdog bounds the wait for a request head, not a timer per
        // request (`watchdog`).
        .header_read_timeout(None)
        // One `write` of head and body copied together, rather than `writev` of the pieces:
        // cheaper for the small messages most APIs exchange (docs/performance.md).
        .writev(false)
        .max_buf_size(config.limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.limits.max_header_bytes as u32);
    builder
}

/// Serves the proxy on `listener` (on the current runtime) until `shutdown` resolves, then
/// stops accepting and waits, up to a grace period, for open connections to finish.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(app.config().limits.max_connections));
    run_limited(listener, app, shutdown, permits).await;
}

/// `run`, sharing the connection limit with other workers: a connection is accepted only
/// with a permit, so past the limit new connections wait in the kernel's accept queue.
async fn run_limited(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    permits: Arc<Semaphore>,
) {
    let current = Arc::new(Current::new(&app));
    let metrics = Arc::new(app.metrics.worker());
    app.spawn_stream_checker();
    // Graceful shutdown as hyper-util's `GracefulShutdown` does it (drain each connection,
    // wait for all under a grace period), but told to each connection by its watchdog:
    // hyper-util's watcher polls a `watch` receiver at every wake-up of every connection.
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        backoff = Duration::from_millis(5);
        tracing::trace!(%peer, "accepted");
        let _ = stream.set_nodelay(true);
        // The config in force when the connection came: its TLS files, trusted proxies and
        // timeouts hold for the whole connection.
        let config = app.config();
        let tls = config.tls.as_ref().map(|t| Arc::clone(&t.server));
        // The connection holds its permit: it lets go when the connection's task and
        // anything that outlives it (a tunnel) are done.
        let conn =
            Arc::new(ConnInfo::new(peer, &config.trusted_proxies, tls.is_some()).holding(permit));
        let handshake_timeout = config.timeouts.client_header;
        // One bound for a slow request head and an idle keep-alive connection alike: both
        // are a connection with no request in progress.
        let idle_limit = config.timeouts.client_header.min(config.timeouts.idle);
        let builder = current.builder(&app);
        let app = Arc::clone(&app);
        let current = Arc::clone(&current);
        let metrics = Arc::clone(&metrics);
        let watch_metrics = Arc::clone(&metrics);
        let activity = Arc::new(Activity::default());
        let requests = Arc::clone(&activity);
        // The upstream connections this client connection's requests use, closed with it.
        let dedicated = Dedicated::new();
        // The watchdog runs beside the connection's task, not in it: polled with the
        // connection, its timer would be polled at every wake-up of every request. It also
        // passes on the drain signal, so the connection polls only a `oneshot` for it.
        let (alive, ended) = oneshot::channel::<()>();
        let (drain, mut drained) = oneshot::channel::<()>();
        let connection = tokio::spawn(async move {
            let _alive = alive;
            let service = service_fn(move |request| {
                let (config, upstream) = current.for_request(&app);
                let context = proxy::Context {
                    app: Arc::clone(&app),
                    config,
                    upstream,
                    metrics: Arc::clone(&metrics),
                    conn: Arc::clone(&conn),
                    dedicated: Arc::clone(&dedicated),
                    in_flight: requests.begin(),
                };
                proxy::handle(context, request)
            });
            let stream = match tls {
                None => Either::Left(stream),
                Some(tls) => {
                    // The handshake runs here, in the connection's own task, under a
                    // timeout: a slow or broken client holds up no one else.
                    let accepted = tokio::time::timeout(
                        handshake_timeout,
                        tokio_rustls::TlsAcceptor::from(tls).accept(stream),
                    )
                    .await;
                    match accepted {
                        Ok(Ok(stream)) => Either::Right(stream),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let mut connection = pin!(connection);
            let served = tokio::select! {
                biased;
                served = connection.as_mut() => served,
                Ok(()) = &mut drained => {
                    // Finish the requests in progress, close when idle (HTTP/2: GOAWAY).
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        let guard = Guard {
            activity,
            metrics: Arc::clone(&watch_metrics),
            limits: watchdog::Limits {
                idle: idle_limit,
                client_send: config.timeouts.client_send,
                upstream_body: config.timeouts.upstream_body_idle,
            },
            peer,
            ended,
            connection: connection.abort_handle(),
            stopping: stopping.clone(),
            drain,
        };
        tokio::spawn(guard.run());
    }
    drop(listener);
    // Every open connection's watchdog holds a receiver of `stopping` until its connection
    // ends: once the last is gone, every connection has finished.
    drop(stopping);
    let _ = stop.send(true);
    tokio::select! {
        () = stop.closed() => {}
        () = tokio::time::sleep(app.config().shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

/// What a worker derives from the config: its own copy of the config (so that taking a
/// request's snapshot touches no cache line another core uses), the HTTP settings and the
/// upstream client. Rebuilt after a reload: the next connection gets the new settings, the
/// next request the new config and upstream.
struct Current {
    state: Mutex<Derived>,
}

struct Derived {
    generation: u64,
    config: Arc<Config>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    upstream: Arc<Upstream>,
}

impl Derived {
    fn new(app: &App) -> Self {
        let generation = app.generation();
        let config = Arc::new(Config::clone(&app.config()));
        Self {
            generation,
            builder: Arc::new(builder(&config)),
            upstream: Arc::new(Upstream::new(&config)),
            config,
        }
    }
}

impl Current {
    fn new(app: &App) -> Self {
        Self {
            state: Mutex::new(Derived::new(app)),
        }
    }

    fn fresh(&self, app: &App) -> std::sync::MutexGuard<'_, Derived> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation != app.generation() {
            *state = Derived::new(app);
        }
        state
    }

    fn builder(&self, app: &App) -> Arc<auto::Builder<TokioExecutor>> {
        Arc::clone(&self.fresh(app).builder)
    }

    /// The config and upstream a request runs under.
    fn for_request(&self, app: &App) -> (Arc<Config>, Arc<Upstream>) {
        let state = self.fresh(app);
        (Arc::clone(&state.config), Arc::clone(&state.upstream))
    }
}

/// Keeps a timer pending on this worker's runtime at all times. Requests arm timers (the
/// upstream response timeout); when no earlier timer is pending, tokio wakes its own driver
/// through an eventfd write to re-plan its sleep, a syscall on the hot path. A tick every
/// second means a 30-second timeout is never the earliest, so no request pays for that
/// wake-up.
async fn keep_timer_armed() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
    }
}

/// A listener that shares its address with the other workers' (`SO_REUSEPORT`).
fn bind_shared(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The worker threads serving the proxy port, each with its own listener on one shared
/// address (`SO_REUSEPORT`).
pub struct Workers {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers on `app.config().listen`, returning once every one listens.
    /// Port 0 means a port of the system's choosing: the first worker binds it, the others
    /// join it. Fails before serving if any worker cannot bind.
    pub async fn start(app: Arc<App>, count: usize) -> io::Result<Workers> {
        let mut addr = app.config().listen;
        let (stop, stopped) = watch::channel(false);
        let mut workers = Workers {
            addr,
            stop,
            threads: Vec::with_capacity(count),
        };
        let permits = Arc::new(Semaphore::new(app.config().limits.max_connections));
        for i in 0..count.max(1) {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
            let app = Arc::clone(&app);
            let permits = Arc::clone(&permits);
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("tokengate-worker-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        // Store reads on cache misses block; a burst of them must not
                        // become a burst of threads.
                        .max_blocking_threads(MAX_BLOCKING_THREADS)
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let listener = match bind_shared(addr) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        };
                        let _ = ready_tx.send(listener.local_addr());
                        tokio::spawn(keep_timer_armed());
                        let shutdown = async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        };
                        run_limited(listener, app, shutdown, permits).await;
                    });
                })?;
            workers.threads.push(thread);
            let ready = tokio::task::spawn_blocking(move || ready_rx.recv())
                .await
                .map_err(io::Error::other)?;
            match ready {
                Ok(Ok(bound)) => addr = bound,
                Ok(Err(e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr}: {e}"),
                    ))
                }
                Err(_) => return Err(io::Error::other("a worker thread died while starting")),
            }
        }
        workers.addr = addr;
        Ok(workers)
    }

    /// The address the workers listen on (the system's port where the config says 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and returns once every worker has drained its connections.
    pub async fn stop(mut self) -> io::Result<()> {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut self.threads);
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await
        .map_err(io::Error::other)
    }
}

impl Drop for Workers {
    /// Workers dropped without `stop` (a failed start) stop too, without waiting.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
