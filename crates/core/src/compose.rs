//! Turning chat-server events into notifications: templates and the [`Composer`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    room_click_url, sanitize_text, truncate_graphemes, BodyFormat, Kind, Notification, Priority,
    PriorityError, Recipient, Room,
};

/// Built-in template languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// French, the seed's wording (default).
    #[default]
    Fr,
    /// English.
    En,
}

/// Title and body templates. Placeholders: `{from}`, `{room}`, `{file}`, `{message}`,
/// and `{count}` in the summaries.
///
/// Substitution is a single pass: a value containing `{room}` is inserted as
/// literal text and never expanded again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Templates {
    /// Chat title, e.g. `💬 {from} dans {room}`.
    pub chat_title: String,
    /// Chat body; `{message}` is the (already cut) message.
    pub chat_body: String,
    /// Call title.
    pub call_title: String,
    /// Call body.
    pub call_body: String,
    /// File title.
    pub file_title: String,
    /// File body.
    pub file_body: String,
    /// Title of a summary of `{count}` messages from one sender, e.g.
    /// `💬 {count} nouveaux messages de {from} dans {room}`; the body is
    /// `chat_body` with the latest message.
    pub chat_summary_title: String,
    /// Title of a summary of `{count}` messages from several senders (`{from}`
    /// lists them), e.g. `💬 {count} nouveaux messages dans {room}`.
    pub chat_summary_title_many: String,
    /// Title of a summary of `{count}` files from one sender; the body is
    /// `file_body` with the latest file.
    pub file_summary_title: String,
    /// Title of a summary of `{count}` files from several senders.
    pub file_summary_title_many: String,
}

/// A template that uses a placeholder it does not support.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template `{template}` uses unknown placeholder `{{{placeholder}}}` (allowed: {allowed})")]
pub struct TemplateError {
    /// Which template (e.g. `chat_title`).
    pub template: &'static str,
    /// The unknown placeholder name.
    pub placeholder: String,
    /// What is allowed there.
    pub allowed: &'static str,
}

impl Templates {
    /// The seed's French wording.
    pub fn fr() -> Self {
        Self {
            chat_title: "💬 {from} dans {room}".into(),
            chat_body: "{message}".into(),
            call_title: "📞 Appel audio/vidéo de {from}".into(),
            call_body: "Appel entrant dans {room}".into(),
            file_title: "📁 {from} a partagé un fichier".into(),
            file_body: "Fichier: {file}\nDans: {room}".into(),
            chat_summary_title: "💬 {count} nouveaux messages de {from} dans {room}".into(),
            chat_summary_title_many: "💬 {count} nouveaux messages dans {room}".into(),
            file_summary_title: "📁 {count} fichiers partagés par {from} dans {room}".into(),
            file_summary_title_many: "📁 {count} fichiers partagés dans {room}".into(),
        }
    }

    /// English wording.
    pub fn en() -> Self {
        Self {
            chat_title: "💬 {from} in {room}".into(),
            chat_body: "{message}".into(),
            call_title: "📞 Audio/video call from {from}".into(),
            call_body: "Incoming call in {room}".into(),
            file_title: "📁 {from} shared a file".into(),
            file_body: "File: {file}\nIn: {room}".into(),
            chat_summary_title: "💬 {count} new messages from {from} in {room}".into(),
            chat_summary_title_many: "💬 {count} new messages in {room}".into(),
            file_summary_title: "📁 {from} shared {count} files in {room}".into(),
            file_summary_title_many: "📁 {count} files shared in {room}".into(),
        }
    }

    /// The built-in templates for a language.
    pub fn for_language(lang: Language) -> Self {
        match lang {
            Language::Fr => Self::fr(),
            Language::En => Self::en(),
        }
    }

