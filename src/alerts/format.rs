//! The readable line `conscope alerts` prints for an alert, e.g.
//!
//! ```text
//! [listing_drop] Taylor Swift — The Eras Tour · Floor A row 3 seat 12 (stubhub): 250.00 → 199.00 USD (-20.4%) at 2026-01-01T00:05:00Z
//! ```
//!
//! Parses and validates one alert message value (SPEC §3), reads its prices
//! exactly (never through `f64`), computes the percent change, and replaces
//! control characters so a message cannot garble the terminal.
//!
//! Pure: bytes in, a line or an error out; touches nothing. Part of the library
//! target (`conscope::alerts::format`): `fuzz/` feeds it arbitrary bytes.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::text::{money, printable};

/// An alert as published on the alerts topic (SPEC §3), its prices still as
/// their JSON text. Read by the printed line here and by `conscope notify`
/// (which keeps the message value itself for the webhook).
#[derive(Debug, Deserialize)]
pub struct WireAlert {
    pub alert_id: String,
    pub kind: String,
    pub event_id: String,
    #[serde(default)]
    pub event_name: Option<String>,
    #[serde(default)]
    pub venue: Option<String>,
    /// RFC 3339, as stored.
    #[serde(default)]
    pub event_date: Option<String>,
    #[serde(default)]
    pub section: Option<String>,
    #[serde(default)]
    pub row: Option<String>,
    #[serde(default)]
    pub seat: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub rule_id: Option<i64>,
    /// The rule's threshold, when the publisher adds it (not in SPEC §3's minimum).
    #[serde(default)]
    pub max_price: Option<Box<RawValue>>,
    #[serde(default)]
    pub old_price: Option<Box<RawValue>>,
    pub new_price: Box<RawValue>,
    pub currency: String,
    pub observed_at: String,
}

/// The fields of a [`WireAlert`] the printed line uses, prices parsed exactly.
#[derive(Debug)]
pub struct Notice {
    pub alert_id: String,
    pub line: String,
}

/// Parses and validates one message value; the error says what is wrong.
pub fn parse_alert(payload: &[u8]) -> Result<Notice, String> {
    let alert: WireAlert = serde_json::from_slice(payload).map_err(|e| format!("not an alert: {e}"))?;
    if alert.alert_id.is_empty() {
        return Err("empty alert_id".to_owned());
    }
    let new_price = price(&alert.new_price).map_err(|e| format!("new_price: {e}"))?;
    let old_price = match &alert.old_price {
        Some(raw) => Some(price(raw).map_err(|e| format!("old_price: {e}"))?),
        None => None,
    };
    let max_price = match &alert.max_price {
        Some(raw) => Some(price(raw).map_err(|e| format!("max_price: {e}"))?),
        None => None,
    };
    let line = format_line(&alert, old_price, new_price, max_price);
    Ok(Notice {
        alert_id: alert.alert_id,
        line,
    })
}

/// A price from its exact JSON text: a decimal string (`"199.00"`, the contract)
/// or a bare number (`199.00`, tolerated). Never through `f64`. Shared with
/// `conscope notify`.
pub fn price(raw: &RawValue) -> Result<Decimal, String> {
    let text = raw.get();
    let digits = if text.starts_with('"') {
        serde_json::from_str::<String>(text).map_err(|e| e.to_string())?
    } else {
        text.to_owned()
    };
    let digits = digits.trim();
    let plain = !digits.is_empty()
        && digits
            .strip_prefix('-')
            .unwrap_or(digits)
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.');
    if !plain {
        return Err(format!("not a decimal price: {text}"));
    }
    Decimal::from_str_exact(digits).map_err(|e| format!("not a decimal price {text}: {e}"))
}

