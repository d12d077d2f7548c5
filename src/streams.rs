//! Long-lived answers tied to the credential that opened them: a WebSocket tunnel or a
//! server-sent events stream ends within a second of its token being revoked, expiring or
//! losing an ability its routes need, or of its session ending (logout, expiry, removal).
//!
//! Each such answer is registered here (`Streams::watch`) with its principal, the config
//! it was authorized under and the routes it had to satisfy. One task per app
//! (`App::spawn_stream_checker`) calls `Streams::sweep` every `SWEEP` with a lookup of each
//! principal as it stands now, re-authorizes it against those routes, and signals every
//! answer that no longer passes. The answer ends itself: a tunnel closes with WebSocket
//! close 1008 (`tunnel`), an event stream ends its body (`upstream::UpstreamBody::ending`).
//! A request that is answered at once never comes here.

use crate::auth::{self, Principal};
use crate::config::Config;
use crate::store::StoreError;
use foldhash::fast::RandomState;
use smallvec::SmallVec;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;

/// How often every open stream's credential is checked again: with the tunnel's grace
/// for a frame in flight (`tunnel::GRACE`), a stream ends within a second.
pub const SWEEP: Duration = Duration::from_millis(200);

/// What a stream was authorized with.
pub struct Grant {
    pub principal: Principal,
    /// The config of the request that opened it, and the indices of the routes it had
    /// to satisfy there (a reload applies to new requests, as for any request).
    pub config: Arc<Config>,
    pub routes: SmallVec<[usize; 2]>,
}

struct Entry {
    grant: Arc<Grant>,
    end: oneshot::Sender<()>,
}

/// The open streams, by a number of their own.
#[derive(Default)]
pub struct Streams {
    open: Mutex<HashMap<u64, Entry, RandomState>>,
    next: AtomicU64,
}

/// A registered stream's side: resolves once its credential no longer passes. Dropping it
/// unregisters the stream.
pub struct Watch {
    streams: Arc<Streams>,
    id: u64,
    ended: oneshot::Receiver<()>,
}

impl Future for Watch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Ended, or unregistered (the app is going away): either way, over.
        Pin::new(&mut self.ended).poll(cx).map(|_| ())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.streams.entries().remove(&self.id);
    }
}

impl Streams {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry, RandomState>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream opened with `grant`.
    pub fn watch(self: &Arc<Self>, grant: Grant) -> Watch {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (end, ended) = oneshot::channel();
        self.entries().insert(
            id,
            Entry {
                grant: Arc::new(grant),
                end,
            },
        );
        Watch {
            streams: Arc::clone(self),
            id,
            ended,
        }
    }

    /// How many streams are watched.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every open stream: `current` gives its principal as it stands now (`None`:
    /// revoked, expired, ended), which must still satisfy the stream's routes. Signals
    /// those that fail and returns how many. A store failure leaves the stream open (it
    /// is checked again at the next sweep).
    pub async fn sweep<F, Fut>(&self, current: F) -> usize
    where
        F: Fn(Principal) -> Fut,
        Fut: Future<Output = Result<Option<Principal>, StoreError>>,
    {
        let open: Vec<(u64, Arc<Grant>)> = self
            .entries()
            .iter()
            .map(|(id, entry)| (*id, Arc::clone(&entry.grant)))
            .collect();
        let mut ended = 0;
        for (id, grant) in open {
            let passes = match current(grant.principal.clone()).await {
                Ok(Some(now)) => satisfies(&grant, &now),
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check an open stream's credential");
                    true
                }
            };
            if !passes {
                if let Some(entry) = self.entries().remove(&id) {
                    let _ = entry.end.send(());
                    ended += 1;
                }
            }
        }
        ended
    }
}

/// Whether `principal` satisfies every route the stream was authorized under.
fn satisfies(grant: &Grant, principal: &Principal) -> bool {
    let routes = grant.config.routes.routes();
    grant.routes.iter().all(|&index| {
        routes
            .get(index)
            .is_some_and(|route| auth::authorize(route, Some(principal)).is_ok())
    })
}
