//! The dispatcher's [`AddressBook`] over the `addresses` table: a queued
//! notification is sent to the addresses its recipient has when it goes out (a
//! removed or pruned token is never used, a newly added device is reached).

use mesh_notify::AddressBook;
use mesh_notify_core::Address;

use crate::store::Store;

/// Looks addresses up in the chat database.
pub(crate) struct StoreAddressBook(pub(crate) Store);

#[async_trait::async_trait]
impl AddressBook for StoreAddressBook {
    async fn addresses(&self, user_id: &str) -> Option<Vec<Address>> {
        let id: i64 = user_id.parse().ok()?;
        let found = self
            .0
            .call(move |conn| {
                let Some(user) = crate::store::user_by_id(conn, id)? else {
                    return Ok(None);
                };
                Ok(Some(crate::store::recipient(conn, &user)?.addresses))
            })
            .await;
        match found {
            Ok(addresses) => addresses,
            Err(e) => {
                // Keep the addresses the notification carries rather than fail it.
                tracing::warn!(user = id, error = %e.message, "cannot look up current addresses");
                None
            }
        }
    }
}
