//! The SQLite outbox passes core's outbox conformance suite.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use mesh_notify_core::testing::outbox_conformance::{self as suite, OutboxHarness};
use mesh_notify_core::Outbox;
use mesh_notify_outbox_sqlite::SqliteOutbox;

struct Harness {
    dir: tempfile::TempDir,
    opened: u32,
    path: PathBuf,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("unused.db");
        Self {
            dir,
            opened: 0,
            path,
        }
    }
}

#[async_trait]
impl OutboxHarness for Harness {
    async fn open(&mut self) -> Arc<dyn Outbox> {
        self.opened += 1;
        self.path = self.dir.path().join(format!("outbox-{}.db", self.opened));
        Arc::new(SqliteOutbox::open(&self.path).expect("open"))
    }
    async fn reopen(&mut self) -> Arc<dyn Outbox> {
        Arc::new(SqliteOutbox::open(&self.path).expect("reopen"))
    }
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            suite::$name(&mut Harness::new()).await;
        }
    )*};
}

checks!(
    enqueue_claim_ack,
    dedup_by_id,
    batch_enqueue,
    not_yet_due_is_not_claimed,
    claims_oldest_due_first,
    retry_ordering_by_due_time,
    lease_expiry_and_takeover,
    late_settle_without_takeover_succeeds,
    dead_letters_are_kept_listed_requeued_and_purged,
    cancel,
    stats,
    survives_reopen,
    ack_batch_settles_each_claim,
    parked_entries_keep_their_attempt_count,
    unpark_by_provider_and_limit,
    parked_entry_comes_back_at_its_give_up_time,
    renew_keeps_the_lease_and_reports_a_lost_one,
    ack_per_entry,
);
