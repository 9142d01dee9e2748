//! The four scenarios. Each returns its table rows, or an error when it could not run.

use std::sync::Arc;

use serde_json::json;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mesh_notify::{BreakerConfig, BreakerState, Dispatcher, QueuePolicy, RetryPolicy};
use mesh_notify_core::{
    Composer, Health, Kind, Notification, Notifier, NotifyError, Outbox, Receipt, Recipient, Room,
    Secret, Timestamp,
};
use mesh_notify_gotify::{message_body, GotifyNotifier};
use mesh_notify_outbox_sqlite::SqliteOutbox;
use tokio::runtime::Handle;

use crate::load::{self, fresh, Load, Op};
use crate::report::{
    fmt_duration, median, median_duration, reset_peak_rss, status_kib, thousands, Row,
};
use crate::sink::{Mode, Sink, SinkError, TOKEN};

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The sink could not start.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Building a client, provider, dispatcher or outbox failed.
    #[error("{scenario}: setup failed: {reason}")]
    Setup {
        /// Scenario.
        scenario: &'static str,
        /// Why.
        reason: String,
    },
    /// A measurement did not complete (a delivery failed, a deadline passed).
    #[error("{scenario}: {reason}")]
    Run {
        /// Scenario.
        scenario: &'static str,
        /// Why.
        reason: String,
    },
}

fn setup(scenario: &'static str) -> impl Fn(String) -> BenchError {
    move |reason| BenchError::Setup { scenario, reason }
}

fn run_err(scenario: &'static str) -> impl Fn(String) -> BenchError {
    move |reason| BenchError::Run { scenario, reason }
}

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Measured repetitions per figure (medians are reported).
    pub reps: usize,
    /// Notifications per repetition at c=1.
    pub c1: usize,
    /// Notifications per repetition at c=64.
    pub c64: usize,
    /// Notifications per failover repetition (c=1).
    pub failover: usize,
    /// Notifications for the failover figure with the default retry policy.
    pub failover_default_policy: usize,
    /// The hung primary's timeout.
    pub hang_timeout: Duration,
    /// One-at-a-time durable enqueues per repetition.
    pub durable: usize,
    /// Batched enqueues per repetition.
    pub batched: usize,
    /// Entries per batch.
    pub batch: usize,
    /// Backlog drained after recovery.
    pub backlog: usize,
    /// Entries queued for the memory figure.
    pub queued: usize,
    /// Upper bound for waiting on the backlog drain.
    pub drain_deadline: Duration,
    /// Recovery figure: how long the only provider is down, workers running.
    pub outage: Duration,
    /// Recovery figure: notifications submitted during the outage.
    pub outage_backlog: usize,
}

impl Sizes {
    /// Full run.
    pub fn full() -> Self {
        Self {
            reps: 5,
            c1: 2_000,
            c64: 20_000,
            failover: 1_000,
            failover_default_policy: 10,
            hang_timeout: Duration::from_millis(200),
            durable: 1_000,
            batched: 50_000,
            batch: 500,
            backlog: 100_000,
            queued: 100_000,
            drain_deadline: Duration::from_secs(600),
            outage: Duration::from_secs(60),
            outage_backlog: 10_000,
        }
    }

    /// Smoke run: every scenario end to end in a few seconds.
    pub fn quick() -> Self {
        Self {
            reps: 1,
            c1: 100,
            c64: 640,
            failover: 50,
            failover_default_policy: 2,
            hang_timeout: Duration::from_millis(100),
            durable: 30,
            batched: 2_000,
            batch: 500,
            backlog: 2_000,
            queued: 2_000,
            drain_deadline: Duration::from_secs(60),
            outage: Duration::from_secs(3),
            outage_backlog: 500,
        }
    }
}

/// State shared by the scenarios of one run.
pub struct Bench {
    /// Sizes.
    pub sizes: Sizes,
    /// The runtime the sinks run on (separate from the clients' runtime).
    pub sink_rt: Handle,
    /// The healthy sink.
    pub sink: Sink,
    /// `--pin`: the out-of-process sink on the last core, the client on the others.
    pub pin: bool,
    /// RSS when everything was started and nothing sent, KiB.
    pub rss_at_rest_kib: Option<u64>,
    /// Notes for the report (settings that shape the figures).
    pub notes: Vec<String>,
}

/// The provider timeout used for healthy sinks (the CLI's default).
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(5);

fn template() -> Notification {
    Composer::default().chat(
        "Alice",
        &Room::new("r-bench", "Test Gotify"),
        Recipient::new("bob", "Bob"),
        "Salut Bob, on se retrouve à 18 h dans la salle habituelle ? J'apporte le projecteur.",
    )
}

fn gotify(
    url: &str,
    timeout: Duration,
    scenario: &'static str,
) -> Result<GotifyNotifier, BenchError> {
    GotifyNotifier::new(url, Some(Secret::new(TOKEN)), timeout)
        .map_err(|e| setup(scenario)(e.to_string()))
}

