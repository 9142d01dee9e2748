//! A circuit breaker per provider: after `failure_threshold` consecutive transient
//! failures the provider is skipped for `cool_down`; then a single probe decides
//! whether it closes again or stays open for another cool-down.
//!
//! Only transient failures (timeouts, refused connections, 5xx, 429) count: a
//! provider that answers "bad request" is up.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the circuit (0 disables the breaker).
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe is let through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// The breaker's state, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows.
    Closed,
    /// Traffic is skipped.
    Open,
    /// One probe is in flight.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

/// One provider's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a send may go ahead now. When the cool-down is over, the first caller
    /// becomes the probe and the others keep being refused until it reports.
    pub fn allow(&self) -> bool {
        if self.config.failure_threshold == 0 {
            return true;
        }
        let now = Instant::now();
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { probe_started: now };
                true
            }
            State::Open { .. } => false,
            // A probe that never reported (cancelled) must not wedge the breaker.
            State::HalfOpen { probe_started } if now >= probe_started + self.config.cool_down => {
                *state = State::HalfOpen { probe_started: now };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// The provider answered (success or a non-transient refusal): close.
    pub fn on_answer(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// A transient failure: count it, open at the threshold, re-open after a failed probe.
    pub fn on_transient_failure(&self) {
        if self.config.failure_threshold == 0 {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
        let next = match *state {
            State::Closed { failures } if failures + 1 >= self.config.failure_threshold => {
                State::Open {
                    until: now + self.config.cool_down,
                }
            }
            State::Closed { failures } => State::Closed {
                failures: failures + 1,
            },
            State::HalfOpen { .. } | State::Open { .. } => State::Open {
                until: now + self.config.cool_down,
            },
        };
        if matches!(next, State::Open { .. }) && !matches!(*state, State::Open { .. }) {
            tracing::warn!(cool_down = ?self.config.cool_down, "circuit opened: provider skipped until a probe succeeds");
        }
        *state = next;
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            cool_down: Duration::from_secs(10),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_probes_after_cool_down() {
        let b = breaker();
        for _ in 0..2 {
            assert!(b.allow());
            b.on_transient_failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_transient_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.allow(), "first caller after cool-down is the probe");
        assert!(!b.allow(), "only one probe at a time");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.on_answer();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens() {
        let b = breaker();
        for _ in 0..3 {
            b.on_transient_failure();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.allow());
        b.on_transient_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn answers_reset_the_count() {
        let b = breaker();
        b.on_transient_failure();
        b.on_transient_failure();
        b.on_answer();
        b.on_transient_failure();
        b.on_transient_failure();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn threshold_zero_disables() {
        let b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 0,
            cool_down: Duration::ZERO,
        });
        for _ in 0..100 {
            b.on_transient_failure();
        }
        assert!(b.allow());
    }
}