/// The readable line of an alert, e.g.
/// `[listing_drop] Taylor Swift — The Eras Tour · Floor A row 3 seat 12 (stubhub): 250.00 → 199.00 USD (-20.4%) at 2026-01-01T00:05:00Z`
fn format_line(
    alert: &WireAlert,
    old_price: Option<Decimal>,
    new_price: Decimal,
    max_price: Option<Decimal>,
) -> String {
    let name = printable(
        alert
            .event_name
            .as_deref()
            .filter(|name| !name.is_empty())
            .unwrap_or(&alert.event_id),
    );
    let what = match alert.kind.as_str() {
        "listing_drop" => String::new(),
        "event_low" => " · get-in price".to_owned(),
        "rule_match" => match (alert.rule_id, max_price) {
            (Some(id), Some(max)) => format!(" · rule #{id} ≤ {}", money(max)),
            (Some(id), None) => format!(" · rule #{id}"),
            (None, _) => " · rule".to_owned(),
        },
        "new_low" => format!(" · {} new low", rule_name(alert.rule_id)),
        "back_in_stock" => match max_price {
            Some(max) => format!(" · {} back in stock ≤ {}", rule_name(alert.rule_id), money(max)),
            None => format!(" · {} back in stock", rule_name(alert.rule_id)),
        },
        "deal" => {
            // The deal score: how far below the median the price is.
            let score = match old_price.and_then(|median| percent_change(median, new_price)) {
                Some(change) => match change.strip_prefix('-') {
                    Some(below) => format!(" ({below}% below)"),
                    None => format!(" ({change}%)"),
                },
                None => String::new(),
            };
            return format!(
                "[deal] {name} · {} deal · {}: {} {} vs section median {}{score} at {}",
                rule_name(alert.rule_id),
                listing(alert),
                money(new_price),
                printable(&alert.currency),
                old_price.map_or_else(|| "?".to_owned(), money),
                observed_text(&alert.observed_at),
            );
        }
        _ => String::new(),
    };
    let change = match old_price {
        Some(old) => {
            let percent = percent_change(old, new_price)
                .map(|p| format!(" ({p}%)"))
                .unwrap_or_default();
            format!(
                "{} → {} {}{percent}",
                money(old),
                money(new_price),
                printable(&alert.currency)
            )
        }
        None => format!("{} {}", money(new_price), printable(&alert.currency)),
    };
    let observed_at = observed_text(&alert.observed_at);
    format!(
        "[{}] {name}{what} · {}: {change} at {observed_at}",
        printable(&alert.kind),
        listing(alert),
    )
}

/// An RFC 3339 time in UTC, or the text as it came when it is not one.
fn observed_text(text: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        })
        .unwrap_or_else(|_| printable(text))
}

/// `rule #7`, or `rule` when the alert names none.
fn rule_name(rule_id: Option<i64>) -> String {
    rule_id.map_or_else(|| "rule".to_owned(), |id| format!("rule #{id}"))
}

/// `Floor A row 3 seat 12 (stubhub)`; empty row and seat are left out.
fn listing(alert: &WireAlert) -> String {
    let mut text = printable(alert.section.as_deref().unwrap_or("?"));
    if let Some(row) = alert.row.as_deref().filter(|r| !r.is_empty()) {
        text.push_str(" row ");
        text.push_str(&printable(row));
    }
    if let Some(seat) = alert.seat.as_deref().filter(|s| !s.is_empty()) {
        text.push_str(" seat ");
        text.push_str(&printable(seat));
    }
    if let Some(source) = alert.source.as_deref().filter(|s| !s.is_empty()) {
        text.push_str(" (");
        text.push_str(&printable(source));
        text.push(')');
    }
    text
}

