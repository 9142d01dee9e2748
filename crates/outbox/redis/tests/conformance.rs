//! The Redis outbox passes core's outbox conformance suite against a real
//! redis-server (`REDIS_URL`, started by `scripts/test`). Each check uses its own
//! key prefix, so they share one server.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use mesh_notify_core::testing::outbox_conformance::{self as suite, OutboxHarness};
use mesh_notify_core::Outbox;
use mesh_notify_outbox_redis::RedisOutbox;

struct Harness {
    url: String,
    test: &'static str,
    prefix: String,
}

#[async_trait]
impl OutboxHarness for Harness {
    async fn open(&mut self) -> Arc<dyn Outbox> {
        self.prefix = support::unique_prefix(self.test);
        Arc::new(
            RedisOutbox::connect(&self.url, &self.prefix)
                .await
                .expect("connect"),
        )
    }
    async fn reopen(&mut self) -> Arc<dyn Outbox> {
        Arc::new(
            RedisOutbox::connect(&self.url, &self.prefix)
                .await
                .expect("reconnect"),
        )
    }
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(url) = support::redis_url() else { return };
            let mut h = Harness { url, test: stringify!($name), prefix: String::new() };
            suite::$name(&mut h).await;
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
