//! Token buckets for per-key, per-source-address and per-requester rate
//! limits, and the source-address key they share.
//!
//! Plain data with an explicit clock argument so it is deterministic in tests
//! and usable from any task without a timer. [`BucketMap`] keys buckets by
//! requester and stays bounded: a bucket that has refilled completely is
//! indistinguishable from a fresh one, so it is dropped at the next prune, and
//! an attacker cycling keys can hold at most `max_entries` live buckets.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

/// The key limits per source address are kept under: an IPv4 address (also
/// when IPv4-mapped), or an IPv6 address's /64 (one subscriber's prefix: a
/// host is handed 2^64 addresses, so counting single ones would bound nothing).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A classic token bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, per_sec: f64, now: Instant) -> Self {
        Self {
            burst: f64::from(burst),
            per_sec,
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes `n` tokens if available; refuses (taking none) otherwise.
    pub fn try_take(&mut self, n: u32, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        let n = f64::from(n);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

impl TokenBucket {
    /// Whether the bucket would be full at `now` (so forgetting it and later
    /// starting a fresh one changes nothing).
    pub fn is_full(&self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * self.per_sec >= self.burst
    }
}

/// Token buckets keyed by requester (or target), bounded in size.
#[derive(Debug)]
pub struct BucketMap<K> {
    buckets: HashMap<K, TokenBucket>,
    burst: u32,
    per_sec: f64,
    max_entries: usize,
    /// When the map was last pruned for room (at most once a second, so a
    /// flood of new keys against a full map cannot force a scan each time).
    last_prune: Option<Instant>,
}

/// Least time between two prunes forced by a full map.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl<K: Hash + Eq + Copy> BucketMap<K> {
    /// An empty map of buckets holding `burst` tokens refilled at `per_sec`,
    /// tracking at most `max_entries` keys at once.
    pub fn new(burst: u32, per_sec: f64, max_entries: usize) -> Self {
        Self {
            buckets: HashMap::new(),
            burst,
            per_sec,
            max_entries: max_entries.max(1),
            last_prune: None,
        }
    }

    /// Takes `n` tokens from `key`'s bucket. A key not yet tracked starts
    /// full; if the map is at its bound even after pruning, new keys are
    /// refused (fail closed) while known keys keep their own budget.
    pub fn try_take(&mut self, key: K, n: u32, now: Instant) -> bool {
        if let Some(b) = self.buckets.get_mut(&key) {
            return b.try_take(n, now);
        }
        if self.buckets.len() >= self.max_entries {
            let due = self
                .last_prune
                .is_none_or(|t| now.saturating_duration_since(t) >= PRUNE_EVERY);
            if due {
                self.last_prune = Some(now);
                self.prune(now);
            }
            if self.buckets.len() >= self.max_entries {
                return false;
            }
        }
        let mut b = TokenBucket::new(self.burst, self.per_sec, now);
        let ok = b.try_take(n, now);
        self.buckets.insert(key, b);
        ok
    }

    /// Returns `n` tokens taken from `key` by a request that was then refused
    /// by another limit (never above the burst).
    pub fn give_back(&mut self, key: K, n: u32) {
        if let Some(b) = self.buckets.get_mut(&key) {
            b.tokens = (b.tokens + f64::from(n)).min(b.burst);
        }
    }

    /// Forgets every bucket that has refilled completely; returns how many.
    pub fn prune(&mut self, now: Instant) -> usize {
        let before = self.buckets.len();
        self.buckets.retain(|_, b| !b.is_full(now));
        before - self.buckets.len()
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn refuses_past_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 1.0, t0);
        assert!(b.try_take(2, t0));
        assert!(b.try_take(1, t0));
        assert!(!b.try_take(1, t0));
        assert!(b.try_take(1, t0 + Duration::from_millis(1001)));
        assert!(!b.try_take(1, t0 + Duration::from_millis(1002)));
        // never exceeds burst
        assert!(!b.try_take(4, t0 + Duration::from_secs(100)));
    }

    #[test]
    fn prune_forgets_only_refilled_buckets() {
        let t0 = Instant::now();
        let mut m = BucketMap::new(3, 1.0, 1000);
        assert!(m.try_take(1u32, 3, t0)); // empty until 3 s later
        assert!(m.try_take(2u32, 1, t0)); // full again 1 s later
        assert_eq!(m.prune(t0 + Duration::from_millis(1500)), 1);
        assert_eq!(m.len(), 1);
        // Key 1 kept its state: still short of tokens.
        assert!(!m.try_take(1u32, 3, t0 + Duration::from_millis(1500)));
        assert_eq!(m.prune(t0 + Duration::from_secs(10)), 1);
        assert!(m.is_empty());
    }

    #[test]
    fn source_keys_group_an_ipv6_prefix_and_unmap_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn given_back_tokens_never_exceed_the_burst() {
        let t0 = Instant::now();
        let mut m = BucketMap::new(3, 0.0, 10);
        assert!(m.try_take(1u8, 3, t0));
        m.give_back(1, 2);
        assert!(m.try_take(1, 2, t0));
        m.give_back(1, 100);
        assert!(!m.try_take(1, 4, t0));
        assert!(m.try_take(1, 3, t0));
    }

    #[test]
    fn key_cycling_cannot_grow_the_map_past_its_bound() {
        let t0 = Instant::now();
        let mut m = BucketMap::new(60, 1.0, 100);
        for k in 0..10_000u32 {
            let _ = m.try_take(k, 1, t0);
            assert!(m.len() <= 100);
        }
        // At the bound a new key is refused, a known key keeps its budget.
        assert!(!m.try_take(20_000, 1, t0));
        assert!(m.try_take(0, 1, t0));
        // Once the old buckets refill they are pruned to make room.
        assert!(m.try_take(20_000, 1, t0 + Duration::from_secs(2)));
        assert_eq!(m.len(), 1);
    }
}