/// The same client settings as `GotifyNotifier::new`.
fn baseline_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("mesh-notify/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

fn baseline_op(client: reqwest::Client, url: reqwest::Url) -> Op {
    Arc::new(move |n: Notification| {
        let client = client.clone();
        let url = url.clone();
        Box::pin(async move {
            let resp = client
                .post(url)
                .header("X-Gotify-Key", TOKEN)
                .json(&message_body(&n))
                .send()
                .await
                .map_err(|e| format!("baseline POST failed: {e}"))?;
            let status = resp.status();
            let body = resp
                .text()
                .await
                .map_err(|e| format!("baseline body: {e}"))?;
            if status != reqwest::StatusCode::OK {
                return Err(format!("baseline got {status}: {body}"));
            }
            Ok(())
        })
    })
}

fn dispatch_op(d: Arc<Dispatcher>) -> Op {
    Arc::new(move |n: Notification| {
        let d = Arc::clone(&d);
        Box::pin(async move {
            let o = d.dispatch(n).await;
            if o.is_delivered() {
                Ok(())
            } else {
                Err(format!(
                    "dispatcher did not deliver: {}",
                    o.failure_summary()
                ))
            }
        })
    })
}

fn fmt_load(l: &Load) -> String {
    format!(
        "{}/s · p50 {} · p99 {}",
        thousands(l.throughput),
        fmt_duration(l.latency.p50),
        fmt_duration(l.latency.p99)
    )
}

/// Median throughput, p50, p99 and mean over repetitions.
fn median_load(runs: &[Load]) -> Load {
    let mut out = runs.first().copied().unwrap_or(Load {
        throughput: 0.0,
        latency: Default::default(),
    });
    out.throughput = median(&runs.iter().map(|l| l.throughput).collect::<Vec<_>>());
    out.latency.p50 = median_duration(&runs.iter().map(|l| l.latency.p50).collect::<Vec<_>>());
    out.latency.p99 = median_duration(&runs.iter().map(|l| l.latency.p99).collect::<Vec<_>>());
    out.latency.mean = median_duration(&runs.iter().map(|l| l.latency.mean).collect::<Vec<_>>());
    out
}

fn healthy_dispatcher(url: &str, scenario: &'static str) -> Result<Arc<Dispatcher>, BenchError> {
    let d = Dispatcher::builder()
        .notifier(Arc::new(gotify(url, PROVIDER_TIMEOUT, scenario)?))
        .route(Kind::Chat, ["gotify"])
        .build()
        .map_err(|e| setup(scenario)(e.to_string()))?;
    Ok(Arc::new(d))
}

/// Scenario 1: plain reqwest vs `Dispatcher::dispatch`, c=1 and c=64, against the
/// sink in its own process (as a user's Gotify is).
pub async fn dispatch(b: &mut Bench) -> Result<Vec<Row>, BenchError> {
    const S: &str = "dispatch";
    let sink_process = crate::sink::SinkProcess::start(b.pin).map_err(setup(S))?;
    let url = sink_process.url().to_owned();
    // With --pin the sink pinned itself to the last core; the client takes the others.
    let cpus = if b.pin {
        crate::affinity::allowed()
    } else {
        Vec::new()
    };
    if cpus.len() >= 2 {
        crate::affinity::pin_process(&cpus[..cpus.len() - 1]).map_err(setup(S))?;
    }
    let message_url =
        reqwest::Url::parse(&format!("{url}message")).map_err(|e| setup(S)(e.to_string()))?;
    let client = baseline_client(PROVIDER_TIMEOUT).map_err(setup(S))?;
    let base = baseline_op(client, message_url);
    let disp = dispatch_op(healthy_dispatcher(&url, S)?);
    // Decomposition at c=1: the provider alone, and the provider inside the same
    // `tokio::time::timeout` the dispatcher wraps every send in.
    let provider: Arc<dyn Notifier> = Arc::new(gotify(&url, PROVIDER_TIMEOUT, S)?);
    let direct: Op = {
        let provider = Arc::clone(&provider);
        Arc::new(move |n: Notification| {
            let p = Arc::clone(&provider);
            Box::pin(async move {
                p.send(&n)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("provider did not deliver: {e}"))
            })
        })
    };
    let send_timeout = RetryPolicy::default().send_timeout;
    let direct_timeout: Op = Arc::new(move |n: Notification| {
        let p = Arc::clone(&provider);
        Box::pin(async move {
            tokio::time::timeout(send_timeout, p.send(&n))
                .await
                .map_err(|_| "provider timed out".to_string())?
                .map(|_| ())
                .map_err(|e| format!("provider did not deliver: {e}"))
        })
    });
    let tpl = template();
    let mut rows = Vec::new();
    let mut decomposition = Vec::new();
    for (c, total) in [(1usize, b.sizes.c1), (64, b.sizes.c64)] {
        let mut ops = vec![Arc::clone(&base), Arc::clone(&disp)];
        if c == 1 {
            ops.push(Arc::clone(&direct));
            ops.push(Arc::clone(&direct_timeout));
        }
        // Warm-up (connections, allocator, caches): not recorded.
        let warm = (total / 4).max(c);
        for op in &ops {
            load::run(c, warm, &tpl, Arc::clone(op))
                .await
                .map_err(run_err(S))?;
        }
        // Interleaved so that drift in the machine's load hits all alike.
        let mut runs: Vec<Vec<Load>> = vec![Vec::new(); ops.len()];
        for _ in 0..b.sizes.reps {
            for (op, out) in ops.iter().zip(runs.iter_mut()) {
                out.push(
                    load::run(c, total, &tpl, Arc::clone(op))
                        .await
                        .map_err(run_err(S))?,
                );
            }
        }
        // Added mean latency over the baseline, median over the paired repetitions.
        let added_over_base = |i: usize| {
            let d: Vec<f64> = runs[i]
                .iter()
                .zip(&runs[0])
                .map(|(x, b)| x.latency.mean.as_secs_f64() - b.latency.mean.as_secs_f64())
                .collect();
            median(&d) * 1e6
        };
        let added = vec![added_over_base(1) / 1e6];
        let (bs, ds) = (runs[0].clone(), runs[1].clone());
        if c == 1 {
            for (i, what) in [
                (2, "Gotify provider called directly (no dispatcher), c=1"),
                (
                    3,
                    "Gotify provider inside tokio::time::timeout (no dispatcher), c=1",
                ),
            ] {
                let l = median_load(&runs[i]);
                decomposition.push(Row::info(
                    S,
                    what,
                    format!(
                        "{} · {:+.1} µs over the baseline (mean)",
                        fmt_load(&l),
                        added_over_base(i)
                    ),
                    added_over_base(i),
                    "us",
                ));
            }
        }
        let (bl, dl) = (median_load(&bs), median_load(&ds));
        let ratio = dl.throughput / bl.throughput.max(f64::MIN_POSITIVE);
        rows.push(Row::info(
            S,
            format!("reqwest baseline, c={c}"),
            fmt_load(&bl),
            bl.throughput,
            "notifications/s",
        ));
        let row = Row::info(
            S,
            format!("dispatcher, c={c}"),
            fmt_load(&dl),
            dl.throughput,
            "notifications/s",
        )
        .ratio(ratio);
        if c == 64 {
            rows.push(row.target("≥ 0.9× baseline", ratio >= 0.9));
        } else {
            rows.push(row);
            let added_us = median(&added) * 1e6;
            rows.push(
                Row::info(
                    S,
                    "added per notification by the dispatcher, c=1 (mean latency)",
                    format!("{added_us:.1} µs"),
                    added_us,
                    "us",
                )
                .target("≤ 10 µs", added_us <= 10.0),
            );
            rows.append(&mut decomposition);
        }
    }
    rows.push(dispatcher_alone(b.sizes.c1 * 50, &tpl).await?);
    b.notes.push(format!(
        "dispatch: the sink runs as a separate process (this program re-executed with --serve-sink, one runtime thread), as a user's Gotify would{}; {} notifications per repetition at c=1, {} at c=64, {} interleaved repetitions after a warm-up; medians. Baseline and dispatcher share the reqwest settings of GotifyNotifier (timeout 5 s, keep-alive) and send byte-for-byte the same body (mesh_notify_gotify::message_body of the same notification, serialised per request by both). The 'dispatcher alone' row is in-process on purpose: a no-op provider, no network, the dispatcher's own CPU cost.",
        if b.pin { " (--pin: sink on the last core, client threads on the others)" } else { " (unpinned: the scheduler may co-locate or split client and sink, and c=1 figures differ ~4x between the two placements; --pin fixes the split one)" },
        b.sizes.c1, b.sizes.c64, b.sizes.reps
    ));
    drop(sink_process);
    if cpus.len() >= 2 {
        crate::affinity::pin_process(&cpus).map_err(setup(S))?;
    }
    Ok(rows)
}

