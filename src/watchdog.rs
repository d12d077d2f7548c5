//! The connection watchdog: closes a client connection that has had no request in progress
//! for `timeouts.client_header` (or `idle`, the smaller): one whose client sends its request
//! head too slowly (slowloris), or that sits idle between keep-alive requests, HTTP/1.1 or
//! HTTP/2. A request is in progress from the moment its head is read until its response
//! body is done or dropped, so a long download or a slow upstream never counts as idle.
//!
//! One coarse timer per connection, checked four times per period, instead of a timer armed
//! and cancelled around every request head (hyper's `header_read_timeout`: ~1,300
//! instructions per request, docs/performance.md). A request costs two counter updates.

use crate::metrics::{Closed, WorkerMetrics};
use hyper::body::{Body, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

/// Checks per period: a connection is closed between one and 1¼ periods after its last
/// request ended (exactly one period after it opened, if none came).
const CHECKS: u32 = 4;

/// What a connection's requests have done, as counters the watchdog compares between checks.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU32,
    finished: AtomicU32,
    /// Response bodies streaming to the client (`Watched`).
    responding: AtomicU32,
    /// Of those, the ones whose last poll waited for the upstream.
    waiting: AtomicU32,
    /// Polls of response bodies: it moves while a response is being sent.
    polled: AtomicU32,
}

impl Activity {
    /// Marks a request in progress until the returned guard is dropped (with its response
    /// body, see `Watched`).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Relaxed);
        InFlight(Arc::clone(self))
    }

    fn seen(&self) -> Seen {
        Seen {
            started: self.started.load(Relaxed),
            finished: self.finished.load(Relaxed),
            responding: self.responding.load(Relaxed),
            waiting: self.waiting.load(Relaxed),
            polled: self.polled.load(Relaxed),
        }
    }
}

/// One check's reading of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    started: u32,
    finished: u32,
    responding: u32,
    waiting: u32,
    polled: u32,
}

/// A request in progress on its connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Relaxed);
    }
}

/// How long a connection may go without progress, in each state.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// No request in progress (a slow request head, an idle keep-alive connection).
    pub idle: Duration,
    /// A response is ready but the client takes none of it.
    pub client_send: Duration,
    /// A response body waits for the upstream, which sends nothing.
    pub upstream_body: Duration,
}

impl Limits {
    /// How often the counters are read: a quarter of the shortest limit.
    fn step(&self) -> Duration {
        self.idle.min(self.client_send).min(self.upstream_body) / CHECKS
    }
}

/// What a connection's watchdog needs: the connection's requests and task, and the
/// server's shutdown signal to pass on.
pub struct Guard {
    pub activity: Arc<Activity>,
    pub limits: Limits,
    /// Where a close is counted.
    pub metrics: Arc<WorkerMetrics>,
    pub peer: SocketAddr,
    /// Its sender is dropped with the connection's task.
    pub ended: oneshot::Receiver<()>,
    pub connection: AbortHandle,
    /// Becomes `true` when the server shuts down. Held until the connection ends: the
    /// server waits until no receiver is left.
    pub stopping: watch::Receiver<bool>,
    /// Tells the connection to finish its requests and close.
    pub drain: oneshot::Sender<()>,
}

impl Guard {
    /// Watches the connection until its task ends: aborts the task, which drops and so
    /// closes the connection (without a response, as hyper's own header timeout did), once
    /// it has gone a whole limit without progress (`stalled`); passes the shutdown on.
    pub async fn run(self) {
        let Guard {
            activity,
            limits,
            metrics,
            peer,
            mut ended,
            connection,
            mut stopping,
            drain,
        } = self;
        tokio::select! {
            _ = &mut ended => {}
            why = stalled(&activity, limits) => {
                tracing::debug!(%peer, why = why.label(), "closing a connection that made no progress");
                metrics.closed(why);
                connection.abort();
            }
            () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                let _ = drain.send(());
                let _ = ended.await;
            }
        }
    }
}

/// Resolves, saying why, once the connection has made no progress for a whole limit:
/// - no request in progress and none started, for `idle`;
/// - a response ready that the client takes nothing of (its body not asked for), for
///   `client_send`: a client that stops reading holds no upstream connection for ever;
/// - a response body waiting for an upstream that sends nothing, for `upstream_body`.
///
/// A request whose response has not begun is bounded elsewhere (the upstream's response
/// timeout, `timeouts.client_body_seconds` for its body). On an HTTP/2 connection the
/// counters are the connection's: any stream that moves counts as progress.
async fn stalled(activity: &Activity, limits: Limits) -> Closed {
    let step = limits.step();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = activity.seen();
    let mut quiet = Duration::ZERO;
    loop {
        tick.tick().await;
        let now = activity.seen();
        if now != last {
            last = now;
            quiet = Duration::ZERO;
            continue;
        }
        quiet += step;
        let (limit, why) = if now.started == now.finished {
            (limits.idle, Closed::Idle)
        } else if now.responding == 0 {
            // Before its response: bounded by the other timeouts.
            continue;
        } else if now.waiting == now.responding {
            (limits.upstream_body, Closed::UpstreamBody)
        } else if now.waiting == 0 {
            (limits.client_send, Closed::ClientSend)
        } else {
            continue;
        };
        if quiet >= limit {
            return why;
        }
    }
}

/// A response body that keeps its request in progress until it is done or dropped, and
/// tells the watchdog how its sending goes.
#[derive(Debug)]
pub struct Watched<B> {
    body: B,
    in_flight: InFlight,
    /// Its last poll waited for the upstream (counted in `Activity::waiting`).
    waiting: bool,
}

