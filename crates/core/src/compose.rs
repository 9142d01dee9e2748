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

/// Title and body templates. Placeholders: `{from}`, `{room}`, `{file}`, `{message}`.
///
/// Substitution is a single pass: a value containing `{room}` is inserted as
/// literal text and never expanded again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
        let checks: [(&'static str, &str, &[&str], &'static str); 6] = [
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