/// A provider that delivers at once, to time the dispatcher without the network.
struct Instant0;

#[async_trait]
impl Notifier for Instant0 {
    fn name(&self) -> &str {
        "noop"
    }

    async fn send(&self, _: &Notification) -> Result<Receipt, NotifyError> {
        Ok(Receipt {
            provider: "noop".into(),
            message_id: None,
            latency: Duration::ZERO,
        })
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}

/// CPU cost of `Dispatcher::dispatch` itself: a no-op provider called through the
/// dispatcher vs called directly, sequentially.
async fn dispatcher_alone(n: usize, tpl: &Notification) -> Result<Row, BenchError> {
    const S: &str = "dispatch";
    let noop: Arc<dyn Notifier> = Arc::new(Instant0);
    let d = Dispatcher::builder()
        .notifier(Arc::clone(&noop))
        .route(Kind::Chat, ["noop"])
        .build()
        .map_err(|e| setup(S)(e.to_string()))?;
    let mut direct = Vec::new();
    let mut through = Vec::new();
    for round in 0..6 {
        let t = Instant::now();
        for _ in 0..n {
            let n = fresh(tpl);
            noop.send(&n).await.map_err(|e| run_err(S)(e.to_string()))?;
        }
        let a = t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            if !d.dispatch(fresh(tpl)).await.is_delivered() {
                return Err(run_err(S)("the no-op provider did not deliver".into()));
            }
        }
        let b = t.elapsed();
        // Round 0 is the warm-up.
        if round > 0 {
            direct.push(a.as_secs_f64() / n as f64);
            through.push(b.as_secs_f64() / n as f64);
        }
    }
    let cost = (median(&through) - median(&direct)) * 1e6;
    Ok(Row::info(
        S,
        "dispatcher alone, per notification (no-op provider, no network)",
        format!("{cost:.2} µs"),
        cost,
        "us",
    ))
}

/// A Gotify notifier under another name, so one route can hold two of them.
struct Named {
    name: &'static str,
    inner: GotifyNotifier,
}

#[async_trait]
impl Notifier for Named {
    fn name(&self) -> &str {
        self.name
    }

    fn can_reach(&self, n: &Notification) -> bool {
        self.inner.can_reach(n)
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        let mut r = self.inner.send(n).await?;
        r.provider = self.name.to_string();
        Ok(r)
    }

    async fn health(&self) -> Health {
        self.inner.health().await
    }
}

fn failover_dispatcher(
    primary: GotifyNotifier,
    backup: GotifyNotifier,
    policy: RetryPolicy,
    breaker: BreakerConfig,
) -> Result<Arc<Dispatcher>, BenchError> {
    let d = Dispatcher::builder()
        .notifier(Arc::new(Named {
            name: "primary",
            inner: primary,
        }))
        .notifier(Arc::new(Named {
            name: "backup",
            inner: backup,
        }))
        .route(Kind::Chat, ["primary", "backup"])
        .policy(policy)
        .breaker(breaker)
        .build()
        .map_err(|e| setup("failover")(e.to_string()))?;
    Ok(Arc::new(d))
}

/// An op that also checks which provider delivered.
fn delivered_by(d: Arc<Dispatcher>, provider: &'static str) -> Op {
    Arc::new(move |n: Notification| {
        let d = Arc::clone(&d);
        Box::pin(async move {
            let o = d.dispatch(n).await;
            match &o.delivered {
                Some(r) if r.provider == provider => Ok(()),
                Some(r) => Err(format!("delivered by {} instead of {provider}", r.provider)),
                None => Err(format!("not delivered: {}", o.failure_summary())),
            }
        })
    })
}

/// A loopback URL on which nothing listens (connections are refused).
fn refused_url() -> Result<String, BenchError> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| setup("failover")(e.to_string()))?;
    let addr = l
        .local_addr()
        .map_err(|e| setup("failover")(e.to_string()))?;
    drop(l);
    Ok(format!("http://{addr}/"))
}

