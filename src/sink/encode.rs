//! How outbox messages look on the wire: the alert JSON of SPEC §3, the
//! dead letters of SPEC §5 (headers, values cut to 64 KiB), and the partition
//! each message goes to.
//!
//! The partition is chosen here, at commit time, with the Java client's murmur2
//! of the key, so the publisher can tell after a crash which messages a
//! partition already holds.

use chrono::{DateTime, SecondsFormat, Utc};
use conscope_dataflows::model::{Alert, Micros, Rejected};
use serde::Serialize;

use crate::kafka::partition_for_key;

/// A topic the outbox publishes to.
#[derive(Clone, Debug)]
pub struct OutboxTarget {
    pub topic: String,
    pub partitions: i32,
}

impl OutboxTarget {
    /// The key's murmur2 partition; unkeyed messages keep their input partition
    /// (modulo), so a dead-letter topic mirrors the input's spread.
    pub fn partition_for(&self, key: Option<&[u8]>, unkeyed: i32) -> i32 {
        match key {
            Some(key) => partition_for_key(key, self.partitions),
            None => unkeyed.rem_euclid(self.partitions.max(1)),
        }
    }
}

pub fn rfc3339(micros: Micros) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The alert as SPEC §3 prints it: prices as decimal strings, times RFC 3339.
///
/// Serialised from a struct, not through a `serde_json::Value` (a map built and
/// dropped per alert); the fields stand in the order a `Value` prints them
/// (sorted), so the bytes on the topic are the same as before.
pub fn alert_json(alert: &Alert) -> Vec<u8> {
    let wire = AlertWire {
        alert_id: &alert.alert_id,
        currency: alert.currency.as_str(),
        event_id: &alert.listing.event_id,
        event_name: &alert.event_name,
        kind: alert.kind.as_str(),
        max_price: alert.max_price.map(|price| price.to_string()),
        new_price: alert.new_price.to_string(),
        observed_at: rfc3339(alert.observed_at),
        old_price: alert.old_price.map(|price| price.to_string()),
        row: &alert.listing.seat.row,
        rule_id: alert.rule_id,
        seat: &alert.listing.seat.seat,
        section: &alert.listing.seat.section,
        source: &alert.listing.seat.source,
    };
    // Serialising borrowed strings and plain values cannot fail.
    serde_json::to_vec(&wire).unwrap_or_default()
}

#[derive(Serialize)]
struct AlertWire<'a> {
    alert_id: &'a str,
    currency: &'a str,
    event_id: &'a str,
    event_name: &'a str,
    kind: &'a str,
    max_price: Option<String>,
    new_price: String,
    observed_at: String,
    old_price: Option<String>,
    row: &'a str,
    rule_id: Option<i64>,
    seat: &'a str,
    section: &'a str,
    source: &'a str,
}

/// Header pairs, flattened `[name, value, name, value, …]` as the outbox stores them.
pub fn alert_headers(alert: &Alert) -> Vec<String> {
    vec![
        "conscope.alert_id".into(),
        alert.alert_id.clone(),
        "conscope.kind".into(),
        alert.kind.as_str().into(),
    ]
}

/// SPEC §5: a dead letter's value is at most this long, so that it fits any
/// broker's default message size (the rest of the input value is dropped).
pub const MAX_DEAD_LETTER_VALUE: usize = 64 * 1024;

/// SPEC §5: the value (cut to `MAX_DEAD_LETTER_VALUE`) and the headers: the
/// reason, where the message came from, and the original size when cut.
pub fn dead_letter(rejected: &Rejected, input_name: &str) -> (Vec<u8>, Vec<String>) {
    let value = rejected.payload.as_deref().unwrap_or_default();
    let mut headers = vec![
        "conscope.error".into(),
        rejected.reason.clone(),
        "conscope.topic".into(),
        input_name.to_owned(),
        "conscope.partition".into(),
        rejected.position.partition.to_string(),
        "conscope.offset".into(),
        rejected.position.offset.to_string(),
    ];
    if value.len() > MAX_DEAD_LETTER_VALUE {
        headers.push("conscope.original_size".into());
        headers.push(value.len().to_string());
    }
    let kept = &value[..value.len().min(MAX_DEAD_LETTER_VALUE)];
    (kept.to_vec(), headers)
}

