//! Closed-loop load: `concurrency` tasks send back to back until `total` operations
//! are done; latency per operation and overall throughput.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_notify_core::{Notification, NotificationId, Timestamp};

use crate::report::{percentiles, Percentiles};

/// One operation: deliver this notification, `Err` with why when it was not delivered.
pub type Op = Arc<
    dyn Fn(Notification) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

/// Result of one load run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Operations per second over the whole run.
    pub throughput: f64,
    /// Latency per operation.
    pub latency: Percentiles,
}

/// A copy of `template` with a fresh id and creation time (as a caller would make).
pub fn fresh(template: &Notification) -> Notification {
    let mut n = template.clone();
    n.id = NotificationId::new();
    n.created_at = Timestamp::now();
    n
}

/// Runs `total` operations with `concurrency` tasks; fails on the first operation
/// that fails.
pub async fn run(
    concurrency: usize,
    total: usize,
    template: &Notification,
    op: Op,
) -> Result<Load, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let next = Arc::clone(&next);
        let op = Arc::clone(&op);
        let template = template.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total / concurrency.max(1) + 1);
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let n = fresh(&template);
                let t = Instant::now();
                op(n).await?;
                lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut all = Vec::with_capacity(total);
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(lat)) => all.extend(lat),
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(format!("load task panicked: {e}"))),
        }
    }
    let wall = started.elapsed().max(Duration::from_nanos(1));
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(Load {
        throughput: all.len() as f64 / wall.as_secs_f64(),
        latency: percentiles(&mut all),
    })
}
