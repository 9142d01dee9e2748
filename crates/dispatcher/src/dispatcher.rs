//! Routing one notification through its kind's providers, primary then fallbacks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_notify_core::{
    AddressKind, ErrorClass, Kind, Notification, NotificationId, Notifier, NotifyError, Outbox,
    Receipt, Timestamp,
};
use serde::Serialize;
use tokio::sync::Notify;

use crate::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use crate::queue::QueuePolicy;
use crate::ratelimit::{RateLimitConfig, RateLimiter};

/// How the dispatcher retries a provider before moving on to the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per provider for transient failures (1 = no retry).
    pub attempts_per_provider: u32,
    /// Delay before the first retry; doubled for each further retry.
    pub initial_delay: Duration,
    /// A `Retry-After` longer than this is not waited for inline: the dispatcher
    /// moves on to the next provider instead.
    pub max_inline_wait: Duration,
    /// Upper bound for one send, applied on top of the provider's own timeout.
    pub send_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts_per_provider: 2,
            initial_delay: Duration::from_millis(200),
            max_inline_wait: Duration::from_secs(1),
            send_timeout: Duration::from_secs(5),
        }
    }
}

/// One try of one provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// Provider name.
    pub provider: String,
    /// 1 for the first try of this provider, 2 for its retry, ...
    pub try_number: u32,
    /// `None` when it delivered.
    pub error_class: Option<ErrorClass>,
    /// The error, when it failed (never contains secrets).
    pub error: Option<String>,
    /// Time spent.
    #[serde(with = "duration_micros")]
    pub latency: Duration,
    /// The provider's `Retry-After`, when it gave one.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

mod duration_micros {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

/// Why a provider in the route was not tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Known but not configured in this process.
    NotConfigured,
    /// The recipient has no address this provider can use.
    NoAddress,
    /// Its circuit breaker is open after repeated transient failures.
    CircuitOpen,
    /// Its rate limit would have made us wait too long.
    RateLimited,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::NotConfigured => "not configured",
            SkipReason::NoAddress => "no address for this recipient",
            SkipReason::CircuitOpen => "circuit open",
            SkipReason::RateLimited => "rate limited",
        })
    }
}

/// A provider that was not tried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skip {
    /// Provider name.
    pub provider: String,
    /// Why.
    pub reason: SkipReason,
}

/// What happened to one notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// Which notification.
    pub notification_id: NotificationId,
    /// Its kind.
    pub kind: Kind,
    /// Every try, in order.
    pub attempts: Vec<Attempt>,
    /// Providers in the route that were skipped, with why.
    pub skipped: Vec<Skip>,
    /// The receipt of the provider that delivered, if one did.
    pub delivered: Option<Receipt>,
    /// It expired before delivery and was not sent.
    pub expired: bool,
    /// It was handed to the durable queue for later delivery.
    pub queued: bool,
}

impl Outcome {
    /// Whether some provider delivered.
    pub fn is_delivered(&self) -> bool {
        self.delivered.is_some()
    }

    /// The longest `Retry-After` a provider asked for in this round, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.attempts.iter().filter_map(|a| a.retry_after).max()
    }

    /// Whether trying again later cannot help: every provider that was tried refused
    /// permanently (or reported the address dead), and none was skipped for a
    /// passing reason (circuit open, rate limited). Such notifications are
    /// dead-lettered instead of retried.
    pub fn is_hopeless(&self) -> bool {
        if self.is_delivered() {
            return false;
        }
        let passing_skip = self
            .skipped
            .iter()
            .any(|s| matches!(s.reason, SkipReason::CircuitOpen | SkipReason::RateLimited));
        let retryable_attempt = self.attempts.iter().any(|a| {
            matches!(
                a.error_class,
                Some(ErrorClass::Transient) | Some(ErrorClass::Misconfigured)
            )
        });
        !passing_skip && !retryable_attempt
    }

    /// Whether delivery came from a provider other than the first one tried.
    pub fn used_fallback(&self) -> bool {
        match (&self.delivered, self.attempts.first()) {
            (Some(r), Some(first)) => r.provider != first.provider,
            _ => false,
        }
    }

    /// One line saying why nothing delivered (every failed try, or every skip).
    pub fn failure_summary(&self) -> String {
        if self.attempts.is_empty() {
            let skipped: Vec<String> = self
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.provider, s.reason))
                .collect();
            return if skipped.is_empty() {
                "no provider in the route".into()
            } else {
                format!("no provider could be tried ({})", skipped.join("; "))
            };
        }
        self.attempts
            .iter()
            .filter_map(|a| {
                a.error
                    .as_ref()
                    .map(|e| format!("{} try {}: {e}", a.provider, a.try_number))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// An address a provider reported dead, for its owner to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadAddress {
    /// The recipient's user id.
    pub user_id: String,
    /// Which kind of address.
    pub kind: AddressKind,
    /// The address the provider used (the recipient's first address of `kind`).
    pub address: Option<mesh_notify_core::Secret>,
    /// Which provider reported it.
    pub provider: String,
    /// The provider's reason.
    pub reason: String,
}

type DeadAddressHook = Arc<dyn Fn(DeadAddress) + Send + Sync>;

/// Routes notifications through providers. Cheap to share behind an `Arc`.
pub struct Dispatcher {
    providers: HashMap<String, Arc<dyn Notifier>>,
    disabled: BTreeSet<String>,
    routes: BTreeMap<Kind, Vec<String>>,
    policy: RetryPolicy,
    on_dead_address: Option<DeadAddressHook>,
    breakers: HashMap<String, CircuitBreaker>,
    limiters: HashMap<String, RateLimiter>,
    outbox: Option<Arc<dyn Outbox>>,
    queue: QueuePolicy,
    pub(crate) wake: Notify,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.providers.keys().collect();
        names.sort();
        f.debug_struct("Dispatcher")
            .field("providers", &names)
            .field("disabled", &self.disabled)
            .field("routes", &self.routes)
            .field("policy", &self.policy)
            .field("outbox", &self.outbox.as_ref().map(|o| o.backend()))
            .field("queue", &self.queue)
            .finish()
    }
}

