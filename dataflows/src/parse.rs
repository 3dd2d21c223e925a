//! Parsing and validating input messages (SPEC §1): one Kafka message value, a UTF-8
//! JSON object, becomes one [`Observation`] with its defaults applied, or a
//! [`ParseError`] whose text is the short, field-naming reason that goes into the
//! dead-letter topic's `conscope.error` header.
//!
//! Pure functions on byte slices: no IO, no global state, no `f64`.
//!
//! How it works: the size is checked first, then UTF-8, then the object is read in
//! one pass with `serde_json`, keeping each known field's *raw JSON text* (a
//! borrowed [`RawValue`]) and skipping unknown fields without allocating. Every
//! field is then validated from its text, so a price is read digit by digit from
//! exactly what the producer wrote and never goes through a binary float.
//!
//! Decisions where SPEC §1 is silent:
//! - **Price syntax.** A JSON number, or a JSON string whose content has exactly
//!   JSON-number syntax (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, nothing
//!   trimmed): `12`, `12.5`, `"12.50"`, `1e2`, `1.5E1`, `0.01`, `12.500` are
//!   accepted; `+12`, `.5`, `12.`, `012`, `" 12"`, `""`, `"NaN"`, `"1,000"` are not.
//!   The *value* must then be > 0, ≤ 1000000, and a whole number of cents:
//!   `12.500` and `1.234e1` (12.34) are fine, `12.345` and `1.2345e1` are not.
//! - **Timestamps.** `timestamp` is either an RFC 3339 string (as
//!   [`chrono::DateTime::parse_from_rfc3339`] accepts it: `T`, `t` or a space
//!   between date and time, any offset from -23:59 to +23:59) or a JSON *integer*
//!   of epoch milliseconds: `1.7e12` or `1700000000000.0` are rejected, and so is a
//!   string of digits. Its year is checked in UTC: 2000-01-01T00:00:00Z up to
//!   2100-12-31T23:59:59.999999Z. `event_date` is any RFC 3339 date-time.
//! - **Sub-microsecond digits** are truncated toward the earlier microsecond
//!   (`…:00.9999999Z` → `…:00.999999Z`), so a time never moves forward. A leap
//!   second (`23:59:60`) becomes the first second of the next minute, as
//!   PostgreSQL does.
//! - **Null** for an optional field means absent; for a required field it is
//!   `missing`.
//! - A **known field that appears twice** is rejected (which copy is meant is
//!   ambiguous, and this is money); repeated unknown fields are ignored.
//! - A string containing **U+0000** is rejected: PostgreSQL `text` cannot store it.
//! - When several fields are wrong, the first one in SPEC §1's table order is
//!   reported, whatever the key order in the message.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Datelike, Utc};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::{Cents, Currency, ListingKey, Micros, Observation, RawMessage, Seat};

/// Messages with a larger value are rejected without being parsed.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The largest accepted price: 1000000.00.
pub const MAX_PRICE: Cents = Cents(100_000_000);

/// The earliest accepted `timestamp`: 2000-01-01T00:00:00Z.
pub const MIN_OBSERVED_AT: Micros = 946_684_800_000_000;

/// The first `timestamp` too late to accept: 2101-01-01T00:00:00Z.
pub const END_OBSERVED_AT: Micros = 4_133_980_800_000_000;

/// Offending values quoted in errors are cut to this many characters.
const SNIPPET_CHARS: usize = 40;

/// A field of the input message (SPEC §1), in the spec's table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    EventId,
    EventName,
    Venue,
    EventDate,
    Section,
    Row,
    Seat,
    Source,
    Price,
    Currency,
    Available,
    Timestamp,
}

const FIELD_COUNT: usize = 12;

impl Field {
    pub const ALL: [Field; FIELD_COUNT] = [
        Field::EventId,
        Field::EventName,
        Field::Venue,
        Field::EventDate,
        Field::Section,
        Field::Row,
        Field::Seat,
        Field::Source,
        Field::Price,
        Field::Currency,
        Field::Available,
        Field::Timestamp,
    ];

    /// The field's JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Field::EventId => "event_id",
            Field::EventName => "event_name",
            Field::Venue => "venue",
            Field::EventDate => "event_date",
            Field::Section => "section",
            Field::Row => "row",
            Field::Seat => "seat",
            Field::Source => "source",
            Field::Price => "price",
            Field::Currency => "currency",
            Field::Available => "available",
            Field::Timestamp => "timestamp",
        }
    }

    fn from_name(name: &str) -> Option<Field> {
        Some(match name {
            "event_id" => Field::EventId,
            "event_name" => Field::EventName,
            "venue" => Field::Venue,
            "event_date" => Field::EventDate,
            "section" => Field::Section,
            "row" => Field::Row,
            "seat" => Field::Seat,
            "source" => Field::Source,
            "price" => Field::Price,
            "currency" => Field::Currency,
            "available" => Field::Available,
            "timestamp" => Field::Timestamp,
            _ => return None,
        })
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a price text is not a valid price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceProblem {
    /// Not JSON-number syntax.
    NotANumber,
    /// Zero or negative.
    NotPositive,
    /// Not a whole number of cents.
    TooManyDecimals,
    /// Above [`MAX_PRICE`].
    TooLarge,
}

impl fmt::Display for PriceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PriceProblem::NotANumber => "not a decimal number",
            PriceProblem::NotPositive => "must be greater than 0",
            PriceProblem::TooManyDecimals => "more than 2 decimal places",
            PriceProblem::TooLarge => "more than 1000000",
        })
    }
}

/// An invalid price: what is wrong, and the offending text (cut short).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{problem} ({value:?})")]
pub struct PriceError {
    pub problem: PriceProblem,
    pub value: String,
}

