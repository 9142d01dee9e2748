//! The glue to the SQLite outbox crate (one place to adapt if its API moves).

use crate::rusqlite;
use std::sync::Arc;

use crate::db::Db;
use mesh_notify_core::{Notification, Outbox, Timestamp};

use crate::error::AppError;
use crate::store::Store;

/// Creates the outbox tables in the chat database.
pub(crate) fn install_schema(conn: &rusqlite::Connection) -> Result<(), String> {
    mesh_notify_outbox_sqlite::install_schema(conn).map_err(|e| e.to_string())
}

/// The outbox on the store's own connection: chat transactions, the fan-out and
/// the delivery workers' claims and acknowledgements take turns on one lock
/// instead of two SQLite connections meeting in the busy handler (issue 16,
/// `docs/decisions.md`).
pub(crate) fn on_store(store: &Store) -> Option<Arc<dyn Outbox>> {
    let conn = store.connection()?;
    Some(Arc::new(
        mesh_notify_outbox_sqlite::SqliteOutbox::on_connection(conn, store.path()),
    ))
}

/// The SQLite connection under `tx`; the SQLite outbox lives only there.
fn sqlite<'a>(tx: &'a Db<'_>) -> Result<&'a rusqlite::Connection, AppError> {
    tx.as_sqlite()
        .ok_or_else(|| AppError::internal("the SQLite outbox needs the SQLite chat database"))
}

/// Enqueues inside the caller's transaction (durable when it commits).
pub(crate) fn enqueue_in_tx(
    tx: &Db<'_>,
    n: &Notification,
    due_at: Timestamp,
) -> Result<(), AppError> {
    mesh_notify_outbox_sqlite::enqueue_in_tx(sqlite(tx)?, n, due_at)
        .map(|_| ())
        .map_err(|e| AppError::internal(format!("outbox: {e}")))
}

/// Replaces the waiting entry with `n`'s id inside the caller's transaction;
/// `false` when it is no longer waiting (claimed, delivered or gone).
pub(crate) fn replace_waiting_in_tx(tx: &Db<'_>, n: &Notification) -> Result<bool, AppError> {
    mesh_notify_outbox_sqlite::replace_waiting_in_tx(sqlite(tx)?, n)
        .map_err(|e| AppError::internal(format!("outbox: {e}")))
}