impl<B> Watched<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        in_flight.0.responding.fetch_add(1, Relaxed);
        Self {
            body,
            in_flight,
            waiting: false,
        }
    }
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        let activity = &self.in_flight.0;
        activity.responding.fetch_sub(1, Relaxed);
        if self.waiting {
            activity.waiting.fetch_sub(1, Relaxed);
        }
    }
}

impl<B: Body + Unpin> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let activity = &this.in_flight.0;
        activity.polled.fetch_add(1, Relaxed);
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let waiting = polled.is_pending();
        if waiting != this.waiting {
            this.waiting = waiting;
            if waiting {
                activity.waiting.fetch_add(1, Relaxed);
            } else {
                activity.waiting.fetch_sub(1, Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::task::JoinHandle;

    const PERIOD: Duration = Duration::from_secs(4);

    /// `idle` as given, the other limits far away.
    fn limits(idle: Duration) -> Limits {
        Limits {
            idle,
            client_send: idle * 100,
            upstream_body: idle * 100,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closes_after_a_quiet_period_and_never_while_a_request_is_in_progress() {
        let period = Duration::from_secs(4);
        let activity = Arc::new(Activity::default());
        // Nothing ever comes: closed one period after opening.
        let opened = tokio::time::Instant::now();
        stalled(&activity, limits(period)).await;
        assert_eq!(opened.elapsed(), period);

        // A request in progress for ten periods keeps the connection; once it ends, the
        // connection closes one to 1¼ periods later.
        let watching = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { stalled(&activity, limits(period)).await }
        });
        let request = activity.begin();
        tokio::time::sleep(period * 10).await;
        assert!(
            !watching.is_finished(),
            "closed under a request in progress"
        );
        let ended = tokio::time::Instant::now();
        drop(request);
        watching.await.unwrap();
        let quiet = ended.elapsed();
        assert!(quiet >= period && quiet <= period * 5 / 4, "{quiet:?}");
    }

    /// A body that waits for ever (an upstream that sends nothing), or has one frame ready
    /// after another (the client must take them).
    struct Test(bool);

    impl Body for Test {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
            if self.0 {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(Frame::data(bytes::Bytes::from_static(b"x")))))
            }
        }
    }

    fn poll_once<B: Body + Unpin>(body: &mut Watched<B>) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = Pin::new(body).poll_frame(&mut cx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_response_closes_after_its_own_limit() {
        let limits = Limits {
            idle: Duration::from_secs(60),
            client_send: Duration::from_secs(8),
            upstream_body: Duration::from_secs(20),
        };
        // The upstream sends nothing of the body.
        let activity = Arc::new(Activity::default());
        let mut body = Watched::new(Test(true), activity.begin());
        poll_once(&mut body);
        let started = tokio::time::Instant::now();
        let why = stalled(&activity, limits).await;
        assert_eq!(why, Closed::UpstreamBody);
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        drop(body);

        // The client takes nothing: the body is not asked for again after a frame.
        let activity = Arc::new(Activity::default());
        let mut body = Watched::new(Test(false), activity.begin());
        poll_once(&mut body);
        let started = tokio::time::Instant::now();
        let why = stalled(&activity, limits).await;
        assert_eq!(why, Closed::ClientSend);
        assert_eq!(started.elapsed(), Duration::from_secs(8));

        // Progress (a client taking frames) keeps the connection.
        let watching = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { stalled(&activity, limits).await }
        });
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            poll_once(&mut body);
        }
        assert!(!watching.is_finished(), "closed while the response moved");
        drop(body);
        assert_eq!(watching.await.unwrap(), Closed::Idle);
    }

    /// A guard for a task that never ends by itself; `alive` ends it when dropped.
    fn guard(
        activity: &Arc<Activity>,
        stopping: watch::Receiver<bool>,
    ) -> (
        Guard,
        JoinHandle<()>,
        oneshot::Sender<()>,
        oneshot::Receiver<()>,
    ) {
        let connection = tokio::spawn(std::future::pending::<()>());
        let (alive, ended) = oneshot::channel();
        let (drain, drained) = oneshot::channel();
        let metrics =
            crate::metrics::Metrics::new(&crate::routes::RouteTable::new(Vec::new()).unwrap());
        let guard = Guard {
            activity: Arc::clone(activity),
            limits: limits(PERIOD),
            metrics: Arc::new(metrics.worker()),
            peer: "127.0.0.1:1".parse().unwrap(),
            ended,
            connection: connection.abort_handle(),
            stopping,
            drain,
        };
        (guard, connection, alive, drained)
    }

    #[tokio::test(start_paused = true)]
    async fn the_guard_aborts_an_idle_connection_drains_on_shutdown_and_ends_with_it() {
        let activity = Arc::new(Activity::default());
        let (stop, stopping) = watch::channel(false);

        let (idle_one, connection, _alive, _) = guard(&activity, stopping.clone());
        let started = tokio::time::Instant::now();
        idle_one.run().await;
        assert_eq!(started.elapsed(), PERIOD);
        assert!(connection.await.unwrap_err().is_cancelled());

        // A connection that ends by itself takes its guard with it at once.
        let (closed, connection, alive, _) = guard(&activity, stopping.clone());
        drop(alive);
        let started = tokio::time::Instant::now();
        closed.run().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(!connection.is_finished());
        connection.abort();

        // On shutdown the connection is told to drain, and the guard keeps its receiver of
        // the signal until the connection ends, so the server waits for it.
        let (draining, connection, alive, drained) = guard(&activity, stopping);
        let _request = activity.begin();
        let guarding = tokio::spawn(draining.run());
        stop.send(true).unwrap();
        drained.await.expect("told to drain");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !guarding.is_finished(),
            "the guard ended before its connection"
        );
        drop(alive);
        guarding.await.unwrap();
        stop.closed().await;
        connection.abort();
    }
}
