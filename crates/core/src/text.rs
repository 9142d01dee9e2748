//! Text handling shared by every provider: sanitising user content, cutting bodies on
//! grapheme boundaries, and building click URLs that cannot be misread.

use unicode_segmentation::UnicodeSegmentation;

/// Removes characters that could hide or disguise content when shown in a
/// notification: ASCII/C1 control characters (except newline and tab) and Unicode
/// bidirectional overrides/isolates (the "Trojan Source" characters). Carriage
/// returns are normalised to newlines. Nothing is interpreted or executed: the text
/// stays text.
pub fn sanitize_text(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push('\n');
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Cuts `text` to at most `max` user-perceived characters (extended grapheme
/// clusters), ending with `…` when something was cut. Never splits a multi-byte
/// character, an emoji sequence or a letter with its combining marks.
///
/// ```
/// use mesh_notify_core::truncate_graphemes;
/// assert_eq!(truncate_graphemes("héllo", 10), "héllo");
/// assert_eq!(truncate_graphemes("héllo wörld", 6), "héllo…");
/// ```
pub fn truncate_graphemes(text: &str, max: usize) -> String {
    if max == 0 {
        return String::new();
    }
    let mut end = None;
    for (count, (idx, _)) in text.grapheme_indices(true).enumerate() {
        if count == max - 1 {
            end = Some(idx);
        }
        if count == max {
            // More than `max` graphemes: keep max-1 and the ellipsis.
            let cut = end.unwrap_or(idx);
            let mut out = text[..cut].trim_end().to_string();
            out.push('…');
            return out;
        }
    }
    text.to_string()
}

/// The click target for a room: `mesh://room/{room_id}`.
///
/// Room ids are normally plain (`[A-Za-z0-9._~-]`). Any other byte, such as `/`, `?`,
/// `#`, `%`, `@` or a space, is percent-encoded so that an id can never add a path
/// segment, a query, a fragment or an authority to the URL.
pub fn room_click_url(room_id: &str) -> String {
    let mut url = String::with_capacity("mesh://room/".len() + room_id.len());
    url.push_str("mesh://room/");
    // "." and ".." are path segments of their own: encode their dots too.
    let dots_only = room_id.bytes().all(|b| b == b'.');
    for b in room_id.bytes() {
        let plain = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'~')
            || (b == b'.' && !dots_only);
        if plain {
            url.push(b as char);
        } else {
            url.push('%');
            url.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            url.push(char::from(b"0123456789ABCDEF"[(b & 0xF) as usize]));
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_counts_graphemes_and_adds_ellipsis() {
        let msg = "a".repeat(150);
        let cut = truncate_graphemes(&msg, 100);
        assert_eq!(cut.chars().count(), 100);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_graphemes(&"a".repeat(100), 100), "a".repeat(100));
    }

    #[test]
    fn truncation_never_splits_multibyte_or_grapheme_clusters() {
        // family emoji = several code points joined by ZWJ; "é" as e + combining acute.
        let family = "👨‍👩‍👧‍👦";
        let text = format!("{}{}", family.repeat(5), "e\u{301}".repeat(5));
        let cut = truncate_graphemes(&text, 4);
        assert_eq!(cut, format!("{}…", family.repeat(3)));
        let cut = truncate_graphemes(&"e\u{301}".repeat(10), 3);
        assert_eq!(cut, "e\u{301}e\u{301}…");
    }

    #[test]
    fn sanitize_strips_controls_and_bidi_but_keeps_text() {
        let input = "hi\u{0007} <b>x</b>\r\nnext\u{202E}evil\u{2066}";
        assert_eq!(sanitize_text(input), "hi <b>x</b>\nnextevil");
    }

    #[test]
    fn click_url_escapes_non_plain_ids() {
        assert_eq!(room_click_url("r-1_a.b"), "mesh://room/r-1_a.b");
        assert_eq!(room_click_url("../x?y#z"), "mesh://room/..%2Fx%3Fy%23z");
        assert_eq!(room_click_url("a b@c"), "mesh://room/a%20b%40c");
        assert_eq!(room_click_url("é"), "mesh://room/%C3%A9");
        assert_eq!(room_click_url(".."), "mesh://room/%2E%2E");
    }
}
