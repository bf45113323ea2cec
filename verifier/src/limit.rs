//! Per-caller token buckets (`TOKEN_RATE` requests per second, bursts up to twice that).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by caller identity.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `rate` requests per second per caller; 0 disables the limit.
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            burst: (2.0 * rate).max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes one token for `caller`, or says how many whole seconds to wait.
    pub fn check(&self, caller: &str) -> Result<(), u64> {
        self.check_at(caller, Instant::now())
    }

    /// [`RateLimiter::check`] at a given instant (for tests).
    pub fn check_at(&self, caller: &str, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = map.entry(caller.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refuses_then_refills() {
        let l = RateLimiter::new(5.0);
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(l.check_at("a", t0), Ok(()), "request {i} of the burst");
        }
        assert_eq!(l.check_at("a", t0), Err(1));
        // Another caller has its own bucket.
        assert_eq!(l.check_at("b", t0), Ok(()));
        // 0.2 s refills one token at 5/s.
        assert_eq!(l.check_at("a", t0 + Duration::from_millis(200)), Ok(()));
        assert!(l.check_at("a", t0 + Duration::from_millis(200)).is_err());
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let l = RateLimiter::new(0.0);
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| l.check_at("a", t0).is_ok()));
    }
}
