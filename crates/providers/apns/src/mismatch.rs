//! Telling a configuration mistake from bad device tokens.
//!
//! APNs answers 400 `BadDeviceToken` both to a malformed token and to a token of
//! the other environment (a development build's token sent to production, or the
//! reverse), and 400 `DeviceTokenNotForTopic` / `TopicDisallowed` when the topic
//! does not match. None of them proves a token dead (only 410 does), so none of
//! them prunes an address: each is a permanent error for that one send.
//!
//! When [`MISMATCH_THRESHOLD`] *different* tokens in a row are refused that way,
//! with no delivery in between, the likely culprit is the provider's own
//! configuration (`environment`, `base_url`, `bundle_id`). The guard then flags
//! the provider: such answers become [`NotifyError::Misconfigured`], one ERROR line
//! is logged, and [`crate::ApnsNotifier`]'s health is unhealthy with the same
//! explanation, until a send to that topic is delivered again.
//!
//! [`NotifyError::Misconfigured`]: mesh_notify_core::NotifyError::Misconfigured

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, PoisonError};

/// How many different device tokens in a row, refused with no delivery in between,
/// flag the provider as misconfigured.
pub const MISMATCH_THRESHOLD: usize = 3;

/// What a refusal suggests is wrong with the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mismatch {
    /// 400 `BadDeviceToken`: the token is malformed, or belongs to the other APNs
    /// environment (production vs sandbox).
    Environment,
    /// 400 `DeviceTokenNotForTopic` or `TopicDisallowed`: the topic (bundle id) is
    /// not the app's, or the key may not send to it.
    Topic,
}

impl Mismatch {
    /// The mismatch an APNs answer points at, if any.
    pub fn of(status: u16, reason: Option<&str>) -> Option<Self> {
        match (status, reason) {
            (400, Some("BadDeviceToken")) => Some(Mismatch::Environment),
            (400, Some("DeviceTokenNotForTopic" | "TopicDisallowed")) => Some(Mismatch::Topic),
            _ => None,
        }
    }
}

/// The environment streak is shared by every topic (an alert and a VoIP token of
/// one build live in the same environment); topic streaks are per topic.
type Key = (Mismatch, String);

#[derive(Default)]
struct Streak {
    /// Hashes of the distinct tokens refused since the last delivery (at most the
    /// threshold; tokens themselves are not kept).
    tokens: Vec<u64>,
    /// The explanation, once the streak reached the threshold.
    flagged: Option<String>,
}

/// Counts refusals that point at the configuration, per [`Mismatch`] (and topic).
pub(crate) struct MismatchGuard {
    threshold: usize,
    /// Where this provider sends, for the explanation (`https://… (production)`).
    endpoint: String,
    streaks: Mutex<HashMap<Key, Streak>>,
    /// How many times the misconfiguration ERROR line was written (once per episode).
    errors_logged: std::sync::atomic::AtomicUsize,
}

fn token_hash(token: &str) -> u64 {
    let mut h = DefaultHasher::new();
    token.trim().to_ascii_lowercase().hash(&mut h);
    h.finish()
}