/// Scenario 2: failover latency (refused, 503, hung before/after the breaker opens).
pub async fn failover(b: &mut Bench) -> Result<Vec<Row>, BenchError> {
    const S: &str = "failover";
    let ok_url = b.sink.url();
    let unavailable_sink = Sink::start(b.sink_rt.clone()).await?;
    unavailable_sink.set_mode(Mode::Unavailable);
    let hung_sink = Sink::start(b.sink_rt.clone()).await?;
    hung_sink.set_mode(Mode::Hang);
    let tpl = template();
    let n = b.sizes.failover;
    let one_try = RetryPolicy {
        attempts_per_provider: 1,
        ..RetryPolicy::default()
    };
    let no_breaker = BreakerConfig {
        failure_threshold: 0,
        ..BreakerConfig::default()
    };
    let ok = || gotify(&ok_url, PROVIDER_TIMEOUT, S);

    // Reference: the same two-provider route, primary healthy.
    let healthy = failover_dispatcher(ok()?, ok()?, one_try.clone(), BreakerConfig::default())?;
    // Primary refuses connections / answers 503; breaker disabled so every
    // notification tries it.
    let refused = failover_dispatcher(
        gotify(&refused_url()?, PROVIDER_TIMEOUT, S)?,
        ok()?,
        one_try.clone(),
        no_breaker,
    )?;
    let unavailable = failover_dispatcher(
        gotify(&unavailable_sink.url(), PROVIDER_TIMEOUT, S)?,
        ok()?,
        one_try.clone(),
        no_breaker,
    )?;
    // Primary hangs: each try waits for the provider timeout until the breaker opens.
    let threshold = 5;
    let hung = failover_dispatcher(
        gotify(&hung_sink.url(), b.sizes.hang_timeout, S)?,
        ok()?,
        one_try,
        BreakerConfig {
            failure_threshold: threshold,
            probe_interval: Duration::from_secs(600),
            probe_max_interval: Duration::from_secs(600),
        },
    )?;
    let ops = [
        delivered_by(healthy, "primary"),
        delivered_by(refused, "backup"),
        delivered_by(unavailable, "backup"),
        delivered_by(Arc::clone(&hung), "backup"),
    ];
    let before = load::run(1, threshold as usize, &tpl, Arc::clone(&ops[3]))
        .await
        .map_err(run_err(S))?;
    if hung.breaker_state("primary") != Some(BreakerState::Open) {
        return Err(run_err(S)(format!(
            "the primary's breaker did not open after {threshold} timeouts (state {:?})",
            hung.breaker_state("primary")
        )));
    }
    for op in &ops {
        load::run(1, (n / 4).max(1), &tpl, Arc::clone(op))
            .await
            .map_err(run_err(S))?;
    }
    // Interleaved repetitions, so that drift in the machine's load hits all alike.
    let mut runs: [Vec<Load>; 4] = Default::default();
    for _ in 0..b.sizes.reps {
        for (op, out) in ops.iter().zip(runs.iter_mut()) {
            out.push(
                load::run(1, n, &tpl, Arc::clone(op))
                    .await
                    .map_err(run_err(S))?,
            );
        }
    }
    let [h, r, u, open] = runs.map(|v| median_load(&v));
    if hung.breaker_state("primary") != Some(BreakerState::Open) {
        return Err(run_err(S)(
            "the hung primary's breaker closed during the measurement".into(),
        ));
    }

    let added = |l: &Load| (l.latency.p50.as_secs_f64() - h.latency.p50.as_secs_f64()) * 1e6;
    let value = |l: &Load| {
        format!(
            "p50 {} ({}{}) · p99 {}",
            fmt_duration(l.latency.p50),
            if added(l) < 0.0 { "-" } else { "+" },
            fmt_duration(Duration::from_secs_f64(added(l).abs() / 1e6)),
            fmt_duration(l.latency.p99)
        )
    };
    let mut rows = vec![Row::info(
        S,
        "healthy primary, c=1 (reference)",
        fmt_load(&h),
        h.latency.p50.as_secs_f64() * 1e6,
        "us",
    )];
    rows.push(
        Row::info(
            S,
            "failover, primary refuses connections (added p50)",
            value(&r),
            added(&r),
            "us",
        )
        .target("≤ 1 ms added", added(&r) <= 1000.0),
    );

    // The same with the default retry policy (2 tries per provider, 200 ms apart).
    let refused_default = failover_dispatcher(
        gotify(&refused_url()?, PROVIDER_TIMEOUT, S)?,
        ok()?,
        RetryPolicy::default(),
        no_breaker,
    )?;
    let rd = load::run(
        1,
        b.sizes.failover_default_policy,
        &tpl,
        delivered_by(refused_default, "backup"),
    )
    .await
    .map_err(run_err(S))?;
    rows.push(Row::info(
        S,
        "failover, primary refuses, default retry policy (2 tries, 200 ms apart)",
        value(&rd),
        added(&rd),
        "us",
    ));
    rows.push(Row::info(
        S,
        "failover, primary answers 503 (added p50)",
        value(&u),
        added(&u),
        "us",
    ));
    rows.push(Row::info(
        S,
        format!(
            "primary hung ({} timeout), before its breaker opens",
            fmt_duration(b.sizes.hang_timeout)
        ),
        format!("p50 {}", fmt_duration(before.latency.p50)),
        before.latency.p50.as_secs_f64() * 1e6,
        "us",
    ));
    let ratio = open.latency.p99.as_secs_f64() / h.latency.p99.as_secs_f64().max(f64::MIN_POSITIVE);
    rows.push(
        Row::info(
            S,
            "primary hung, breaker open: p99",
            format!(
                "p99 {} · p50 {} (healthy p99 {})",
                fmt_duration(open.latency.p99),
                fmt_duration(open.latency.p50),
                fmt_duration(h.latency.p99)
            ),
            open.latency.p99.as_secs_f64() * 1e6,
            "us",
        )
        .ratio(ratio)
        .target("≤ 2× healthy p99", ratio <= 2.0),
    );
    b.notes.push(format!(
        "failover: route [primary, backup], c=1, {n} notifications per repetition, {} interleaved repetitions after a warm-up, medians; retry.attempts_per_provider = 1 unless stated; breaker disabled for the refused and 503 figures (so every notification tries the primary); hung primary: provider timeout {}, breaker threshold {threshold}. \"Added\" is the p50 over the healthy-primary reference.",
        b.sizes.reps,
        fmt_duration(b.sizes.hang_timeout)
    ));
    Ok(rows)
}

fn temp_dir(scenario: &'static str) -> Result<tempfile::TempDir, BenchError> {
    tempfile::Builder::new()
        .prefix("mesh-notify-bench-")
        .tempdir()
        .map_err(|e| setup(scenario)(format!("cannot create a temporary directory: {e}")))
}

fn open_sqlite(
    dir: &tempfile::TempDir,
    name: &str,
    scenario: &'static str,
) -> Result<Arc<SqliteOutbox>, BenchError> {
    SqliteOutbox::open(dir.path().join(name))
        .map(Arc::new)
        .map_err(|e| setup(scenario)(e.to_string()))
}

/// Enqueues `total` fresh notifications in batches of `batch`, building each batch
/// just before it is stored (so no large vector outlives the call).
async fn fill(
    outbox: &dyn Outbox,
    tpl: &Notification,
    total: usize,
    batch: usize,
) -> Result<(), String> {
    let mut left = total;
    while left > 0 {
        let k = left.min(batch);
        let ns: Vec<Notification> = (0..k).map(|_| fresh(tpl)).collect();
        let added = outbox
            .enqueue_batch(&ns, Timestamp::now())
            .await
            .map_err(|e| e.to_string())?;
        if added != k {
            return Err(format!("enqueue_batch stored {added} of {k} new entries"));
        }
        left -= k;
    }
    Ok(())
}

