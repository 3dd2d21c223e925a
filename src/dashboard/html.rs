//! HTML escaping and URL encoding: the only way a value reaches a page.
//!
//! Every string from a scraper (event names, venues, sections, rows, seats,
//! sources) is hostile. [`Esc`] escapes for HTML text and quoted attribute
//! values alike (and for SVG, which is XML: the same five characters), and
//! replaces control characters. [`Seg`] percent-encodes a value for a path
//! segment or a query value (`&`, `=`, `+`, `#` included). Nothing here touches IO.

use std::fmt;

/// Escapes `&`, `<`, `>`, `"` and `'` when displayed; control characters
/// (which XML forbids, and which garble a page) become U+FFFD.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(|c: char| {
            matches!(c, '&' | '<' | '>' | '"' | '\'') || (c.is_control() && c != '\n' && c != '\t')
        }) {
            f.write_str(&rest[..at])?;
            let Some(c) = rest[at..].chars().next() else {
                break;
            };
            f.write_str(match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                _ => "\u{FFFD}",
            })?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so the
/// value is one path segment (a `/` or `?` in an event id stays inside it).
pub struct Seg<'a>(pub &'a str);

impl fmt::Display for Seg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                write!(f, "{}", byte as char)?;
            } else {
                write!(f, "%{byte:02X}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(text: &str) -> String {
        Esc(text).to_string()
    }

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(esc("a\u{0}b\u{1b}c\u{7f}"), "a\u{FFFD}b\u{FFFD}c\u{FFFD}");
        assert_eq!(esc("Café Ünïcode ✓"), "Café Ünïcode ✓");
        assert_eq!(esc(""), "");
    }

    #[test]
    fn percent_encodes_a_segment() {
        assert_eq!(Seg("a/b?c d&é").to_string(), "a%2Fb%3Fc%20d%26%C3%A9");
        assert_eq!(Seg("taylor-2026_x.y~z").to_string(), "taylor-2026_x.y~z");
    }
}
