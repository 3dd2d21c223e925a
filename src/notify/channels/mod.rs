//! Sending one message to one channel, once: each kind's format lives in its own
//! file (`webhook`, `slack`, `discord`, `telegram`, `ntfy`, `email`); this file
//! holds the [`Sender`] they share, the HTTP POST and how an answer is judged.
//!
//! # Outcomes
//! - [`Outcome::Accepted`]: 2xx (an SMTP server's 250).
//! - [`Outcome::Transient`]: a timeout or connection error, 408, 429, 5xx (an
//!   SMTP 4xx): worth retrying, after `Retry-After` when the answer says so.
//! - [`Outcome::Definite`]: any other answer (4xx, 3xx: redirects are not
//!   followed, as for `conscope alerts`), a missing secret: the same request
//!   would fail forever.
//!
//! # Secrets
//! A channel's secret is read from the environment variable its `secret_env`
//! names when its [`Sender`] is built. It is never logged and never part of an
//! outcome's reason: URLs that carry it (a `{secret}` in a target, Telegram's
//! bot path) are never shown, and transport errors are reduced to their kind.
//!
//! Touches: the network (the channel's URL or SMTP server) only.

pub mod discord;
pub mod email;
pub mod ntfy;
pub mod slack;
pub mod telegram;
pub mod webhook;

use std::time::Duration;

use super::alert::Alert;
use super::message::Message;
use super::store::{Channel, ChannelKind};
use crate::alerts::webhook::{retryable_status, transport_reason};
use conscope::text::printable;

/// Where the channels that are not a URL of their own are, and how long to wait.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dashboard_url: Option<String>,
    /// Telegram's Bot API, `https://api.telegram.org` unless tests point it elsewhere.
    pub telegram_api: String,
    pub smtp: email::SmtpSettings,
    pub timeout: Duration,
}

/// How a channel answered one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The channel took it; its answer, shortened, for `channels test`.
    Accepted(String),
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    Definite(String),
}

/// What one delivery carries: one alert, or a digest of several.
pub enum Payload<'a> {
    One(&'a Alert),
    Digest(&'a [&'a Alert]),
}

/// An HTTP request a format builds. Headers and URL may hold the secret.
pub struct HttpRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// The text the placeholder `{secret}` in a target stands for.
pub const SECRET_PLACEHOLDER: &str = "{secret}";

/// One channel, ready to send.
pub struct Sender {
    pub channel: Channel,
    secret: Option<String>,
    /// Why the channel cannot send at all (its secret's variable is unset).
    broken: Option<String>,
    agent: ureq::Agent,
    settings: Settings,
}

/// Longest answer kept for a reason or for `channels test`.
const ANSWER_CHARS: usize = 300;

pub fn shorten(text: &str) -> String {
    let text = printable(text.trim());
    if text.chars().count() > ANSWER_CHARS {
        let cut: String = text.chars().take(ANSWER_CHARS).collect();
        format!("{cut}…")
    } else {
        text
    }
}

impl Sender {
    /// Reads the channel's secret from the environment (never logged).
    pub fn new(channel: Channel, settings: Settings) -> Sender {
        let (secret, broken) = match &channel.secret_env {
            None => (None, None),
            Some(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => (Some(value), None),
                _ => (
                    None,
                    Some(format!(
                        "the environment variable {name} (secret_env) is not set in the notifier"
                    )),
                ),
            },
        };
        let broken = broken.or_else(|| {
            (channel.target.contains(SECRET_PLACEHOLDER) && channel.secret_env.is_none())
                .then(|| "the target holds {secret} but the channel has no secret_env".to_owned())
        });
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(settings.timeout.min(Duration::from_secs(5)))
            .timeout(settings.timeout)
            .redirects(0)
            .build();
        Sender {
            channel,
            secret,
            broken,
            agent,
            settings,
        }
    }

    /// The channel's target with `{secret}` filled in: never to be shown.
    fn target(&self) -> String {
        match &self.secret {
            Some(secret) => self.channel.target.replace(SECRET_PLACEHOLDER, secret),
            None => self.channel.target.clone(),
        }
    }

    /// Sends `payload` once (no retries here); `key` goes into `Idempotency-Key`.
    pub fn send(&self, payload: &Payload<'_>, message: &Message, key: &str) -> Outcome {
        if let Some(broken) = &self.broken {
            return Outcome::Definite(broken.clone());
        }
        let secret = self.secret.as_deref();
        let request = match self.channel.kind {
            ChannelKind::Webhook => webhook::request(self.target(), payload, message, secret, &self.settings),
            ChannelKind::Slack => slack::request(self.target(), message),
            ChannelKind::Discord => discord::request(self.target(), message),
            ChannelKind::Ntfy => ntfy::request(self.target(), message, secret),
            ChannelKind::Telegram => {
                telegram::request(&self.settings.telegram_api, &self.channel.target, message, secret)
            }
            ChannelKind::Email => {
                return email::send(&self.settings.smtp, &self.channel.target, message, key, secret);
            }
        };
        match request {
            Ok(request) => self.post(request, key),
            Err(reason) => Outcome::Definite(reason),
        }
    }

    fn post(&self, request: HttpRequest, key: &str) -> Outcome {
        let mut call = self
            .agent
            .post(&request.url)
            .set("Content-Type", request.content_type)
            .set("Idempotency-Key", key)
            .set("User-Agent", concat!("conscope/", env!("CARGO_PKG_VERSION")));
        for (name, value) in &request.headers {
            call = call.set(name, value);
        }
        match call.send_bytes(&request.body) {
            Ok(response) if (200..300).contains(&response.status()) => {
                let status = response.status();
                let body = response.into_string().unwrap_or_default();
                Outcome::Accepted(shorten(&format!("HTTP {status} {body}")))
            }
            Ok(response) => {
                Outcome::Definite(format!("HTTP {} (redirects are not followed)", response.status()))
            }
            Err(ureq::Error::Status(status, response)) => {
                let header = response.header("Retry-After").and_then(retry_after_header);
                let body = response.into_string().unwrap_or_default();
                let reason = shorten(&format!("HTTP {status} {body}"));
                if retryable_status(status) {
                    Outcome::Transient {
                        reason,
                        retry_after: header.or_else(|| retry_after_json(&body)),
                    }
                } else {
                    Outcome::Definite(reason)
                }
            }
            Err(ureq::Error::Transport(transport)) => {
                use ureq::ErrorKind::*;
                let reason = transport_reason(&transport);
                if matches!(transport.kind(), InvalidUrl | UnknownScheme | InvalidProxyUrl) {
                    Outcome::Definite(reason)
                } else {
                    Outcome::Transient {
                        reason,
                        retry_after: None,
                    }
                }
            }
        }
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after_header(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or_default())
}

/// Telegram and Discord also say it in the body: `retry_after` (seconds, maybe
/// fractional), at the top or under `parameters`.
fn retry_after_json(body: &str) -> Option<Duration> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let seconds = value
        .get("retry_after")
        .or_else(|| value.get("parameters").and_then(|p| p.get("retry_after")))?
        .as_f64()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

/// JSON text of `value` (serialising a `serde_json::Value` cannot fail).
pub fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after_header("7"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after_header("soon"), None);
        assert_eq!(
            retry_after_header("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after_json(r#"{"ok":false,"parameters":{"retry_after":3}}"#),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after_json(r#"{"retry_after":0.5}"#),
            Some(Duration::from_millis(500))
        );
        assert_eq!(retry_after_json("{}"), None);
    }
}
