//! The login throttle: after `limit` failed attempts for one user name, or from one client
//! address, within `window` seconds, further attempts are refused until that window ends.
//! Counted per key in memory (a restart forgets); failures on one name never throttle
//! another name, only the address they came from.
//!
//! An attempt takes its place before the password is checked (`attempt`), and gives it back
//! only if it succeeds: whatever the concurrency, at most `limit` attempts per key and
//! window are ever checked (a burst of 300 at once gets 5 checks and 295 refusals), so the
//! password hash's work is bounded too.

use crate::clock::Timestamp;
use std::collections::HashMap;
use std::sync::Mutex;

/// Past this many tracked keys, windows that have ended are swept out.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Timestamp,
    failures: u32,
    /// Attempts being checked now.
    checking: u32,
}

pub struct LoginThrottle {
    limit: u32,
    window: i64,
    keys: Mutex<HashMap<String, Window>>,
}

/// An attempt being checked, holding its place under the limit until it ends: `failed`
/// counts it as a failure; dropped otherwise (a success, or the request went away), it
/// gives its place back.
pub struct Attempt<'t> {
    throttle: &'t LoginThrottle,
    keys: [String; 2],
}

impl LoginThrottle {
    pub fn new(limit: u32, window: i64) -> Self {
        Self {
            limit,
            window,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The keys of an attempt: its user name and its client address.
    pub fn keys(user: &str, address: std::net::IpAddr) -> [String; 2] {
        [format!("user {user}"), format!("address {address}")]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for an attempt under every key, or says how many seconds to wait when
    /// a key's failures and attempts in progress have reached the limit.
    pub fn attempt(&self, keys: [String; 2], now: Timestamp) -> Result<Attempt<'_>, i64> {
        let mut map = self.lock();
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, w| w.checking > 0 || now < w.started + self.window);
        }
        let window = self.window;
        let current = |w: &mut Window| {
            if now >= w.started + window {
                w.started = now;
                w.failures = 0;
            }
        };
        let mut wait = None;
        for key in &keys {
            if let Some(w) = map.get_mut(key) {
                current(w);
                if w.failures + w.checking >= self.limit {
                    wait = wait.max(Some((w.started + window - now).max(1)));
                }
            }
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        for key in &keys {
            map.entry(key.clone())
                .or_insert(Window {
                    started: now,
                    failures: 0,
                    checking: 0,
                })
                .checking += 1;
        }
        drop(map);
        Ok(Attempt {
            throttle: self,
            keys,
        })
    }
}

impl Attempt<'_> {
    /// The password was wrong: the attempt counts as a failure of its window.
    pub fn failed(self) {
        let mut map = self.throttle.lock();
        for key in &self.keys {
            if let Some(w) = map.get_mut(key) {
                w.failures += 1;
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut map = self.throttle.lock();
        for key in &self.keys {
            if let Some(w) = map.get_mut(key) {
                w.checking = w.checking.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(user: &str, address: &str) -> [String; 2] {
        LoginThrottle::keys(user, address.parse().unwrap())
    }

    #[test]
    fn five_failures_block_until_the_window_ends() {
        let throttle = LoginThrottle::new(5, 60);
        for t in 0..5 {
            throttle
                .attempt(keys("alice", "127.0.0.1"), 100 + t)
                .unwrap()
                .failed();
        }
        assert_eq!(
            throttle.attempt(keys("alice", "127.0.0.1"), 105).err(),
            Some(55)
        );
        assert_eq!(
            throttle.attempt(keys("alice", "127.0.0.1"), 159).err(),
            Some(1)
        );
        let attempt = throttle.attempt(keys("alice", "127.0.0.1"), 160);
        assert!(attempt.is_ok(), "a new window");
        attempt.unwrap().failed();
        assert!(throttle.attempt(keys("alice", "127.0.0.1"), 161).is_ok());
    }

    #[test]
    fn attempts_in_progress_hold_their_place_and_successes_give_it_back() {
        let throttle = LoginThrottle::new(5, 60);
        let checking: Vec<_> = (0..5)
            .map(|_| throttle.attempt(keys("alice", "10.0.0.1"), 0).unwrap())
            .collect();
        // Five are being checked at once: a sixth waits, whatever their outcome will be.
        assert!(throttle.attempt(keys("alice", "10.0.0.1"), 0).is_err());
        assert!(
            throttle.attempt(keys("bob", "10.0.0.1"), 0).is_err(),
            "same address"
        );
        drop(checking);
        // All five succeeded: nothing counts against the window.
        for _ in 0..5 {
            throttle
                .attempt(keys("alice", "10.0.0.1"), 1)
                .unwrap()
                .failed();
        }
        assert!(throttle.attempt(keys("alice", "10.0.0.1"), 2).is_err());
    }

    #[test]
    fn one_name_does_not_throttle_another_from_elsewhere() {
        let throttle = LoginThrottle::new(5, 60);
        for _ in 0..5 {
            throttle
                .attempt(keys("alice", "10.0.0.1"), 0)
                .unwrap()
                .failed();
        }
        assert!(throttle.attempt(keys("bob", "10.0.0.2"), 1).is_ok());
        assert!(throttle.attempt(keys("alice", "10.0.0.2"), 1).is_err());
        assert!(throttle.attempt(keys("bob", "10.0.0.1"), 1).is_err());
    }
}
