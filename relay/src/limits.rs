//! Token buckets for per-connection and per-requester rate limits.
//!
//! Plain data with an explicit clock argument so it is deterministic in tests
//! and usable from any task without a timer.

use std::time::Instant;

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
}
