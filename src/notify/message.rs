//! What a person reads: the title, lines and link of one alert's message (and
//! of a digest), shared by every channel's format. The kind in words, the event
//! with venue and date, the seat, old → new price with the change in %, and the
//! dashboard's event page when `--dashboard-url` is given.
//!
//! Pure: an alert in, text out. Text from the topic is made printable (no
//! control characters); HTML escaping is the HTML part's job ([`escape_html`]).

use chrono::{DateTime, Utc};

use super::alert::Alert;
use conscope::alerts::format::percent_change;
use conscope::text::{money, printable};

/// One alert as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `Price drop: Taylor Swift — The Eras Tour`
    pub title: String,
    /// The event, where and when, the seat, the price.
    pub lines: Vec<String>,
    /// The dashboard's event page.
    pub link: Option<String>,
    /// The raw kind (`listing_drop`), for tags.
    pub kind: String,
}

impl Message {
    /// Lines then link, one per line.
    pub fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        if let Some(link) = &self.link {
            text.push('\n');
            text.push_str(link);
        }
        text
    }
}

/// The kind in words; the raw kind for one this version does not know.
pub fn kind_words(kind: &str, rule_id: Option<i64>) -> String {
    let words = match kind {
        "listing_drop" => "Price drop",
        "event_low" => "New lowest price for the event",
        "rule_match" => "Price rule matched",
        "new_low" => "Lowest price in the window",
        "back_in_stock" => "Back in stock",
        "deal" => "Deal",
        other => return printable(other),
    };
    match rule_id {
        Some(id) if kind != "listing_drop" && kind != "event_low" => format!("{words} (rule #{id})"),
        _ => words.to_owned(),
    }
}

/// The event page on the dashboard: `<base>/events/<event_id, percent-encoded>`.
pub fn event_link(dashboard_url: Option<&str>, event_id: &str) -> Option<String> {
    let base = dashboard_url?.trim_end_matches('/');
    let mut path = String::new();
    for byte in event_id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            path.push(byte as char);
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    Some(format!("{base}/events/{path}"))
}

/// `Section Floor A, row 3, seat 12 (stubhub)`; empty parts left out.
fn seat_line(alert: &Alert) -> String {
    let mut parts = vec![format!("Section {}", printable(&alert.section))];
    if !alert.row.is_empty() {
        parts.push(format!("row {}", printable(&alert.row)));
    }
    if !alert.seat.is_empty() {
        parts.push(format!("seat {}", printable(&alert.seat)));
    }
    let mut line = parts.join(", ");
    if !alert.source.is_empty() {
        line.push_str(&format!(" ({})", printable(&alert.source)));
    }
    line
}

/// `250.00 → 199.00 USD (-20.4%)`, or `199.00 USD` without an old price. A
/// `deal`'s old price is the section median.
pub fn price_line(alert: &Alert) -> String {
    let currency = printable(&alert.currency);
    let Some(old) = alert.old_price else {
        return format!("{} {currency}", money(alert.new_price));
    };
    let change = percent_change(old, alert.new_price)
        .map(|p| format!(" ({p}%)"))
        .unwrap_or_default();
    let lead = if alert.kind == "deal" { "median " } else { "" };
    format!(
        "{lead}{} → {} {currency}{change}",
        money(old),
        money(alert.new_price)
    )
}

/// `Madison Square Garden · 2026-08-01 20:00 UTC`, when either is known.
fn where_when(alert: &Alert) -> Option<String> {
    let date = alert.event_date.as_deref().map(|date| {
        DateTime::parse_from_rfc3339(date)
            .map(|t| t.with_timezone(&Utc).format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_else(|_| printable(date))
    });
    let parts: Vec<String> = [alert.venue.as_deref().map(printable), date]
        .into_iter()
        .flatten()
        .collect();
    (!parts.is_empty()).then(|| parts.join(" · "))
}

pub fn event_name(alert: &Alert) -> String {
    printable(alert.event_name.as_deref().unwrap_or(&alert.event_id))
}

/// The message of one alert.
pub fn compose(alert: &Alert, dashboard_url: Option<&str>) -> Message {
    let name = event_name(alert);
    let mut lines = vec![name.clone()];
    lines.extend(where_when(alert));
    lines.push(seat_line(alert));
    let mut price = price_line(alert);
    if let (Some(max), "rule_match") = (alert.max_price, alert.kind.as_str()) {
        price.push_str(&format!(" · rule ≤ {}", money(max)));
    }
    lines.push(price);
    Message {
        title: format!("{}: {name}", kind_words(&alert.kind, alert.rule_id)),
        lines,
        link: event_link(dashboard_url, &alert.event_id),
        kind: printable(&alert.kind),
    }
}

/// How many alerts a digest lists one by one; the rest are counted.
pub const DIGEST_LINES: usize = 50;

/// The one message of a channel's surplus over its hourly cap.
pub fn compose_digest(
    alerts: &[&Alert],
    window_start: DateTime<Utc>,
    dashboard_url: Option<&str>,
) -> Message {
    let mut lines = vec![format!(
        "{} more alerts since {} (over this channel's hourly cap):",
        alerts.len(),
        window_start.format("%Y-%m-%d %H:%M UTC")
    )];
    for alert in alerts.iter().take(DIGEST_LINES) {
        lines.push(format!(
            "• {}: {} · {} · {}",
            kind_words(&alert.kind, alert.rule_id),
            event_name(alert),
            seat_line(alert),
            price_line(alert)
        ));
    }
    if alerts.len() > DIGEST_LINES {
        lines.push(format!("… and {} more", alerts.len() - DIGEST_LINES));
    }
    Message {
        title: format!("Digest: {} alerts", alerts.len()),
        lines,
        link: dashboard_url.map(|base| format!("{}/alerts", base.trim_end_matches('/'))),
        kind: "digest".to_owned(),
    }
}

pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::alert::{decode, EventInfo};

    #[test]
    fn a_drop_reads_like_a_sentence() {
        let mut alert = decode(
            r#"{"alert_id":"a1","kind":"listing_drop","event_id":"ts 2026","section":"Floor A","row":"3","seat":"12",
                "source":"stubhub","old_price":"250.00","new_price":"199.00","currency":"USD","observed_at":"2026-01-01T00:05:00Z"}"#
                .as_bytes(),
        )
        .unwrap();
        alert.enrich(&EventInfo {
            event_name: Some("Taylor Swift — The Eras Tour".into()),
            venue: Some("Wembley".into()),
            event_date: Some("2026-08-01T19:00:00+01:00".into()),
        });
        let message = compose(&alert, Some("http://dash:8080/"));
        assert_eq!(message.title, "Price drop: Taylor Swift — The Eras Tour");
        assert_eq!(
            message.lines,
            [
                "Taylor Swift — The Eras Tour",
                "Wembley · 2026-08-01 18:00 UTC",
                "Section Floor A, row 3, seat 12 (stubhub)",
                "250.00 → 199.00 USD (-20.4%)",
            ]
        );
        assert_eq!(message.link.as_deref(), Some("http://dash:8080/events/ts%202026"));
    }

    #[test]
    fn kinds_in_words() {
        assert_eq!(kind_words("rule_match", Some(7)), "Price rule matched (rule #7)");
        assert_eq!(kind_words("back_in_stock", None), "Back in stock");
        assert_eq!(kind_words("event_low", None), "New lowest price for the event");
        assert_eq!(kind_words("brand_new\u{1b}", None), "brand_new\u{FFFD}");
    }
}
