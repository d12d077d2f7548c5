//! The connection watchdog: closes a client connection that has had no request in progress
//! for `timeouts.client_header` (or `idle`, the smaller): one whose client sends its request
//! head too slowly (slowloris), or that sits idle between keep-alive requests, HTTP/1.1 or
//! HTTP/2. A request is in progress from the moment its head is read until its response
//! body is done or dropped, so a long download or a slow upstream never counts as idle.
//!
//! One coarse timer per connection, checked four times per period, instead of a timer armed
//! and cancelled around every request head (hyper's `header_read_timeout`: ~1,300
//! instructions per request, docs/performance.md). A request costs two counter updates.

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
}

impl Activity {
    /// Marks a request in progress until the returned guard is dropped (with its response
    /// body, see `Watched`).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Relaxed);
        InFlight(Arc::clone(self))
    }

    fn seen(&self) -> (u32, u32) {
        (self.started.load(Relaxed), self.finished.load(Relaxed))
    }
}

/// A request in progress on its connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Relaxed);
    }
}

/// What a connection's watchdog needs: the connection's requests and task, and the
/// server's shutdown signal to pass on.
pub struct Guard {
    pub activity: Arc<Activity>,
    /// How long the connection may go without a request in progress.
    pub period: Duration,
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
    /// it has gone a whole `period` with no request in progress; passes the shutdown on.
    pub async fn run(self) {
        let Guard {
            activity,
            period,
            peer,
            mut ended,
            connection,
            mut stopping,
            drain,
        } = self;
        tokio::select! {
            _ = &mut ended => {}
            () = idle(&activity, period) => {
                tracing::debug!(%peer, "closing a connection with no request in progress");
                connection.abort();
            }
            () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                let _ = drain.send(());
                let _ = ended.await;
            }
        }
    }
}

/// Resolves once the connection has gone a whole `period` with no request in progress and
/// none started.
async fn idle(activity: &Activity, period: Duration) {
    let step = period / CHECKS;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = activity.seen();
    let mut quiet = 0;
    loop {
        tick.tick().await;
        let now = activity.seen();
        let (started, finished) = now;
        if now != last || started != finished {
            last = now;
            quiet = 0;
            continue;
        }
        quiet += 1;
        if quiet == CHECKS {
            return;
        }
    }
}

/// A response body that keeps its request in progress until it is done or dropped.
#[derive(Debug)]
pub struct Watched<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Watched<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
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
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
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

    #[tokio::test(start_paused = true)]
    async fn closes_after_a_quiet_period_and_never_while_a_request_is_in_progress() {
        let period = Duration::from_secs(4);
        let activity = Arc::new(Activity::default());
        // Nothing ever comes: closed one period after opening.
        let opened = tokio::time::Instant::now();
        idle(&activity, period).await;
        assert_eq!(opened.elapsed(), period);

        // A request in progress for ten periods keeps the connection; once it ends, the
        // connection closes one to 1¼ periods later.
        let watching = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { idle(&activity, period).await }
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
        let guard = Guard {
            activity: Arc::clone(activity),
            period: PERIOD,
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
