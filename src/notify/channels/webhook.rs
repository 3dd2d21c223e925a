//! The `webhook` channel: the alert JSON (the message value, with the event's
//! name, venue and date filled in from `events` when the topic lacked them, and
//! `event_url` with `--dashboard-url`), signed with the channel's secret:
//!
//! `X-Conscope-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
//!
//! A receiver recomputes the HMAC over the raw body and refuses an old `t`
//! (replays). Without a `secret_env` the request goes unsigned. A digest is
//! `{"digest": true, "count": N, "alert_ids": [...], "alerts": [...], "text": ...}`.
//!
//! Pure: builds the request; the POST is the `Sender`'s.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{json_bytes, HttpRequest, Payload, Settings};
use crate::notify::message::{event_link, Message};

pub const SIGNATURE_HEADER: &str = "X-Conscope-Signature";

pub fn request(
    url: String,
    payload: &Payload<'_>,
    message: &Message,
    secret: Option<&str>,
    settings: &Settings,
) -> Result<HttpRequest, String> {
    let alert_json = |alert: &crate::notify::alert::Alert| {
        let mut object = alert.json.clone();
        if let Some(link) = event_link(settings.dashboard_url.as_deref(), &alert.event_id) {
            object.insert("event_url".to_owned(), Value::String(link));
        }
        Value::Object(object)
    };
    let body = match payload {
        Payload::One(alert) => json_bytes(&alert_json(alert)),
        Payload::Digest(alerts) => json_bytes(&json!({
            "digest": true,
            "count": alerts.len(),
            "alert_ids": alerts.iter().map(|a| a.alert_id.as_str()).collect::<Vec<_>>(),
            "alerts": alerts.iter().map(|a| alert_json(a)).collect::<Vec<_>>(),
            "title": message.title,
            "text": message.text(),
        })),
    };
    let mut headers = Vec::new();
    if let Some(secret) = secret {
        let now = chrono::Utc::now().timestamp();
        headers.push((SIGNATURE_HEADER, signature(secret.as_bytes(), now, &body)));
    }
    Ok(HttpRequest {
        url,
        headers,
        content_type: "application/json",
        body,
    })
}

/// `t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let mac = hmac_sha256(secret, &signed);
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// HMAC (RFC 2104) over SHA-256, with the `sha2` the crate already uses.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 4231 test cases 2 and 6 (a key longer than the block).
    #[test]
    fn hmac_matches_rfc_4231() {
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert_eq!(
            signature(b"Jefe", 12, b"x"),
            format!("t=12,v1={}", hex(&hmac_sha256(b"Jefe", b"12.x")))
        );
    }
}
