//! The login throttle: after `limit` failed attempts for one user name, or from one client
//! address, within `window` seconds, further attempts are refused until that window ends.
//! Counted per key in memory (a restart forgets); failures on one name never throttle
//! another name, only the address they came from.

use crate::clock::Timestamp;
use std::collections::HashMap;
use std::sync::Mutex;

/// Past this many tracked keys, windows that have ended are swept out.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Timestamp,
    failures: u32,
}

pub struct LoginThrottle {
    limit: u32,
    window: i64,
    keys: Mutex<HashMap<String, Window>>,
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

    /// `Some(seconds to wait)` if any key has used up its attempts.
    pub fn blocked(&self, keys: &[String], now: Timestamp) -> Option<i64> {
        let map = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter_map(|key| map.get(key))
            .filter(|w| w.failures >= self.limit && now < w.started + self.window)
            .map(|w| w.started + self.window - now)
            .max()
    }

    /// Counts a failed attempt against every key.
    pub fn failed(&self, keys: &[String], now: Timestamp) {
        let mut map = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, w| now < w.started + self.window);
        }
        for key in keys {
            let window = map.entry(key.clone()).or_insert(Window {
                started: now,
                failures: 0,
            });
            if now >= window.started + self.window {
                *window = Window {
                    started: now,
                    failures: 0,
                };
            }
            window.failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_block_until_the_window_ends() {
        let throttle = LoginThrottle::new(5, 60);
        let keys = LoginThrottle::keys("alice", "127.0.0.1".parse().unwrap());
        for t in 0..5 {
            assert_eq!(throttle.blocked(&keys, 100 + t), None);
            throttle.failed(&keys, 100 + t);
        }
        assert_eq!(throttle.blocked(&keys, 105), Some(55));
        assert_eq!(throttle.blocked(&keys, 159), Some(1));
        assert_eq!(throttle.blocked(&keys, 160), None);
        throttle.failed(&keys, 160);
        assert_eq!(throttle.blocked(&keys, 161), None);
    }

    #[test]
    fn one_name_does_not_throttle_another_from_elsewhere() {
        let throttle = LoginThrottle::new(5, 60);
        let attacker = LoginThrottle::keys("alice", "10.0.0.1".parse().unwrap());
        for _ in 0..5 {
            throttle.failed(&attacker, 0);
        }
        let bob = LoginThrottle::keys("bob", "10.0.0.2".parse().unwrap());
        assert_eq!(throttle.blocked(&bob, 1), None);
        let alice_elsewhere = LoginThrottle::keys("alice", "10.0.0.2".parse().unwrap());
        assert!(throttle.blocked(&alice_elsewhere, 1).is_some());
        let bob_from_attacker = LoginThrottle::keys("bob", "10.0.0.1".parse().unwrap());
        assert!(throttle.blocked(&bob_from_attacker, 1).is_some());
    }
}
