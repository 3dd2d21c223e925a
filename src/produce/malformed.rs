//! Malformed messages: 24 ways a price observation arrives broken, each of which
//! the job must reject (SPEC §1) rather than store: truncated or non-JSON bodies,
//! JSON that is not an object, missing required fields, negative, zero,
//! over-precise, out-of-range or unparseable prices, bad currencies, bad or
//! out-of-range timestamps and event dates, oversize values, fields too long or
//! empty, and fields of the wrong JSON type.
//!
//! Pure: starts from a valid observation's fields (from [`super::render`]) and
//! draws from the generator's RNG; no IO. The order of RNG draws is part of the
//! byte-identical output for a seed.

use rand::rngs::StdRng;
use rand::Rng;

use super::render::{format_price, json_string, maybe_quoted, remove, render, set};

/// The value of a message the job must reject, made by breaking `fields` (a
/// valid observation of `event_id` priced `cents`) in one of 24 ways. The way
/// that makes `event_id` too long also changes `key` to match, when there is one.
pub(super) fn corrupt(
    rng: &mut StdRng,
    mut fields: Vec<(&'static str, String)>,
    key: &mut Option<Vec<u8>>,
    event_id: &str,
    cents: i64,
) -> Vec<u8> {
    match rng.gen_range(0..24u32) {
        0 => {
            // Truncated in transit: an object without its closing brace.
            let text = render(rng, &fields);
            let mut cut = text.len() / 2;
            while std::str::from_utf8(&text[..cut]).is_err() {
                cut -= 1;
            }
            text[..cut].to_vec()
        }
        1 => {
            let garbage = [
                "<html><body>502 Bad Gateway</body></html>",
                "price=120.50&section=101",
                "",
                "{\"event_id\": \"evt\", section: \"101\"}",
                "{\"event_id\":\"evt\",\"section\":\"101\",}",
                "{\"event_id\":\"evt\"}{\"section\":\"101\"}",
            ];
            garbage[rng.gen_range(0..garbage.len())].as_bytes().to_vec()
        }
        2 => {
            // Valid JSON, but not an object.
            match rng.gen_range(0..4) {
                0 => [b"[".as_slice(), &render(rng, &fields), b"]"].concat(),
                1 => b"\"sold out\"".to_vec(),
                2 => b"42".to_vec(),
                _ => b"null".to_vec(),
            }
        }
        3 => {
            remove(&mut fields, "section");
            render(rng, &fields)
        }
        4 => {
            remove(&mut fields, "price");
            render(rng, &fields)
        }
        5 => {
            remove(&mut fields, "event_id");
            render(rng, &fields)
        }
        6 => {
            remove(&mut fields, "timestamp");
            render(rng, &fields)
        }
        7 => {
            let price = format!("-{}", format_price(rng, cents));
            set(&mut fields, "price", maybe_quoted(rng, price));
            render(rng, &fields)
        }
        8 => {
            let zero = ["0", "0.00", "\"0\"", "\"0.00\""][rng.gen_range(0..4)];
            set(&mut fields, "price", zero.to_owned());
            render(rng, &fields)
        }
        9 => {
            // Three decimal places, the third one non-zero.
            let price = format!("{}.{:02}{}", cents / 100, cents % 100, rng.gen_range(1..=9));
            set(&mut fields, "price", maybe_quoted(rng, price));
            render(rng, &fields)
        }
        10 => {
            let big = ["1000000.01", "2500000", "99999999999.99"][rng.gen_range(0..3)];
            set(&mut fields, "price", maybe_quoted(rng, big.to_owned()));
            render(rng, &fields)
        }
        11 => {
            let bad = ["\"$45.00\"", "\"twelve\"", "\"\"", "\"12,50\"", "\"45.00 USD\""];
            set(&mut fields, "price", bad[rng.gen_range(0..bad.len())].to_owned());
            render(rng, &fields)
        }
        12 => {
            let bad = ["\"usd\"", "\"US\"", "\"DOLLARS\"", "\"€\"", "\"\""];
            set(
                &mut fields,
                "currency",
                bad[rng.gen_range(0..bad.len())].to_owned(),
            );
            render(rng, &fields)
        }
        13 => {
            let bad = [
                "\"yesterday\"",
                "\"2026-13-45T25:61:00Z\"",
                "\"2026/01/01 10:00\"",
                "\"\"",
                "true",
            ];
            set(
                &mut fields,
                "timestamp",
                bad[rng.gen_range(0..bad.len())].to_owned(),
            );
            render(rng, &fields)
        }
        14 => {
            // 1999: a scraper with a dead clock battery.
            let old = [
                "\"1999-12-31T23:59:59Z\"",
                "946684799000",
                "\"1999-06-15T12:00:00+02:00\"",
            ];
            set(
                &mut fields,
                "timestamp",
                old[rng.gen_range(0..old.len())].to_owned(),
            );
            render(rng, &fields)
        }
        15 => {
            let future = ["\"2101-01-01T00:00:00Z\"", "4133980800000"];
            set(
                &mut fields,
                "timestamp",
                future[rng.gen_range(0..future.len())].to_owned(),
            );
            render(rng, &fields)
        }
        16 => {
            // Over 64 KiB, otherwise valid.
            set(&mut fields, "notes", json_string(&"x".repeat(70_000)));
            render(rng, &fields)
        }
        17 => {
            let long = format!("{}-{}", event_id, "x".repeat(rng.gen_range(125..=300)));
            set(&mut fields, "event_id", json_string(&long));
            if key.is_some() {
                *key = Some(long.into_bytes());
            }
            render(rng, &fields)
        }
        18 => {
            let field = ["event_id", "section", "event_name"][rng.gen_range(0..3)];
            set(&mut fields, field, "\"\"".to_owned());
            render(rng, &fields)
        }
        19 => {
            let (field, raw) = [
                ("section", "101"),
                ("price", "true"),
                ("price", "{\"amount\":\"120.00\"}"),
                ("available", "\"yes\""),
                ("event_id", "12345"),
                ("row", "7"),
                ("currency", "840"),
                ("event_name", "42"),
            ][rng.gen_range(0..8)];
            set(&mut fields, field, raw.to_owned());
            render(rng, &fields)
        }
        20 => {
            let field = ["section", "row", "seat", "source"][rng.gen_range(0..4)];
            set(
                &mut fields,
                field,
                json_string(&"S".repeat(rng.gen_range(65..=100))),
            );
            render(rng, &fields)
        }
        21 => {
            let field = ["event_name", "venue"][rng.gen_range(0..2)];
            set(
                &mut fields,
                field,
                json_string(&"Arena ".repeat(rng.gen_range(90..=120))),
            );
            render(rng, &fields)
        }
        22 => {
            let bad = ["\"next friday\"", "\"2026-02-30\"", "20260301"];
            set(
                &mut fields,
                "event_date",
                bad[rng.gen_range(0..bad.len())].to_owned(),
            );
            render(rng, &fields)
        }
        _ => {
            set(&mut fields, "price", "\"NaN\"".to_owned());
            render(rng, &fields)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use crate::produce::check::{messages, validate};
    use crate::produce::generator::GeneratorConfig;

    #[test]
    fn every_kind_of_malformed_message_shows_up() {
        let all = messages(&GeneratorConfig {
            malformed_rate: 1.0,
            duplicate_rate: 0.0,
            stale_rate: 0.0,
            count: 5_000,
            ..GeneratorConfig::default()
        });
        let reasons: HashSet<String> = all
            .iter()
            .filter_map(|m| validate(&m.value).err())
            .map(|reason| {
                reason
                    .split([':', '"'])
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .collect();
        assert_eq!(all.iter().filter(|m| validate(&m.value).is_ok()).count(), 0);
        for expected in [
            "oversize",
            "not a JSON object",
            "missing section",
            "missing price",
            "missing event_id",
            "missing timestamp",
            "bad price",
            "price out of range",
            "bad currency",
            "bad timestamp",
            "timestamp year",
            "bad event_date",
            "available is not a bool",
            "timestamp is not an integer",
        ] {
            assert!(reasons.contains(expected), "no {expected:?} in {reasons:?}");
        }
        assert!(reasons.iter().any(|r| r.starts_with("event_id has")));
        assert!(reasons.iter().any(|r| r.starts_with("section has")));
    }
}
