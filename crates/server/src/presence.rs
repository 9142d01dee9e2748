//! Who is connected and who is in which room, in memory (one process).
//!
//! A user may have several connections (tabs, phone). A user is *in a room* while
//! any of their connections has joined it; *absent* means not in the room
//! (connected elsewhere or offline).
//!
//! Room presence changes (join, leave, a connection going away) happen only while
//! the chat database's connection is held, inside [`Store::call`]: the methods
//! that change it, and [`Presence::reserve_room`], take that `&Connection` as
//! proof. A message is stored, its absent members decided and its live event
//! handed to the present connections in one such call, so no join or leave can
//! fall between "who is absent" and "who gets the live event" (see
//! docs/decisions.md, "mesh-server: presence decided with the message").
//!
//! [`Store::call`]: crate::store::Store::call

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::db::Db;
use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, Notify};

/// One WebSocket connection.
pub(crate) type ConnId = u64;

struct Conn {
    user_id: i64,
    /// The session (token hash) the connection was opened with.
    session: String,
    tx: mpsc::Sender<Utf8Bytes>,
    rooms: HashSet<i64>,
    /// Notified to make the connection close (its session ended).
    close: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<ConnId, Conn>,
    by_user: HashMap<i64, HashSet<ConnId>>,
    by_room: HashMap<i64, HashSet<ConnId>>,
}

impl Inner {
    fn user_in_room(&self, user_id: i64, room_id: i64) -> bool {
        self.by_user.get(&user_id).is_some_and(|ids| {
            ids.iter().any(|id| {
                self.conns
                    .get(id)
                    .is_some_and(|c| c.rooms.contains(&room_id))
            })
        })
    }

