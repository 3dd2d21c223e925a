//! The `discord` channel: Discord's webhook format, one embed (title linking to
//! the dashboard's event page, the lines as its description) and `content` as
//! the plain-text fallback. The target is the webhook URL (token via
//! `{secret}`). Discord answers 204 without a body.
//!
//! Pure: builds the request.

use serde_json::json;

use super::{json_bytes, HttpRequest};
use crate::notify::message::Message;

/// Discord's limits: a title of 256 characters, a description of 4096.
fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(limit - 1).collect();
    cut.push('…');
    cut
}

pub fn request(url: String, message: &Message) -> Result<HttpRequest, String> {
    let mut embed = json!({
        "title": cut(&message.title, 256),
        "description": cut(&message.lines.join("\n"), 4096),
        "footer": {"text": format!("conscope · {}", message.kind)},
    });
    if let Some(link) = &message.link {
        embed["url"] = json!(link);
    }
    let value = json!({
        "username": "conscope",
        "content": cut(&message.title, 2000),
        "embeds": [embed],
        // An alert names no one: never ping anybody from its text.
        "allowed_mentions": {"parse": []},
    });
    Ok(HttpRequest {
        url,
        headers: Vec::new(),
        content_type: "application/json",
        body: json_bytes(&value),
    })
}