/// Scenario 3: outbox enqueue throughput and backlog drain.
pub async fn outbox(b: &mut Bench) -> Result<Vec<Row>, BenchError> {
    const S: &str = "outbox";
    let dir = temp_dir(S)?;
    let tpl = template();
    let mut rows = Vec::new();

    // One at a time, each durable (WAL, synchronous=FULL) before the next.
    let durable = open_sqlite(&dir, "durable.db", S)?;
    for _ in 0..10 {
        durable
            .enqueue(&fresh(&tpl), Timestamp::now())
            .await
            .map_err(|e| run_err(S)(e.to_string()))?;
    }
    let mut rates = Vec::new();
    for _ in 0..b.sizes.reps.min(3) {
        let t = Instant::now();
        for _ in 0..b.sizes.durable {
            durable
                .enqueue(&fresh(&tpl), Timestamp::now())
                .await
                .map_err(|e| run_err(S)(e.to_string()))?;
        }
        rates.push(b.sizes.durable as f64 / t.elapsed().as_secs_f64());
    }
    let rate = median(&rates);
    rows.push(
        Row::info(
            S,
            "SQLite enqueue, one at a time (durable)",
            format!("{}/s", thousands(rate)),
            rate,
            "enqueues/s",
        )
        .target("≥ 2,000/s", rate >= 2000.0),
    );

    // Batched: one transaction per batch.
    let batched = open_sqlite(&dir, "batched.db", S)?;
    fill(batched.as_ref(), &tpl, b.sizes.batch, b.sizes.batch)
        .await
        .map_err(run_err(S))?;
    let mut rates = Vec::new();
    for _ in 0..b.sizes.reps.min(3) {
        let batches: Vec<Vec<Notification>> = (0..b.sizes.batched.div_ceil(b.sizes.batch))
            .map(|_| (0..b.sizes.batch).map(|_| fresh(&tpl)).collect())
            .collect();
        let count: usize = batches.iter().map(Vec::len).sum();
        let t = Instant::now();
        for ns in &batches {
            batched
                .enqueue_batch(ns, Timestamp::now())
                .await
                .map_err(|e| run_err(S)(e.to_string()))?;
        }
        rates.push(count as f64 / t.elapsed().as_secs_f64());
    }
    let rate = median(&rates);
    rows.push(
        Row::info(
            S,
            format!("SQLite enqueue, batched ({} per batch)", b.sizes.batch),
            format!("{}/s", thousands(rate)),
            rate,
            "enqueues/s",
        )
        .target("≥ 20,000/s", rate >= 20_000.0),
    );

    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => rows.extend(redis_rows(b, &url, &tpl).await?),
        _ => rows.push(Row::skipped(
            S,
            "Redis enqueue",
            "skipped (REDIS_URL not set)",
            "≥ 30,000/s",
        )),
    }

    // Backlog drain: entries queued while the sink is down, then delivered by the
    // workers once it is back.
    // Live rate on the same (in-process) sink the drains use.
    let live = {
        let d = dispatch_op(healthy_dispatcher(&b.sink.url(), S)?);
        load::run(64, b.sizes.c64 / 4, &tpl, Arc::clone(&d))
            .await
            .map_err(run_err(S))?;
        load::run(64, b.sizes.c64, &tpl, d)
            .await
            .map_err(run_err(S))?
            .throughput
    };
    let queue = QueuePolicy::default();
    let disk = drain(b, dir.path(), &queue, &tpl).await?;
    rows.push(drain_row(b, &disk, live, "").target("≥ 0.8× live", disk.rate / live >= 0.8));
    rows.push(recovery(b, dir.path(), live, &tpl).await?);
    // Diagnostic: the same on tmpfs, where fsync costs nothing. The gap between the
    // two rows is what durable per-entry acks cost on this disk.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() && !std::env::temp_dir().starts_with(shm) {
        let shm_dir = tempfile::Builder::new()
            .prefix("mesh-notify-bench-")
            .tempdir_in(shm)
            .map_err(|e| setup(S)(format!("cannot create a directory in /dev/shm: {e}")))?;
        let mem = drain(b, shm_dir.path(), &queue, &tpl).await?;
        rows.push(drain_row(
            b,
            &mem,
            live,
            " on tmpfs (diagnostic: fsync is free)",
        ));
    }
    b.notes.push(format!(
        "outbox: SQLite files in {} (WAL, synchronous=FULL); one-at-a-time = {} sequential enqueues, batched = {} per repetition, median of {}. Backlog drain: {} workers × batch {} (QueuePolicy defaults) started only after the sink is back (workers stopped during the outage: the raw drain rate, not what a user sees); live = dispatcher c=64. Recovery: what a user sees: the workers run through the whole outage (sink refusing connections, default breaker: probes 1 s doubling to 5 s), notifications are submitted one by one throughout it, and the figure is the time from the sink answering again to the last delivery (target: probe_max_interval + 2 × backlog / live rate).",
        std::env::temp_dir().display(),
        b.sizes.durable,
        b.sizes.batched,
        b.sizes.reps.min(3),
        queue.workers,
        queue.batch
    ));
    Ok(rows)
}

