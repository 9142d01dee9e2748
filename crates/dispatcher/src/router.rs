//! The router: one notification through its kind's providers, primary then
//! fallbacks, now (synchronous from the caller's point of view). It owns the
//! routes, the providers' health (circuit breakers, pauses), rate limits and the
//! short inline retry. It knows nothing of the outbox: the delivery service
//! (`delivery.rs`) builds on it, never the other way round.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mesh_notify_core::{
    Address, AddressKind, ErrorClass, Kind, Notification, NotificationId, Notifier, NotifyError,
    Receipt, Timestamp,
};
use serde::Serialize;
use tokio::sync::Notify;

use crate::breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker};
use crate::ratelimit::{RateLimitConfig, RateLimiter};

/// Longest pause a provider's `Retry-After` can impose.
const MAX_PAUSE: Duration = Duration::from_secs(15 * 60);

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
    /// It asked us to wait (`Retry-After`, 429) and the wait is not over.
    Paused,
    /// The `log` provider, while a real provider of the route can reach the
    /// recipient: writing to a log is not a delivery, the notification waits for
    /// the real provider.
    Standby,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::NotConfigured => "not configured",
            SkipReason::NoAddress => "no address for this recipient",
            SkipReason::CircuitOpen => "circuit open",
            SkipReason::RateLimited => "rate limited",
            SkipReason::Paused => "paused (the provider asked us to wait)",
            SkipReason::Standby => "log only: waiting for a real provider",
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
    /// With several devices (addresses of one kind) behind a provider: what
    /// happened on each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceOutcome>,
    /// Devices that did not get it (retryable failure) while another device of
    /// the same provider did: the delivery service queues a follow-up for them.
    #[serde(skip)]
    pub pending_devices: Vec<(String, Address)>,
}

/// What happened on one device (one address) during a fan-out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceOutcome {
    /// Provider name.
    pub provider: String,
    /// Kind of address.
    pub address: AddressKind,
    /// The address's last characters, to tell devices apart (never the whole token).
    pub hint: String,
    /// Delivered to this device.
    pub delivered: bool,
    /// The provider's message id, when delivered.
    pub message_id: Option<String>,
    /// Why not, when it failed.
    pub error: Option<String>,
    /// The error class, when it failed.
    pub error_class: Option<ErrorClass>,
}

