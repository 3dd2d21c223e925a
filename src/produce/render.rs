//! How an observation is written: the fields of SPEC §1 as raw JSON text, with
//! the harmless variety real scrapers show (optional fields left out, prices as
//! numbers or strings with 0-2 decimals, timestamps in UTC, with an offset or as
//! epoch milliseconds, spaces after separators or not), and the small field-list
//! edits [`super::malformed`] uses to break a message.
//!
//! Pure functions of the generator's RNG and a catalogue [`Event`]; no IO. The
//! order of RNG draws is part of the byte-identical output for a seed.

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::Rng;

use super::catalog::Event;

/// The fields of a valid observation, as raw JSON values, in message order.
/// Optional fields are sometimes left out: the event's descriptive fields, and
/// row/seat/source/currency/available when they equal their defaults (so the
/// listing's identity does not change).
pub(super) fn observation_fields(
    rng: &mut StdRng,
    event: &Event,
    listing: usize,
    ts_ms: i64,
    cents: i64,
    available: bool,
) -> Vec<(&'static str, String)> {
    let listing = &event.listings[listing];
    let mut fields = Vec::with_capacity(14);
    fields.push(("event_id", json_string(&event.id)));
    if rng.gen_bool(0.85) {
        fields.push(("event_name", json_string(&event.name)));
    }
    if rng.gen_bool(0.85) {
        fields.push(("venue", json_string(&event.venue)));
    }
    if rng.gen_bool(0.85) {
        fields.push(("event_date", json_string(&event.date)));
    }
    fields.push(("section", json_string(&listing.section)));
    if !listing.row.is_empty() || rng.gen_bool(0.3) {
        fields.push(("row", json_string(&listing.row)));
    }
    if !listing.seat.is_empty() || rng.gen_bool(0.3) {
        fields.push(("seat", json_string(&listing.seat)));
    }
    if listing.source != "unknown" || rng.gen_bool(0.2) {
        fields.push(("source", json_string(listing.source)));
    }
    let price = format_price(rng, cents);
    fields.push(("price", maybe_quoted(rng, price)));
    if event.currency != "USD" || rng.gen_bool(0.75) {
        fields.push(("currency", json_string(event.currency)));
    }
    if !available || rng.gen_bool(0.5) {
        fields.push(("available", available.to_string()));
    }
    if rng.gen_bool(0.15) {
        // Unknown fields are ignored by the job.
        fields.push(("quantity", rng.gen_range(1..=4).to_string()));
    }
    fields.push(("timestamp", format_timestamp(rng, ts_ms)));
    fields
}

/// A price as JSON number text with 2, 1 or 0 decimals (never changing its value).
pub(super) fn format_price(rng: &mut StdRng, cents: i64) -> String {
    let (units, fraction) = (cents / 100, cents % 100);
    if fraction == 0 {
        match rng.gen_range(0..4) {
            0 | 1 => format!("{units}"),
            2 => format!("{units}.0"),
            _ => format!("{units}.00"),
        }
    } else if fraction % 10 == 0 && rng.gen_bool(0.6) {
        format!("{units}.{}", fraction / 10)
    } else {
        format!("{units}.{fraction:02}")
    }
}

/// A number, or (a quarter of the time) the same text as a JSON string.
pub(super) fn maybe_quoted(rng: &mut StdRng, number: String) -> String {
    if rng.gen_bool(0.25) {
        format!("\"{number}\"")
    } else {
        number
    }
}

/// Mostly RFC 3339 in UTC with milliseconds; sometimes with a local offset;
/// sometimes integer epoch milliseconds. The instant is always exactly `ts_ms`.
fn format_timestamp(rng: &mut StdRng, ts_ms: i64) -> String {
    let roll = rng.gen_range(0..100);
    let Some(time) = DateTime::<Utc>::from_timestamp_millis(ts_ms) else {
        return ts_ms.to_string();
    };
    if roll < 15 {
        ts_ms.to_string()
    } else if roll < 20 {
        let offset = [-5 * 3600, -8 * 3600, 3600, 5 * 3600 + 1800][rng.gen_range(0..4)];
        match FixedOffset::east_opt(offset) {
            Some(offset) => json_string(
                &time
                    .with_timezone(&offset)
                    .to_rfc3339_opts(SecondsFormat::Millis, false),
            ),
            None => ts_ms.to_string(),
        }
    } else {
        json_string(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

/// `{"k":v,...}`; some scrapers put spaces after separators.
pub(super) fn render(rng: &mut StdRng, fields: &[(&'static str, String)]) -> Vec<u8> {
    let (colon, comma) = if rng.gen_bool(0.2) {
        (": ", ", ")
    } else {
        (":", ",")
    };
    let mut out = String::with_capacity(320);
    out.push('{');
    for (i, (name, raw)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(comma);
        }
        out.push('"');
        out.push_str(name);
        out.push('"');
        out.push_str(colon);
        out.push_str(raw);
    }
    out.push('}');
    out.into_bytes()
}

pub(super) fn set(fields: &mut Vec<(&'static str, String)>, name: &'static str, raw: String) {
    match fields.iter_mut().find(|(field, _)| *field == name) {
        Some(field) => field.1 = raw,
        None => fields.insert(fields.len().saturating_sub(1), (name, raw)),
    }
}

pub(super) fn remove(fields: &mut Vec<(&'static str, String)>, name: &str) {
    fields.retain(|(field, _)| *field != name);
}

/// A JSON string literal (never contains a raw newline).
pub(super) fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use crate::produce::check::messages;
    use crate::produce::generator::{GeneratorConfig, MessageKind};

    #[test]
    fn no_key_and_optional_fields() {
        let all = messages(&GeneratorConfig {
            keyed: false,
            count: 3_000,
            ..GeneratorConfig::default()
        });
        assert!(all.iter().all(|m| m.key.is_none()));
        let text: Vec<String> = all
            .iter()
            .filter(|m| m.kind == MessageKind::Observation)
            .map(|m| String::from_utf8_lossy(&m.value).into_owned())
            .collect();
        for field in [
            "event_name",
            "venue",
            "event_date",
            "row",
            "seat",
            "source",
            "currency",
            "available",
        ] {
            let with = text
                .iter()
                .filter(|t| t.contains(&format!("\"{field}\"")))
                .count();
            assert!(
                with > 0 && with < text.len(),
                "{field} in {with} of {}",
                text.len()
            );
        }
        assert!(text
            .iter()
            .any(|t| t.contains("\"seat\":\"\"") || t.contains("\"seat\": \"\"")));
        assert!(text.iter().any(|t| t.contains(" — ")), "no tour names");
        assert!(text.iter().any(|t| t.contains(" vs ")), "no games");
    }
}