/// The recovery figure: the only provider is down for `sizes.outage` while the
/// workers keep running and `sizes.outage_backlog` notifications are submitted
/// evenly through the outage; then the provider comes back. Measured: time from
/// the provider answering again to the last delivery, and duplicates.
async fn recovery(
    b: &Bench,
    dir: &std::path::Path,
    live: f64,
    tpl: &Notification,
) -> Result<Row, BenchError> {
    const S: &str = "outbox";
    let sink = Sink::start(b.sink_rt.clone()).await?;
    let outbox = SqliteOutbox::open(dir.join("recovery.db"))
        .map(Arc::new)
        .map_err(|e| setup(S)(e.to_string()))?;
    let breaker = BreakerConfig::default();
    let d = Arc::new(
        Dispatcher::builder()
            .notifier(Arc::new(gotify(&sink.url(), PROVIDER_TIMEOUT, S)?))
            .route(Kind::Chat, ["gotify"])
            .outbox(outbox.clone())
            .queue_policy(QueuePolicy::default())
            .breaker(breaker)
            .build()
            .map_err(|e| setup(S)(e.to_string()))?,
    );
    let workers = d.start_workers();
    sink.down().await;
    let total = b.sizes.outage_backlog;
    let started = Instant::now();
    for i in 0..total {
        // Evenly through the outage.
        let at = b.sizes.outage.mul_f64(i as f64 / total as f64);
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        d.submit(fresh(tpl))
            .await
            .map_err(|e| run_err(S)(e.to_string()))?;
    }
    if let Some(wait) = b.sizes.outage.checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    let before = outbox
        .stats()
        .await
        .map_err(|e| run_err(S)(e.to_string()))?;
    let max_attempts = outbox
        .pending(total)
        .await
        .map_err(|e| run_err(S)(e.to_string()))?
        .iter()
        .map(|e| e.attempts)
        .max()
        .unwrap_or(0);
    sink.up().await?;
    let back = Instant::now();
    let target = u64::try_from(total).unwrap_or(u64::MAX);
    let deadline = back + b.sizes.drain_deadline;
    while sink.delivered() < target {
        if Instant::now() > deadline {
            workers.shutdown().await;
            return Err(run_err(S)(format!(
                "recovery: {} of {} delivered after {:?}",
                sink.delivered(),
                target,
                b.sizes.drain_deadline
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let last = back.elapsed();
    // Anything delivered twice shows up while the outbox empties.
    loop {
        let s = outbox
            .stats()
            .await
            .map_err(|e| run_err(S)(e.to_string()))?;
        if s.pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    workers.shutdown().await;
    let dupes = sink.delivered().saturating_sub(target);
    let budget = breaker.probe_max_interval + Duration::from_secs_f64(2.0 * total as f64 / live);
    Ok(Row::info(
        S,
        format!(
            "recovery: {} notifications queued during a {} outage (workers running), provider back → last delivery",
            thousands(total as f64),
            fmt_duration(b.sizes.outage)
        ),
        format!(
            "{} (budget {} = probe max {} + 2 × backlog / live {}/s; {} parked at recovery, max attempts {}; {} delivered twice)",
            fmt_duration(last),
            fmt_duration(budget),
            fmt_duration(breaker.probe_max_interval),
            thousands(live),
            before.parked,
            max_attempts,
            dupes
        ),
        last.as_secs_f64(),
        "seconds",
    )
    .ratio(last.as_secs_f64() / budget.as_secs_f64())
    .target("≤ probe max + 2 × backlog / live", last <= budget && dupes == 0))
}

struct Drained {
    rate: f64,
    delivered_at: Duration,
    emptied_at: Duration,
    extra: u64,
}

fn drain_row(b: &Bench, d: &Drained, live: f64, suffix: &str) -> Row {
    Row::info(
        "outbox",
        format!(
            "backlog drain, {} entries, workers started after recovery{suffix}",
            thousands(b.sizes.backlog as f64)
        ),
        format!(
            "{}/s ({} to deliver, {} to empty the outbox{}; live c=64 {}/s)",
            thousands(d.rate),
            fmt_duration(d.delivered_at),
            fmt_duration(d.emptied_at),
            if d.extra > 0 {
                format!(", {} delivered twice", d.extra)
            } else {
                String::new()
            },
            thousands(live)
        ),
        d.rate,
        "notifications/s",
    )
    .ratio(d.rate / live.max(f64::MIN_POSITIVE))
}

/// Queues `sizes.backlog` entries in an SQLite outbox in `dir` while a fresh sink is
/// down, brings the sink up, starts the workers and times them until the outbox is
/// empty.
async fn drain(
    b: &Bench,
    dir: &std::path::Path,
    queue: &QueuePolicy,
    tpl: &Notification,
) -> Result<Drained, BenchError> {
    const S: &str = "outbox";
    let sink = Sink::start(b.sink_rt.clone()).await?;
    let backlog = SqliteOutbox::open(dir.join("backlog.db"))
        .map(Arc::new)
        .map_err(|e| setup(S)(e.to_string()))?;
    let d = Dispatcher::builder()
        .notifier(Arc::new(gotify(&sink.url(), PROVIDER_TIMEOUT, S)?))
        .route(Kind::Chat, ["gotify"])
        .outbox(backlog.clone())
        .queue_policy(queue.clone())
        .build()
        .map_err(|e| setup(S)(e.to_string()))?;
    let d = Arc::new(d);
    sink.down().await;
    fill(backlog.as_ref(), tpl, b.sizes.backlog, 1000)
        .await
        .map_err(run_err(S))?;
    sink.up().await?;
    let started = Instant::now();
    let workers = d.start_workers();
    let deadline = started + b.sizes.drain_deadline;
    let target = u64::try_from(b.sizes.backlog).unwrap_or(u64::MAX);
    while sink.delivered() < target {
        if Instant::now() > deadline {
            workers.shutdown().await;
            return Err(run_err(S)(format!(
                "backlog drain: {} of {} delivered after {:?}",
                sink.delivered(),
                target,
                b.sizes.drain_deadline
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let delivered_at = started.elapsed();
    // Wait for the last acks so the outbox is empty.
    loop {
        let s = backlog
            .stats()
            .await
            .map_err(|e| run_err(S)(e.to_string()))?;
        if s.pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            workers.shutdown().await;
            return Err(run_err(S)(format!(
                "backlog drain: {} entries still pending",
                s.pending
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let emptied_at = started.elapsed();
    workers.shutdown().await;
    Ok(Drained {
        rate: b.sizes.backlog as f64 / emptied_at.as_secs_f64(),
        delivered_at,
        emptied_at,
        extra: sink.delivered().saturating_sub(target),
    })
}

/// The server's persistence settings, e.g. `appendonly yes, appendfsync everysec`.
async fn redis_persistence(conn: &mut redis::aio::MultiplexedConnection) -> String {
    let mut out = Vec::new();
    for key in ["appendonly", "appendfsync"] {
        let v: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(key)
            .query_async(conn)
            .await;
        if let Ok(v) = v {
            if let [k, v] = v.as_slice() {
                out.push(format!("{k} {v}"));
            }
        }
    }
    if out.is_empty() {
        "persistence settings unknown".into()
    } else {
        out.join(", ")
    }
}

/// Deletes every key under `prefix` (bounded: at most 10,000 SCAN rounds).
async fn redis_cleanup(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Result<(), String> {
    let mut cursor: u64 = 0;
    for _ in 0..10_000 {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{prefix}}}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(conn)
                .await
                .map_err(|e| e.to_string())?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
    Err("too many SCAN rounds".into())
}

/// Redis enqueue throughput: one at a time (c=1 and c=64) and batched. Keys live
/// under a prefix unique to this run and are deleted afterwards.
async fn redis_rows(b: &Bench, url: &str, tpl: &Notification) -> Result<Vec<Row>, BenchError> {
    const S: &str = "outbox";
    let prefix = format!(
        "mesh-notify-bench:{}:{}",
        std::process::id(),
        Timestamp::now().as_millis()
    );
    let outbox = Arc::new(
        mesh_notify_outbox_redis::RedisOutbox::connect(url, &prefix)
            .await
            .map_err(|e| setup(S)(e.to_string()))?,
    );
    let mut conn = redis::Client::open(url)
        .map_err(|e| setup(S)(format!("redis: {:?}", e.kind())))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| setup(S)(format!("redis: {:?}", e.kind())))?;
    let persistence = redis_persistence(&mut conn).await;
    let result = redis_measure(b, outbox, tpl).await;
    let cleanup = redis_cleanup(&mut conn, &prefix).await;
    let (c1, c64, batched) = result?;
    cleanup.map_err(|e| {
        run_err(S)(format!(
            "cannot delete the benchmark's Redis keys under {prefix}: {e}"
        ))
    })?;
    Ok(vec![
        Row::info(
            S,
            format!("Redis enqueue, one at a time, c=1 ({persistence})"),
            format!("{}/s", thousands(c1)),
            c1,
            "enqueues/s",
        ),
        Row::info(
            S,
            "Redis enqueue, one at a time, 64 concurrent callers",
            format!("{}/s", thousands(c64)),
            c64,
            "enqueues/s",
        )
        .target("≥ 30,000/s", c64 >= 30_000.0),
        Row::info(
            S,
            format!("Redis enqueue, batched ({} per batch)", b.sizes.batch),
            format!("{}/s", thousands(batched)),
            batched,
            "enqueues/s",
        )
        .target("≥ 30,000/s", batched >= 30_000.0),
    ])
}

async fn redis_measure(
    b: &Bench,
    outbox: Arc<mesh_notify_outbox_redis::RedisOutbox>,
    tpl: &Notification,
) -> Result<(f64, f64, f64), BenchError> {
    const S: &str = "outbox";
    let op: Op = {
        let outbox = Arc::clone(&outbox);
        Arc::new(move |n: Notification| {
            let outbox = Arc::clone(&outbox);
            Box::pin(async move {
                match outbox.enqueue(&n, Timestamp::now()).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!("redis enqueue of {} reported a duplicate", n.id)),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
    };
    let (mut c1, mut c64, mut batched) = (Vec::new(), Vec::new(), Vec::new());
    load::run(1, b.sizes.durable / 4 + 1, tpl, Arc::clone(&op))
        .await
        .map_err(run_err(S))?;
    fill(outbox.as_ref(), tpl, b.sizes.batch, b.sizes.batch)
        .await
        .map_err(run_err(S))?;
    for _ in 0..b.sizes.reps.min(3) {
        c1.push(
            load::run(1, b.sizes.durable, tpl, Arc::clone(&op))
                .await
                .map_err(run_err(S))?
                .throughput,
        );
        c64.push(
            load::run(64, b.sizes.batched / 5, tpl, Arc::clone(&op))
                .await
                .map_err(run_err(S))?
                .throughput,
        );
        let batches: Vec<Vec<Notification>> = (0..b.sizes.batched.div_ceil(b.sizes.batch))
            .map(|_| (0..b.sizes.batch).map(|_| fresh(tpl)).collect())
            .collect();
        let count: usize = batches.iter().map(Vec::len).sum();
        let t = Instant::now();
        for ns in &batches {
            outbox
                .enqueue_batch(ns, Timestamp::now())
                .await
                .map_err(|e| run_err(S)(e.to_string()))?;
        }
        batched.push(count as f64 / t.elapsed().as_secs_f64());
    }
    Ok((median(&c1), median(&c64), median(&batched)))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Scenario 4: RSS at rest, with queued entries, under c=64 load.
pub async fn memory(b: &mut Bench) -> Result<Vec<Row>, BenchError> {
    const S: &str = "memory";
    let mut rows = Vec::new();
    match b.rss_at_rest_kib {
        Some(k) => rows.push(Row::info(
            S,
            "RSS at rest (runtimes, sink, clients started)",
            format!("{:.1} MB", mib(k)),
            mib(k),
            "MiB",
        )),
        None => rows.push(Row::skipped(
            S,
            "RSS at rest",
            "skipped (/proc/self/status unreadable)",
            "—",
        )),
    }

    let dir = temp_dir(S)?;
    let tpl = template();
    let outbox = open_sqlite(&dir, "queued.db", S)?;
    let d = Dispatcher::builder()
        .notifier(Arc::new(gotify(&b.sink.url(), PROVIDER_TIMEOUT, S)?))
        .route(Kind::Chat, ["gotify"])
        .outbox(outbox.clone())
        .build()
        .map_err(|e| setup(S)(e.to_string()))?;
    fill(outbox.as_ref(), &tpl, 1000, 1000)
        .await
        .map_err(run_err(S))?;
    let before = status_kib("VmRSS");
    fill(outbox.as_ref(), &tpl, b.sizes.queued, 1000)
        .await
        .map_err(run_err(S))?;
    let after = status_kib("VmRSS");
    let pending = outbox
        .stats()
        .await
        .map_err(|e| run_err(S)(e.to_string()))?
        .pending;
    drop(d);
    match (before, after) {
        (Some(x), Some(y)) => {
            let delta = mib(y.saturating_sub(x));
            rows.push(
                Row::info(
                    S,
                    format!(
                        "RSS added by {} queued entries (SQLite outbox)",
                        thousands(b.sizes.queued as f64)
                    ),
                    format!(
                        "{delta:.1} MB ({:.1} → {:.1} MB; {pending} pending)",
                        mib(x),
                        mib(y)
                    ),
                    delta,
                    "MiB",
                )
                .target("≤ 20 MB", delta <= 20.0),
            );
        }
        _ => rows.push(Row::skipped(
            S,
            "RSS with queued entries",
            "skipped (/proc/self/status unreadable)",
            "≤ 20 MB",
        )),
    }

    let reset = reset_peak_rss();
    let before = status_kib("VmRSS");
    let disp = dispatch_op(healthy_dispatcher(&b.sink.url(), S)?);
    load::run(64, b.sizes.c64, &tpl, disp)
        .await
        .map_err(run_err(S))?;
    match (status_kib("VmHWM"), before) {
        (Some(peak), Some(before)) => rows.push(Row::info(
            S,
            "peak RSS under c=64 dispatcher load",
            format!(
                "{:.1} MB (+{:.1} MB over the RSS before the load{})",
                mib(peak),
                mib(peak.saturating_sub(before)),
                if reset {
                    ""
                } else {
                    "; peak not reset, includes earlier scenarios"
                }
            ),
            mib(peak),
            "MiB",
        )),
        _ => rows.push(Row::skipped(
            S,
            "peak RSS under load",
            "skipped (/proc/self/status unreadable)",
            "—",
        )),
    }
    Ok(rows)
}

/// Scenario 5: `mesh-notify serve` (Gotify-compatible `POST /message`, durable
/// before the 200, delivered by its workers to the sink) vs the raw client posting
/// straight to the same sink, both at c=64, in one run.
pub async fn serve(b: &mut Bench) -> Result<Vec<Row>, BenchError> {
    const S: &str = "serve";
    let dir = temp_dir(S)?;
    let sink = Sink::start(b.sink_rt.clone()).await?;
    let url = sink.url();
    let tpl = template();
    let n = b.sizes.c64;
    // Raw: the same sink, the client posting Gotify bodies itself.
    let message_url =
        reqwest::Url::parse(&format!("{url}message")).map_err(|e| setup(S)(e.to_string()))?;
    let raw = baseline_op(
        baseline_client(PROVIDER_TIMEOUT).map_err(setup(S))?,
        message_url,
    );
    load::run(64, (n / 4).max(64), &tpl, Arc::clone(&raw))
        .await
        .map_err(run_err(S))?;
    // Serve, in this process, on its own port.
    const INGEST: &str = "AbenchIngestTok";
    let toml = format!(
        "[outbox]\npath = \"{}\"\n[providers.gotify]\nurl = \"{url}\"\ntoken = \"{TOKEN}\"\n[routes]\nchat = [\"gotify\"]\n[serve.gotify_apps.bench]\ntoken = \"{INGEST}\"\nkind = \"chat\"\n",
        dir.path().join("serve.sqlite3").display()
    );
    let figment = mesh_notify::Figment::from(
        <figment::providers::Toml as figment::providers::Format>::string(&toml),
    );
    let config =
        mesh_notify::Config::from_figment(&figment).map_err(|e| setup(S)(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| setup(S)(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| setup(S)(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        mesh_notify::serve::run(&config, &figment, Some(listener), async move {
            let _ = stop_rx.await;
        })
        .await
    });
    let client = baseline_client(PROVIDER_TIMEOUT).map_err(setup(S))?;
    let ingest_url = format!("http://{addr}/message");
    let ingest: Op = Arc::new(move |n: Notification| {
        let (client, url) = (client.clone(), ingest_url.clone());
        Box::pin(async move {
            let r = client
                .post(url)
                .header("X-Gotify-Key", INGEST)
                .json(&json!({"title": n.title, "message": n.body, "priority": 6}))
                .send()
                .await
                .map_err(|e| format!("serve POST failed: {e}"))?;
            if r.status() != reqwest::StatusCode::OK {
                return Err(format!("serve answered {}", r.status()));
            }
            Ok(())
        })
    });
    // Warm-up, then interleaved repetitions of raw and serve (ingest until the
    // sink received every message).
    let warm = (n / 4).max(64);
    let before = sink.delivered();
    load::run(64, warm, &tpl, Arc::clone(&ingest))
        .await
        .map_err(run_err(S))?;
    wait_delivered(&sink, before + warm as u64, b.sizes.drain_deadline)
        .await
        .map_err(run_err(S))?;
    let (mut raw_rates, mut serve_rates) = (Vec::new(), Vec::new());
    for _ in 0..b.sizes.reps.min(3) {
        raw_rates.push(
            load::run(64, n, &tpl, Arc::clone(&raw))
                .await
                .map_err(run_err(S))?
                .throughput,
        );
        let before = sink.delivered();
        let started = Instant::now();
        load::run(64, n, &tpl, Arc::clone(&ingest))
            .await
            .map_err(run_err(S))?;
        wait_delivered(&sink, before + n as u64, b.sizes.drain_deadline)
            .await
            .map_err(run_err(S))?;
        serve_rates.push(n as f64 / started.elapsed().as_secs_f64());
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    let (raw_rate, serve_rate) = (median(&raw_rates), median(&serve_rates));
    let ratio = serve_rate / raw_rate.max(f64::MIN_POSITIVE);
    b.notes.push(format!(
        "serve: mesh-notify serve in this process (SQLite outbox, fsync'd before each 200; route chat → Gotify provider → sink); {n} messages per repetition at c=64 through POST /message, timed until the sink received the last one; raw = the reqwest client posting the same messages straight to the sink at c=64; {} interleaved repetitions, medians.",
        b.sizes.reps.min(3)
    ));
    Ok(vec![
        Row::info(
            S,
            "raw client → sink, c=64",
            format!("{}/s", thousands(raw_rate)),
            raw_rate,
            "notifications/s",
        ),
        Row::info(
            S,
            "mesh-notify serve: POST /message (durable) → delivered to the sink, c=64",
            format!("{}/s", thousands(serve_rate)),
            serve_rate,
            "notifications/s",
        )
        .ratio(ratio)
        .target("≥ 0.5× raw", ratio >= 0.5),
    ])
}

async fn wait_delivered(sink: &Sink, target: u64, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while sink.delivered() < target {
        if Instant::now() > deadline {
            return Err(format!("only {} of {target} delivered", sink.delivered()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Scenario 6 (needs `REDIS_URL`): scale-out on Redis. The sink answers after 20 ms
/// (a provider over a WAN, so throughput is bound by latency, not by this
/// machine's cores); 1, 2 and 3 dispatcher instances (each with the default
/// workers, as `mesh-notify run` starts them) share one Redis outbox holding a
/// backlog; deliveries/s until the outbox is empty, and duplicates.
pub async fn scale(b: &mut Bench) -> Result<Vec<Row>, BenchError> {
    const S: &str = "scale";
    let url = match std::env::var("REDIS_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            return Ok(vec![Row::skipped(
                S,
                "scale-out on Redis, 1/2/3 instances",
                "skipped (REDIS_URL not set)",
                "≥ 0.8 × N × one instance",
            )])
        }
    };
    let total = b.sizes.c64 / 4;
    let tpl = template();
    let mut rows = Vec::new();
    let mut one = None;
    for n in 1..=3usize {
        let sink = Sink::start(b.sink_rt.clone()).await?;
        sink.set_latency(Duration::from_millis(20));
        let prefix = format!(
            "mesh-notify-bench-scale:{}:{}:{n}",
            std::process::id(),
            Timestamp::now().as_millis()
        );
        let mut instances = Vec::new();
        let mut outboxes = Vec::new();
        for _ in 0..n {
            let outbox = Arc::new(
                mesh_notify_outbox_redis::RedisOutbox::connect(&url, &prefix)
                    .await
                    .map_err(|e| setup(S)(e.to_string()))?,
            );
            outboxes.push(Arc::clone(&outbox));
            instances.push(Arc::new(
                Dispatcher::builder()
                    .notifier(Arc::new(gotify(&sink.url(), PROVIDER_TIMEOUT, S)?))
                    .route(Kind::Chat, ["gotify"])
                    .outbox(outbox)
                    .queue_policy(QueuePolicy::default())
                    .build()
                    .map_err(|e| setup(S)(e.to_string()))?,
            ));
        }
        fill(outboxes[0].as_ref(), &tpl, total, 500)
            .await
            .map_err(run_err(S))?;
        let started = Instant::now();
        let workers: Vec<_> = instances.iter().map(|d| d.start_workers()).collect();
        wait_delivered(&sink, total as u64, b.sizes.drain_deadline)
            .await
            .map_err(run_err(S))?;
        let elapsed = started.elapsed();
        // Let any second delivery show up while the last acknowledgements land.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = outboxes[0]
                .stats()
                .await
                .map_err(|e| run_err(S)(e.to_string()))?;
            if st.pending == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for w in workers {
            w.shutdown().await;
        }
        let dupes = sink.delivered().saturating_sub(total as u64);
        let rate = total as f64 / elapsed.as_secs_f64();
        let base = *one.get_or_insert(rate);
        let ratio = rate / (base * n as f64);
        let row = Row::info(
            S,
            format!("scale-out on Redis, {n} instance(s), sink latency 20 ms"),
            format!("{}/s ({dupes} delivered twice)", thousands(rate)),
            rate,
            "notifications/s",
        );
        rows.push(if n == 1 {
            row
        } else {
            row.ratio(ratio).target(
                "≥ 0.8 × N × one instance, no duplicate",
                ratio >= 0.8 && dupes == 0,
            )
        });
        // Clean up this run's keys.
        if let Ok(client) = redis::Client::open(url.as_str()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let _ = redis_cleanup(&mut conn, &prefix).await;
            }
        }
    }
    b.notes.push(format!(
        "scale: {total} notifications queued in one Redis outbox, then 1, 2 or 3 dispatcher instances (each 2 workers × 32 in flight, QueuePolicy defaults, own Redis connection) deliver them to a sink answering after 20 ms; rate = backlog / time to the last delivery; ratio = rate / (N × the 1-instance rate); duplicates = deliveries beyond the backlog."
    ));
    Ok(rows)
}
