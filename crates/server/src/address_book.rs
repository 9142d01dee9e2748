//! The dispatcher's [`AddressBook`] over the `addresses` table: a queued
//! notification is sent to the addresses its recipient has when it goes out (a
//! removed or pruned token is never used, a newly added device is reached).

use std::collections::HashMap;

use mesh_notify::AddressBook;
use mesh_notify_core::Address;

use crate::store::Store;

/// Looks addresses up in the chat database.
pub(crate) struct StoreAddressBook(pub(crate) Store);

#[async_trait::async_trait]
impl AddressBook for StoreAddressBook {
    async fn addresses(&self, user_id: &str) -> Option<Vec<Address>> {
        self.addresses_many(&[user_id.to_string()])
            .await
            .remove(user_id)
            .flatten()
    }

    /// One trip to the store for a worker's whole batch: at thousands of
    /// deliveries per second, one `Store::call` per delivery made chat messages
    /// queue for the connection (issue 16, `docs/benchmarks.md`).
    async fn addresses_many(&self, user_ids: &[String]) -> HashMap<String, Option<Vec<Address>>> {
        let ids: Vec<(String, i64)> = user_ids
            .iter()
            .filter_map(|s| s.parse().ok().map(|id| (s.clone(), id)))
            .collect();
        let found = self
            .0
            .call_background(move |conn| {
                let mut out = HashMap::with_capacity(ids.len());
                for (key, id) in ids {
                    let addresses = match crate::store::user_by_id(conn, id)? {
                        Some(user) => Some(crate::store::recipient(conn, &user)?.addresses),
                        None => None,
                    };
                    out.insert(key, addresses);
                }
                Ok(out)
            })
            .await;
        found.unwrap_or_else(|e| {
            // Keep the addresses the notifications carry rather than fail them.
            tracing::warn!(error = %e.message, "cannot look up current addresses");
            HashMap::new()
        })
    }
}