    /// Checks that every template only uses the placeholders available to it.
    pub fn validate(&self) -> Result<(), TemplateError> {
        const CHAT: &[&str] = &["from", "room", "message"];
        const CALL: &[&str] = &["from", "room"];
        const FILE: &[&str] = &["from", "room", "file"];
        const SUMMARY: &[&str] = &["count", "from", "room"];
        let checks: [(&'static str, &str, &[&str], &'static str); 10] = [
            (
                "chat_title",
                &self.chat_title,
                CHAT,
                "{from}, {room}, {message}",
            ),
            (
                "chat_body",
                &self.chat_body,
                CHAT,
                "{from}, {room}, {message}",
            ),
            ("call_title", &self.call_title, CALL, "{from}, {room}"),
            ("call_body", &self.call_body, CALL, "{from}, {room}"),
            (
                "file_title",
                &self.file_title,
                FILE,
                "{from}, {room}, {file}",
            ),
            ("file_body", &self.file_body, FILE, "{from}, {room}, {file}"),
            (
                "chat_summary_title",
                &self.chat_summary_title,
                SUMMARY,
                "{count}, {from}, {room}",
            ),
            (
                "chat_summary_title_many",
                &self.chat_summary_title_many,
                SUMMARY,
                "{count}, {from}, {room}",
            ),
            (
                "file_summary_title",
                &self.file_summary_title,
                SUMMARY,
                "{count}, {from}, {room}",
            ),
            (
                "file_summary_title_many",
                &self.file_summary_title_many,
                SUMMARY,
                "{count}, {from}, {room}",
            ),
        ];
        for (name, template, allowed, allowed_text) in checks {
            for placeholder in placeholders(template) {
                if !allowed.contains(&placeholder) {
                    return Err(TemplateError {
                        template: name,
                        placeholder: placeholder.to_string(),
                        allowed: allowed_text,
                    });
                }
            }
        }
        Ok(())
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::fr()
    }
}

fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    let mut rest = template;
    std::iter::from_fn(move || loop {
        let start = rest.find('{')?;
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                rest = &after[end + 1..];
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Some(name);
                }
            }
            None => return None,
        }
    })
}