/// Why a message was rejected. `Display` is the short reason for the dead-letter
/// topic, starting with the field's name (or `message:` for the whole message).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A Kafka tombstone: the message has no value at all.
    #[error("message: empty (tombstone)")]
    Tombstone,
    /// A zero-length value.
    #[error("message: empty")]
    EmptyPayload,
    #[error("message: {bytes} bytes exceeds the {}-byte limit", MAX_MESSAGE_BYTES)]
    TooLarge { bytes: usize },
    #[error("message: not valid UTF-8")]
    NotUtf8,
    /// JSON syntax error; serde_json's description.
    #[error("message: invalid JSON ({0})")]
    InvalidJson(String),
    /// Valid JSON, but not an object.
    #[error("message: not a JSON object")]
    NotObject,
    /// A required field is absent or null.
    #[error("{0}: missing")]
    Missing(Field),
    #[error("{0}: appears more than once")]
    Duplicate(Field),
    #[error("{field}: expected {expected}")]
    WrongType { field: Field, expected: &'static str },
    /// A string with an escape that does not decode (a lone surrogate).
    #[error("{0}: invalid escape in string")]
    BadEscape(Field),
    #[error("{0}: contains a NUL character")]
    NulChar(Field),
    /// An empty string where at least one character is required.
    #[error("{0}: empty")]
    Empty(Field),
    #[error("{field}: {chars} chars exceeds the {max}-char limit")]
    TooLong { field: Field, chars: usize, max: usize },
    #[error("price: {0}")]
    Price(PriceError),
    #[error("currency: must be 3 upper-case letters ({0:?})")]
    Currency(String),
    #[error("{field}: not an RFC 3339 date-time ({value:?})")]
    NotRfc3339 { field: Field, value: String },
    /// A number `timestamp` that is not a JSON integer.
    #[error("timestamp: epoch milliseconds must be an integer ({0:?})")]
    NotInteger(String),
    /// An integer `timestamp` too large for any calendar.
    #[error("timestamp: epoch milliseconds out of range ({0:?})")]
    EpochOutOfRange(String),
    #[error("timestamp: year {0} outside 2000-2100")]
    YearOutOfRange(i32),
}

impl ParseError {
    /// The field the error is about, `None` for the message as a whole.
    pub fn field(&self) -> Option<Field> {
        match self {
            ParseError::Tombstone
            | ParseError::EmptyPayload
            | ParseError::TooLarge { .. }
            | ParseError::NotUtf8
            | ParseError::InvalidJson(_)
            | ParseError::NotObject => None,
            ParseError::Missing(field)
            | ParseError::Duplicate(field)
            | ParseError::BadEscape(field)
            | ParseError::NulChar(field)
            | ParseError::Empty(field)
            | ParseError::WrongType { field, .. }
            | ParseError::TooLong { field, .. }
            | ParseError::NotRfc3339 { field, .. } => Some(*field),
            ParseError::Price(_) => Some(Field::Price),
            ParseError::Currency(_) => Some(Field::Currency),
            ParseError::NotInteger(_) | ParseError::EpochOutOfRange(_) | ParseError::YearOutOfRange(_) => {
                Some(Field::Timestamp)
            }
        }
    }
}

/// Parses a message as read from the input; a missing value (a tombstone) is
/// rejected like any other invalid message.
pub fn parse_raw(raw: &RawMessage) -> Result<Observation, ParseError> {
    match &raw.payload {
        None => Err(ParseError::Tombstone),
        Some(payload) => parse_observation(payload),
    }
}

/// Longest `event_id`, in characters (SPEC §1); rules and the dashboard check it too.
pub const MAX_EVENT_ID_CHARS: usize = 128;
/// Longest `section`, in characters (SPEC §1).
pub const MAX_SECTION_CHARS: usize = 64;

