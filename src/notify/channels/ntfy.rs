//! The `ntfy` channel: a POST of the lines as plain text to the topic URL (the
//! target), with headers `Title`, `Tags` (an emoji tag and the alert kind) and
//! `Click` (the dashboard's event page). With a secret, it is the access token
//! (`Authorization: Bearer`). Header values that are not ASCII are sent as RFC
//! 2047 encoded words, which ntfy decodes.
//!
//! Pure: builds the request.

use super::HttpRequest;
use crate::notify::message::Message;

/// RFC 2047 `=?UTF-8?B?…?=` for a value with non-ASCII characters.
pub fn header_value(text: &str) -> String {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return text.to_owned();
    }
    use base64::Engine as _;
    format!(
        "=?UTF-8?B?{}?=",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

pub fn request(url: String, message: &Message, token: Option<&str>) -> Result<HttpRequest, String> {
    let emoji = match message.kind.as_str() {
        "listing_drop" | "event_low" | "new_low" => "chart_with_downwards_trend",
        "back_in_stock" => "ticket",
        "deal" => "moneybag",
        "digest" => "card_index",
        _ => "bell",
    };
    let tags: String = message
        .kind
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let mut headers = vec![
        ("Title", header_value(&message.title)),
        ("Tags", format!("{emoji},{tags}")),
    ];
    if let Some(link) = &message.link {
        headers.push(("Click", link.clone()));
    }
    if let Some(token) = token {
        headers.push(("Authorization", format!("Bearer {token}")));
    }
    Ok(HttpRequest {
        url,
        headers,
        content_type: "text/plain; charset=utf-8",
        body: message.lines.join("\n").into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_titles_are_encoded_words() {
        assert_eq!(header_value("Price drop: ABC"), "Price drop: ABC");
        assert_eq!(header_value("é"), "=?UTF-8?B?w6k=?=");
    }
}
