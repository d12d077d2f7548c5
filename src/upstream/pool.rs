//! Idle upstream connections, each dedicated to the client connection whose request opened
//! it (HAProxy's `http-reuse never`): an upstream connection is never handed from one client
//! connection to another, and is closed when its client connection ends.
//!
//! Why: an upstream may send bytes after the framed end of a response, in a later TCP
//! segment (a body on a `HEAD`, 204 or 304 answer, bytes beyond `Content-Length`, or, if it
//! is malicious, a whole forged response). No check at reuse can tell such bytes from an
//! answer when they arrive after the next request was written. Whatever the upstream does,
//! its bytes can therefore reach only requests of the one client connection it served, never
//! another client's. Within one client connection, reuse is further guarded by a read probe
//! at checkout (`lean`) and by never reusing a connection after an answer whose framing
//! invites stray bytes (`framing`).
//!
//! Each worker still bounds how many idle connections all its client connections hold
//! together (`MAX_IDLE`); past that, a connection is closed when its response ends.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Idle connections kept by all client connections of one worker together.
const MAX_IDLE: usize = 1024;
/// Idle connections one client connection keeps: HTTP/1.1 uses one at a time, an HTTP/2
/// client's concurrent streams each need their own.
const MAX_IDLE_PER_CLIENT: usize = 16;

/// The worker-wide count of idle connections one `Upstream` has in client slots. A pooled
/// connection carries its owner, so a connection to an upstream a reload replaced is never
/// used again.
#[derive(Debug, Default)]
pub(super) struct Owner {
    idle: AtomicUsize,
}

/// A connection with the `Owner` it belongs to.
pub(super) struct Owned<C> {
    pub(super) conn: C,
    pub(super) owner: Arc<Owner>,
}

/// Where a connection goes back when its response has ended: the slot of the client
/// connection it served, counted against its owner.
pub(super) struct Home {
    pub(super) dedicated: Arc<Dedicated>,
    pub(super) owner: Arc<Owner>,
}

impl Home {
    /// Keeps `conn` in the slot `slot` picks (lean or hyper) for the client's next request.
    pub(super) fn put<C>(self, conn: C, slot: impl FnOnce(&Dedicated) -> &Slot<C>) {
        slot(&self.dedicated).put(Owned {
            conn,
            owner: self.owner,
        });
    }
}

/// The idle upstream connections of one client connection. Created with the client
/// connection, dropped (closing them) when it ends and no response body still holds it.
#[derive(Default)]
pub struct Dedicated {
    pub(super) lean: Slot<super::lean::Conn>,
    pub(super) hyper: Slot<super::Client1>,
}

impl Dedicated {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }
}

/// Idle connections of one kind.
pub(super) struct Slot<C> {
    idle: Mutex<Vec<Owned<C>>>,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
        }
    }
}

impl<C> Slot<C> {
    /// The most recently returned connection of `owner` that `usable` accepts, if any;
    /// connections `usable` refuses, or of another owner, are closed.
    pub(super) fn take(
        &self,
        owner: &Arc<Owner>,
        mut usable: impl FnMut(&mut C) -> bool,
    ) -> Option<C> {
        let mut idle = super::lock(&self.idle);
        while let Some(mut pooled) = idle.pop() {
            pooled.owner.idle.fetch_sub(1, Relaxed);
            if Arc::ptr_eq(&pooled.owner, owner) && usable(&mut pooled.conn) {
                return Some(pooled.conn);
            }
        }
        None
    }

    /// Keeps `conn` for this client connection's next request, unless this client or the
    /// worker already keeps as many as they may.
    pub(super) fn put(&self, conn: Owned<C>) {
        if conn.owner.idle.load(Relaxed) >= MAX_IDLE {
            return;
        }
        let mut idle = super::lock(&self.idle);
        if idle.len() < MAX_IDLE_PER_CLIENT {
            conn.owner.idle.fetch_add(1, Relaxed);
            idle.push(conn);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        super::lock(&self.idle).len()
    }
}

impl<C> Drop for Slot<C> {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(|e| e.into_inner());
        for pooled in idle.drain(..) {
            pooled.owner.idle.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(owner: &Arc<Owner>, n: u32) -> Owned<u32> {
        Owned {
            conn: n,
            owner: Arc::clone(owner),
        }
    }

    #[test]
    fn connections_come_back_newest_first_and_only_to_their_owner() {
        let (a, b) = (Arc::new(Owner::default()), Arc::new(Owner::default()));
        let slot = Slot::default();
        slot.put(owned(&a, 1));
        slot.put(owned(&a, 2));
        assert_eq!(a.idle.load(Relaxed), 2);
        assert_eq!(slot.take(&a, |_| true), Some(2));
        // A connection of another owner (an upstream replaced by a reload) is closed.
        slot.put(owned(&b, 3));
        assert_eq!(slot.take(&a, |_| true), Some(1));
        assert_eq!(slot.take(&a, |_| true), None);
        assert_eq!((a.idle.load(Relaxed), b.idle.load(Relaxed)), (0, 0));
        assert_eq!(slot.len(), 0);
    }

    #[test]
    fn refused_connections_are_closed_and_limits_hold() {
        let owner = Arc::new(Owner::default());
        let slot = Slot::default();
        let most = MAX_IDLE_PER_CLIENT as u32;
        for n in 0..most + 3 {
            slot.put(owned(&owner, n));
        }
        assert_eq!(slot.len(), MAX_IDLE_PER_CLIENT);
        assert_eq!(owner.idle.load(Relaxed), MAX_IDLE_PER_CLIENT);
        // The newest fails the probe: it is closed and the next one is taken.
        assert_eq!(slot.take(&owner, |n| *n != most - 1), Some(most - 2));
        assert_eq!(owner.idle.load(Relaxed), MAX_IDLE_PER_CLIENT - 2);
        // The worker-wide bound: an owner at it keeps nothing more, in any slot.
        owner.idle.store(MAX_IDLE, Relaxed);
        let other = Slot::default();
        other.put(owned(&owner, 99));
        assert_eq!(other.len(), 0);
        owner.idle.store(MAX_IDLE_PER_CLIENT - 2, Relaxed);
        drop(slot);
        assert_eq!(
            owner.idle.load(Relaxed),
            0,
            "a closed client connection lets go"
        );
    }
}