/// Parses and validates one message value (SPEC §1), applying the defaults.
pub fn parse_observation(payload: &[u8]) -> Result<Observation, ParseError> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge { bytes: payload.len() });
    }
    if payload.is_empty() {
        return Err(ParseError::EmptyPayload);
    }
    let text = std::str::from_utf8(payload).map_err(|_| ParseError::NotUtf8)?;
    let fields: Fields<'_> = serde_json::from_str(text).map_err(json_error)?;
    if let Some(field) = fields.duplicate {
        return Err(ParseError::Duplicate(field));
    }
    let get = |field: Field| kind_of(fields.raw[field as usize]);

    let event_id = required_string(Field::EventId, get(Field::EventId), 1, MAX_EVENT_ID_CHARS)?;
    let event_name = optional_string(Field::EventName, get(Field::EventName), 1, 512)?;
    let venue = optional_string(Field::Venue, get(Field::Venue), 0, 512)?;
    let event_date = match get(Field::EventDate) {
        None => None,
        Some(Json::Str(raw)) => {
            let text = decode_string(Field::EventDate, raw)?;
            Some(rfc3339_micros(Field::EventDate, &text)?)
        }
        Some(_) => return Err(wrong_type(Field::EventDate, "a string")),
    };
    let section = required_string(Field::Section, get(Field::Section), 1, MAX_SECTION_CHARS)?;
    let row = optional_string(Field::Row, get(Field::Row), 0, 64)?;
    let seat = optional_string(Field::Seat, get(Field::Seat), 0, 64)?;
    let source = optional_string(Field::Source, get(Field::Source), 0, 64)?;
    let price = match get(Field::Price) {
        None => return Err(ParseError::Missing(Field::Price)),
        Some(Json::Number(text)) => parse_price(text),
        Some(Json::Str(raw)) => parse_price(&decode_string(Field::Price, raw)?),
        Some(_) => return Err(wrong_type(Field::Price, "a number or a string")),
    }
    .map_err(ParseError::Price)?;
    let currency = match get(Field::Currency) {
        None => Currency::USD,
        Some(Json::Str(raw)) => {
            let text = decode_string(Field::Currency, raw)?;
            Currency::parse(&text).ok_or_else(|| ParseError::Currency(snippet(&text)))?
        }
        Some(_) => return Err(wrong_type(Field::Currency, "a string")),
    };
    let available = match get(Field::Available) {
        None => true,
        Some(Json::Bool(available)) => available,
        Some(_) => return Err(wrong_type(Field::Available, "a boolean")),
    };
    let observed_at = match get(Field::Timestamp) {
        None => return Err(ParseError::Missing(Field::Timestamp)),
        Some(Json::Str(raw)) => {
            let text = decode_string(Field::Timestamp, raw)?;
            rfc3339_micros(Field::Timestamp, &text)?
        }
        Some(Json::Number(text)) => epoch_millis_micros(text)?,
        Some(_) => {
            return Err(wrong_type(
                Field::Timestamp,
                "an RFC 3339 string or integer epoch milliseconds",
            ))
        }
    };
    let observed_at = check_observed_at(observed_at)?;

    Ok(Observation {
        listing: ListingKey {
            event_id: event_id.into_owned(),
            seat: Seat {
                section: section.into_owned(),
                row: row.map(Cow::into_owned).unwrap_or_default(),
                seat: seat.map(Cow::into_owned).unwrap_or_default(),
                source: source.map_or_else(|| "unknown".to_owned(), Cow::into_owned),
            },
        },
        event_name: event_name.map(Cow::into_owned),
        venue: venue.map(Cow::into_owned),
        event_date,
        price,
        currency,
        available,
        observed_at,
    })
}

/// Validates a price given as text (e.g. the CLI's `--max-price`) by the same rules
/// as the `price` field's content; the error has no `price:` prefix.
pub fn parse_price_text(text: &str) -> Result<Cents, String> {
    parse_price(text).map_err(|err| err.to_string())
}

fn parse_price(text: &str) -> Result<Cents, PriceError> {
    price_cents(text).map_err(|problem| PriceError {
        problem,
        value: snippet(text),
    })
}

/// Exponents beyond this are clamped: with at most [`MAX_MESSAGE_BYTES`] digits,
/// a clamped value is still far too large or has far too many decimals.
const EXPONENT_CAP: i64 = 1_000_000;

/// The exact value of a JSON-number text in cents, if it is a valid price: the
/// one price parser (the input's `price`, the CLI's `--max-price`).
pub fn price_cents(text: &str) -> Result<Cents, PriceProblem> {
    let bytes = text.as_bytes();
    let digits_from = |start: usize| {
        let len = bytes[start.min(bytes.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        (start, start + len)
    };

    let negative = bytes.first() == Some(&b'-');
    let (int_start, int_end) = digits_from(usize::from(negative));
    let int_digits = &bytes[int_start..int_end];
    if int_digits.is_empty() || (int_digits.len() > 1 && int_digits[0] == b'0') {
        return Err(PriceProblem::NotANumber);
    }
    let mut at = int_end;
    let mut frac_digits: &[u8] = &[];
    if bytes.get(at) == Some(&b'.') {
        let (start, end) = digits_from(at + 1);
        if start == end {
            return Err(PriceProblem::NotANumber);
        }
        frac_digits = &bytes[start..end];
        at = end;
    }
    let mut exponent: i64 = 0;
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        let exponent_negative = match bytes.get(at) {
            Some(b'-') => {
                at += 1;
                true
            }
            Some(b'+') => {
                at += 1;
                false
            }
            _ => false,
        };
        let (start, end) = digits_from(at);
        if start == end {
            return Err(PriceProblem::NotANumber);
        }
        for digit in &bytes[start..end] {
            exponent = (exponent * 10 + i64::from(digit - b'0')).min(EXPONENT_CAP);
        }
        if exponent_negative {
            exponent = -exponent;
        }
        at = end;
    }
    if at != bytes.len() {
        return Err(PriceProblem::NotANumber);
    }

    // value = (int_digits ++ frac_digits) × 10^(exponent - frac_digits.len())
    let all = || int_digits.iter().chain(frac_digits).copied();
    let total = int_digits.len() + frac_digits.len();
    let leading_zeros = all().take_while(|&d| d == b'0').count();
    if leading_zeros == total || negative {
        return Err(PriceProblem::NotPositive);
    }
    let trailing_zeros = all().rev().take_while(|&d| d == b'0').count();
    let significant = total - leading_zeros - trailing_zeros;
    // The power of ten, in cents, of the last significant digit.
    let scale = exponent - frac_digits.len() as i64 + trailing_zeros as i64 + 2;
    if scale < 0 {
        return Err(PriceProblem::TooManyDecimals);
    }
    // MAX_PRICE has 9 digits in cents: anything with more cannot fit.
    if significant as i64 + scale > 9 {
        return Err(PriceProblem::TooLarge);
    }
    let mut cents = all()
        .skip(leading_zeros)
        .take(significant)
        .fold(0_i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    for _ in 0..scale {
        cents *= 10;
    }
    if cents > MAX_PRICE.0 {
        return Err(PriceProblem::TooLarge);
    }
    Ok(Cents(cents))
}

/// RFC 3339 text to microseconds, truncating sub-microsecond digits.
fn rfc3339_micros(field: Field, text: &str) -> Result<Micros, ParseError> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_micros())
        .map_err(|_| ParseError::NotRfc3339 {
            field,
            value: snippet(text),
        })
}

