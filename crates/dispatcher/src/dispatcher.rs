//! [`Dispatcher`]: the router (try the route now) and the delivery service (durable
//! outbox, workers, park/probe) behind one handle.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use mesh_notify_core::{Kind, Notification, Notifier, Outbox, OutboxError};

use crate::breaker::{BreakerConfig, BreakerState};
use crate::delivery::{AddressBook, Delivery, QueuePolicy, Submitted, Workers};
use crate::ratelimit::RateLimitConfig;
use crate::router::{
    BuildError, DeadAddress, DeadAddressHook, Outcome, RetryPolicy, Router, RouterParts,
};

/// Routes notifications through providers and delivers queued ones. Cheap to
/// share behind an `Arc`.
pub struct Dispatcher {
    router: Arc<Router>,
    delivery: Arc<Delivery>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("router", &self.router)
            .field("outbox", &self.delivery.outbox().map(|o| o.backend()))
            .field("queue", self.delivery.queue_policy())
            .finish()
    }
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
    address_book: Option<Arc<dyn AddressBook>>,
    on_outcome: Option<crate::delivery::OutcomeHook>,
}

impl DispatcherBuilder {
    /// Called (synchronously, keep it cheap) with the outcome of every try of a
    /// notification, queued or dispatched: e.g. to answer "what happened to it?".
    pub fn on_outcome(
        mut self,
        hook: impl Fn(&Notification, &Outcome) + Send + Sync + 'static,
    ) -> Self {
        self.on_outcome = Some(Arc::new(hook));
        self
    }

    /// Looks up each recipient's current addresses just before a queued
    /// notification is sent (see [`AddressBook`]).
    pub fn address_book(mut self, book: Arc<dyn AddressBook>) -> Self {
        self.address_book = Some(book);
        self
    }

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

    /// Called (synchronously, keep it cheap) once for each address a provider
    /// reports dead.
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

    /// The providers added so far (e.g. to hand rebuilt ones to
    /// [`Router::replace_providers`] after a secret rotation).
    pub fn into_providers(self) -> Vec<Arc<dyn Notifier>> {
        self.providers
    }

    /// Checks the routes and builds the dispatcher.
    pub fn build(self) -> Result<Dispatcher, BuildError> {
        let router = Arc::new(Router::new(RouterParts {
            providers: self.providers,
            disabled: self.disabled,
            routes: self.routes,
            policy: self.policy,
            on_dead_address: self.on_dead_address,
            breaker: self.breaker,
            breaker_overrides: self.breaker_overrides,
            rate_limits: self.rate_limits,
        })?);
        let delivery = Arc::new(Delivery::new(
            Arc::clone(&router),
            self.outbox,
            self.queue,
            self.address_book,
            self.on_outcome,
        ));
        Ok(Dispatcher { router, delivery })
    }
}

impl Dispatcher {
    /// A builder.
    pub fn builder() -> DispatcherBuilder {
        DispatcherBuilder::default()
    }

    /// The router (routes, provider health, inline retry).
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The route for a kind (empty when none is configured).
    pub fn route(&self, kind: Kind) -> &[String] {
        self.router.route(kind)
    }

    /// Enabled providers, sorted by name.
    pub fn providers(&self) -> Vec<Arc<dyn Notifier>> {
        self.router.providers()
    }

    /// Names of known providers that are not configured.
    pub fn disabled(&self) -> impl Iterator<Item = &str> {
        self.router.disabled()
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        self.router.policy()
    }

    /// The outbox, if one is configured.
    pub fn outbox(&self) -> Option<&Arc<dyn Outbox>> {
        self.delivery.outbox()
    }

    /// Wakes an idle delivery worker: call after enqueuing into the outbox directly
    /// (e.g. inside your own database transaction) so delivery starts at once.
    pub fn notify_enqueued(&self) {
        self.delivery.notify_enqueued();
    }

    /// The queue policy.
    pub fn queue_policy(&self) -> &QueuePolicy {
        self.delivery.queue_policy()
    }

    /// The circuit state of a provider (`None` for unknown names).
    pub fn breaker_state(&self, provider: &str) -> Option<BreakerState> {
        self.router.breaker_state(provider)
    }

    /// Tries the route for `n.kind` now, primary first, and reports every attempt.
    /// When nothing delivers and some provider may deliver later, the notification
    /// is queued for automatic retry (`outcome.queued`; needs an outbox). What
    /// every provider refused for good is not queued: the outcome says why.
    pub async fn dispatch(&self, n: Notification) -> Outcome {
        self.delivery.dispatch(n).await
    }

    /// Tries the route once (all providers, with their inline retries); never queues.
    pub async fn try_route(&self, n: &Notification) -> Outcome {
        self.router.try_route(n).await
    }

    /// Hands a notification over for delivery and returns as soon as it is durable
    /// (the chat path never waits on a provider).
    pub async fn submit(&self, n: Notification) -> Result<Submitted, OutboxError> {
        self.delivery.submit(n).await
    }

    /// Hands several notifications over in one durable write (one Redis script,
    /// one SQLite transaction); returns how many were new (an id already queued
    /// is not added twice). All or none: on an error none is known to be queued.
    pub async fn submit_batch(&self, ns: Vec<Notification>) -> Result<usize, OutboxError> {
        self.delivery.submit_batch(ns).await
    }

    /// Starts `queue.workers` supervised delivery workers, the provider health
    /// monitor and an outbox metrics sampler on the current runtime. Without an
    /// outbox there is nothing to drain and none start.
    pub fn start_workers(&self) -> Workers {
        self.delivery.start_workers()
    }
}
