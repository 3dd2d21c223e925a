//! The webhook of `conscope alerts`: POSTs one alert's JSON (the message value,
//! byte for byte) until the receiver accepts it or definitely refuses it.
//!
//! # Retries
//! Connection errors, 5xx, 408 and 429 are retried with exponential backoff
//! ([`BACKOFF_START`] doubling to [`BACKOFF_CAP`]; a 429's `Retry-After` is
//! honoured up to [`RETRY_AFTER_CAP`]) forever, unless shutdown is requested.
//! Any other 4xx, and a 3xx (redirects are not followed), is a definite refusal:
//! logged at error level and not retried (see the `alerts` module doc for why).
//!
//! # Redaction
//! The URL may hold a secret (many webhooks carry a token in the path): only its
//! scheme, host and port are ever logged; redirect targets and transport errors
//! are logged without path, query or credentials.
//!
//! Touches: the network (the webhook URL only) and the log. Its retry policy
//! ([`backoff`], [`retryable_status`], [`transport_reason`], [`sleep_unless`])
//! is shared with `conscope notify`.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::shutdown::Shutdown;
use conscope::text::printable;

/// First webhook retry delay; doubles on every retry up to [`BACKOFF_CAP`].
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Longest `Retry-After` we honour.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// Exponential backoff: 100 ms, 200 ms, … capped at 10 s.
pub(crate) fn backoff(retry: u32) -> Duration {
    BACKOFF_START
        .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(BACKOFF_CAP)
        .min(BACKOFF_CAP)
}

/// The outcome of delivering one alert to the webhook.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    /// 2xx.
    Delivered,
    /// A definite refusal (4xx other than 408/429, or 3xx): logged, not retried.
    Refused(u16),
    /// Shutdown was requested while retrying: the alert is not done.
    Interrupted,
}

/// A webhook receiver: its URL and an HTTP agent that follows no redirects.
pub(super) struct Webhook {
    agent: ureq::Agent,
    url: String,
    /// `scheme://host:port`, safe to log.
    pub(super) shown: String,
}

impl Webhook {
    pub(super) fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .redirects(0)
            .build();
        let parsed = agent
            .post(url)
            .request_url()
            .map_err(|_| anyhow::anyhow!("--webhook is not a valid URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--webhook must be an http:// or https:// URL");
        }
        let shown = match parsed.port() {
            Some(port) => format!("{}://{}:{port}", parsed.scheme(), parsed.host()),
            None => format!("{}://{}", parsed.scheme(), parsed.host()),
        };
        Ok(Webhook {
            agent,
            url: url.to_owned(),
            shown,
        })
    }

    /// POSTs `body` until it is accepted or definitely refused; retries forever
    /// otherwise, unless `shutdown` is set.
    pub(super) fn deliver(
        &self,
        body: &[u8],
        alert_id: &str,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Delivery> {
        let mut retry = 0u32;
        loop {
            let result = self
                .agent
                .post(&self.url)
                .set("Content-Type", "application/json")
                .send_bytes(body);
            let (reason, retry_after) = match result {
                Ok(response) if (200..300).contains(&response.status()) => {
                    // Read the body so the connection goes back to the pool.
                    let _ = response.into_string();
                    return Ok(Delivery::Delivered);
                }
                Ok(response) => {
                    // 1xx/3xx: redirects are not followed (see the module doc).
                    let status = response.status();
                    let location = response.header("Location").map(str::to_owned);
                    tracing::error!(
                        alert_id,
                        webhook = %self.shown,
                        status,
                        location = location.as_deref().map(redact_location).unwrap_or_default(),
                        "webhook answered {status} (redirects are not followed); alert not delivered, moving on"
                    );
                    return Ok(Delivery::Refused(status));
                }
                Err(ureq::Error::Status(status, response)) if retryable_status(status) => {
                    let retry_after = response
                        .header("Retry-After")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(RETRY_AFTER_CAP));
                    let _ = response.into_string();
                    (format!("HTTP {status}"), retry_after)
                }
                Err(ureq::Error::Status(status, response)) => {
                    let text = response.into_string().unwrap_or_default();
                    let text: String = printable(&text).chars().take(200).collect();
                    tracing::error!(
                        alert_id,
                        webhook = %self.shown,
                        status,
                        response = %text,
                        "webhook refused the alert; a {status} would be refused again, so it is not retried"
                    );
                    return Ok(Delivery::Refused(status));
                }
                Err(ureq::Error::Transport(transport)) => {
                    use ureq::ErrorKind::*;
                    if matches!(transport.kind(), InvalidUrl | UnknownScheme | InvalidProxyUrl) {
                        // Checked at start; cannot change. Exit without committing.
                        bail!("webhook request cannot be made: {}", transport_reason(&transport));
                    }
                    (transport_reason(&transport), None)
                }
            };
            let delay = backoff(retry).max(retry_after.unwrap_or_default());
            retry = retry.saturating_add(1);
            tracing::warn!(
                alert_id,
                webhook = %self.shown,
                attempt = retry,
                "webhook delivery failed ({reason}); retrying in {delay:?}"
            );
            if sleep_unless(delay, shutdown) {
                return Ok(Delivery::Interrupted);
            }
        }
    }
}

/// Statuses worth retrying: the receiver is overloaded or briefly broken.
pub(crate) fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// A transport error without its URL (which may hold a secret).
pub(crate) fn transport_reason(transport: &ureq::Transport) -> String {
    let mut text = transport.kind().to_string();
    if let Some(message) = transport.message() {
        text.push_str(": ");
        text.push_str(message);
    }
    if let Some(source) = std::error::Error::source(transport) {
        text.push_str(": ");
        text.push_str(&source.to_string());
    }
    text
}

/// A redirect target without its path and query (they may hold a secret).
fn redact_location(location: &str) -> String {
    match location.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = host.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}/…")
        }
        None => "(relative)".to_owned(),
    }
}

/// Sleeps `delay`, waking early when `shutdown` is set; true if it was.
pub(crate) fn sleep_unless(delay: Duration, shutdown: &Shutdown) -> bool {
    let until = Instant::now() + delay;
    loop {
        if shutdown.is_triggered() {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(6), Duration::from_millis(6400));
        assert_eq!(backoff(7), Duration::from_secs(10));
        assert_eq!(backoff(1000), Duration::from_secs(10));
    }

    #[test]
    fn webhook_url_is_checked_and_redacted() {
        let hook = Webhook::new("http://127.0.0.1:8080/hook/secret-token", Duration::from_secs(1)).unwrap();
        assert_eq!(hook.shown, "http://127.0.0.1:8080");
        assert!(Webhook::new("ftp://x/y", Duration::from_secs(1)).is_err());
        assert!(Webhook::new("not a url", Duration::from_secs(1)).is_err());
        assert_eq!(
            redact_location("https://u:p@h.example/a?b"),
            "https://h.example/…"
        );
    }
}