#[cfg(test)]
mod tests {
    use conscope_dataflows::model::{AlertKind, Cents, Currency, ListingKey, Position, Seat};

    use super::*;

    fn sample_alert() -> Alert {
        Alert {
            alert_id: "abc".into(),
            kind: AlertKind::ListingDrop,
            listing: ListingKey {
                event_id: "e1".into(),
                seat: Seat {
                    section: "101".into(),
                    row: "A".into(),
                    seat: "7".into(),
                    source: "stubhub".into(),
                },
            },
            rule_id: None,
            max_price: None,
            old_price: Some(Cents(25000)),
            new_price: Cents(19950),
            currency: Currency::USD,
            observed_at: 1_767_225_600_000_000,
            event_name: "Lakers vs Celtics".into(),
        }
    }

    #[test]
    fn alert_json_has_spec_fields_with_decimal_strings() {
        let alert = sample_alert();
        let value: serde_json::Value = serde_json::from_slice(&alert_json(&alert)).unwrap();
        assert_eq!(value["kind"], "listing_drop");
        assert_eq!(value["old_price"], "250.00");
        assert_eq!(value["new_price"], "199.50");
        assert_eq!(value["observed_at"], "2026-01-01T00:00:00Z");
        assert_eq!(value["rule_id"], serde_json::Value::Null);
        assert_eq!(value["row"], "A");
    }

    /// The bytes are those a `serde_json::Value` of the same fields prints
    /// (keys sorted), which is what the topic carried before: consumers that
    /// compare or hash payloads see no change.
    #[test]
    fn alert_json_bytes_are_those_of_a_sorted_map() {
        let mut alert = sample_alert();
        for (rule_id, max_price) in [(None, None), (Some(42), Some(Cents(-5)))] {
            alert.rule_id = rule_id;
            alert.max_price = max_price;
            alert.event_name = "quote \" \\ \u{1} é".into();
            let as_map = serde_json::json!({
                "alert_id": alert.alert_id,
                "kind": alert.kind.as_str(),
                "event_id": alert.listing.event_id,
                "event_name": alert.event_name,
                "section": alert.listing.seat.section,
                "row": alert.listing.seat.row,
                "seat": alert.listing.seat.seat,
                "source": alert.listing.seat.source,
                "rule_id": alert.rule_id,
                "max_price": alert.max_price.map(|price| price.to_string()),
                "old_price": alert.old_price.map(|price| price.to_string()),
                "new_price": alert.new_price.to_string(),
                "currency": alert.currency.as_str(),
                "observed_at": rfc3339(alert.observed_at),
            });
            assert_eq!(String::from_utf8(alert_json(&alert)).unwrap(), as_map.to_string());
        }
    }

    fn rejected(payload: Vec<u8>) -> Rejected {
        Rejected {
            position: Position {
                partition: 3,
                offset: 1234,
            },
            key: None,
            payload: Some(payload),
            reason: "section: missing".into(),
        }
    }

    #[test]
    fn dead_letter_headers_name_the_origin_in_decimal() {
        let (value, headers) = dead_letter(&rejected(b"{}".to_vec()), "raw_prices");
        assert_eq!(value, b"{}");
        assert_eq!(
            headers,
            [
                "conscope.error",
                "section: missing",
                "conscope.topic",
                "raw_prices",
                "conscope.partition",
                "3",
                "conscope.offset",
                "1234"
            ]
        );
    }

    #[test]
    fn a_long_value_is_cut_to_64_kib_with_its_original_size() {
        let long: Vec<u8> = (0..999_900u32).map(|i| (i % 251) as u8).collect();
        let (value, headers) = dead_letter(&rejected(long.clone()), "raw_prices");
        assert_eq!(value, long[..65_536]);
        assert_eq!(headers[8..], ["conscope.original_size", "999900"]);
        let (value, headers) = dead_letter(&rejected(long[..65_536].to_vec()), "raw_prices");
        assert_eq!(value.len(), 65_536);
        assert_eq!(headers.len(), 8, "a value of exactly 64 KiB is not cut");
    }

    #[test]
    fn unkeyed_messages_keep_their_partition_modulo() {
        let target = OutboxTarget {
            topic: "t".into(),
            partitions: 2,
        };
        assert_eq!(target.partition_for(None, 3), 1);
        assert_eq!(target.partition_for(Some(b"21"), 0), partition_for_key(b"21", 2));
    }
}