impl MismatchGuard {
    pub(crate) fn new(endpoint: String) -> Self {
        Self {
            threshold: MISMATCH_THRESHOLD,
            endpoint,
            streaks: Mutex::new(HashMap::new()),
            errors_logged: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub(crate) fn set_threshold(&mut self, threshold: usize) {
        self.threshold = threshold.max(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Streak>> {
        self.streaks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(kind: Mismatch, topic: &str) -> Key {
        match kind {
            Mismatch::Environment => (kind, String::new()),
            Mismatch::Topic => (kind, topic.to_string()),
        }
    }

    fn explain(&self, kind: Mismatch, topic: &str, reason: &str) -> String {
        match kind {
            Mismatch::Environment => format!(
                "every device token is refused as BadDeviceToken: the provider's environment \
                 (production/sandbox) or topic likely does not match the app build \
                 ({} different tokens in a row, none delivered since; APNs endpoint {}). \
                 Development builds need environment = \"sandbox\", App Store and TestFlight \
                 builds \"production\"; addresses are kept",
                self.threshold, self.endpoint
            ),
            Mismatch::Topic => format!(
                "every device token is refused for topic `{topic}` ({reason}): the provider's \
                 bundle_id likely does not match the app, or its key may not send to this \
                 topic ({} different tokens in a row, none delivered since); addresses are kept",
                self.threshold
            ),
        }
    }

    /// APNs refused `token` on `topic` with `reason`, pointing at `kind`. Returns the
    /// explanation when the provider is (now or already) flagged misconfigured.
    pub(crate) fn refused(
        &self,
        kind: Mismatch,
        topic: &str,
        token: &str,
        reason: &str,
    ) -> Option<String> {
        let mut streaks = self.lock();
        let streak = streaks.entry(Self::key(kind, topic)).or_default();
        if let Some(why) = &streak.flagged {
            return Some(why.clone());
        }
        let hash = token_hash(token);
        if !streak.tokens.contains(&hash) {
            streak.tokens.push(hash);
        }
        if streak.tokens.len() < self.threshold {
            return None;
        }
        let why = self.explain(kind, topic, reason);
        tracing::error!(provider = "apns", "APNs provider misconfigured: {why}");
        self.errors_logged
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        streak.flagged = Some(why.clone());
        Some(why)
    }

    /// A send on `topic` was delivered: the environment is right, and so is this
    /// topic. Clears their streaks (and flags).
    pub(crate) fn delivered(&self, topic: &str) {
        let mut streaks = self.lock();
        if streaks.is_empty() {
            return;
        }
        for key in [
            Self::key(Mismatch::Environment, topic),
            Self::key(Mismatch::Topic, topic),
        ] {
            if let Some(streak) = streaks.remove(&key) {
                if streak.flagged.is_some() {
                    tracing::info!(
                        provider = "apns",
                        topic,
                        "APNs delivered again; the {} mismatch flag is cleared",
                        match key.0 {
                            Mismatch::Environment => "environment",
                            Mismatch::Topic => "topic",
                        }
                    );
                }
            }
        }
    }

    /// The explanations of every flag currently raised, joined, if any.
    pub(crate) fn suspicion(&self) -> Option<String> {
        let streaks = self.lock();
        let mut flagged: Vec<&String> = streaks
            .values()
            .filter_map(|s| s.flagged.as_ref())
            .collect();
        flagged.sort();
        (!flagged.is_empty()).then(|| {
            flagged
                .into_iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "org.example.mesh";

    fn guard() -> MismatchGuard {
        MismatchGuard::new("https://api.push.apple.com/ (production)".into())
    }

    #[test]
    fn answers_that_point_at_the_configuration() {
        assert_eq!(
            Mismatch::of(400, Some("BadDeviceToken")),
            Some(Mismatch::Environment)
        );
        assert_eq!(
            Mismatch::of(400, Some("DeviceTokenNotForTopic")),
            Some(Mismatch::Topic)
        );
        assert_eq!(
            Mismatch::of(400, Some("TopicDisallowed")),
            Some(Mismatch::Topic)
        );
        assert_eq!(Mismatch::of(410, Some("Unregistered")), None);
        assert_eq!(Mismatch::of(400, Some("BadCollapseId")), None);
        assert_eq!(Mismatch::of(400, None), None);
    }

    #[test]
    fn three_distinct_tokens_flag_and_a_delivery_clears() {
        let g = guard();
        let env = Mismatch::Environment;
        assert_eq!(g.refused(env, TOPIC, "aa", "BadDeviceToken"), None);
        // The same token again (a retry) does not count twice, whatever its case.
        assert_eq!(g.refused(env, TOPIC, "AA", "BadDeviceToken"), None);
        assert_eq!(g.refused(env, TOPIC, "bb", "BadDeviceToken"), None);
        assert_eq!(g.suspicion(), None);
        let why = g.refused(env, TOPIC, "cc", "BadDeviceToken").unwrap();
        assert!(why.starts_with("every device token is refused as BadDeviceToken"));
        assert!(why.contains("(production)"), "{why}");
        assert_eq!(g.suspicion().as_deref(), Some(why.as_str()));
        // Flagged: any further refusal, even of a known token, is explained.
        assert_eq!(g.refused(env, TOPIC, "aa", "BadDeviceToken"), Some(why));
        g.delivered(TOPIC);
        assert_eq!(g.suspicion(), None);
        assert_eq!(g.refused(env, TOPIC, "dd", "BadDeviceToken"), None);
    }

    #[test]
    fn a_delivery_in_between_restarts_the_count() {
        let g = guard();
        let env = Mismatch::Environment;
        g.refused(env, TOPIC, "aa", "BadDeviceToken");
        g.refused(env, TOPIC, "bb", "BadDeviceToken");
        g.delivered(TOPIC);
        assert_eq!(g.refused(env, TOPIC, "cc", "BadDeviceToken"), None);
    }

    #[test]
    fn topic_streaks_are_per_topic_and_the_environment_is_shared() {
        let g = guard();
        let voip = "org.example.mesh.voip";
        for t in ["aa", "bb", "cc"] {
            g.refused(Mismatch::Topic, voip, t, "TopicDisallowed");
        }
        let why = g.suspicion().unwrap();
        assert!(why.contains("topic `org.example.mesh.voip`"), "{why}");
        assert!(why.contains("TopicDisallowed"), "{why}");
        // An alert delivery says nothing about the VoIP topic.
        g.delivered(TOPIC);
        assert!(g.suspicion().is_some());
        g.delivered(voip);
        assert_eq!(g.suspicion(), None);

        // A VoIP delivery proves the environment for alerts too.
        g.refused(Mismatch::Environment, TOPIC, "aa", "BadDeviceToken");
        g.refused(Mismatch::Environment, TOPIC, "bb", "BadDeviceToken");
        g.delivered(voip);
        assert_eq!(
            g.refused(Mismatch::Environment, TOPIC, "cc", "BadDeviceToken"),
            None
        );
    }

    #[test]
    fn the_error_line_is_logged_once_per_episode() {
        // Counted by the guard next to the `error!` call: a tracing subscriber set
        // per thread races other test threads over the callsite interest cache.
        let logged = |g: &MismatchGuard| g.errors_logged.load(std::sync::atomic::Ordering::Relaxed);
        let g = guard();
        for t in ["aa", "bb", "cc", "dd", "ee", "aa"] {
            g.refused(Mismatch::Environment, TOPIC, t, "BadDeviceToken");
        }
        assert_eq!(logged(&g), 1);
        g.delivered(TOPIC);
        for t in ["aa", "bb"] {
            g.refused(Mismatch::Environment, TOPIC, t, "BadDeviceToken");
        }
        assert_eq!(logged(&g), 1, "below the threshold again: no new line");
        for t in ["cc", "dd"] {
            g.refused(Mismatch::Environment, TOPIC, t, "BadDeviceToken");
        }
        assert_eq!(logged(&g), 2);
    }

    #[test]
    fn the_threshold_can_be_lowered() {
        let mut g = guard();
        g.set_threshold(1);
        assert!(g
            .refused(Mismatch::Environment, TOPIC, "aa", "BadDeviceToken")
            .is_some());
        g.set_threshold(0);
        assert_eq!(g.threshold, 1);
    }
}
