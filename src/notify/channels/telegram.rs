//! The `telegram` channel: the Bot API's `sendMessage` at
//! `<--telegram-api>/bot<token>/sendMessage`, `chat_id` = the channel's target,
//! the bot token from the channel's secret, the text in Telegram's HTML mode
//! (title in bold, the dashboard link as a link). The URL holds the token: it is
//! never shown.
//!
//! Pure: builds the request.

use serde_json::json;

use super::{json_bytes, HttpRequest};
use crate::notify::message::{escape_html, Message};

/// Telegram's limit on a message's text.
const MAX_TEXT: usize = 4096;

pub fn request(
    api: &str,
    chat_id: &str,
    message: &Message,
    token: Option<&str>,
) -> Result<HttpRequest, String> {
    let Some(token) = token else {
        return Err("a telegram channel needs its bot token in secret_env".to_owned());
    };
    let mut text = format!("<b>{}</b>", escape_html(&message.title));
    for line in &message.lines {
        text.push('\n');
        text.push_str(&escape_html(line));
    }
    if let Some(link) = &message.link {
        text.push_str(&format!(
            "\n<a href=\"{}\">Open on the dashboard</a>",
            escape_html(link)
        ));
    }
    if text.chars().count() > MAX_TEXT {
        // Cutting HTML could break a tag: send the plain text, cut.
        text = message.text().chars().take(MAX_TEXT).collect();
    }
    // A numeric chat id goes as a number, `@channel` as a string.
    let chat = chat_id
        .parse::<i64>()
        .map(|id| json!(id))
        .unwrap_or_else(|_| json!(chat_id));
    let value = json!({
        "chat_id": chat,
        "text": text,
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": true},
    });
    Ok(HttpRequest {
        url: format!("{}/bot{token}/sendMessage", api.trim_end_matches('/')),
        headers: Vec::new(),
        content_type: "application/json",
        body: json_bytes(&value),
    })
}
