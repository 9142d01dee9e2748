//! A deliberately tiny Markdown-to-HTML renderer for the HTML alternative.
//!
//! It knows paragraphs (blank lines), line breaks, `**bold**`, `*italic*` and
//! `` `code` ``, and nothing else. Every other character is text: `<`, `>`, `&`, `"`
//! and `'` are always escaped, so no raw HTML from a message can reach the mail
//! client.

/// Escapes text for HTML element content and double- or single-quoted attributes.
pub(crate) fn escape_html(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Renders `markdown` to an HTML fragment: one `<p>` per paragraph, `<br>` for a
/// line break inside a paragraph.
pub(crate) fn render_markdown(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len() + 32);
    let text = markdown.replace("\r\n", "\n");
    for paragraph in text.split("\n\n") {
        let lines: Vec<&str> = paragraph
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
            .collect();
        if lines.is_empty() {
            continue;
        }
        out.push_str("<p>");
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                out.push_str("<br>\n");
            }
            render_inline(line, &mut out);
        }
        out.push_str("</p>\n");
    }
    out
}

/// Renders one line's inline markup. An opening marker without its closing
/// marker is plain text.
fn render_inline(line: &str, out: &mut String) {
    let mut rest = line;
    while !rest.is_empty() {
        let Some(pos) = rest.find(['*', '`']) else {
            escape_html(rest, out);
            return;
        };
        escape_html(&rest[..pos], out);
        let at = &rest[pos..];
        if let Some(inner) = at.strip_prefix('`') {
            if let Some(end) = inner.find('`').filter(|&e| e > 0) {
                out.push_str("<code>");
                escape_html(&inner[..end], out);
                out.push_str("</code>");
                rest = &inner[end + 1..];
                continue;
            }
            out.push('`');
            rest = inner;
        } else if let Some(inner) = at.strip_prefix("**") {
            if let Some(end) = inner.find("**").filter(|&e| e > 0) {
                out.push_str("<strong>");
                render_inline(&inner[..end], out);
                out.push_str("</strong>");
                rest = &inner[end + 2..];
                continue;
            }
            out.push_str("**");
            rest = inner;
        } else {
            let inner = &at[1..];
            if let Some(end) = find_single_star(inner).filter(|&e| e > 0) {
                out.push_str("<em>");
                render_inline(&inner[..end], out);
                out.push_str("</em>");
                rest = &inner[end + 1..];
                continue;
            }
            out.push('*');
            rest = inner;
        }
    }
}

/// The first `*` that is not part of a `**`.
fn find_single_star(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'*' {
            if bytes.get(i + 1) == Some(&b'*') {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_breaks_and_inline_markup() {
        assert_eq!(
            render_markdown("Hello **Bob**, *ça va* ?\nSee `a<b`.\n\nSecond"),
            "<p>Hello <strong>Bob</strong>, <em>ça va</em> ?<br>\nSee <code>a&lt;b</code>.</p>\n<p>Second</p>\n"
        );
    }

    #[test]
    fn nested_markup() {
        assert_eq!(
            render_markdown("**bold *and italic* text**"),
            "<p><strong>bold <em>and italic</em> text</strong></p>\n"
        );
        assert_eq!(
            render_markdown("*a **b** c*"),
            "<p><em>a <strong>b</strong> c</em></p>\n"
        );
    }

    #[test]
    fn raw_html_is_always_escaped() {
        let html = render_markdown(
            "<script>alert('x')</script> **<img src=x onerror=alert(1)>** `<b>` \"q\" & more",
        );
        assert_eq!(
            html,
            "<p>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; <strong>&lt;img src=x onerror=alert(1)&gt;</strong> <code>&lt;b&gt;</code> &quot;q&quot; &amp; more</p>\n"
        );
        assert!(!html.contains("<script"));
    }

    #[test]
    fn unclosed_markers_are_text() {
        assert_eq!(
            render_markdown("2 * 3 = 6, a ** b, `x"),
            "<p>2 * 3 = 6, a ** b, `x</p>\n"
        );
        assert_eq!(render_markdown("****"), "<p>****</p>\n");
        assert_eq!(render_markdown(""), "");
        assert_eq!(render_markdown("\n\n\n"), "");
    }
}
