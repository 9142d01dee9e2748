//! Several mesh-server instances on one PostgreSQL database and one Redis (issue
//! 18): presence and live events across instances.
//!
//! - **Presence** is the union over instances. Each instance writes, for every
//!   (room, user) present through its own connections, a member `user@instance` of
//!   the sorted set `{prefix}:room:{room}`, scored with the time it expires (now +
//!   `server.presence_ttl`), and `instance` in `{prefix}:user:{user}` while the user
//!   has a connection there. A heartbeat every third of the TTL pushes the expiry
//!   forward; an instance that dies (SIGKILL, lost network) stops doing so, and its
//!   users count as absent once their entries expire. Readers ignore expired
//!   entries and remove them.
//! - **Events** go through one pub/sub channel, `{prefix}:events`: a room event
//!   (chat message, presence), an event for one user (RTC signalling, invitations,
//!   `room.left`), and session ends (logout closes that session's sockets on every
//!   instance). Each instance delivers what others publish to its own connections.
//! - An instance whose subscription is down stops its heartbeat: its users then
//!   count as absent (they get pushes) rather than present-but-unreachable.
//!
//! A message's sender decides who is absent from its own connections plus the
//! entries of other instances read just before its transaction. A join on another
//! instance in between gives that user the live event and a push (a duplicate,
//! never a loss). A leave in between is repaired by the instance the user was
//! counted on: the event lists them, and that instance pushes to those who are in
//! the room nowhere when it arrives ([`push_if_gone`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::AppState;
use crate::store::now_ms;

/// What one instance tells the others.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Event {
    /// To every connection in `room` (the sender's instance delivered its own).
    Room {
        room: i64,
        text: String,
        /// A chat message or file: the members the sender's instance counted as
        /// present through another instance (`(user, instance)`), and what their
        /// push would be. The named instance pushes to those who are no longer in
        /// the room anywhere when the event arrives (they left in between).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<MessagePush>,
    },
    /// To every connection of `user`.
    User { user: i64, text: String },
    /// Take `user`'s connections out of `room` (they left or were removed).
    Evict { user: i64, room: i64 },
    /// Close the sockets of the session with this token hash (logout).
    CloseSession { session: String },
    /// Close every socket of `user` (logout everywhere).
    CloseUser { user: i64 },
}

/// What a chat message's push is made of, for members who left in between.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MessagePush {
    pub assumed: Vec<(i64, String)>,
    pub room_name: String,
    /// `chat` or `file`.
    pub kind: String,
    pub from: String,
    pub text: String,
    pub created_at: i64,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    event: Event,
}

