//! The password hashing queue: a few dedicated threads run every argon2
//! computation (19 MiB and a core each), fed by a bounded queue.
//!
//! At most `hashing_threads` hashes run at a time, each thread reusing one working
//! memory for every hash (see `auth::with_blocks`): 19 MiB per thread, for good.
//! Allocating it per hash left ~210 MiB resident after 300 logins (freed 19 MiB
//! regions kept by the allocator); reused, ~38 MiB with two threads. When
//! `hashing_queue` jobs already wait, a request is refused at once (`503` with
//! `Retry-After`) instead of piling up; a queued job whose client went away (the
//! request future was dropped) is skipped, not computed. A login never holds the
//! database lock while hashing.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use crate::auth;
use crate::error::AppError;

type Job = Box<dyn FnOnce() + Send>;

/// Seconds a client refused for a full queue is asked to wait.
const BUSY_RETRY_AFTER: u64 = 1;

/// The hashing threads and their queue. Dropping it stops the threads once they
/// finish the job at hand.
pub(crate) struct HashingPool {
    tx: SyncSender<Job>,
}

impl HashingPool {
    /// Starts `threads` threads with room for `queue` waiting jobs.
    pub(crate) fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(&rx))?;
        }
        Ok(Self { tx })
    }

    /// Runs `f` on a hashing thread. `busy` (503) when the queue is full; the job is
    /// skipped if the returned future is dropped before a thread takes it.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                // The client went away while the job waited.
                metrics::counter!("mesh_server_hashing_skipped_total").increment(1);
                return;
            }
            let _ = tx.send(f());
        });
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("mesh_server_hashing_busy_total").increment(1);
                return Err(AppError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the server is busy checking passwords; try again shortly",
                )
                .retry_after(BUSY_RETRY_AFTER));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(AppError::internal("password hashing threads unavailable"))
            }
        }
        rx.await
            .map_err(|_| AppError::internal("a password hashing job failed"))
    }

    /// [`auth::hash_password`] on a hashing thread.
    pub(crate) async fn hash(&self, password: String) -> Result<String, AppError> {
        self.run(move || auth::hash_password(&password)).await?
    }

    /// [`auth::verify_password`] on a hashing thread. Without a stored hash (unknown
    /// user) it verifies against a dummy hash, so the answer takes as long.
    pub(crate) async fn verify(
        &self,
        password: String,
        phc: Option<String>,
    ) -> Result<bool, AppError> {
        self.run(move || match phc {
            Some(phc) => auth::verify_password(&password, &phc),
            None => {
                let _ = auth::dummy_hash().map(|d| auth::verify_password(&password, d));
                false
            }
        })
        .await
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_full_queue_is_refused_and_abandoned_jobs_are_skipped() {
        let pool = Arc::new(HashingPool::new(1, 1).unwrap());
        // Occupy the only thread until released.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let busy = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = started_tx.send(());
                    let _ = wait.recv();
                })
                .await
            })
        };
        started.await.unwrap();
        // One job fits in the queue (polled once: it is queued); its client will go
        // away.
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&ran);
        let mut abandoned = Box::pin(pool.run(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        assert!(futures_util::FutureExt::now_or_never(&mut abandoned).is_none());
        // The queue is full: refused at once.
        let refused = pool.run(|| ()).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.retry_after, Some(BUSY_RETRY_AFTER));
        drop(abandoned);
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        // The thread is free again; the abandoned job was skipped.
        let after = Arc::clone(&ran);
        pool.run(move || after.load(Ordering::SeqCst))
            .await
            .unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0, "abandoned job not computed");
    }
}