/// `(new - old) / old` in percent, exact then rounded to one decimal, signed:
/// `-20.4`, `+3.0`, `0.0`. `None` when `old` is zero or the arithmetic overflows
/// (a hostile alert can carry any decimal: checked operations only). Shared
/// with `conscope notify`.
pub fn percent_change(old: Decimal, new: Decimal) -> Option<String> {
    if old.is_zero() {
        return None;
    }
    let change = new
        .checked_sub(old)?
        .checked_mul(Decimal::ONE_HUNDRED)?
        .checked_div(old)?;
    let mut rounded = change.round_dp_with_strategy(1, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(1);
    if rounded.is_zero() {
        // Avoid "-0.0".
        return Some("0.0".to_owned());
    }
    Some(if rounded > Decimal::ZERO {
        format!("+{rounded}")
    } else {
        rounded.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: &str) -> String {
        parse_alert(json.as_bytes()).expect(json).line
    }

    #[test]
    fn listing_drop_line() {
        let text = line(
            r#"{"alert_id":"a1","kind":"listing_drop","event_id":"ts","event_name":"Taylor Swift — The Eras Tour",
                "section":"Floor A","row":"3","seat":"12","source":"stubhub","rule_id":null,
                "old_price":"250.00","new_price":"199.00","currency":"USD","observed_at":"2026-01-01T00:05:00Z"}"#,
        );
        assert_eq!(
            text,
            "[listing_drop] Taylor Swift — The Eras Tour · Floor A row 3 seat 12 (stubhub): 250.00 → 199.00 USD (-20.4%) at 2026-01-01T00:05:00Z"
        );
    }

    #[test]
    fn event_low_and_rule_lines() {
        let text = line(
            r#"{"alert_id":"a2","kind":"event_low","event_id":"ts","section":"GA","row":"","seat":"",
                "source":"seatgeek","old_price":"100","new_price":"99.5","currency":"EUR","observed_at":"2026-01-01T01:05:00+01:00"}"#,
        );
        assert_eq!(
            text,
            "[event_low] ts · get-in price · GA (seatgeek): 100.00 → 99.50 EUR (-0.5%) at 2026-01-01T00:05:00Z"
        );
        let text = line(
            r#"{"alert_id":"a3","kind":"rule_match","event_id":"ts","event_name":"TS","section":"GA","row":"","seat":"",
                "source":"x","rule_id":7,"max_price":"200.00","old_price":null,"new_price":"199.00","currency":"USD",
                "observed_at":"2026-01-01T00:05:00Z"}"#,
        );
        assert_eq!(
            text,
            "[rule_match] TS · rule #7 ≤ 200.00 · GA (x): 199.00 USD at 2026-01-01T00:05:00Z"
        );
        let text = line(
            r#"{"alert_id":"a4","kind":"rule_match","event_id":"ts","section":"GA","rule_id":7,
                "old_price":250.10,"new_price":199,"currency":"USD","observed_at":"2026-01-01T00:05:00Z"}"#,
        );
        assert!(
            text.contains("rule #7 · GA: 250.10 → 199.00 USD (-20.4%)"),
            "{text}"
        );
    }

    #[test]
    fn rule_kind_lines() {
        let text = line(
            r#"{"alert_id":"a5","kind":"new_low","event_id":"ts","event_name":"TS","section":"GA","row":"","seat":"",
                "source":"x","rule_id":8,"old_price":"120.00","new_price":"110.00","currency":"USD",
                "observed_at":"2026-01-01T00:05:00Z"}"#,
        );
        assert_eq!(
            text,
            "[new_low] TS · rule #8 new low · GA (x): 120.00 → 110.00 USD (-8.3%) at 2026-01-01T00:05:00Z"
        );
        let text = line(
            r#"{"alert_id":"a6","kind":"back_in_stock","event_id":"ts","section":"GA","source":"x","rule_id":9,
                "max_price":"150.00","old_price":null,"new_price":"140.00","currency":"USD",
                "observed_at":"2026-01-01T00:05:00Z"}"#,
        );
        assert_eq!(
            text,
            "[back_in_stock] ts · rule #9 back in stock ≤ 150.00 · GA (x): 140.00 USD at 2026-01-01T00:05:00Z"
        );
        let text = line(
            r#"{"alert_id":"a7","kind":"deal","event_id":"ts","section":"GA","row":"2","seat":"5","source":"x",
                "rule_id":10,"old_price":"200.00","new_price":"150.00","currency":"USD",
                "observed_at":"2026-01-01T00:05:00Z"}"#,
        );
        assert_eq!(
            text,
            "[deal] ts · rule #10 deal · GA row 2 seat 5 (x): 150.00 USD vs section median 200.00 (25.0% below) at 2026-01-01T00:05:00Z"
        );
        // Extreme prices: a line, no panic.
        let text = line(
            r#"{"alert_id":"a8","kind":"deal","event_id":"ts","section":"GA","rule_id":10,
                "old_price":"79228162514264337593543950335","new_price":"-79228162514264337593543950335",
                "currency":"USD","observed_at":"t"}"#,
        );
        assert!(text.starts_with("[deal]"), "{text}");
    }

    #[test]
    fn malformed_alerts_are_errors() {
        for bad in [
            "",
            "not json",
            "[]",
            r#"{"kind":"listing_drop"}"#,
            r#"{"alert_id":"","kind":"k","event_id":"e","new_price":"1","currency":"USD","observed_at":"t"}"#,
            r#"{"alert_id":"x","kind":"k","event_id":"e","new_price":"abc","currency":"USD","observed_at":"t"}"#,
            r#"{"alert_id":"x","kind":"k","event_id":"e","new_price":"1e3","currency":"USD","observed_at":"t"}"#,
            r#"{"alert_id":"x","kind":"k","event_id":"e","new_price":true,"currency":"USD","observed_at":"t"}"#,
            r#"{"alert_id":"x","kind":"k","event_id":"e","new_price":"1","old_price":"?","currency":"USD","observed_at":"t"}"#,
        ] {
            assert!(parse_alert(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_characters_are_not_printed() {
        let text = line(
            r#"{"alert_id":"a","kind":"listing_drop","event_id":"e","event_name":"evil\u001b[2Jname\n","section":"S",
                "new_price":"1.00","currency":"USD","observed_at":"2026-01-01T00:00:00Z"}"#,
        );
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }

    /// Everything read from a topic is hostile: extreme prices give a line, never
    /// a panic (an overflow here once crash-looped `conscope alerts`), and the
    /// line is right: both prices shown exactly, the percent change where the
    /// exact arithmetic has one.
    #[test]
    fn extreme_prices_give_exact_lines() {
        let extremes = [
            "79228162514264337593543950335",
            "-79228162514264337593543950335",
            "0.0000000000000000000000000001",
            "-0.0000000000000000000000000001",
            "7922816251426433759354395033.5",
            "0",
            "-1",
            "1000000.00",
        ];
        // As printed: two decimals at least, unless the amount has no room
        // for them (28-29 significant digits in all).
        let shown = [
            "79228162514264337593543950335",
            "-79228162514264337593543950335",
            "0.0000000000000000000000000001",
            "-0.0000000000000000000000000001",
            "7922816251426433759354395033.5",
            "0.00",
            "-1.00",
            "1000000.00",
        ];
        // The percent change from row (old) to column (new); empty where the
        // line leaves it out: the old price is zero, or (new - old) · 100 / old
        // overflows the 96-bit decimal.
        let percents: [[&str; 8]; 8] = [
            ["0.0", "", "", "", "", "", "", ""],
            ["", "0.0", "", "", "", "", "", ""],
            ["", "", "0.0", "-200.0", "", "-100.0", "", ""],
            ["", "", "-200.0", "0.0", "", "-100.0", "", ""],
            ["", "", "", "", "0.0", "", "", ""],
            ["", "", "", "", "", "", "", ""],
            ["", "", "-100.0", "-100.0", "", "-100.0", "0.0", "-100000100.0"],
            ["", "", "-100.0", "-100.0", "", "-100.0", "-100.0", "0.0"],
        ];
        for (o, old) in extremes.iter().enumerate() {
            for (n, new) in extremes.iter().enumerate() {
                let json = format!(
                    r#"{{"alert_id":"x","kind":"listing_drop","event_id":"e","section":"S",
                        "old_price":"{old}","new_price":"{new}","currency":"USD","observed_at":"2026-01-01T00:00:00Z"}}"#
                );
                let percent = match percents[o][n] {
                    "" => String::new(),
                    p => format!(" ({p}%)"),
                };
                assert_eq!(
                    line(&json),
                    format!(
                        "[listing_drop] e · S: {} → {} USD{percent} at 2026-01-01T00:00:00Z",
                        shown[o], shown[n]
                    ),
                    "{old} -> {new}"
                );
            }
        }
    }

    #[test]
    fn percentages() {
        let d = |s: &str| Decimal::from_str_exact(s).unwrap();
        assert_eq!(percent_change(d("250.00"), d("199.00")).as_deref(), Some("-20.4"));
        assert_eq!(percent_change(d("100"), d("103")).as_deref(), Some("+3.0"));
        assert_eq!(percent_change(d("100.00"), d("99.99")).as_deref(), Some("0.0"));
        assert_eq!(percent_change(d("3.00"), d("2.00")).as_deref(), Some("-33.3"));
        assert_eq!(percent_change(d("0"), d("2.00")), None);
        assert_eq!(
            percent_change(d("1000000.00"), d("0.01")).as_deref(),
            Some("-100.0")
        );
    }
}