/// This instance's handle on the shared presence and event channel.
pub(crate) struct Cluster {
    id: String,
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    subscribed: AtomicBool,
    /// Events to publish, in order, by [`run_publisher`].
    outgoing: tokio::sync::mpsc::UnboundedSender<Event>,
    outgoing_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Event>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.id)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The longest a presence read or write waits for Redis.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Cluster {
    /// Connects to Redis at `url` (the outbox's), under `prefix`.
    pub(crate) async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<Self, String> {
        // TCP_NODELAY (redis-rs leaves Nagle's algorithm on): every message reads
        // presence with one small request, which must not wait for a delayed ACK.
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| format!("invalid Redis URL ({:?})", e.kind()))?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        // Bounded: a chat message or a join waits for presence, never for a
        // Redis that does not answer.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| e.to_string())?;
        let (outgoing, rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Self {
            id: mesh_notify_core::NotificationId::new().to_string(),
            client,
            conn,
            prefix: format!("{prefix}:mesh"),
            ttl,
            subscribed: AtomicBool::new(false),
            outgoing,
            outgoing_rx: std::sync::Mutex::new(Some(rx)),
        })
    }

    /// This instance's id (random per start).
    pub(crate) fn instance(&self) -> &str {
        &self.id
    }

    fn room_key(&self, room: i64) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    fn user_key(&self, user: i64) -> String {
        format!("{}:user:{user}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    fn expiry(&self) -> i64 {
        now_ms().saturating_add(ms(self.ttl))
    }

    /// `user` is in `room` through this instance (awaited before the join's ack).
    pub(crate) async fn set_present(&self, room: i64, user: i64) {
        self.write(&[(self.room_key(room), format!("{user}@{}", self.id))])
            .await;
    }

    /// `user` has a connection on this instance.
    pub(crate) async fn set_connected(&self, user: i64) {
        self.write(&[(self.user_key(user), self.id.clone())]).await;
    }

    /// Adds or refreshes (key, member) pairs with a new expiry.
    async fn write(&self, entries: &[(String, String)]) {
        if entries.is_empty() || !self.subscribed.load(Ordering::SeqCst) {
            return;
        }
        let expiry = self.expiry();
        let mut pipe = redis::pipe();
        for (key, member) in entries {
            pipe.zadd(key, member, expiry).ignore();
            pipe.pexpire(key, ms(self.ttl).saturating_mul(2)).ignore();
        }
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "cluster presence not written");
        }
    }

    /// `user` is no longer in `room` through this instance.
    pub(crate) async fn set_absent(&self, room: i64, user: i64) {
        self.remove(self.room_key(room), format!("{user}@{}", self.id))
            .await;
    }

    /// `user` has no connection left on this instance.
    pub(crate) async fn set_disconnected(&self, user: i64) {
        self.remove(self.user_key(user), self.id.clone()).await;
    }

    async fn remove(&self, key: String, member: String) {
        // Not skipped while unsubscribed (at shutdown the subscription ends
        // first): bounded by the connection's timeouts; if Redis is gone, the
        // entry expires.
        let mut conn = self.conn.clone();
        if let Err(e) = redis::cmd("ZREM")
            .arg(&key)
            .arg(&member)
            .query_async::<()>(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "cluster presence not removed");
        }
    }

    /// Live members of a sorted set, expired ones removed.
    async fn live(&self, key: String) -> Result<Vec<String>, String> {
        if !self.is_subscribed() {
            // Unreachable: answer at once (everyone elsewhere counts as absent)
            // rather than make each message wait for a timeout.
            return Err("Redis unreachable (events unsubscribed)".into());
        }
        let now = now_ms();
        let mut conn = self.conn.clone();
        let (members,): (Vec<String>,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(now)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(members)
    }

    /// Users present in `room` through other instances.
    pub(crate) async fn present_elsewhere(&self, room: i64) -> HashSet<i64> {
        self.presence_elsewhere(room)
            .await
            .into_iter()
            .map(|(user, _)| user)
            .collect()
    }

    /// `(user, instance)` for every user present in `room` through another
    /// instance.
    pub(crate) async fn presence_elsewhere(&self, room: i64) -> Vec<(i64, String)> {
        match self.live(self.room_key(room)).await {
            Ok(members) => members
                .iter()
                .filter_map(|m| {
                    let (user, instance) = m.split_once('@')?;
                    let user = user.parse().ok()?;
                    (instance != self.id).then(|| (user, instance.to_string()))
                })
                .collect(),
            Err(e) => {
                // Counted as absent: a push too many rather than a message lost.
                tracing::warn!(error = %e, "cluster presence unreadable; other instances' users count as absent");
                Vec::new()
            }
        }
    }

    /// Whether `user` has a connection on another instance.
    pub(crate) async fn connected_elsewhere(&self, user: i64) -> bool {
        match self.live(self.user_key(user)).await {
            Ok(members) => members.iter().any(|m| *m != self.id),
            Err(e) => {
                tracing::warn!(error = %e, "cluster presence unreadable");
                false
            }
        }
    }

    /// Whether the event subscription is up.
    pub(crate) fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    /// Tells the other instances, in the order of the calls (without waiting).
    pub(crate) fn send(&self, event: Event) {
        let _ = self.outgoing.send(event);
    }

    /// Publishes `event`; on failure gives it back (for [`run_publisher`] to
    /// repair what it can).
    async fn publish(&self, event: Event) -> Result<(), Event> {
        let envelope = Envelope {
            from: self.id.clone(),
            event,
        };
        let Ok(payload) = serde_json::to_string(&envelope) else {
            return Ok(());
        };
        let mut conn = self.conn.clone();
        if let Err(e) = redis::cmd("PUBLISH")
            .arg(self.channel())
            .arg(payload)
            .query_async::<i64>(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "cluster event not published");
            metrics::counter!("mesh_server_cluster_publish_failures_total").increment(1);
            return Err(envelope.event);
        }
        Ok(())
    }
}