/// A JSON-number `timestamp` (epoch milliseconds) to microseconds.
fn epoch_millis_micros(text: &str) -> Result<Micros, ParseError> {
    if text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return Err(ParseError::NotInteger(snippet(text)));
    }
    text.parse::<i64>()
        .ok()
        .and_then(|millis| millis.checked_mul(1000))
        .ok_or_else(|| ParseError::EpochOutOfRange(snippet(text)))
}

fn check_observed_at(micros: Micros) -> Result<Micros, ParseError> {
    if (MIN_OBSERVED_AT..END_OBSERVED_AT).contains(&micros) {
        return Ok(micros);
    }
    match DateTime::<Utc>::from_timestamp_micros(micros) {
        Some(time) => Err(ParseError::YearOutOfRange(time.year())),
        None => Err(ParseError::EpochOutOfRange((micros / 1000).to_string())),
    }
}

/// At most [`SNIPPET_CHARS`] characters of `text`, with `…` if cut.
fn snippet(text: &str) -> String {
    match text.char_indices().nth(SNIPPET_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => {
            let mut short = String::with_capacity(cut + 3);
            short.push_str(&text[..cut]);
            short.push('…');
            short
        }
    }
}

fn json_error(err: serde_json::Error) -> ParseError {
    match err.classify() {
        // The only data error our visitor can meet: the top level is not a map.
        serde_json::error::Category::Data => ParseError::NotObject,
        _ => ParseError::InvalidJson(snippet(&err.to_string())),
    }
}

fn wrong_type(field: Field, expected: &'static str) -> ParseError {
    ParseError::WrongType { field, expected }
}

/// A JSON value by its kind, still as raw text.
#[derive(Clone, Copy)]
enum Json<'a> {
    Bool(bool),
    /// A string literal, quotes and escapes included.
    Str(&'a str),
    /// A number literal.
    Number(&'a str),
    /// An object or an array.
    Compound,
}

/// The kind of a raw JSON value; `None` for an absent field or null.
fn kind_of(raw: Option<&RawValue>) -> Option<Json<'_>> {
    let text = raw?.get().trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    Some(match text.as_bytes().first()? {
        b'n' => return None,
        b't' => Json::Bool(true),
        b'f' => Json::Bool(false),
        b'"' => Json::Str(text),
        b'{' | b'[' => Json::Compound,
        _ => Json::Number(text),
    })
}

/// The content of a JSON string literal; borrowed unless it has escapes.
fn decode_string(field: Field, raw: &str) -> Result<Cow<'_, str>, ParseError> {
    let inner = raw
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or(ParseError::BadEscape(field))?;
    let text = if inner.contains('\\') {
        Cow::Owned(serde_json::from_str::<String>(raw).map_err(|_| ParseError::BadEscape(field))?)
    } else {
        Cow::Borrowed(inner)
    };
    if text.contains('\0') {
        return Err(ParseError::NulChar(field));
    }
    Ok(text)
}

fn check_length(field: Field, text: &str, min: usize, max: usize) -> Result<(), ParseError> {
    if text.is_empty() && min > 0 {
        return Err(ParseError::Empty(field));
    }
    // A char is at least one byte: only count when the bytes alone exceed the limit.
    if text.len() > max {
        let chars = text.chars().count();
        if chars > max {
            return Err(ParseError::TooLong { field, chars, max });
        }
    }
    Ok(())
}

fn optional_string<'a>(
    field: Field,
    value: Option<Json<'a>>,
    min: usize,
    max: usize,
) -> Result<Option<Cow<'a, str>>, ParseError> {
    match value {
        None => Ok(None),
        Some(Json::Str(raw)) => {
            let text = decode_string(field, raw)?;
            check_length(field, &text, min, max)?;
            Ok(Some(text))
        }
        Some(_) => Err(wrong_type(field, "a string")),
    }
}

fn required_string<'a>(
    field: Field,
    value: Option<Json<'a>>,
    min: usize,
    max: usize,
) -> Result<Cow<'a, str>, ParseError> {
    optional_string(field, value, min, max)?.ok_or(ParseError::Missing(field))
}