/// A dispatcher that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A route names a provider that is neither configured nor known.
    #[error("routes.{kind} names unknown provider `{name}` (known: {known})")]
    UnknownProvider {
        /// The route.
        kind: Kind,
        /// The unknown name.
        name: String,
        /// The names that would have been accepted.
        known: String,
    },
    /// Two providers share a name.
    #[error("two providers are named `{0}`")]
    DuplicateProvider(String),
    /// The policy makes no sense.
    #[error("retry.attempts_per_provider must be at least 1")]
    ZeroAttempts,
}

/// Builds a [`Dispatcher`].
#[derive(Default)]
pub struct DispatcherBuilder {
    providers: Vec<Arc<dyn Notifier>>,
    disabled: BTreeSet<String>,
    routes: BTreeMap<Kind, Vec<String>>,
    policy: RetryPolicy,
    on_dead_address: Option<DeadAddressHook>,
    breaker: BreakerConfig,
    breaker_overrides: HashMap<String, BreakerConfig>,
    rate_limits: HashMap<String, RateLimitConfig>,
    outbox: Option<Arc<dyn Outbox>>,
    queue: QueuePolicy,
}

impl DispatcherBuilder {
    /// Adds an enabled provider, addressed in routes by its `name()`.
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.providers.push(notifier);
        self
    }

    /// Declares a provider name as known but not configured: routes may name it, and
    /// it is skipped.
    pub fn disabled(mut self, name: impl Into<String>) -> Self {
        self.disabled.insert(name.into());
        self
    }

    /// Sets the ordered providers for a kind (primary first).
    pub fn route<I, S>(mut self, kind: Kind, providers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.routes
            .insert(kind, providers.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the retry policy.
    pub fn policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Called (synchronously, keep it cheap) for each address a provider reports dead.
    pub fn on_dead_address(mut self, hook: impl Fn(DeadAddress) + Send + Sync + 'static) -> Self {
        self.on_dead_address = Some(Arc::new(hook));
        self
    }

    /// Default circuit breaker settings for every provider.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Circuit breaker settings for one provider.
    pub fn provider_breaker(mut self, provider: impl Into<String>, config: BreakerConfig) -> Self {
        self.breaker_overrides.insert(provider.into(), config);
        self
    }

    /// A rate limit for one provider.
    pub fn rate_limit(mut self, provider: impl Into<String>, config: RateLimitConfig) -> Self {
        self.rate_limits.insert(provider.into(), config);
        self
    }

    /// The durable outbox used by `submit`, by the workers, and by `dispatch` when
    /// every provider fails.
    pub fn outbox(mut self, outbox: Arc<dyn Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Retry timing, expiry and worker settings for queued notifications.
    pub fn queue_policy(mut self, queue: QueuePolicy) -> Self {
        self.queue = queue;
        self
    }

    /// Checks the routes and builds the dispatcher.
    pub fn build(self) -> Result<Dispatcher, BuildError> {
        if self.policy.attempts_per_provider == 0 {
            return Err(BuildError::ZeroAttempts);
        }
        let mut providers = HashMap::new();
        for p in self.providers {
            let name = p.name().to_string();
            if providers.insert(name.clone(), p).is_some() {
                return Err(BuildError::DuplicateProvider(name));
            }
        }
        for (kind, route) in &self.routes {
            for name in route {
                if !providers.contains_key(name) && !self.disabled.contains(name) {
                    let mut known: Vec<&str> = providers
                        .keys()
                        .map(String::as_str)
                        .chain(self.disabled.iter().map(String::as_str))
                        .collect();
                    known.sort_unstable();
                    return Err(BuildError::UnknownProvider {
                        kind: *kind,
                        name: name.clone(),
                        known: known.join(", "),
                    });
                }
            }
            if !route.iter().any(|n| providers.contains_key(n)) {
                tracing::warn!(
                    kind = %kind,
                    "no enabled provider in routes.{kind}: {kind} notifications cannot be delivered"
                );
            }
        }
        let breakers = providers
            .keys()
            .map(|name| {
                let cfg = self
                    .breaker_overrides
                    .get(name)
                    .copied()
                    .unwrap_or(self.breaker);
                (name.clone(), CircuitBreaker::new(cfg))
            })
            .collect();
        let limiters = self
            .rate_limits
            .into_iter()
            .filter(|(name, _)| providers.contains_key(name))
            .map(|(name, cfg)| (name, RateLimiter::new(cfg)))
            .collect();
        Ok(Dispatcher {
            providers,
            disabled: self.disabled,
            routes: self.routes,
            policy: self.policy,
            on_dead_address: self.on_dead_address,
            breakers,
            limiters,
            outbox: self.outbox,
            queue: self.queue,
            wake: Notify::new(),
        })
    }
}

impl Dispatcher {
    /// A builder.
    pub fn builder() -> DispatcherBuilder {
        DispatcherBuilder::default()
    }

    /// The route for a kind (empty when none is configured).
    pub fn route(&self, kind: Kind) -> &[String] {
        self.routes.get(&kind).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Enabled providers, sorted by name.
    pub fn providers(&self) -> Vec<Arc<dyn Notifier>> {
        let mut v: Vec<_> = self.providers.values().cloned().collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    /// Names of known providers that are not configured.
    pub fn disabled(&self) -> impl Iterator<Item = &str> {
        self.disabled.iter().map(String::as_str)
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The outbox, if one is configured.
    pub fn outbox(&self) -> Option<&Arc<dyn Outbox>> {
        self.outbox.as_ref()
    }

    /// Wakes an idle delivery worker: call after enqueuing into the outbox directly
    /// (e.g. inside your own database transaction) so delivery starts at once.
    pub fn notify_enqueued(&self) {
        self.wake.notify_one();
    }

    /// The queue policy.
    pub fn queue_policy(&self) -> &QueuePolicy {
        &self.queue
    }

    /// The circuit state of a provider (`None` for unknown names).
    pub fn breaker_state(&self, provider: &str) -> Option<BreakerState> {
        self.breakers.get(provider).map(CircuitBreaker::state)
    }

    /// Tries the route for `n.kind` now, primary first, and reports every attempt.
    /// When nothing delivers and an outbox is configured, the notification is queued
    /// for automatic retry (`outcome.queued`); nothing is lost.
    pub async fn dispatch(&self, n: Notification) -> Outcome {
        let mut outcome = self.try_route(&n).await;
        if outcome.is_delivered() || outcome.expired {
            return outcome;
        }
        if let Some(outbox) = &self.outbox {
            let due = Timestamp::now().plus(self.queue.backoff(1, outcome.retry_after()));
            match outbox.enqueue(&n, due).await {
                Ok(_) => {
                    outcome.queued = true;
                    self.wake.notify_one();
                }
                Err(e) => {
                    tracing::error!(id = %n.id, error = %e, "nothing delivered and the outbox refused the notification");
                }
            }
        }
        outcome
    }

    /// Tries the route once (all providers, with their inline retries).
    pub async fn try_route(&self, n: &Notification) -> Outcome {
        let mut outcome = Outcome {
            notification_id: n.id,
            kind: n.kind,
            attempts: Vec::new(),
            skipped: Vec::new(),
            delivered: None,
            expired: false,
            queued: false,
        };
        for name in self.route(n.kind) {
            let skip = |reason| Skip {
                provider: name.clone(),
                reason,
            };
            let Some(provider) = self.providers.get(name) else {
                outcome.skipped.push(skip(SkipReason::NotConfigured));
                continue;
            };
            if !provider.can_reach(n) {
                outcome.skipped.push(skip(SkipReason::NoAddress));
                continue;
            }
            if let Some(breaker) = self.breakers.get(name) {
                if !breaker.allow() {
                    metrics::counter!("mesh_notify_skipped_total", "provider" => name.clone(), "reason" => "circuit_open").increment(1);
                    outcome.skipped.push(skip(SkipReason::CircuitOpen));
                    continue;
                }
            }
            if let Some(limiter) = self.limiters.get(name) {
                if !limiter.acquire_within(self.policy.max_inline_wait).await {
                    metrics::counter!("mesh_notify_skipped_total", "provider" => name.clone(), "reason" => "rate_limited").increment(1);
                    outcome.skipped.push(skip(SkipReason::RateLimited));
                    continue;
                }
            }
            if let Some(receipt) = self.try_provider(provider.as_ref(), n, &mut outcome).await {
                if outcome
                    .attempts
                    .first()
                    .is_some_and(|a| a.provider != receipt.provider)
                {
                    metrics::counter!("mesh_notify_fallback_total", "kind" => n.kind.as_str(), "provider" => receipt.provider.clone()).increment(1);
                }
                outcome.delivered = Some(receipt);
                return outcome;
            }
            if outcome.expired {
                return outcome;
            }
        }
        outcome
    }

    async fn try_provider(
        &self,
        provider: &dyn Notifier,
        n: &Notification,
        outcome: &mut Outcome,
    ) -> Option<Receipt> {
        let mut delay = self.policy.initial_delay;
        for try_number in 1..=self.policy.attempts_per_provider {
            if n.is_expired_at(Timestamp::now()) {
                outcome.expired = true;
                return None;
            }
            let started = Instant::now();
            let result =
                match tokio::time::timeout(self.policy.send_timeout, provider.send(n)).await {
                    Ok(r) => r,
                    Err(_) => Err(NotifyError::transient(format!(
                        "{} did not answer within {:?}",
                        provider.name(),
                        self.policy.send_timeout
                    ))),
                };
            let latency = started.elapsed();
            let name = provider.name().to_string();
            metrics::histogram!("mesh_notify_send_seconds", "provider" => name.clone())
                .record(latency.as_secs_f64());
            let breaker = self.breakers.get(&name);
            match &result {
                Ok(_) => {
                    metrics::counter!("mesh_notify_sent_total", "provider" => name.clone())
                        .increment(1);
                    if let Some(b) = breaker {
                        b.on_answer();
                    }
                }
                Err(e) => {
                    metrics::counter!("mesh_notify_failed_total", "provider" => name.clone(), "class" => e.class().as_str()).increment(1);
                    if let Some(b) = breaker {
                        if e.is_transient() {
                            b.on_transient_failure();
                        } else {
                            b.on_answer();
                        }
                    }
                }
            }
            let err = match result {
                Ok(receipt) => {
                    outcome.attempts.push(Attempt {
                        provider: provider.name().to_string(),
                        try_number,
                        error_class: None,
                        error: None,
                        latency,
                        retry_after: None,
                    });
                    return Some(receipt);
                }
                Err(e) => e,
            };
            tracing::debug!(provider = provider.name(), try_number, error = %err, "provider failed");
            outcome.attempts.push(Attempt {
                provider: provider.name().to_string(),
                try_number,
                error_class: Some(err.class()),
                error: Some(err.to_string()),
                latency,
                retry_after: err.retry_after(),
            });
            match &err {
                NotifyError::Transient { retry_after, .. } => {
                    if try_number == self.policy.attempts_per_provider {
                        return None;
                    }
                    let wait = retry_after.unwrap_or(delay);
                    if wait > self.policy.max_inline_wait {
                        return None;
                    }
                    if breaker.is_some_and(|b| b.state() != BreakerState::Closed) {
                        return None;
                    }
                    tokio::time::sleep(wait).await;
                    delay = delay.saturating_mul(2);
                }
                NotifyError::RecipientGone { address, reason } => {
                    tracing::info!(
                        provider = provider.name(),
                        user = %n.recipient.user_id,
                        address = %address,
                        "provider reports a dead address"
                    );
                    if let Some(hook) = &self.on_dead_address {
                        hook(DeadAddress {
                            user_id: n.recipient.user_id.clone(),
                            kind: *address,
                            address: n.recipient.address(*address).cloned(),
                            provider: provider.name().to_string(),
                            reason: reason.clone(),
                        });
                    }
                    return None;
                }
                NotifyError::Misconfigured { .. } => {
                    tracing::error!(provider = provider.name(), error = %err, "provider is misconfigured");
                    return None;
                }
                _ => return None,
            }
        }
        None
    }
}
