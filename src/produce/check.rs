//! Test-only: a strict, independent reading of SPEC §1, written from the spec and
//! not from the generator, so the generator's tests can check that every valid
//! message it makes is accepted and every malformed one is rejected.
//!
//! Compiled only for tests; touches nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use super::generator::{generate, GeneratorConfig, ProducedMessage, MAX_CENTS};

/// What a valid message means: the fields SPEC §1 defines, defaults applied.
#[derive(Debug)]
pub(super) struct Valid {
    pub(super) event_id: String,
    pub(super) listing: (String, String, String, String, String),
    pub(super) cents: i64,
    pub(super) currency: String,
    pub(super) available: bool,
    pub(super) observed_ms: i64,
    pub(super) price_was_string: bool,
    pub(super) price_decimals: usize,
}

fn string_field(
    fields: &BTreeMap<String, Box<RawValue>>,
    name: &str,
    min: usize,
    max: usize,
) -> Result<Option<String>, String> {
    let Some(raw) = fields.get(name) else {
        return Ok(None);
    };
    let text: String = serde_json::from_str(raw.get()).map_err(|_| format!("{name} is not a string"))?;
    let chars = text.chars().count();
    if chars < min || chars > max {
        return Err(format!("{name} has {chars} chars"));
    }
    Ok(Some(text))
}

fn parse_cents(text: &str) -> Result<(i64, usize), String> {
    let (units, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(units) || (text.contains('.') && !digits(fraction)) || fraction.len() > 2 || units.len() > 9 {
        return Err(format!("bad price {text:?}"));
    }
    let units: i64 = units.parse().map_err(|_| "units")?;
    let padded = format!("{fraction:0<2}");
    let fraction_cents: i64 = padded.parse().map_err(|_| "fraction")?;
    let cents = units * 100 + fraction_cents;
    if cents <= 0 || cents > MAX_CENTS {
        return Err(format!("price out of range {text:?}"));
    }
    Ok((cents, fraction.len()))
}

fn year_ok(time: DateTime<Utc>) -> bool {
    (2000..=2100).contains(&chrono::Datelike::year(&time))
}

/// A strict reading of SPEC §1.
pub(super) fn validate(value: &[u8]) -> Result<Valid, String> {
    if value.len() > 65_536 {
        return Err("oversize".into());
    }
    let fields: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(value).map_err(|error| format!("not a JSON object: {error}"))?;
    let event_id = string_field(&fields, "event_id", 1, 128)?.ok_or("missing event_id")?;
    string_field(&fields, "event_name", 1, 512)?;
    string_field(&fields, "venue", 0, 512)?;
    if let Some(date) = string_field(&fields, "event_date", 0, usize::MAX)? {
        DateTime::parse_from_rfc3339(&date).map_err(|_| "bad event_date")?;
    }
    let section = string_field(&fields, "section", 1, 64)?.ok_or("missing section")?;
    let row = string_field(&fields, "row", 0, 64)?.unwrap_or_default();
    let seat = string_field(&fields, "seat", 0, 64)?.unwrap_or_default();
    let source = string_field(&fields, "source", 0, 64)?.unwrap_or_else(|| "unknown".into());
    let raw_price = fields.get("price").ok_or("missing price")?.get();
    let (price_text, price_was_string) = if raw_price.starts_with('"') {
        (
            serde_json::from_str::<String>(raw_price).map_err(|_| "price")?,
            true,
        )
    } else {
        (raw_price.to_owned(), false)
    };
    let (cents, price_decimals) = parse_cents(&price_text)?;
    let currency = string_field(&fields, "currency", 3, 3)?.unwrap_or_else(|| "USD".into());
    if !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("bad currency".into());
    }
    let available = match fields.get("available") {
        None => true,
        Some(raw) => serde_json::from_str::<bool>(raw.get()).map_err(|_| "available is not a bool")?,
    };
    let raw_ts = fields.get("timestamp").ok_or("missing timestamp")?.get();
    let observed = if raw_ts.starts_with('"') {
        let text: String = serde_json::from_str(raw_ts).map_err(|_| "timestamp")?;
        DateTime::parse_from_rfc3339(&text)
            .map_err(|_| "bad timestamp")?
            .with_timezone(&Utc)
    } else {
        if !raw_ts.bytes().all(|b| b.is_ascii_digit()) {
            return Err("timestamp is not an integer".into());
        }
        let ms: i64 = raw_ts.parse().map_err(|_| "timestamp")?;
        DateTime::from_timestamp_millis(ms).ok_or("timestamp range")?
    };
    if !year_ok(observed) {
        return Err("timestamp year".into());
    }
    Ok(Valid {
        listing: (event_id.clone(), section, row, seat, source),
        event_id,
        cents,
        currency,
        available,
        observed_ms: observed.timestamp_millis(),
        price_was_string,
        price_decimals,
    })
}

/// Every message of `config`.
pub(super) fn messages(config: &GeneratorConfig) -> Vec<ProducedMessage> {
    generate(config).collect()
}
