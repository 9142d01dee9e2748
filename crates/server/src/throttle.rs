//! Abuse limits on accounts: a small keyed sliding window ("at most N events per
//! key within W"), used for failed logins (per account and per client address) and
//! registrations (per client address), and the client address itself.
//!
//! Why not `governor`: its keyed limiter is a GCRA rate (every check consumes a
//! cell, there is no look without consuming), while the rule here counts
//! *failures* only and must refuse *before* the password is checked; a success
//! also forgets the account's failures. A window of at most N instants per key
//! says exactly that, in a few lines (docs/decisions.md).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// At most `max` events per key within `window`.
pub(crate) struct Window {
    max: usize,
    window: Duration,
    max_keys: usize,
    keys: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Window {
    /// A window remembering at most `max_keys` keys (the least recently active is
    /// forgotten first when full).
    pub(crate) fn new(max: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            max: usize::try_from(max).unwrap_or(usize::MAX).max(1),
            window,
            max_keys: max_keys.max(1),
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Instant>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Some(wait)` when `key` already had `max` events within the window: the time
    /// until the oldest of them leaves it.
    pub(crate) fn blocked(&self, key: &str) -> Option<Duration> {
        self.blocked_at(key, Instant::now())
    }

    fn blocked_at(&self, key: &str, now: Instant) -> Option<Duration> {
        let mut keys = self.lock();
        let events = keys.get_mut(key)?;
        while events
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            events.pop_front();
        }
        if events.len() < self.max {
            return None;
        }
        let oldest = *events.front()?;
        Some((oldest + self.window).saturating_duration_since(now))
    }

    /// Counts one event for `key`.
    pub(crate) fn record(&self, key: &str) {
        self.record_at(key, Instant::now());
    }

    fn record_at(&self, key: &str, now: Instant) {
        let mut keys = self.lock();
        if !keys.contains_key(key) && keys.len() >= self.max_keys {
            self.prune_locked(&mut keys, now);
            if keys.len() >= self.max_keys {
                // Forget the key whose latest event is the oldest.
                let stale = keys
                    .iter()
                    .min_by_key(|(_, events)| events.back().copied())
                    .map(|(k, _)| k.clone());
                if let Some(stale) = stale {
                    keys.remove(&stale);
                }
            }
        }
        let events = keys.entry(key.to_string()).or_default();
        events.push_back(now);
        while events.len() > self.max {
            events.pop_front();
        }
    }

    /// Forgets `key`'s events.
    pub(crate) fn clear(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Drops keys with no event in the window.
    pub(crate) fn prune(&self) {
        let mut keys = self.lock();
        self.prune_locked(&mut keys, Instant::now());
    }

    fn prune_locked(&self, keys: &mut HashMap<String, VecDeque<Instant>>, now: Instant) {
        keys.retain(|_, events| {
            events
                .back()
                .is_some_and(|t| now.duration_since(*t) < self.window)
        });
    }

    /// Keys remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Every abuse limit of the server.
pub(crate) struct Throttles {
    /// Failed logins per account (lower-cased username).
    pub login_account: Window,
    /// Failed logins per client address.
    pub login_address: Window,
    /// Registration attempts per client address.
    pub register_address: Window,
}

impl Throttles {
    pub(crate) fn prune(&self) {
        self.login_account.prune();
        self.login_address.prune();
        self.register_address.prune();
    }
}

/// The client's address as a throttling key: the peer address, or, when the peer
/// is one of `trusted_proxies`, the right-most address of `X-Forwarded-For` that
/// is not a trusted proxy (what the proxy saw). IPv6 addresses count by their /64
/// (one host usually owns a whole /64).
pub(crate) fn client_key(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> String {
    let mut ip = canonical(peer.ip());
    if trusted.contains(&ip) {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .map(canonical)
            .collect::<Vec<_>>();
        if let Some(client) = forwarded.iter().rev().find(|a| !trusted.contains(a)) {
            ip = *client;
        }
    }
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whole seconds to wait, at least 1 (for `Retry-After`).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_blocks_after_max_events_until_the_oldest_leaves() {
        let w = Window::new(3, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(w.blocked_at("a", t0 + Duration::from_secs(i)), None);
            w.record_at("a", t0 + Duration::from_secs(i));
        }
        assert_eq!(
            w.blocked_at("a", t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(50))
        );
        assert_eq!(w.blocked_at("b", t0), None, "keys are independent");
        assert_eq!(w.blocked_at("a", t0 + Duration::from_secs(60)), None);
        w.clear("a");
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn the_window_remembers_a_bounded_number_of_keys() {
        let w = Window::new(1, Duration::from_secs(60), 2);
        let t0 = Instant::now();
        w.record_at("a", t0);
        w.record_at("b", t0 + Duration::from_secs(1));
        w.record_at("c", t0 + Duration::from_secs(2));
        assert_eq!(w.len(), 2);
        assert!(w.blocked_at("a", t0 + Duration::from_secs(3)).is_none());
        assert!(w.blocked_at("c", t0 + Duration::from_secs(3)).is_some());
    }

    #[test]
    fn the_client_address_comes_from_a_trusted_proxy_only() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7".parse().unwrap(),
        );
        assert_eq!(client_key(peer, &h, &[]), "127.0.0.1", "not trusted");
        let trusted = ["127.0.0.1".parse().unwrap()];
        assert_eq!(client_key(peer, &h, &trusted), "198.51.100.7");
        let v6: SocketAddr = "[2001:db8:1:2:3:4:5:6]:1".parse().unwrap();
        assert_eq!(client_key(v6, &HeaderMap::new(), &[]), "2001:db8:1:2::/64");
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:1".parse().unwrap();
        assert_eq!(client_key(mapped, &HeaderMap::new(), &[]), "192.0.2.1");
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }
}