/// The known fields of a message as raw JSON, borrowed from the payload.
struct Fields<'a> {
    raw: [Option<&'a RawValue>; FIELD_COUNT],
    /// The first known field seen twice.
    duplicate: Option<Field>,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields {
            raw: [None; FIELD_COUNT],
            duplicate: None,
        };
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Some(field) => {
                    let raw: &'de RawValue = map.next_value()?;
                    if fields.raw[field as usize].replace(raw).is_some() {
                        fields.duplicate.get_or_insert(field);
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// Reads an object key as a known [`Field`] (or `None`) without allocating.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<Field>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Option<Field>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(Field::from_name(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: [(&str, &str); 4] = [
        ("event_id", r#""E1""#),
        ("section", r#""A""#),
        ("price", "12.50"),
        ("timestamp", r#""2024-05-01T12:00:00Z""#),
    ];

    /// A message: [`BASE`] with fields replaced (`Some`), removed (`None`) or
    /// added, each value given as raw JSON text.
    fn message(changes: &[(&str, Option<&str>)]) -> String {
        let mut fields: Vec<(&str, &str)> = BASE.to_vec();
        for &(name, change) in changes {
            match (fields.iter().position(|(n, _)| *n == name), change) {
                (Some(i), Some(value)) => fields[i].1 = value,
                (Some(i), None) => {
                    fields.remove(i);
                }
                (None, Some(value)) => fields.push((name, value)),
                (None, None) => {}
            }
        }
        let body: Vec<String> = fields
            .iter()
            .map(|(name, value)| format!("{name:?}:{value}"))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    fn parse(changes: &[(&str, Option<&str>)]) -> Result<Observation, ParseError> {
        parse_observation(message(changes).as_bytes())
    }

    /// 2024-05-01T12:00:00Z.
    const T0: Micros = 1_714_564_800_000_000;

    fn expected() -> Observation {
        Observation {
            listing: ListingKey {
                event_id: "E1".into(),
                seat: Seat {
                    section: "A".into(),
                    row: String::new(),
                    seat: String::new(),
                    source: "unknown".into(),
                },
            },
            event_name: None,
            venue: None,
            event_date: None,
            price: Cents(1250),
            currency: Currency::USD,
            available: true,
            observed_at: T0,
        }
    }

    #[test]
    fn valid_messages() {
        let full = r#"{"event_id":"evt-42","event_name":"Lakers vs Celtics","venue":"Crypto.com Arena",
            "event_date":"2024-06-01T19:30:00-07:00","section":"101","row":"F","seat":"12",
            "source":"stubhub","price":"245.00","currency":"EUR","available":false,
            "timestamp":1714564800123}"#;
        let full_expected = Observation {
            listing: ListingKey {
                event_id: "evt-42".into(),
                seat: Seat {
                    section: "101".into(),
                    row: "F".into(),
                    seat: "12".into(),
                    source: "stubhub".into(),
                },
            },
            event_name: Some("Lakers vs Celtics".into()),
            venue: Some("Crypto.com Arena".into()),
            event_date: Some(1_717_295_400_000_000),
            price: Cents(24500),
            currency: Currency(*b"EUR"),
            available: false,
            observed_at: 1_714_564_800_123_000,
        };
        let with = |change: &dyn Fn(&mut Observation)| {
            let mut observation = expected();
            change(&mut observation);
            observation
        };
        let cases: Vec<(String, Observation)> = vec![
            (full.to_owned(), full_expected),
            (message(&[]), expected()),
            // Nulls are absent optional fields.
            (
                message(&[
                    ("event_name", Some("null")),
                    ("venue", Some("null")),
                    ("event_date", Some("null")),
                    ("row", Some("null")),
                    ("seat", Some("null")),
                    ("source", Some("null")),
                    ("currency", Some("null")),
                    ("available", Some("null")),
                ]),
                expected(),
            ),
            // Empty strings where allowed.
            (
                message(&[
                    ("venue", Some(r#""""#)),
                    ("row", Some(r#""""#)),
                    ("seat", Some(r#""""#)),
                    ("source", Some(r#""""#)),
                ]),
                with(&|o| {
                    o.venue = Some(String::new());
                    o.listing.seat.source = String::new();
                }),
            ),
            // Unknown fields of any shape are ignored.
            (
                message(&[
                    ("extra", Some(r#"{"a":[1,2,{"b":null}],"price":"x"}"#)),
                    ("url", Some(r#""https://example.com""#)),
                    ("Price", Some("-1")),
                    ("n", Some("1e999")),
                ]),
                expected(),
            ),
            // Escapes are decoded; escaped keys are matched.
            (
                message(&[("event_id", Some(r#""E\u00e9\"\n""#))])
                .replace("\"section\"", "\"sect\\u0069on\""),
                with(&|o| o.listing.event_id = "Eé\"\n".into()),
            ),
            (
                message(&[("price", Some(r#""\u0031\u0032""#))]),
                with(&|o| o.price = Cents(1200)),
            ),
            // Whitespace around everything.
            (
                " \n{ \"event_id\" : \"E1\" ,\t\"section\":\"A\", \"price\" : 12.50 ,\r\n \"timestamp\" : \"2024-05-01T12:00:00Z\" } \n"
                    .to_owned(),
                expected(),
            ),
            (
                message(&[("available", Some("true")), ("event_date", Some(r#""2024-06-01T00:00:00Z""#))]),
                with(&|o| o.event_date = Some(1_717_200_000_000_000)),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_observation(text.as_bytes()), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_messages_name_the_field() {
        let long = |n: usize| format!("\"{}\"", "x".repeat(n));
        let cases: Vec<(String, &str)> = vec![
            (message(&[("event_id", None)]), "event_id: missing"),
            (message(&[("event_id", Some("null"))]), "event_id: missing"),
            (message(&[("event_id", Some(r#""""#))]), "event_id: empty"),
            (
                message(&[("event_id", Some("42"))]),
                "event_id: expected a string",
            ),
            (
                message(&[("event_id", Some(&long(129)))]),
                "event_id: 129 chars exceeds the 128-char limit",
            ),
            (
                message(&[("event_id", Some(r#""a\u0000b""#))]),
                "event_id: contains a NUL",
            ),
            (
                message(&[("event_id", Some(r#""\ud800""#))]),
                "event_id: invalid escape",
            ),
            (message(&[("event_name", Some(r#""""#))]), "event_name: empty"),
            (
                message(&[("event_name", Some(&long(513)))]),
                "event_name: 513 chars",
            ),
            (
                message(&[("event_name", Some("[]"))]),
                "event_name: expected a string",
            ),
            (message(&[("venue", Some(&long(513)))]), "venue: 513 chars"),
            (message(&[("venue", Some("{}"))]), "venue: expected a string"),
            (
                message(&[("event_date", Some(r#""tomorrow""#))]),
                "event_date: not an RFC 3339 date-time (\"tomorrow\")",
            ),
            (
                message(&[("event_date", Some(r#""2024-06-01""#))]),
                "event_date: not an RFC 3339",
            ),
            (
                message(&[("event_date", Some("1717200000000"))]),
                "event_date: expected a string",
            ),
            (message(&[("section", None)]), "section: missing"),
            (message(&[("section", Some(r#""""#))]), "section: empty"),
            (
                message(&[("section", Some(&long(65)))]),
                "section: 65 chars exceeds the 64-char limit",
            ),
            (
                message(&[("section", Some("true"))]),
                "section: expected a string",
            ),
            (message(&[("row", Some(&long(65)))]), "row: 65 chars"),
            (message(&[("row", Some("7"))]), "row: expected a string"),
            (message(&[("seat", Some(&long(65)))]), "seat: 65 chars"),
            (message(&[("seat", Some("false"))]), "seat: expected a string"),
            (message(&[("source", Some(&long(65)))]), "source: 65 chars"),
            (message(&[("source", Some("1"))]), "source: expected a string"),
            (message(&[("price", None)]), "price: missing"),
            (message(&[("price", Some("null"))]), "price: missing"),
            (
                message(&[("price", Some("12.345"))]),
                "price: more than 2 decimal places (\"12.345\")",
            ),
            (
                message(&[("price", Some("0"))]),
                "price: must be greater than 0 (\"0\")",
            ),
            (message(&[("price", Some("-1"))]), "price: must be greater than 0"),
            (
                message(&[("price", Some("1000000.01"))]),
                "price: more than 1000000 (\"1000000.01\")",
            ),
            (
                message(&[("price", Some(r#""abc""#))]),
                "price: not a decimal number (\"abc\")",
            ),
            (
                message(&[("price", Some(r#""""#))]),
                "price: not a decimal number (\"\")",
            ),
            (
                message(&[("price", Some(r#""NaN""#))]),
                "price: not a decimal number",
            ),
            (
                message(&[("price", Some(r#""+12""#))]),
                "price: not a decimal number",
            ),
            (
                message(&[("price", Some(r#"" 12""#))]),
                "price: not a decimal number",
            ),
            (
                message(&[("price", Some("true"))]),
                "price: expected a number or a string",
            ),
            (
                message(&[("price", Some("[12]"))]),
                "price: expected a number or a string",
            ),
            (
                message(&[("currency", Some(r#""usd""#))]),
                "currency: must be 3 upper-case letters (\"usd\")",
            ),
            (
                message(&[("currency", Some(r#""""#))]),
                "currency: must be 3 upper-case letters (\"\")",
            ),
            (message(&[("currency", Some(r#""EURO""#))]), "currency: must be 3"),
            (
                message(&[("currency", Some("840"))]),
                "currency: expected a string",
            ),
            (
                message(&[("available", Some(r#""yes""#))]),
                "available: expected a boolean",
            ),
            (
                message(&[("available", Some("1"))]),
                "available: expected a boolean",
            ),
            (message(&[("timestamp", None)]), "timestamp: missing"),
            (message(&[("timestamp", Some("null"))]), "timestamp: missing"),
            (
                message(&[("timestamp", Some(r#""2024-05-01 12:00""#))]),
                "timestamp: not an RFC 3339",
            ),
            (
                message(&[("timestamp", Some(r#""1714564800000""#))]),
                "timestamp: not an RFC 3339",
            ),
            (
                message(&[("timestamp", Some("1.5e12"))]),
                "timestamp: epoch milliseconds must be an integer (\"1.5e12\")",
            ),
            (
                message(&[("timestamp", Some("1714564800000.0"))]),
                "timestamp: epoch milliseconds must be an integer",
            ),
            (
                message(&[("timestamp", Some("99999999999999999999"))]),
                "timestamp: epoch milliseconds out of range",
            ),
            (
                message(&[("timestamp", Some("9223372036854775807"))]),
                "timestamp: epoch milliseconds out of range",
            ),
            (
                message(&[("timestamp", Some("0"))]),
                "timestamp: year 1970 outside 2000-2100",
            ),
            (
                message(&[("timestamp", Some("-1"))]),
                "timestamp: year 1969 outside 2000-2100",
            ),
            (
                message(&[("timestamp", Some("false"))]),
                "timestamp: expected an RFC 3339 string or integer epoch milliseconds",
            ),
            (
                message(&[("price", Some("1"))]).replace("\"timestamp\"", "\"price\":2,\"timestamp\""),
                "price: appears more than once",
            ),
            ("".to_owned(), "message: empty"),
            ("   ".to_owned(), "message: invalid JSON"),
            ("{".to_owned(), "message: invalid JSON"),
            ("{\"event_id\":\"E1\",}".to_owned(), "message: invalid JSON"),
            (format!("{} x", message(&[])), "message: invalid JSON"),
            ("[1,2]".to_owned(), "message: not a JSON object"),
            ("null".to_owned(), "message: not a JSON object"),
            ("\"text\"".to_owned(), "message: not a JSON object"),
            ("12".to_owned(), "message: not a JSON object"),
            // Raw control characters are not JSON.
            (message(&[("row", Some("\"a\u{0}b\""))]), "message: invalid JSON"),
        ];
        assert!(cases.len() >= 30);
        for (text, want) in &cases {
            let err = parse_observation(text.as_bytes()).expect_err(text);
            let got = err.to_string();
            assert!(got.starts_with(want), "{text}\n  got:  {got}\n  want: {want}…");
            let field = got.split(':').next().unwrap_or_default();
            assert_eq!(err.field().map_or("message", Field::name), field, "{text}");
        }
    }

    #[test]
    fn errors_report_the_first_field_in_spec_order() {
        let text = r#"{"timestamp":"x","price":"x","section":"","event_id":""}"#;
        assert_eq!(
            parse_observation(text.as_bytes()),
            Err(ParseError::Empty(Field::EventId))
        );
    }

    #[test]
    fn non_utf8_tombstone_and_size() {
        assert_eq!(
            parse_observation(b"{\"event_id\":\"\xff\"}").map_err(|e| e.to_string()),
            Err("message: not valid UTF-8".to_owned())
        );
        let raw = RawMessage {
            position: crate::model::Position {
                partition: 0,
                offset: 7,
            },
            key: Some(b"E1".to_vec()),
            payload: None,
        };
        assert_eq!(
            parse_raw(&raw).map_err(|e| e.to_string()),
            Err("message: empty (tombstone)".to_owned())
        );
        let raw = RawMessage {
            payload: Some(message(&[]).into_bytes()),
            ..raw
        };
        assert_eq!(parse_raw(&raw), Ok(expected()));

        // Padded with an unknown field to exactly the limit: accepted; one more byte: not.
        let base = message(&[("pad", Some(r#""""#))]);
        let padding = MAX_MESSAGE_BYTES - base.len();
        let at_limit = message(&[("pad", Some(&format!("\"{}\"", "p".repeat(padding))))]);
        assert_eq!(at_limit.len(), MAX_MESSAGE_BYTES);
        assert_eq!(parse_observation(at_limit.as_bytes()), Ok(expected()));
        let over = message(&[("pad", Some(&format!("\"{}\"", "p".repeat(padding + 4))))]);
        assert_eq!(
            parse_observation(over.as_bytes()).map_err(|e| e.to_string()),
            Err(format!(
                "message: {} bytes exceeds the 65536-byte limit",
                MAX_MESSAGE_BYTES + 4
            ))
        );
        let huge = vec![b'{'; 70_000];
        assert_eq!(
            parse_observation(&huge).map_err(|e| e.to_string()),
            Err("message: 70000 bytes exceeds the 65536-byte limit".to_owned())
        );
    }

    #[test]
    fn price_edge_cases() {
        let ok = [
            ("12", 1200),
            ("12.5", 1250),
            ("12.50", 1250),
            ("12.500", 1250),
            ("12.5000000000000000000000000", 1250),
            ("1e2", 10000),
            ("1E2", 10000),
            ("1e+2", 10000),
            ("1.5E1", 1500),
            // 1.234e1 is 12.34: two decimal places once the exponent is applied.
            ("1.234e1", 1234),
            ("1250e-2", 1250),
            ("0.01", 1),
            ("0.10", 10),
            ("1e-2", 1),
            ("0.000001e4", 1),
            ("1000000", 100_000_000),
            ("1000000.00", 100_000_000),
            ("1e6", 100_000_000),
            ("0.001e9", 100_000_000),
            ("100000000e-2", 100_000_000),
            ("999999.99", 99_999_999),
            ("1e0", 100),
        ];
        for (text, cents) in ok {
            assert_eq!(parse_price_text(text), Ok(Cents(cents)), "{text}");
            assert_eq!(
                parse(&[("price", Some(text))]).map(|o| o.price),
                Ok(Cents(cents)),
                "{text}"
            );
            let quoted = format!("\"{text}\"");
            assert_eq!(
                parse(&[("price", Some(&quoted))]).map(|o| o.price),
                Ok(Cents(cents)),
                "{quoted}"
            );
        }

        let bad = [
            ("1000000.01", "more than 1000000"),
            ("1000001", "more than 1000000"),
            ("1e7", "more than 1000000"),
            ("1e999999999999999999999", "more than 1000000"),
            ("123456789012345678901234567890", "more than 1000000"),
            ("0.001", "more than 2 decimal places"),
            ("12.345", "more than 2 decimal places"),
            ("1.2345e1", "more than 2 decimal places"),
            ("1e-3", "more than 2 decimal places"),
            ("1e-999999999999999999999", "more than 2 decimal places"),
            ("1000000.001", "more than 2 decimal places"),
            ("0", "must be greater than 0"),
            ("0.00", "must be greater than 0"),
            ("0e5", "must be greater than 0"),
            ("-0", "must be greater than 0"),
            ("-1", "must be greater than 0"),
            ("-12.345", "must be greater than 0"),
            ("", "not a decimal number"),
            ("abc", "not a decimal number"),
            ("NaN", "not a decimal number"),
            ("Infinity", "not a decimal number"),
            ("+12", "not a decimal number"),
            ("012", "not a decimal number"),
            (".5", "not a decimal number"),
            ("12.", "not a decimal number"),
            ("12e", "not a decimal number"),
            ("12e+", "not a decimal number"),
            ("1,000", "not a decimal number"),
            ("12 ", "not a decimal number"),
            (" 12", "not a decimal number"),
            ("$12", "not a decimal number"),
            ("12.5.0", "not a decimal number"),
            ("0x10", "not a decimal number"),
            ("-", "not a decimal number"),
            ("١٢", "not a decimal number"),
        ];
        for (text, want) in bad {
            let err = parse_price_text(text).expect_err(text);
            assert_eq!(err, format!("{want} ({:?})", snippet(text)), "{text}");
            let quoted = format!("\"{text}\"");
            let err = parse(&[("price", Some(&quoted))]).expect_err(&quoted);
            assert_eq!(err.to_string(), format!("price: {want} ({:?})", snippet(text)));
        }
        // A long offending value is cut short in the message.
        let long = "9".repeat(100);
        let err = parse_price_text(&long).expect_err("too large");
        assert_eq!(err, format!("more than 1000000 (\"{}…\")", "9".repeat(40)));
    }

    #[test]
    fn timestamp_edge_cases() {
        let observed = |value: &str| parse(&[("timestamp", Some(value))]).map(|o| o.observed_at);
        let cases = [
            ("1714564800000", Ok(T0)),
            ("1714564800123", Ok(T0 + 123_000)),
            (r#""2024-05-01T14:00:00+02:00""#, Ok(T0)),
            (r#""2024-05-01T07:30:00-04:30""#, Ok(T0)),
            (r#""2024-05-01t12:00:00z""#, Ok(T0)),
            (r#""2024-05-01 12:00:00Z""#, Ok(T0)),
            (r#""2024-05-01T12:00:00.5Z""#, Ok(T0 + 500_000)),
            (r#""2024-05-01T12:00:00.123456Z""#, Ok(T0 + 123_456)),
            // Sub-microsecond digits are truncated.
            (r#""2024-05-01T12:00:00.1234569Z""#, Ok(T0 + 123_456)),
            (r#""2024-05-01T12:00:00.999999999999Z""#, Ok(T0 + 999_999)),
            (r#""2000-01-01T00:00:00Z""#, Ok(MIN_OBSERVED_AT)),
            ("946684800000", Ok(MIN_OBSERVED_AT)),
            (r#""2100-12-31T23:59:59Z""#, Ok(END_OBSERVED_AT - 1_000_000)),
            (r#""2100-12-31T23:59:59.999999Z""#, Ok(END_OBSERVED_AT - 1)),
            ("4133980799999", Ok(END_OBSERVED_AT - 1000)),
            (
                r#""1999-12-31T23:59:59.999999Z""#,
                Err(ParseError::YearOutOfRange(1999)),
            ),
            ("946684799999", Err(ParseError::YearOutOfRange(1999))),
            // The year is the UTC year.
            (
                r#""2000-01-01T00:30:00+01:00""#,
                Err(ParseError::YearOutOfRange(1999)),
            ),
            (
                r#""2100-12-31T23:30:00-01:00""#,
                Err(ParseError::YearOutOfRange(2101)),
            ),
            (r#""2101-01-01T00:00:00Z""#, Err(ParseError::YearOutOfRange(2101))),
            ("4133980800000", Err(ParseError::YearOutOfRange(2101))),
            (
                r#""2024-02-30T00:00:00Z""#,
                Err(ParseError::NotRfc3339 {
                    field: Field::Timestamp,
                    value: "2024-02-30T00:00:00Z".into(),
                }),
            ),
            (
                r#""2024-05-01T12:00:00""#,
                Err(ParseError::NotRfc3339 {
                    field: Field::Timestamp,
                    value: "2024-05-01T12:00:00".into(),
                }),
            ),
            (
                r#""2024-05-01T12:00:00Z ""#,
                Err(ParseError::NotRfc3339 {
                    field: Field::Timestamp,
                    value: "2024-05-01T12:00:00Z ".into(),
                }),
            ),
            ("17145648e5", Err(ParseError::NotInteger("17145648e5".into()))),
        ];
        for (value, want) in cases {
            assert_eq!(observed(value), want, "{value}");
        }
        assert_eq!(
            ParseError::YearOutOfRange(1999).to_string(),
            "timestamp: year 1999 outside 2000-2100"
        );
        assert_eq!(
            DateTime::<Utc>::from_timestamp_micros(END_OBSERVED_AT).map(|t| t.to_rfc3339()),
            Some("2101-01-01T00:00:00+00:00".to_owned())
        );

        // event_date: any RFC 3339, converted to UTC, truncated the same way.
        let date = |value: &str| parse(&[("event_date", Some(value))]).map(|o| o.event_date);
        assert_eq!(date(r#""2024-05-01T14:00:00.0000019+02:00""#), Ok(Some(T0 + 1)));
        assert_eq!(date(r#""1969-12-31T23:59:59.9999999Z""#), Ok(Some(-1)));
        assert_eq!(
            date(r#""1900-01-01T00:00:00Z""#),
            Ok(Some(-2_208_988_800_000_000))
        );
    }

    #[test]
    fn lengths_count_chars_not_bytes() {
        for (field, max) in [
            ("event_id", 128),
            ("section", 64),
            ("row", 64),
            ("seat", 64),
            ("source", 64),
            ("venue", 512),
            ("event_name", 512),
        ] {
            for ch in ["é", "票", "🎫"] {
                let fits = format!("\"{}\"", ch.repeat(max));
                let observation = parse(&[(field, Some(&fits))]).expect(field);
                let got = match field {
                    "event_id" => observation.listing.event_id,
                    "section" => observation.listing.seat.section,
                    "row" => observation.listing.seat.row,
                    "seat" => observation.listing.seat.seat,
                    "source" => observation.listing.seat.source,
                    "venue" => observation.venue.unwrap_or_default(),
                    _ => observation.event_name.unwrap_or_default(),
                };
                assert_eq!(got.chars().count(), max);
                let over = format!("\"{}\"", ch.repeat(max + 1));
                assert_eq!(
                    parse(&[(field, Some(&over))]).map_err(|e| e.to_string()),
                    Err(format!("{field}: {} chars exceeds the {max}-char limit", max + 1))
                );
            }
        }
        // Escaped characters count once.
        let escaped = format!("\"{}\"", "\\u00e9".repeat(128));
        assert!(parse(&[("event_id", Some(&escaped))]).is_ok());
    }

    #[test]
    fn quoted_values_are_cut_short() {
        let long = format!("\"{}\"", "ü".repeat(100));
        let err = parse(&[("currency", Some(&long))]).expect_err("currency");
        assert_eq!(
            err.to_string(),
            format!("currency: must be 3 upper-case letters (\"{}…\")", "ü".repeat(40))
        );
    }
}
