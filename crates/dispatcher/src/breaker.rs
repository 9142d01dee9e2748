//! Provider health: a circuit breaker per provider, plus a pause when the provider
//! asks for one (`Retry-After`, 429).
//!
//! After `failure_threshold` consecutive transient failures the circuit opens: the
//! provider is skipped, and the delivery service parks the queued notifications
//! that wait for it (no attempt burned, no growing backoff). The breaker then lets
//! one probe through on its own schedule: `probe_interval` after opening, doubling
//! after each failed probe up to `probe_max_interval`. The first success closes it,
//! and every parked notification is due at once.
//!
//! Only transient failures (timeouts, refused connections, 5xx, 429) count: a
//! provider that answers "bad request" is up.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Breaker settings; the configuration's `[breaker]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the circuit (0 disables the
    /// breaker; default 5).
    pub failure_threshold: u32,
    /// Wait between opening and the first probe (default 1s); doubles after each
    /// failed probe. `cool_down` is accepted as its former name.
    #[serde(with = "humantime_serde", alias = "cool_down")]
    pub probe_interval: Duration,
    /// Longest wait between two probes of a provider that is down (default 5s):
    /// the longest a backlog waits after the provider is back.
    #[serde(with = "humantime_serde")]
    pub probe_max_interval: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            probe_interval: Duration::from_secs(1),
            probe_max_interval: Duration::from_secs(5),
        }
    }
}

/// The breaker's state, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows.
    Closed,
    /// Traffic is skipped until the next probe.
    Open,
    /// One probe is in flight.
    HalfOpen,
}

/// What [`CircuitBreaker::allow`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (circuit closed).
    Go,
    /// Go ahead as the probe: report its result, or call
    /// [`CircuitBreaker::abandon_probe`] if the send does not happen after all.
    Probe,
    /// Circuit open: skip this provider.
    Open,
    /// The provider asked us to wait (`Retry-After`): skip it until then.
    Paused,
}

impl Admission {
    /// Whether the send may go ahead.
    pub fn allowed(self) -> bool {
        matches!(self, Admission::Go | Admission::Probe)
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        next_probe: Instant,
        interval: Duration,
    },
    HalfOpen {
        probe_started: Instant,
        interval: Duration,
    },
}

#[derive(Debug)]
struct Inner {
    state: State,
    paused_until: Option<Instant>,
}

