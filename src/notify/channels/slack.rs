//! The `slack` channel: Slack's incoming-webhook format, a `text` fallback (what
//! notifications show) and `blocks`: a header, the lines in mrkdwn, a button-less
//! link to the dashboard's event page. The target is the webhook URL (put its
//! token in `secret_env` and write `{secret}` in the target).
//!
//! Pure: builds the request.

use serde_json::json;

use super::{json_bytes, HttpRequest};
use crate::notify::message::Message;

/// Slack's mrkdwn reserves `&`, `<` and `>` (links are `<url|text>`).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn request(url: String, message: &Message) -> Result<HttpRequest, String> {
    let mut body = format!("*{}*", escape(&message.title));
    for line in &message.lines {
        body.push('\n');
        body.push_str(&escape(line));
    }
    if let Some(link) = &message.link {
        body.push_str(&format!("\n<{}|Open on the dashboard>", escape(link)));
    }
    let value = json!({
        "text": format!("{}\n{}", message.title, message.text()),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": body}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("conscope · {}", escape(&message.kind))}]},
        ],
    });
    Ok(HttpRequest {
        url,
        headers: Vec::new(),
        content_type: "application/json",
        body: json_bytes(&value),
    })
}