/// Publishes what [`Cluster::send`] queued, in order, until shutdown (what is
/// queued then is still sent).
pub(crate) async fn run_publisher(state: AppState, mut stop: watch::Receiver<bool>) {
    let Some(cluster) = state.cluster.clone() else {
        return;
    };
    // A message event that reached no instance reached none of the members
    // counted present elsewhere: they get its push instead.
    let repair = |failed: Result<(), Event>| {
        if let Err(Event::Room {
            room,
            message: Some(push),
            ..
        }) = failed
        {
            let users: Vec<i64> = push.assumed.iter().map(|(u, _)| *u).collect();
            let st = state.clone();
            tokio::spawn(async move { record_push(st, room, users, push).await });
        }
    };
    let rx = cluster
        .outgoing_rx
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let Some(mut rx) = rx else {
        return;
    };
    loop {
        let next = tokio::select! {
            ev = rx.recv() => ev,
            _ = stop.wait_for(|s| *s) => None,
        };
        match next {
            Some(ev) => repair(cluster.publish(ev).await),
            None => break,
        }
    }
    // Shutting down: what is queued still goes out.
    while let Ok(ev) = rx.try_recv() {
        repair(cluster.publish(ev).await);
    }
}

/// Applies what other instances publish to this instance's connections, until
/// shutdown; resubscribes after a lost connection. While unsubscribed the
/// heartbeat stops, so this instance's users expire (count as absent).
pub(crate) async fn run_subscriber(state: AppState, mut stop: watch::Receiver<bool>) {
    let Some(cluster) = state.cluster.clone() else {
        return;
    };
    let mut delay = Duration::from_millis(100);
    loop {
        let pubsub = match cluster.client.get_async_pubsub().await {
            Ok(mut p) => match p.subscribe(cluster.channel()).await {
                Ok(()) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "cluster events: cannot subscribe");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cluster events: cannot connect");
                None
            }
        };
        if let Some(mut pubsub) = pubsub {
            delay = Duration::from_millis(100);
            cluster.subscribed.store(true, Ordering::SeqCst);
            // Subscribed again: write this instance's presence at once.
            heartbeat_once(&state, &cluster).await;
            tracing::info!(instance = cluster.instance(), "cluster events: subscribed");
            let mut messages = pubsub.on_message();
            loop {
                tokio::select! {
                    msg = messages.next() => {
                        let Some(msg) = msg else { break };
                        let Ok(payload) = msg.get_payload::<String>() else { continue };
                        match serde_json::from_str::<Envelope>(&payload) {
                            Ok(env) if env.from != cluster.id => apply(&state, env.event),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "unreadable cluster event"),
                        }
                    }
                    _ = stop.wait_for(|s| *s) => {
                        cluster.subscribed.store(false, Ordering::SeqCst);
                        return;
                    }
                }
            }
            cluster.subscribed.store(false, Ordering::SeqCst);
            tracing::warn!("cluster events: subscription lost; this instance's users count as absent until it is back");
            // Events for them no longer arrive: take their presence out now (if
            // Redis still answers) rather than when it expires, so other
            // instances push to them meanwhile.
            remove_all(&state, &cluster).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn apply(state: &AppState, event: Event) {
    metrics::counter!("mesh_server_cluster_events_total").increment(1);
    match event {
        Event::Room {
            room,
            text,
            message,
        } => {
            state.presence.send_room(room, &text.into());
            if let Some(push) = message {
                let mine: Vec<i64> = push
                    .assumed
                    .iter()
                    .filter(|(_, instance)| *instance == cluster_id(state))
                    .map(|(user, _)| *user)
                    .collect();
                if !mine.is_empty() {
                    let st = state.clone();
                    tokio::spawn(async move { push_if_gone(st, room, mine, push).await });
                }
            }
        }
        Event::User { user, text } => {
            state.presence.send_user(user, &text.into());
        }
        Event::Evict { user, room } => {
            let st = state.clone();
            let store = state.store.clone();
            let cluster = state.cluster.clone();
            tokio::spawn(async move {
                let was = store
                    .call(move |c| Ok(st.presence.evict(c, user, room)))
                    .await;
                if let (Ok(true), Some(cluster)) = (was, cluster) {
                    cluster.set_absent(room, user).await;
                }
            });
        }
        Event::CloseSession { session } => {
            state.presence.close_session(&session);
        }
        Event::CloseUser { user } => {
            state.presence.close_user(user);
        }
    }
}

async fn heartbeat_once(state: &AppState, cluster: &Cluster) {
    let (rooms, users) = state.presence.snapshot();
    let mut entries: Vec<(String, String)> = rooms
        .into_iter()
        .map(|(room, user)| (cluster.room_key(room), format!("{user}@{}", cluster.id)))
        .collect();
    entries.extend(
        users
            .into_iter()
            .map(|user| (cluster.user_key(user), cluster.id.clone())),
    );
    for chunk in entries.chunks(500) {
        cluster.write(chunk).await;
    }
}

/// Removes every presence entry of this instance (one pipeline, bounded by the
/// connection's timeouts).
async fn remove_all(state: &AppState, cluster: &Cluster) {
    let (rooms, users) = state.presence.snapshot();
    if rooms.is_empty() && users.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for (room, user) in rooms {
        pipe.zrem(cluster.room_key(room), format!("{user}@{}", cluster.id))
            .ignore();
    }
    for user in users {
        pipe.zrem(cluster.user_key(user), &cluster.id).ignore();
    }
    let mut conn = cluster.conn.clone();
    if let Err(e) = pipe.query_async::<()>(&mut conn).await {
        tracing::debug!(error = %e, "presence not removed; it expires");
    }
}

/// Refreshes this instance's presence every third of the TTL, until shutdown,
/// then removes it (the users' sockets are closing).
pub(crate) async fn run_heartbeat(state: AppState, mut stop: watch::Receiver<bool>) {
    let Some(cluster) = state.cluster.clone() else {
        return;
    };
    let every = cluster.ttl / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        heartbeat_once(&state, &cluster).await;
    }
    let (rooms, users) = state.presence.snapshot();
    for (room, user) in rooms {
        cluster.set_absent(room, user).await;
    }
    for user in users {
        cluster.set_disconnected(user).await;
    }
}