    fn send(&self, id: ConnId, msg: &Utf8Bytes) -> bool {
        let Some(conn) = self.conns.get(&id) else {
            return false;
        };
        match conn.tx.try_send(msg.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("mesh_server_ws_dropped_total").increment(1);
                tracing::warn!(
                    conn = id,
                    user = conn.user_id,
                    "slow connection: event dropped"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The presence registry.
#[derive(Default)]
pub(crate) struct Presence {
    inner: Mutex<Inner>,
    next: AtomicU64,
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a connection of `user_id` opened with the session `session` (its token
    /// hash); events for it go to `tx`. The returned [`Notify`] is signalled when
    /// the session ends (logout): the connection must then close.
    pub(crate) fn register(
        &self,
        user_id: i64,
        session: &str,
        tx: mpsc::Sender<Utf8Bytes>,
    ) -> (ConnId, Arc<Notify>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let close = Arc::new(Notify::new());
        let mut inner = self.lock();
        inner.conns.insert(
            id,
            Conn {
                user_id,
                session: session.to_string(),
                tx,
                rooms: HashSet::new(),
                close: Arc::clone(&close),
            },
        );
        inner.by_user.entry(user_id).or_default().insert(id);
        metrics::gauge!("mesh_server_ws_connections").set(inner.conns.len() as f64);
        (id, close)
    }

    /// Tells every connection opened with the session `session` to close; returns
    /// how many.
    pub(crate) fn close_session(&self, session: &str) -> usize {
        let inner = self.lock();
        inner
            .conns
            .values()
            .filter(|c| c.session == session)
            .inspect(|c| c.close.notify_one())
            .count()
    }

    /// Tells every connection of `user_id` to close; returns how many.
    pub(crate) fn close_user(&self, user_id: i64) -> usize {
        let inner = self.lock();
        let Some(ids) = inner.by_user.get(&user_id) else {
            return 0;
        };
        ids.iter()
            .filter_map(|id| inner.conns.get(id))
            .inspect(|c| c.close.notify_one())
            .count()
    }

    /// Removes a connection; returns the rooms its user is no longer in. `_store`:
    /// the chat database's connection, held by the caller (see the module docs).
    pub(crate) fn unregister(&self, _store: &Db<'_>, id: ConnId) -> Vec<i64> {
        let mut inner = self.lock();
        let Some(conn) = inner.conns.remove(&id) else {
            return Vec::new();
        };
        if let Some(ids) = inner.by_user.get_mut(&conn.user_id) {
            ids.remove(&id);
            if ids.is_empty() {
                inner.by_user.remove(&conn.user_id);
            }
        }
        let mut left = Vec::new();
        for room in conn.rooms {
            if let Some(ids) = inner.by_room.get_mut(&room) {
                ids.remove(&id);
                if ids.is_empty() {
                    inner.by_room.remove(&room);
                }
            }
            if !inner.user_in_room(conn.user_id, room) {
                left.push(room);
            }
        }
        metrics::gauge!("mesh_server_ws_connections").set(inner.conns.len() as f64);
        left
    }

    /// The connection joins a room; `true` when its user was not in the room before.
    /// `_store`: the chat database's connection, held by the caller.
    pub(crate) fn join(&self, _store: &Db<'_>, id: ConnId, room_id: i64) -> bool {
        let mut inner = self.lock();
        let Some(user_id) = inner.conns.get(&id).map(|c| c.user_id) else {
            return false;
        };
        let newly = !inner.user_in_room(user_id, room_id);
        if let Some(conn) = inner.conns.get_mut(&id) {
            conn.rooms.insert(room_id);
        }
        inner.by_room.entry(room_id).or_default().insert(id);
        newly
    }

    /// The connection leaves a room; `true` when its user is no longer in it.
    /// `_store`: the chat database's connection, held by the caller.
    pub(crate) fn leave(&self, _store: &Db<'_>, id: ConnId, room_id: i64) -> bool {
        let mut inner = self.lock();
        let Some(conn) = inner.conns.get_mut(&id) else {
            return false;
        };
        if !conn.rooms.remove(&room_id) {
            return false;
        }
        let user_id = conn.user_id;
        if let Some(ids) = inner.by_room.get_mut(&room_id) {
            ids.remove(&id);
            if ids.is_empty() {
                inner.by_room.remove(&room_id);
            }
        }
        !inner.user_in_room(user_id, room_id)
    }

    /// Takes every connection of `user_id` out of the room (they left it or were
    /// removed from it); `true` when the user was in it. `_store`: the chat
    /// database's connection, held by the caller.
    pub(crate) fn evict(&self, _store: &Db<'_>, user_id: i64, room_id: i64) -> bool {
        let mut inner = self.lock();
        let ids: Vec<ConnId> = inner
            .by_user
            .get(&user_id)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        let mut was_in = false;
        for id in ids {
            if let Some(conn) = inner.conns.get_mut(&id) {
                was_in |= conn.rooms.remove(&room_id);
            }
            if let Some(room) = inner.by_room.get_mut(&room_id) {
                room.remove(&id);
                if room.is_empty() {
                    inner.by_room.remove(&room_id);
                }
            }
        }
        was_in
    }

    /// Reserves a slot in the outgoing queue of every connection of `user_id` (see
    /// [`Presence::reserve_room`]); empty when the user is offline.
    pub(crate) fn reserve_user(&self, _store: &Db<'_>, user_id: i64) -> Reserved {
        let inner = self.lock();
        let mut reserved = Reserved::default();
        let Some(ids) = inner.by_user.get(&user_id) else {
            return reserved;
        };
        for id in ids {
            let Some(conn) = inner.conns.get(id) else {
                continue;
            };
            if let Ok(permit) = conn.tx.clone().try_reserve_owned() {
                reserved.permits.push(permit);
                reserved.users.insert(conn.user_id);
            }
        }
        reserved
    }

    /// Whether this connection has joined the room.
    pub(crate) fn has_joined(&self, id: ConnId, room_id: i64) -> bool {
        self.lock()
            .conns
            .get(&id)
            .is_some_and(|c| c.rooms.contains(&room_id))
    }

    /// Users with at least one connection in the room.
    pub(crate) fn users_in_room(&self, room_id: i64) -> HashSet<i64> {
        let inner = self.lock();
        inner
            .by_room
            .get(&room_id)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| inner.conns.get(id).map(|c| c.user_id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the user has any connection.
    #[cfg(test)]
    pub(crate) fn is_connected(&self, user_id: i64) -> bool {
        self.lock().by_user.contains_key(&user_id)
    }

    /// Reserves a slot in the outgoing queue of every connection in the room, and
    /// notes whose connections they are. A user counts as present only if at least
    /// one of their connections in the room has a slot: a connection that is
    /// closing or too slow to take the event makes its user absent for it.
    /// `_store`: the chat database's connection, held by the caller until
    /// [`Reserved::send`], so that no join or leave falls in between.
    pub(crate) fn reserve_room(&self, _store: &Db<'_>, room_id: i64) -> Reserved {
        let inner = self.lock();
        let mut reserved = Reserved::default();
        let Some(ids) = inner.by_room.get(&room_id) else {
            return reserved;
        };
        for id in ids {
            let Some(conn) = inner.conns.get(id) else {
                continue;
            };
            match conn.tx.clone().try_reserve_owned() {
                Ok(permit) => {
                    reserved.permits.push(permit);
                    reserved.users.insert(conn.user_id);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!("mesh_server_ws_dropped_total").increment(1);
                    tracing::warn!(
                        conn = id,
                        user = conn.user_id,
                        "slow connection: event not sent live"
                    );
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        reserved
    }

    /// Sends to every connection in the room; returns how many got it.
    pub(crate) fn send_room(&self, room_id: i64, msg: &Utf8Bytes) -> usize {
        let inner = self.lock();
        let Some(ids) = inner.by_room.get(&room_id) else {
            return 0;
        };
        ids.iter().filter(|id| inner.send(**id, msg)).count()
    }

    /// Sends to every connection of the user; returns how many got it.
    pub(crate) fn send_user(&self, user_id: i64, msg: &Utf8Bytes) -> usize {
        let inner = self.lock();
        let Some(ids) = inner.by_user.get(&user_id) else {
            return 0;
        };
        ids.iter().filter(|id| inner.send(**id, msg)).count()
    }

    /// Open connections of `user_id`.
    pub(crate) fn user_connections(&self, user_id: i64) -> usize {
        self.lock().by_user.get(&user_id).map_or(0, HashSet::len)
    }

    /// Every (room, user) present through this process, and every connected user
    /// (for the cluster heartbeat).
    pub(crate) fn snapshot(&self) -> (Vec<(i64, i64)>, Vec<i64>) {
        let inner = self.lock();
        let mut rooms: HashSet<(i64, i64)> = HashSet::new();
        for (room, ids) in &inner.by_room {
            for id in ids {
                if let Some(c) = inner.conns.get(id) {
                    rooms.insert((*room, c.user_id));
                }
            }
        }
        (
            rooms.into_iter().collect(),
            inner.by_user.keys().copied().collect(),
        )
    }

    /// Open connections.
    pub(crate) fn connections(&self) -> usize {
        self.lock().conns.len()
    }
}

/// Slots reserved by [`Presence::reserve_room`]: the connections that will get a
/// room event live. Dropping it unused releases the slots.
#[derive(Default)]
pub(crate) struct Reserved {
    permits: Vec<mpsc::OwnedPermit<Utf8Bytes>>,
    users: HashSet<i64>,
}

impl Reserved {
    /// Whether no connection got a slot.
    pub(crate) fn is_empty(&self) -> bool {
        self.permits.is_empty()
    }

    /// Whether the event reaches `user_id` live (one of their connections).
    pub(crate) fn has_user(&self, user_id: i64) -> bool {
        self.users.contains(&user_id)
    }

    /// Sends `msg` into every reserved slot; returns how many (the slots were
    /// reserved, so none fails).
    pub(crate) fn send(self, msg: &Utf8Bytes) -> usize {
        let n = self.permits.len();
        for permit in self.permits {
            let _ = permit.send(msg.clone());
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_in_the_room_while_any_connection_is() {
        let sqlite = crate::rusqlite::Connection::open_in_memory().unwrap();
        let db = Db::sqlite(&sqlite);
        let p = Presence::default();
        let (tx, mut rx) = mpsc::channel(8);
        let (tab, _) = p.register(1, "s1", tx.clone());
        let (phone, phone_close) = p.register(1, "s2", tx);
        assert!(p.join(&db, tab, 10));
        assert!(!p.join(&db, phone, 10), "already present through the tab");
        assert!(!p.leave(&db, tab, 10), "still present through the phone");
        assert!(p.users_in_room(10).contains(&1));
        assert_eq!(p.send_room(10, &Utf8Bytes::from_static("x")), 1);
        assert_eq!(rx.try_recv().unwrap().as_str(), "x");
        assert_eq!(p.close_session("s2"), 1);
        assert_eq!(p.close_user(1), 2);
        assert_eq!(p.close_user(2), 0);
        assert!(
            futures_util::FutureExt::now_or_never(phone_close.notified()).is_some(),
            "the close signal is kept until the connection waits for it"
        );
        assert_eq!(p.unregister(&db, phone), vec![10]);
        assert!(p.users_in_room(10).is_empty());
        assert!(p.is_connected(1));
        p.unregister(&db, tab);
        assert!(!p.is_connected(1));
        assert_eq!(p.connections(), 0);
    }

    #[test]
    fn a_user_whose_connections_cannot_take_the_event_is_absent_for_it() {
        let sqlite = crate::rusqlite::Connection::open_in_memory().unwrap();
        let db = Db::sqlite(&sqlite);
        let p = Presence::default();
        let (full_tx, _full_rx) = mpsc::channel(1);
        let (ok_tx, mut ok_rx) = mpsc::channel(8);
        let (closed_tx, closed_rx) = mpsc::channel(8);
        drop(closed_rx);
        let (slow, _) = p.register(1, "a", full_tx.clone());
        let (fine, _) = p.register(2, "b", ok_tx);
        let (gone, _) = p.register(3, "c", closed_tx);
        for id in [slow, fine, gone] {
            p.join(&db, id, 10);
        }
        full_tx.try_send(Utf8Bytes::from_static("filler")).unwrap();
        let live = p.reserve_room(&db, 10);
        assert!(!live.has_user(1), "queue full");
        assert!(live.has_user(2));
        assert!(!live.has_user(3), "connection closed");
        assert!(!live.has_user(4), "not in the room");
        assert_eq!(live.send(&Utf8Bytes::from_static("m")), 1);
        assert_eq!(ok_rx.try_recv().unwrap().as_str(), "m");
    }
}