/// One provider's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    /// The provider's name, for log lines.
    name: String,
    config: BreakerConfig,
    /// A probe that never reported (its task was cancelled) is given up after this.
    stale_probe: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self::with_probe_timeout(config, Duration::from_secs(30))
    }

    /// A closed breaker whose probe counts as lost (and another one may start)
    /// when it has not reported after `probe_timeout` (the longest a send can take).
    pub fn with_probe_timeout(config: BreakerConfig, probe_timeout: Duration) -> Self {
        Self {
            name: String::new(),
            config,
            stale_probe: probe_timeout.max(config.probe_max_interval),
            inner: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                paused_until: None,
            }),
        }
    }

    /// Names the provider in the breaker's log lines.
    pub fn named(mut self, provider: impl Into<String>) -> Self {
        self.name = provider.into();
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a send may go ahead now. When a probe is due, the first caller
    /// becomes the probe and the others keep being refused until it reports.
    pub fn allow(&self) -> Admission {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(until) = inner.paused_until {
            if now < until {
                return Admission::Paused;
            }
            inner.paused_until = None;
        }
        if self.config.failure_threshold == 0 {
            return Admission::Go;
        }
        match inner.state {
            State::Closed { .. } => Admission::Go,
            State::Open {
                next_probe,
                interval,
            } if now >= next_probe => {
                inner.state = State::HalfOpen {
                    probe_started: now,
                    interval,
                };
                Admission::Probe
            }
            State::Open { .. } => Admission::Open,
            State::HalfOpen {
                probe_started,
                interval,
            } if now >= probe_started + self.stale_probe => {
                inner.state = State::HalfOpen {
                    probe_started: now,
                    interval,
                };
                Admission::Probe
            }
            State::HalfOpen { .. } => Admission::Open,
        }
    }

    /// The probe granted by [`allow`](Self::allow) did not happen (e.g. the rate
    /// limiter skipped the provider): the next caller may probe at once.
    pub fn abandon_probe(&self) {
        let mut inner = self.lock();
        if let State::HalfOpen { interval, .. } = inner.state {
            inner.state = State::Open {
                next_probe: Instant::now(),
                interval,
            };
        }
    }

    /// The provider answered (success or a non-transient refusal): close. Returns
    /// `true` when this ends an outage (the circuit was open or probing), so the
    /// caller can release what waited for the provider.
    pub fn on_answer(&self) -> bool {
        let mut inner = self.lock();
        let was_out = !matches!(inner.state, State::Closed { .. });
        inner.state = State::Closed { failures: 0 };
        if was_out {
            tracing::info!(provider = %self.name, "circuit closed: {} answered again", self.name);
        }
        was_out
    }

    /// A transient failure: count it, open at the threshold; a failed probe
    /// re-opens with a doubled interval (up to `probe_max_interval`).
    pub fn on_transient_failure(&self) {
        if self.config.failure_threshold == 0 {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        let first = self
            .config
            .probe_interval
            .min(self.config.probe_max_interval);
        inner.state = match inner.state {
            State::Closed { failures } if failures + 1 >= self.config.failure_threshold => {
                tracing::warn!(
                    provider = %self.name,
                    first_probe_in = ?first,
                    "circuit opened: {} skipped, its queued notifications parked until a probe succeeds",
                    self.name
                );
                State::Open {
                    next_probe: now + first,
                    interval: first,
                }
            }
            State::Closed { failures } => State::Closed {
                failures: failures + 1,
            },
            State::HalfOpen { interval, .. } => {
                let interval = interval
                    .saturating_mul(2)
                    .min(self.config.probe_max_interval);
                State::Open {
                    next_probe: now + interval,
                    interval,
                }
            }
            // A send that started before the circuit opened: keep the schedule.
            open @ State::Open { .. } => open,
        };
    }

    /// The provider refused its own configuration (e.g. the default token): open
    /// the circuit and probe at the slowest pace, so queued notifications wait
    /// (parked) for the fix instead of burning their attempts. A success closes it.
    pub fn on_misconfigured(&self) {
        let interval = self.config.probe_max_interval;
        let mut inner = self.lock();
        if !matches!(inner.state, State::Open { .. }) {
            tracing::error!(
                provider = %self.name,
                "{} refuses its configuration: skipped and probed every {:?} until it is fixed; its notifications wait",
                self.name,
                interval
            );
        }
        inner.state = State::Open {
            next_probe: Instant::now() + interval,
            interval,
        };
    }

    /// The provider asked us to wait (`Retry-After`): skip it until then. A later,
    /// shorter request does not shorten a pause.
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut inner = self.lock();
        if inner.paused_until.is_none_or(|u| u < until) {
            inner.paused_until = Some(until);
        }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether the provider is usable now: circuit closed and not paused.
    pub fn is_healthy(&self) -> bool {
        let inner = self.lock();
        matches!(inner.state, State::Closed { .. })
            && inner.paused_until.is_none_or(|u| Instant::now() >= u)
    }

    /// When the provider may be tried again: the next probe of an open circuit or
    /// the end of a pause, whichever is later. `None` when it is usable now or a
    /// probe is in flight.
    pub fn next_try_at(&self) -> Option<Instant> {
        let inner = self.lock();
        let now = Instant::now();
        let pause = inner.paused_until.filter(|u| *u > now);
        let probe = match inner.state {
            State::Open { next_probe, .. } => Some(next_probe),
            State::HalfOpen { .. } => return None,
            State::Closed { .. } => None,
        };
        match (pause, probe) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            probe_interval: Duration::from_secs(1),
            probe_max_interval: Duration::from_secs(5),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_probes_after_the_interval() {
        let b = breaker();
        for _ in 0..2 {
            assert_eq!(b.allow(), Admission::Go);
            b.on_transient_failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_transient_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(), Admission::Open);
        assert!(!b.is_healthy());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.allow(), Admission::Probe, "first caller is the probe");
        assert_eq!(b.allow(), Admission::Open, "only one probe at a time");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.on_answer(), "closing ends an outage");
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.allow(), Admission::Go);
        assert!(!b.on_answer(), "already closed");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_double_the_interval_up_to_the_maximum() {
        let b = breaker();
        for _ in 0..3 {
            b.on_transient_failure();
        }
        let mut waits = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let at = b.next_try_at().expect("open");
            tokio::time::advance(at - start).await;
            assert_eq!(b.allow(), Admission::Probe);
            b.on_transient_failure();
            waits.push((at - start).as_secs());
        }
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_can_be_taken_by_the_next_caller() {
        let b = breaker();
        for _ in 0..3 {
            b.on_transient_failure();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.allow(), Admission::Probe);
        b.abandon_probe();
        assert_eq!(b.allow(), Admission::Probe, "the probe is not lost");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_is_replaced() {
        let b = CircuitBreaker::with_probe_timeout(
            BreakerConfig {
                failure_threshold: 1,
                ..BreakerConfig::default()
            },
            Duration::from_secs(8),
        );
        b.on_transient_failure();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.allow(), Admission::Probe);
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(b.allow(), Admission::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.allow(), Admission::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_skips_the_provider_until_it_ends() {
        let b = breaker();
        b.pause_for(Duration::from_secs(10));
        b.pause_for(Duration::from_secs(2));
        assert_eq!(b.allow(), Admission::Paused);
        assert!(!b.is_healthy());
        let at = b.next_try_at().expect("paused");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            b.allow(),
            Admission::Paused,
            "a shorter pause does not shorten"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(Instant::now() >= at);
        assert_eq!(b.allow(), Admission::Go);
        assert_eq!(b.state(), BreakerState::Closed, "a pause is not an outage");
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
            ..BreakerConfig::default()
        });
        for _ in 0..100 {
            b.on_transient_failure();
        }
        assert_eq!(b.allow(), Admission::Go);
    }
}