/// The shared handle, or `None` on a single instance.
pub(crate) type Shared = Option<Arc<Cluster>>;

fn cluster_id(state: &AppState) -> &str {
    state.cluster.as_deref().map_or("", Cluster::instance)
}

/// Members the sender's instance counted as present here, who are no longer in
/// the room anywhere: their push for this message, as if they had been absent
/// (one `push_fanout` row, expanded by the fan-out task).
async fn push_if_gone(state: AppState, room: i64, users: Vec<i64>, push: MessagePush) {
    let Some(cluster) = state.cluster.clone() else {
        return;
    };
    let here = state.presence.users_in_room(room);
    let elsewhere = cluster.present_elsewhere(room).await;
    let gone: Vec<i64> = users
        .into_iter()
        .filter(|u| !here.contains(u) && !elsewhere.contains(u))
        .collect();
    record_push(state, room, gone, push).await;
}

/// Records the message's push for `users` (one `push_fanout` row, expanded by the
/// fan-out task; members who left the room since are skipped there).
async fn record_push(state: AppState, room: i64, users: Vec<i64>, push: MessagePush) {
    let mut gone = users;
    gone.sort_unstable();
    gone.dedup();
    if gone.is_empty() {
        return;
    }
    let count = gone.len();
    let recorded = state
        .store
        .call_background(move |db| {
            let tx = db.transaction()?;
            crate::fanout::record(
                &tx,
                &crate::fanout::Pending {
                    room_id: room,
                    room_name: &push.room_name,
                    kind: if push.kind == "file" {
                        mesh_notify_core::Kind::File
                    } else {
                        mesh_notify_core::Kind::Chat
                    },
                    from: &push.from,
                    text: &push.text,
                    members: &gone,
                    created_at: push.created_at,
                },
            )?;
            tx.commit()?;
            Ok(())
        })
        .await;
    match recorded {
        Ok(()) => {
            metrics::counter!("mesh_server_cluster_late_pushes_total").increment(count as u64);
            tracing::debug!(
                room,
                count,
                "members who left before a message arrived get its push"
            );
            state.fanout.wake();
        }
        Err(e) => {
            tracing::warn!(error = %e.message, "could not record the push of members who left")
        }
    }
}
