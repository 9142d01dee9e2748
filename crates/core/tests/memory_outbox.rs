//! The in-memory reference outbox passes the conformance suite.

use std::sync::Arc;

use async_trait::async_trait;
use mesh_notify_core::testing::outbox_conformance::{self as suite, OutboxHarness};
use mesh_notify_core::testing::MemoryOutbox;
use mesh_notify_core::Outbox;

#[derive(Default)]
struct Harness(MemoryOutbox);

#[async_trait]
impl OutboxHarness for Harness {
    async fn open(&mut self) -> Arc<dyn Outbox> {
        self.0 = MemoryOutbox::new();
        Arc::new(self.0.clone())
    }
    async fn reopen(&mut self) -> Arc<dyn Outbox> {
        Arc::new(self.0.clone())
    }
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            suite::$name(&mut Harness::default()).await;
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

#[tokio::test]
async fn run_all() {
    suite::run_all(&mut Harness::default()).await;
}
