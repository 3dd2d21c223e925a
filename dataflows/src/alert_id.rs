//! Alert identity: the deterministic `alert_id` of an alert, derived from what the
//! alert says (kind, listing, rule, the triggering observation's time, currency) and
//! never from where its message sat in Kafka, so a replay into another topic, or
//! after a crash, gives the same ids and the sink and the alerts consumer can dedup.

use sha2::{Digest, Sha256};

use crate::model::{AlertKind, Currency, ListingKey, Micros};

/// Bumped if the encoding ever changes, so old and new ids can never collide.
const DOMAIN: &[u8] = b"conscope.alert_id.v1";

/// Hex of the first 16 bytes of SHA-256 over a length-prefixed encoding of the
/// alert's identity: 32 lower-case hex characters.
pub fn alert_id(
    kind: AlertKind,
    listing: &ListingKey,
    observed_at: Micros,
    rule_id: Option<i64>,
    currency: Currency,
) -> String {
    let mut hasher = Sha256::new();
    // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(DOMAIN);
    field(kind.as_str().as_bytes());
    field(listing.event_id.as_bytes());
    field(listing.seat.section.as_bytes());
    field(listing.seat.row.as_bytes());
    field(listing.seat.seat.as_bytes());
    field(listing.seat.source.as_bytes());
    field(&observed_at.to_be_bytes());
    match rule_id {
        // A tag byte so "no rule" can never equal any rule id.
        None => field(&[0]),
        Some(id) => {
            let mut bytes = [0u8; 9];
            bytes[0] = 1;
            bytes[1..].copy_from_slice(&id.to_be_bytes());
            field(&bytes);
        }
    }
    field(&currency.0);
    let digest = hasher.finalize();
    let mut text = String::with_capacity(32);
    for byte in &digest[..16] {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    text
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Seat;

    fn listing(section: &str, row: &str) -> ListingKey {
        ListingKey {
            event_id: "ev".into(),
            seat: Seat {
                section: section.into(),
                row: row.into(),
                seat: "1".into(),
                source: "s".into(),
            },
        }
    }

    #[test]
    fn is_32_hex_chars_and_stable() {
        let a = alert_id(AlertKind::EventLow, &listing("A", "1"), 7, None, Currency::USD);
        let b = alert_id(AlertKind::EventLow, &listing("A", "1"), 7, None, Currency::USD);
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn every_field_matters() {
        let base = alert_id(
            AlertKind::RuleMatch,
            &listing("A", "1"),
            7,
            Some(1),
            Currency::USD,
        );
        let others = [
            alert_id(AlertKind::EventLow, &listing("A", "1"), 7, Some(1), Currency::USD),
            alert_id(
                AlertKind::RuleMatch,
                &listing("A", "2"),
                7,
                Some(1),
                Currency::USD,
            ),
            alert_id(
                AlertKind::RuleMatch,
                &listing("A", "1"),
                8,
                Some(1),
                Currency::USD,
            ),
            alert_id(
                AlertKind::RuleMatch,
                &listing("A", "1"),
                7,
                Some(2),
                Currency::USD,
            ),
            alert_id(AlertKind::RuleMatch, &listing("A", "1"), 7, None, Currency::USD),
            alert_id(
                AlertKind::RuleMatch,
                &listing("A", "1"),
                7,
                Some(1),
                Currency(*b"EUR"),
            ),
        ];
        for other in others {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = alert_id(AlertKind::EventLow, &listing("AB", "C"), 7, None, Currency::USD);
        let b = alert_id(AlertKind::EventLow, &listing("A", "BC"), 7, None, Currency::USD);
        assert_ne!(a, b);
    }
}