/// `…` and the last 4 characters of a token or address.
pub(crate) fn address_hint(a: &Address) -> String {
    let v = a.value.expose();
    let tail: String = v
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

impl Outcome {
    fn empty(n: &Notification) -> Self {
        Outcome {
            notification_id: n.id,
            kind: n.kind,
            attempts: Vec::new(),
            skipped: Vec::new(),
            delivered: None,
            expired: false,
            queued: false,
            devices: Vec::new(),
            pending_devices: Vec::new(),
        }
    }

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
        let passing_skip = self.skipped.iter().any(|s| {
            matches!(
                s.reason,
                SkipReason::CircuitOpen | SkipReason::RateLimited | SkipReason::Paused
            )
        });
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

pub(crate) type DeadAddressHook = Arc<dyn Fn(DeadAddress) + Send + Sync>;

/// Addresses already reported dead in this process, per provider and recipient:
/// the hook fires once per address, and a queued notification that still carries
/// the dead address does not try that provider with it again.
#[derive(Default)]
struct DeadAddresses {
    seen: Mutex<DeadMap>,
}

/// (provider, user id) → the addresses that provider reported dead.
type DeadMap = HashMap<(String, String), Vec<(AddressKind, String)>>;

impl DeadAddresses {
    /// Bound on remembered recipients (the owner deletes the addresses; this only
    /// dedups).
    const MAX: usize = 100_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, DeadMap> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records it; `true` the first time.
    fn insert(&self, provider: &str, n: &Notification, kind: AddressKind) -> bool {
        let Some(value) = n.recipient.address(kind) else {
            return true;
        };
        let mut seen = self.lock();
        if seen.len() >= Self::MAX {
            seen.clear();
        }
        let list = seen
            .entry((provider.to_owned(), n.recipient.user_id.clone()))
            .or_default();
        if list.iter().any(|(k, v)| *k == kind && v == value.expose()) {
            return false;
        }
        list.push((kind, value.expose().to_owned()));
        true
    }

    /// For providers that do not say which address they use: whether `provider`
    /// reported dead the first address of a kind it reported before.
    fn first_is_dead(&self, provider: &str, n: &Notification) -> bool {
        let seen = self.lock();
        if seen.is_empty() {
            return false;
        }
        seen.get(&(provider.to_owned(), n.recipient.user_id.clone()))
            .is_some_and(|list| {
                list.iter().any(|(kind, value)| {
                    n.recipient
                        .address(*kind)
                        .is_some_and(|a| a.expose() == value)
                })
            })
    }

    /// Whether `provider` reported `address` of `user` dead.
    fn is_dead(&self, provider: &str, user: &str, address: &Address) -> bool {
        let seen = self.lock();
        if seen.is_empty() {
            return false;
        }
        seen.get(&(provider.to_owned(), user.to_owned()))
            .is_some_and(|list| {
                list.iter()
                    .any(|(kind, value)| *kind == address.kind && value == address.value.expose())
            })
    }
}

/// Provider health changes the delivery service reacts to.
#[derive(Default)]
pub(crate) struct HealthEvents {
    changed: Notify,
    recovered: Mutex<Vec<String>>,
}

impl HealthEvents {
    fn recovered(&self, provider: &str) {
        self.recovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(provider.to_owned());
        self.changed.notify_one();
    }

    fn changed(&self) {
        self.changed.notify_one();
    }

    /// Providers that came back since the last call.
    pub(crate) fn take_recovered(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .recovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Resolves at the next change (or at once if one happened since the last wait).
    pub(crate) async fn wait(&self) {
        self.changed.notified().await;
    }
}

type ProviderMap = HashMap<String, Arc<dyn Notifier>>;

/// Routes notifications through providers, now. Cheap to share behind an `Arc`.
pub struct Router {
    /// Swapped whole when secrets are reloaded ([`Router::replace_providers`]).
    providers: std::sync::RwLock<Arc<ProviderMap>>,
    disabled: BTreeSet<String>,
    routes: BTreeMap<Kind, Vec<String>>,
    policy: RetryPolicy,
    on_dead_address: Option<DeadAddressHook>,
    dead: DeadAddresses,
    breakers: HashMap<String, CircuitBreaker>,
    limiters: HashMap<String, RateLimiter>,
    pub(crate) events: HealthEvents,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let providers = self.provider_map();
        let mut names: Vec<&String> = providers.keys().collect();
        names.sort();
        f.debug_struct("Router")
            .field("providers", &names)
            .field("disabled", &self.disabled)
            .field("routes", &self.routes)
            .field("policy", &self.policy)
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

/// What [`Router::new`] needs (assembled by the dispatcher's builder).
pub(crate) struct RouterParts {
    pub providers: Vec<Arc<dyn Notifier>>,
    pub disabled: BTreeSet<String>,
    pub routes: BTreeMap<Kind, Vec<String>>,
    pub policy: RetryPolicy,
    pub on_dead_address: Option<DeadAddressHook>,
    pub breaker: BreakerConfig,
    pub breaker_overrides: HashMap<String, BreakerConfig>,
    pub rate_limits: HashMap<String, RateLimitConfig>,
}

impl Router {
    /// Checks the routes and builds the router.
    pub(crate) fn new(parts: RouterParts) -> Result<Router, BuildError> {
        if parts.policy.attempts_per_provider == 0 {
            return Err(BuildError::ZeroAttempts);
        }
        let mut providers = HashMap::new();
        for p in parts.providers {
            let name = p.name().to_string();
            if providers.insert(name.clone(), p).is_some() {
                return Err(BuildError::DuplicateProvider(name));
            }
        }
        for (kind, route) in &parts.routes {
            for name in route.iter().flat_map(|e| group_members(e)) {
                if !providers.contains_key(name) && !parts.disabled.contains(name) {
                    let mut known: Vec<&str> = providers
                        .keys()
                        .map(String::as_str)
                        .chain(parts.disabled.iter().map(String::as_str))
                        .collect();
                    known.sort_unstable();
                    return Err(BuildError::UnknownProvider {
                        kind: *kind,
                        name: name.to_owned(),
                        known: known.join(", "),
                    });
                }
            }
            if !route
                .iter()
                .flat_map(|e| group_members(e))
                .any(|n| providers.contains_key(n))
            {
                tracing::warn!(
                    kind = %kind,
                    "no enabled provider in routes.{kind}: {kind} notifications cannot be delivered"
                );
            }
        }
        // A probe is lost (and another may start) once it cannot still be running.
        let probe_timeout = parts
            .policy
            .send_timeout
            .saturating_mul(parts.policy.attempts_per_provider)
            .saturating_add(parts.policy.max_inline_wait)
            .saturating_add(Duration::from_secs(1));
        let breakers = providers
            .keys()
            .map(|name| {
                let cfg = parts
                    .breaker_overrides
                    .get(name)
                    .copied()
                    .unwrap_or(parts.breaker);
                (
                    name.clone(),
                    CircuitBreaker::with_probe_timeout(cfg, probe_timeout).named(name.clone()),
                )
            })
            .collect();
        let limiters = parts
            .rate_limits
            .into_iter()
            .filter(|(name, _)| providers.contains_key(name))
            .map(|(name, cfg)| (name, RateLimiter::new(cfg)))
            .collect();
        Ok(Router {
            providers: std::sync::RwLock::new(Arc::new(providers)),
            disabled: parts.disabled,
            routes: parts.routes,
            policy: parts.policy,
            on_dead_address: parts.on_dead_address,
            dead: DeadAddresses::default(),
            breakers,
            limiters,
            events: HealthEvents::default(),
        })
    }

    fn provider_map(&self) -> Arc<ProviderMap> {
        Arc::clone(
            &self
                .providers
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Replaces providers by name with new instances (e.g. built from a rotated
    /// secret): sends that start from now on use them; sends in flight finish
    /// with the old ones; breakers, routes and rate limits stay. Providers that
    /// are not running here are ignored (returned), a reload cannot add or
    /// remove a provider.
    pub fn replace_providers(&self, new: Vec<Arc<dyn Notifier>>) -> Vec<String> {
        let mut guard = self
            .providers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut map: ProviderMap = (**guard).clone();
        let mut ignored = Vec::new();
        for p in new {
            let name = p.name().to_owned();
            match map.get_mut(&name) {
                Some(slot) => *slot = p,
                None => ignored.push(name),
            }
        }
        *guard = Arc::new(map);
        ignored
    }

    /// The route for a kind (empty when none is configured).
    pub fn route(&self, kind: Kind) -> &[String] {
        self.routes.get(&kind).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Enabled providers, sorted by name.
    pub fn providers(&self) -> Vec<Arc<dyn Notifier>> {
        let mut v: Vec<_> = self.provider_map().values().cloned().collect();
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

    /// The circuit state of a provider (`None` for unknown names).
    pub fn breaker_state(&self, provider: &str) -> Option<BreakerState> {
        self.breakers.get(provider).map(CircuitBreaker::state)
    }

    /// Whether a provider is usable now (circuit closed, not paused).
    pub fn is_healthy(&self, provider: &str) -> bool {
        self.breakers
            .get(provider)
            .is_none_or(CircuitBreaker::is_healthy)
    }

    /// When an unhealthy provider may be tried again (next probe, end of a pause).
    pub(crate) fn next_try_at(&self, provider: &str) -> Option<tokio::time::Instant> {
        self.breakers
            .get(provider)
            .and_then(CircuitBreaker::next_try_at)
    }

    /// The route `n` takes: only the provider a follow-up is for, else the
    /// recipient's own route when it has one, else its kind's route.
    fn route_for<'a>(&'a self, n: &'a Notification) -> &'a [String] {
        match (&n.resend_via, &n.route) {
            (Some(p), _) => std::slice::from_ref(p),
            (None, Some(route)) => route,
            (None, None) => self.route(n.kind),
        }
    }

    /// The providers of `n`'s route that could deliver it to a person: enabled,
    /// able to reach the recipient, not a log-only provider, and not only at
    /// addresses already reported dead.
    pub fn candidates(&self, n: &Notification) -> Vec<String> {
        let providers = self.provider_map();
        self.route_for(n)
            .iter()
            .flat_map(|entry| group_members(entry))
            .filter(|name| {
                providers
                    .get(*name)
                    .is_some_and(|p| p.reaches_people() && self.usable_for(p.as_ref(), n))
            })
            .map(str::to_owned)
            .collect()
    }

    /// The devices (addresses) of `n`'s recipient that `p` would send to, without
    /// those it reported dead. `None` when `p` has a single destination for `n`.
    fn devices(&self, p: &dyn Notifier, n: &Notification) -> Option<Vec<Address>> {
        let kind = p.address_kind(n)?;
        Some(
            n.recipient
                .addresses
                .iter()
                .filter(|a| {
                    a.kind == kind
                        && !a.value.is_empty()
                        && !self.dead.is_dead(p.name(), &n.recipient.user_id, a)
                })
                .cloned()
                .collect(),
        )
    }

    fn usable_for(&self, p: &dyn Notifier, n: &Notification) -> bool {
        p.can_reach(n)
            && match self.devices(p, n) {
                Some(devices) => !devices.is_empty(),
                None => !self.dead.first_is_dead(p.name(), n),
            }
    }

    /// Tries the route once (all providers, with their inline retries). A route
    /// entry `a+b` is one step: every provider of the group sends at once (to all
    /// of the recipient's devices), and the step delivered when any of them did.
    pub async fn try_route(&self, n: &Notification) -> Outcome {
        let mut outcome = Outcome::empty(n);
        let providers = self.provider_map();
        // Computed only when the route holds a log-only provider.
        let real_candidates = std::sync::OnceLock::new();
        for entry in self.route_for(n) {
            let delivered = if entry.contains('+') {
                let members: Vec<&str> = group_members(entry).collect();
                let results = futures_util::future::join_all(members.iter().map(|name| {
                    let (providers, real) = (&providers, &real_candidates);
                    async move {
                        let mut o = Outcome::empty(n);
                        let r = self.try_one(name, providers, n, &mut o, real).await;
                        (r, o)
                    }
                }))
                .await;
                let mut first = None;
                for (r, o) in results {
                    outcome.attempts.extend(o.attempts);
                    outcome.skipped.extend(o.skipped);
                    outcome.devices.extend(o.devices);
                    outcome.pending_devices.extend(o.pending_devices);
                    outcome.expired |= o.expired;
                    if let Some(r) = r {
                        first.get_or_insert(r);
                    }
                }
                first
            } else {
                self.try_one(entry, &providers, n, &mut outcome, &real_candidates)
                    .await
            };
            if let Some(receipt) = delivered {
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

    /// One provider of the route: skipped (with why) or tried.
    async fn try_one(
        &self,
        name: &str,
        providers: &ProviderMap,
        n: &Notification,
        outcome: &mut Outcome,
        real_candidates: &std::sync::OnceLock<bool>,
    ) -> Option<Receipt> {
        let skip = |reason| Skip {
            provider: name.to_owned(),
            reason,
        };
        let Some(provider) = providers.get(name) else {
            outcome.skipped.push(skip(SkipReason::NotConfigured));
            return None;
        };
        if !self.usable_for(provider.as_ref(), n) {
            outcome.skipped.push(skip(SkipReason::NoAddress));
            return None;
        }
        if !provider.reaches_people()
            && *real_candidates.get_or_init(|| !self.candidates(n).is_empty())
        {
            tracing::debug!(
                id = %n.id,
                kind = %n.kind,
                recipient = %n.recipient.user_id,
                "{name}: not counted as delivery while a real provider of routes.{} can reach the recipient; the notification waits for it",
                n.kind
            );
            outcome.skipped.push(skip(SkipReason::Standby));
            return None;
        }
        let breaker = self.breakers.get(name);
        let admission = breaker.map_or(Admission::Go, CircuitBreaker::allow);
        match admission {
            Admission::Open => {
                metrics::counter!("mesh_notify_skipped_total", "provider" => name.to_owned(), "reason" => "circuit_open").increment(1);
                outcome.skipped.push(skip(SkipReason::CircuitOpen));
                return None;
            }
            Admission::Paused => {
                metrics::counter!("mesh_notify_skipped_total", "provider" => name.to_owned(), "reason" => "paused").increment(1);
                outcome.skipped.push(skip(SkipReason::Paused));
                return None;
            }
            Admission::Go | Admission::Probe => {}
        }
        if let Some(limiter) = self.limiters.get(name) {
            if !limiter.acquire_within(self.policy.max_inline_wait).await {
                if admission == Admission::Probe {
                    if let Some(b) = breaker {
                        b.abandon_probe();
                    }
                }
                metrics::counter!("mesh_notify_skipped_total", "provider" => name.to_owned(), "reason" => "rate_limited").increment(1);
                outcome.skipped.push(skip(SkipReason::RateLimited));
                return None;
            }
        }
        let probe = ProbeGuard {
            breaker: (admission == Admission::Probe).then_some(breaker).flatten(),
        };
        let delivered = self.send_via(provider.as_ref(), n, outcome).await;
        probe.disarm();
        delivered
    }

    /// Sends through one provider: to the one destination, or to every device
    /// of the recipient (each with its own result; delivered when at least one
    /// device got it).
    async fn send_via(
        &self,
        provider: &dyn Notifier,
        n: &Notification,
        outcome: &mut Outcome,
    ) -> Option<Receipt> {
        let devices = match self.devices(provider, n) {
            None => return self.try_provider(provider, n, outcome).await,
            Some(d) => d,
        };
        if let [only] = devices.as_slice() {
            // One device: the notification as it is (same id), minus dead addresses.
            if n.recipient.address(only.kind) == Some(&only.value) {
                return self.try_provider(provider, n, outcome).await;
            }
            let mut view = n.clone();
            view.recipient
                .addresses
                .retain(|a| a.kind != only.kind || a == only);
            return self.try_provider(provider, &view, outcome).await;
        }
        let views: Vec<Notification> = devices.iter().map(|d| n.for_device(d)).collect();
        let results = futures_util::future::join_all(views.iter().map(|view| async move {
            let mut o = Outcome::empty(view);
            let r = self.try_provider(provider, view, &mut o).await;
            (r, o)
        }))
        .await;
        let mut first = None;
        for ((receipt, o), device) in results.into_iter().zip(devices) {
            let last = o.attempts.last();
            let class = last.and_then(|a| a.error_class);
            outcome.devices.push(DeviceOutcome {
                provider: provider.name().to_owned(),
                address: device.kind,
                hint: address_hint(&device),
                delivered: receipt.is_some(),
                message_id: receipt.as_ref().and_then(|r| r.message_id.clone()),
                error: if receipt.is_some() {
                    None
                } else {
                    last.and_then(|a| a.error.clone())
                },
                error_class: if receipt.is_some() { None } else { class },
            });
            outcome.attempts.extend(o.attempts);
            outcome.expired |= o.expired;
            match receipt {
                Some(r) => {
                    first.get_or_insert(r);
                }
                None if matches!(
                    class,
                    Some(ErrorClass::Transient) | Some(ErrorClass::Misconfigured)
                ) =>
                {
                    outcome
                        .pending_devices
                        .push((provider.name().to_owned(), device));
                }
                None => {}
            }
        }
        if first.is_none() {
            // Nobody got it: the whole notification is retried, every device again.
            outcome.pending_devices.clear();
        }
        first
    }

    fn on_answer(&self, name: &str) {
        if let Some(b) = self.breakers.get(name) {
            if b.on_answer() {
                self.events.recovered(name);
            }
        }
    }

    fn on_transient_failure(&self, name: &str, retry_after: Option<Duration>) {
        if let Some(b) = self.breakers.get(name) {
            let (was_healthy, was) = (b.is_healthy(), b.state());
            if let Some(wait) = retry_after {
                b.pause_for(wait.min(MAX_PAUSE));
            }
            b.on_transient_failure();
            // Opened, or a failed probe re-opened it: the monitor reschedules.
            if (was_healthy && !b.is_healthy())
                || (was != BreakerState::Open && b.state() == BreakerState::Open)
            {
                self.events.changed();
            }
        }
    }

    async fn try_provider(
        &self,
        provider: &dyn Notifier,
        n: &Notification,
        outcome: &mut Outcome,
    ) -> Option<Receipt> {
        let mut delay = self.policy.initial_delay;
        let name = provider.name();
        for try_number in 1..=self.policy.attempts_per_provider {
            if n.is_expired_at(Timestamp::now()) {
                outcome.expired = true;
                return None;
            }
            let started = Instant::now();
            let result = if provider
                .enforced_timeout()
                .is_some_and(|t| t <= self.policy.send_timeout)
            {
                // The provider bounds the send itself: no second timer.
                provider.send(n).await
            } else {
                match tokio::time::timeout(self.policy.send_timeout, provider.send(n)).await {
                    Ok(r) => r,
                    Err(_) => Err(NotifyError::transient(format!(
                        "{name} did not answer within {:?}",
                        self.policy.send_timeout
                    ))),
                }
            };
            let latency = started.elapsed();
            metrics::histogram!("mesh_notify_send_seconds", "provider" => name.to_owned())
                .record(latency.as_secs_f64());
            let err = match result {
                Ok(receipt) => {
                    metrics::counter!("mesh_notify_sent_total", "provider" => name.to_owned())
                        .increment(1);
                    self.on_answer(name);
                    outcome.attempts.push(Attempt {
                        provider: name.to_string(),
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
            metrics::counter!("mesh_notify_failed_total", "provider" => name.to_owned(), "class" => err.class().as_str()).increment(1);
            if err.is_transient() {
                self.on_transient_failure(name, err.retry_after());
            } else if err.class() == ErrorClass::Misconfigured {
                if let Some(b) = self.breakers.get(name) {
                    let was_healthy = b.is_healthy();
                    b.on_misconfigured();
                    if was_healthy {
                        self.events.changed();
                    }
                }
            } else {
                self.on_answer(name);
            }
            tracing::debug!(provider = name, try_number, error = %err, "provider failed");
            outcome.attempts.push(Attempt {
                provider: name.to_string(),
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
                    if self
                        .breakers
                        .get(name)
                        .is_some_and(|b| b.state() != BreakerState::Closed)
                    {
                        return None;
                    }
                    tokio::time::sleep(wait).await;
                    delay = delay.saturating_mul(2);
                }
                NotifyError::RecipientGone { address, reason } => {
                    if self.dead.insert(name, n, *address) {
                        tracing::info!(
                            provider = name,
                            user = %n.recipient.user_id,
                            address = %address,
                            "provider reports a dead address"
                        );
                        if let Some(hook) = &self.on_dead_address {
                            hook(DeadAddress {
                                user_id: n.recipient.user_id.clone(),
                                kind: *address,
                                address: n.recipient.address(*address).cloned(),
                                provider: name.to_string(),
                                reason: reason.clone(),
                            });
                        }
                    }
                    return None;
                }
                NotifyError::Misconfigured { .. } => {
                    tracing::error!(provider = name, error = %err, "provider is misconfigured");
                    return None;
                }
                _ => return None,
            }
        }
        None
    }
}

/// The providers of a route entry: `fcm+apns` → `fcm`, `apns`.
pub fn group_members(entry: &str) -> impl Iterator<Item = &str> {
    entry.split('+').map(str::trim).filter(|s| !s.is_empty())
}

/// Gives a granted probe back if the send is cancelled before it reports (the
/// caller's future dropped mid-send), so the breaker does not wait for a probe
/// that will never answer.
struct ProbeGuard<'a> {
    breaker: Option<&'a CircuitBreaker>,
}

impl ProbeGuard<'_> {
    fn disarm(mut self) {
        self.breaker = None;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.breaker {
            if b.state() == BreakerState::HalfOpen {
                b.abandon_probe();
            }
        }
    }
}
