//! The input parser (`conscope_dataflows::parse`) on arbitrary message values:
//! it never panics, and whatever it accepts keeps SPEC §1's rules (a price in
//! (0, 1000000] as whole cents, bounded ids, a three-letter upper-case currency).

#![no_main]

use conscope_dataflows::parse::parse_observation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &[u8]| {
    let Ok(observation) = parse_observation(value) else {
        return;
    };
    assert!(
        (1..=100_000_000).contains(&observation.price.0),
        "{observation:?}"
    );
    let event_id = observation.listing.event_id.chars().count();
    assert!((1..=128).contains(&event_id), "{observation:?}");
    assert!(
        observation.currency.0.iter().all(u8::is_ascii_uppercase),
        "{observation:?}"
    );
});
