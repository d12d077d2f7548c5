//! The connection watchdog: closes a client connection that has had no request in progress
//! for `timeouts.client_header` (or `idle`, the smaller): one whose client sends its request
//! head too slowly (slowloris), or that sits idle between keep-alive requests, HTTP/1.1 or
//! HTTP/2. A request is in progress from the moment its head is read until its response
//! body is done or dropped, so a long download or a slow upstream never counts as idle.
//!
//! One coarse timer per connection, checked four times per period, instead of a timer armed
//! and cancelled around every request head (hyper's `header_read_timeout`: ~1,300
//! instructions per request, docs/performance.md). A request costs two counter updates.

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
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

/// Watches a connection's task: aborts it, which drops and so closes the connection (without
/// a response, as hyper's own header timeout did), once it has gone a whole `period` with no
/// request in progress; ends when the task ends (`ended`: its sender is dropped with the
/// task).
pub async fn guard(
    activity: Arc<Activity>,
    period: Duration,
    ended: oneshot::Receiver<()>,
    connection: AbortHandle,
    peer: SocketAddr,
) {
    tokio::select! {
        _ = ended => {}
        () = idle(&activity, period) => {
            tracing::debug!(%peer, "closing a connection with no request in progress");
            connection.abort();
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

impl<B: Body + Unpin> Body for Watched<B>
where
    B::Data: Buf,
{
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

    #[tokio::test(start_paused = true)]
    async fn the_guard_aborts_an_idle_connection_and_ends_with_a_closed_one() {
        let period = Duration::from_secs(4);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let activity = Arc::new(Activity::default());

        let connection = tokio::spawn(std::future::pending::<()>());
        let (_alive, ended) = oneshot::channel();
        let started = tokio::time::Instant::now();
        guard(
            Arc::clone(&activity),
            period,
            ended,
            connection.abort_handle(),
            peer,
        )
        .await;
        assert_eq!(started.elapsed(), period);
        assert!(connection.await.unwrap_err().is_cancelled());

        // A connection that ends by itself takes its guard with it at once.
        let connection = tokio::spawn(std::future::pending::<()>());
        let (alive, ended) = oneshot::channel::<()>();
        drop(alive);
        let started = tokio::time::Instant::now();
        guard(activity, period, ended, connection.abort_handle(), peer).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(!connection.is_finished());
        connection.abort();
    }
}
