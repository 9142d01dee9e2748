//! A token-bucket rate limit per provider, so quotas (FCM 429, Gotify behind a proxy)
//! are respected before they are hit.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// `rate` sends per second on average, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Sustained sends per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: u32,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket. Reservations may drive the balance negative: a caller that
/// accepts waiting reserves its token now and sleeps until it is due.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    bucket: Mutex<Bucket>,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(config.burst.max(1)),
                last: Instant::now(),
            }),
        }
    }

    /// Takes a token, waiting up to `max_wait` for one. Returns `false` (and takes
    /// nothing) if the wait would be longer.
    pub async fn acquire_within(&self, max_wait: Duration) -> bool {
        let wait = {
            let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let rate = self.config.per_second.max(f64::MIN_POSITIVE);
            let burst = f64::from(self.config.burst.max(1));
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
            b.last = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                Duration::ZERO
            } else {
                let wait = Duration::from_secs_f64((1.0 - b.tokens) / rate);
                if wait > max_wait {
                    return false;
                }
                b.tokens -= 1.0;
                wait
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_a_burst_then_paces() {
        let l = RateLimiter::new(RateLimitConfig {
            per_second: 10.0,
            burst: 3,
        });
        for _ in 0..3 {
            assert!(l.acquire_within(Duration::ZERO).await);
        }
        assert!(
            !l.acquire_within(Duration::from_millis(50)).await,
            "next token is 100ms away"
        );
        let start = Instant::now();
        assert!(l.acquire_within(Duration::from_millis(150)).await);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..3 {
            assert!(l.acquire_within(Duration::ZERO).await);
        }
        assert!(
            !l.acquire_within(Duration::ZERO).await,
            "bucket holds at most `burst`"
        );
    }
}
