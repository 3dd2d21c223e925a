//! One alert as the notifier reads it from the alerts topic (SPEC §3): decoded
//! and validated (prices exact, through `conscope::alerts::format::price`),
//! with the message value kept as a JSON object for the webhook. Alerts may
//! lack `event_name`, `venue` or `event_date`; [`Alert::enrich`] fills them from
//! the job's `events` table.
//!
//! Pure except [`lookup_events`], which reads `events` from the database it is
//! handed. Everything decoded here came from a topic: hostile, never a panic.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use conscope::alerts::format::{price, WireAlert};

/// An alert, validated.
#[derive(Debug, Clone)]
pub struct Alert {
    pub alert_id: String,
    pub kind: String,
    pub event_id: String,
    pub event_name: Option<String>,
    pub venue: Option<String>,
    /// RFC 3339, as stored.
    pub event_date: Option<String>,
    pub section: String,
    pub row: String,
    pub seat: String,
    pub source: String,
    pub rule_id: Option<i64>,
    pub max_price: Option<Decimal>,
    pub old_price: Option<Decimal>,
    pub new_price: Decimal,
    pub currency: String,
    /// The message value as a JSON object (every field, known or not).
    pub json: Map<String, Value>,
}

/// Longest alert id we accept: ids are digests, and one goes into every
/// request's `Idempotency-Key` header.
const MAX_ALERT_ID: usize = 200;

/// Decodes one message value; the error says what is wrong.
pub fn decode(payload: &[u8]) -> Result<Alert, String> {
    let json: Map<String, Value> =
        serde_json::from_slice(payload).map_err(|e| format!("not a JSON object: {e}"))?;
    let wire: WireAlert =
        serde_json::from_value(Value::Object(json.clone())).map_err(|e| format!("not an alert: {e}"))?;
    let id_ok = !wire.alert_id.is_empty()
        && wire.alert_id.len() <= MAX_ALERT_ID
        && wire.alert_id.bytes().all(|b| b.is_ascii_graphic());
    if !id_ok {
        return Err("alert_id must be 1-200 printable ASCII characters".to_owned());
    }
    let exact = |raw: &RawValue, field: &str| price(raw).map_err(|e| format!("{field}: {e}"));
    let old_price = match &wire.old_price {
        Some(raw) if raw.get() != "null" => Some(exact(raw, "old_price")?),
        _ => None,
    };
    let max_price = match &wire.max_price {
        Some(raw) if raw.get() != "null" => Some(exact(raw, "max_price")?),
        _ => None,
    };
    let new_price = exact(&wire.new_price, "new_price")?;
    let non_empty = |text: Option<String>| text.filter(|t| !t.trim().is_empty());
    Ok(Alert {
        alert_id: wire.alert_id,
        kind: wire.kind,
        event_id: wire.event_id,
        event_name: non_empty(wire.event_name),
        venue: non_empty(wire.venue),
        event_date: non_empty(wire.event_date),
        section: wire.section.unwrap_or_default(),
        row: wire.row.unwrap_or_default(),
        seat: wire.seat.unwrap_or_default(),
        source: wire.source.unwrap_or_default(),
        rule_id: wire.rule_id,
        max_price,
        old_price,
        new_price,
        currency: wire.currency,
        json,
    })
}

/// An event's display fields from `events`.
#[derive(Debug, Clone, Default)]
pub struct EventInfo {
    pub event_name: Option<String>,
    pub venue: Option<String>,
    pub event_date: Option<String>,
}

impl Alert {
    /// Whether the alert lacks a field `events` may hold.
    pub fn needs_lookup(&self) -> bool {
        self.event_name.is_none() || self.venue.is_none() || self.event_date.is_none()
    }

    /// Fills the missing display fields (the alert's own win), in the JSON too.
    pub fn enrich(&mut self, info: &EventInfo) {
        for (field, mine, theirs) in [
            ("event_name", &mut self.event_name, &info.event_name),
            ("venue", &mut self.venue, &info.venue),
            ("event_date", &mut self.event_date, &info.event_date),
        ] {
            if mine.is_none() {
                if let Some(value) = theirs {
                    *mine = Some(value.clone());
                    self.json.insert(field.to_owned(), Value::String(value.clone()));
                }
            }
        }
    }
}

/// The display fields of `event_ids` from the job's `events` table.
pub async fn lookup_events(
    client: &tokio_postgres::Client,
    event_ids: &[&str],
) -> Result<HashMap<String, EventInfo>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT event_id, event_name, venue,
                    to_char(event_date AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
             FROM events WHERE event_id = ANY($1)",
            &[&event_ids],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                EventInfo {
                    event_name: row.try_get(1)?,
                    venue: row.try_get(2)?,
                    event_date: row.try_get(3)?,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_enriches() {
        let mut alert = decode(
            br#"{"alert_id":"a1","kind":"new_low","event_id":"ev","section":"A","row":"","seat":"",
                "source":"x","rule_id":4,"old_price":null,"new_price":"99.50","currency":"USD",
                "observed_at":"2026-01-01T00:00:00Z","extra":1}"#,
        )
        .unwrap();
        assert_eq!(alert.kind, "new_low");
        assert_eq!(alert.old_price, None);
        assert!(alert.needs_lookup());
        alert.enrich(&EventInfo {
            event_name: Some("Show".into()),
            venue: Some("Hall".into()),
            event_date: None,
        });
        assert_eq!(alert.event_name.as_deref(), Some("Show"));
        assert_eq!(alert.json["venue"], "Hall");
        assert_eq!(alert.json["extra"], 1);
    }

    #[test]
    fn hostile_values_are_errors() {
        for bad in [
            &b""[..],
            b"[1]",
            b"{}",
            br#"{"alert_id":"a b","kind":"k","event_id":"e","new_price":"1","currency":"USD","observed_at":"t"}"#,
            br#"{"alert_id":"a","kind":"k","event_id":"e","new_price":"1e9","currency":"USD","observed_at":"t"}"#,
            br#"{"alert_id":"a","kind":"k","event_id":"e","new_price":"1","old_price":{},"currency":"USD","observed_at":"t"}"#,
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