/// Single-pass substitution: values are inserted verbatim and never re-expanded.
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let replaced = after.find('}').and_then(|end| {
            let name = &after[..end];
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (end, *v))
        });
        match replaced {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Builds notifications for the four kinds from templates.
#[derive(Debug, Clone)]
pub struct Composer {
    /// Templates in use.
    pub templates: Templates,
    /// Chat bodies are cut to this many characters (graphemes), ellipsis included.
    pub chat_body_max_chars: usize,
    /// Send bodies as markdown instead of plain text.
    pub markdown: bool,
    /// How long a call notification stays deliverable (default 60 s).
    pub call_ttl: Duration,
}

impl Default for Composer {
    fn default() -> Self {
        Self {
            templates: Templates::fr(),
            chat_body_max_chars: 100,
            markdown: false,
            call_ttl: Duration::from_secs(60),
        }
    }
}

impl Composer {
    /// A composer with the given templates and the default limits.
    pub fn with_templates(templates: Templates) -> Self {
        Self {
            templates,
            ..Self::default()
        }
    }

    fn base(
        &self,
        kind: Kind,
        recipient: Recipient,
        room: &Room,
        title: String,
        body: String,
    ) -> Notification {
        let mut n = Notification::new(kind, recipient, title, body);
        n.click_url = Some(room_click_url(&room.id));
        // One notification per room on the device for messages, one for files;
        // every call stands alone.
        n.collapse_key = match kind {
            Kind::Chat => Some(format!("room-{}", room.id)),
            Kind::File => Some(format!("room-{}-files", room.id)),
            Kind::Call | Kind::System => None,
        };
        n.room = Some(room.clone());
        n.format = if self.markdown {
            BodyFormat::Markdown
        } else {
            BodyFormat::Plain
        };
        n
    }

    /// `💬 {from} dans {room}`, body = the message cut to `chat_body_max_chars`, priority 6.
    pub fn chat(
        &self,
        from: &str,
        room: &Room,
        recipient: Recipient,
        message: &str,
    ) -> Notification {
        let from = sanitize_text(from);
        let room_name = sanitize_text(&room.name);
        let message = truncate_graphemes(&sanitize_text(message), self.chat_body_max_chars);
        let vars = [
            ("from", from.as_str()),
            ("room", room_name.as_str()),
            ("message", message.as_str()),
        ];
        let title = render(&self.templates.chat_title, &vars);
        let body = render(&self.templates.chat_body, &vars);
        self.base(Kind::Chat, recipient, room, title, body)
    }

    /// `📞 Appel audio/vidéo de {from}` / `Appel entrant dans {room}`, priority 8,
    /// expiring after `call_ttl`.
    pub fn call(&self, from: &str, room: &Room, recipient: Recipient) -> Notification {
        let from = sanitize_text(from);
        let room_name = sanitize_text(&room.name);
        let vars = [("from", from.as_str()), ("room", room_name.as_str())];
        let title = render(&self.templates.call_title, &vars);
        let body = render(&self.templates.call_body, &vars);
        let mut n = self.base(Kind::Call, recipient, room, title, body);
        n.expires_at = Some(n.created_at.plus(self.call_ttl));
        n
    }

    /// `📁 {from} a partagé un fichier` / `Fichier: {file}\nDans: {room}`, priority 5.
    pub fn file(
        &self,
        from: &str,
        room: &Room,
        recipient: Recipient,
        file_name: &str,
    ) -> Notification {
        let from = sanitize_text(from);
        let room_name = sanitize_text(&room.name);
        let file = sanitize_text(file_name);
        let vars = [
            ("from", from.as_str()),
            ("room", room_name.as_str()),
            ("file", file.as_str()),
        ];
        let title = render(&self.templates.file_title, &vars);
        let body = render(&self.templates.file_body, &vars);
        self.base(Kind::File, recipient, room, title, body)
    }

    /// One notification standing for `count` chat messages (`Kind::Chat`) or
    /// shared files (`Kind::File`) in `room` from `senders` (display names, first
    /// sender first, without repeats); `latest` is the last message or file name.
    /// With `count` 1 it is the ordinary notification of that message.
    pub fn summary(
        &self,
        kind: Kind,
        count: u32,
        senders: &[String],
        room: &Room,
        recipient: Recipient,
        latest: &str,
    ) -> Notification {
        let first = senders.first().map(String::as_str).unwrap_or_default();
        if count <= 1 {
            return match kind {
                Kind::File => self.file(first, room, recipient, latest),
                _ => self.chat(first, room, recipient, latest),
            };
        }
        let from = sanitize_text(&senders.join(", "));
        let room_name = sanitize_text(&room.name);
        let count_text = count.to_string();
        let vars = [
            ("count", count_text.as_str()),
            ("from", from.as_str()),
            ("room", room_name.as_str()),
        ];
        let (one, many) = match kind {
            Kind::File => (
                &self.templates.file_summary_title,
                &self.templates.file_summary_title_many,
            ),
            _ => (
                &self.templates.chat_summary_title,
                &self.templates.chat_summary_title_many,
            ),
        };
        let title = render(if senders.len() > 1 { many } else { one }, &vars);
        let latest_n = match kind {
            Kind::File => self.file(first, room, recipient, latest),
            _ => self.chat(first, room, recipient, latest),
        };
        let mut n = self.base(
            latest_n.kind,
            latest_n.recipient,
            room,
            title,
            latest_n.body,
        );
        n.priority = latest_n.priority;
        n
    }

    /// A system error notification, priority 7.
    pub fn system(&self, recipient: Recipient, title: &str, body: &str) -> Notification {
        Notification::new(Kind::System, recipient, title, body)
    }

    /// Overrides the priority of a notification (0–10, validated).
    pub fn with_priority(
        mut n: Notification,
        priority: i64,
    ) -> Result<Notification, PriorityError> {
        n.priority = Priority::new(priority)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> Room {
        Room::new("room-42", "Test Gotify")
    }

    #[test]
    fn french_templates_match_the_seed_exactly() {
        let c = Composer::default();
        let bob = Recipient::new("bob", "Bob");
        let chat = c.chat("Alice", &room(), bob.clone(), "Bonjour");
        assert_eq!(chat.title, "💬 Alice dans Test Gotify");
        assert_eq!(chat.body, "Bonjour");
        assert_eq!(chat.priority.get(), 6);
        assert_eq!(chat.click_url.as_deref(), Some("mesh://room/room-42"));
        assert_eq!(chat.format, BodyFormat::Plain);

        let call = c.call("Alice", &room(), bob.clone());
        assert_eq!(call.title, "📞 Appel audio/vidéo de Alice");
        assert_eq!(call.body, "Appel entrant dans Test Gotify");
        assert_eq!(call.priority.get(), 8);
        assert_eq!(
            call.expires_at.unwrap().as_millis() - call.created_at.as_millis(),
            60_000
        );

        let file = c.file("Alice", &room(), bob.clone(), "photo.jpg");
        assert_eq!(file.title, "📁 Alice a partagé un fichier");
        assert_eq!(file.body, "Fichier: photo.jpg\nDans: Test Gotify");
        assert_eq!(file.priority.get(), 5);

        let sys = c.system(bob, "Erreur", "disque plein");
        assert_eq!(sys.priority.get(), 7);
    }

    #[test]
    fn chat_body_is_cut_to_the_configured_length() {
        let mut c = Composer::default();
        let long = "é".repeat(250);
        let n = c.chat("A", &room(), Recipient::new("b", "B"), &long);
        assert_eq!(n.body.chars().count(), 100);
        assert!(n.body.ends_with('…'));
        c.chat_body_max_chars = 20;
        let n = c.chat("A", &room(), Recipient::new("b", "B"), &long);
        assert_eq!(n.body.chars().count(), 20);
    }

    #[test]
    fn values_are_not_re_expanded() {
        let c = Composer::default();
        let n = c.chat(
            "{room}",
            &Room::new("r", "{message}"),
            Recipient::new("b", "B"),
            "{from}",
        );
        assert_eq!(n.title, "💬 {room} dans {message}");
        assert_eq!(n.body, "{from}");
    }

    #[test]
    fn english_and_custom_templates() {
        let c = Composer::with_templates(Templates::en());
        let n = c.call("Alice", &room(), Recipient::new("b", "B"));
        assert_eq!(n.title, "📞 Audio/video call from Alice");
        let mut t = Templates::fr();
        t.chat_title = "{from} @ {room}: {nope}".into();
        let err = t.validate().unwrap_err();
        assert_eq!(err.template, "chat_title");
        assert_eq!(err.placeholder, "nope");
        assert!(Templates::fr().validate().is_ok());
        assert!(Templates::en().validate().is_ok());
    }

    #[test]
    fn summaries_count_senders_and_show_the_latest_message() {
        let c = Composer::default();
        let bob = Recipient::new("bob", "Bob");
        let room = Room::new("7", "Team Chat");
        let one = c.summary(
            Kind::Chat,
            3,
            &["Alice".into()],
            &room,
            bob.clone(),
            "dernier",
        );
        assert_eq!(one.title, "💬 3 nouveaux messages de Alice dans Team Chat");
        assert_eq!(one.body, "dernier");
        assert_eq!(one.priority.get(), 6);
        assert_eq!(one.collapse_key.as_deref(), Some("room-7"));
        assert_eq!(one.click_url.as_deref(), Some("mesh://room/7"));
        let many = c.summary(
            Kind::Chat,
            5,
            &["Alice".into(), "Carol".into()],
            &room,
            bob.clone(),
            &"x".repeat(300),
        );
        assert_eq!(many.title, "💬 5 nouveaux messages dans Team Chat");
        assert_eq!(many.body.chars().count(), 100);
        let single = c.summary(
            Kind::Chat,
            1,
            &["Alice".into()],
            &room,
            bob.clone(),
            "salut",
        );
        assert_eq!(single.title, "💬 Alice dans Team Chat");
        let files = c.summary(
            Kind::File,
            2,
            &["Alice".into()],
            &room,
            bob.clone(),
            "b.pdf",
        );
        assert_eq!(
            files.title,
            "📁 2 fichiers partagés par Alice dans Team Chat"
        );
        assert_eq!(files.body, "Fichier: b.pdf\nDans: Team Chat");
        assert_eq!(files.collapse_key.as_deref(), Some("room-7-files"));
        let en = Composer::with_templates(Templates::en());
        let n = en.summary(Kind::Chat, 4, &["Alice".into()], &room, bob.clone(), "hi");
        assert_eq!(n.title, "💬 4 new messages from Alice in Team Chat");
        assert!(c.call("Alice", &room, bob).collapse_key.is_none());
    }

    #[test]
    fn collapse_topic_fits_web_push() {
        let c = Composer::default();
        let bob = Recipient::new("bob", "Bob");
        let n = c.chat("A", &Room::new("42", "R"), bob.clone(), "m");
        assert_eq!(n.collapse_topic().as_deref(), Some("room-42"));
        let n = c.chat("A", &Room::new("a/b c".repeat(10), "R"), bob, "m");
        let topic = n.collapse_topic().unwrap();
        assert_eq!(topic.len(), 32);
        assert!(topic.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn markdown_is_opt_in() {
        let c = Composer {
            markdown: true,
            ..Composer::default()
        };
        let n = c.file("A", &room(), Recipient::new("b", "B"), "f");
        assert_eq!(n.format, BodyFormat::Markdown);
    }

    #[test]
    fn weird_room_ids_are_escaped_in_click_url() {
        let c = Composer::default();
        let n = c.call(
            "A",
            &Room::new("x/../admin?token=1#f", "R"),
            Recipient::new("b", "B"),
        );
        assert_eq!(
            n.click_url.as_deref(),
            Some("mesh://room/x%2F..%2Fadmin%3Ftoken%3D1%23f")
        );
    }
}
