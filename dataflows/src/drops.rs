//! Drop detection stage: the pure tests behind `listing_drop` (one listing's price
//! fell by at least the configured fraction) and `event_low` (an event's get-in
//! price, per currency, went down). Exact integer math: prices are money.

use crate::listing_state::Quote;
use crate::model::Cents;

/// `(old, new)` if a listing going from `previous` to `current` is a `listing_drop`:
/// both available, same currency, and `(old - new) / old >= min_drop_basis_points
/// / 10000`. Across a sold or withdrawn state there is no drop: the price the
/// listing comes back at is a new offer, not a reduction.
pub fn listing_drop(
    previous: Option<&Quote>,
    current: &Quote,
    min_drop_basis_points: u32,
) -> Option<(Cents, Cents)> {
    let previous = previous?;
    if !previous.available || !current.available || previous.currency != current.currency {
        return None;
    }
    let (old, new) = (previous.price, current.price);
    is_drop(old, new, min_drop_basis_points).then_some((old, new))
}

/// `new < old` and the fall is at least `min_drop_basis_points` of `old`.
pub fn is_drop(old: Cents, new: Cents, min_drop_basis_points: u32) -> bool {
    if new >= old || old.0 <= 0 {
        return false;
    }
    // i128: `old * 10000 * u32::MAX` cannot overflow it for any i64 price.
    let fall = (i128::from(old.0) - i128::from(new.0)) * 10_000;
    fall >= i128::from(min_drop_basis_points) * i128::from(old.0)
}

/// `(before, after)` if a scope's lowest price went down. Appearing from nothing
/// (a first listing, or a refill after the scope emptied) is not a drop.
pub fn event_low(before: Option<Cents>, after: Option<Cents>) -> Option<(Cents, Cents)> {
    match (before, after) {
        (Some(before), Some(after)) if after < before => Some((before, after)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Currency;

    fn quote(price: i64, available: bool) -> Quote {
        Quote {
            price: Cents(price),
            currency: Currency::USD,
            available,
            observed_at: 0,
        }
    }

    #[test]
    fn threshold_is_inclusive_and_exact() {
        assert!(is_drop(Cents(10000), Cents(9500), 500), "exactly 5%");
        assert!(!is_drop(Cents(10000), Cents(9501), 500), "4.99%");
        assert!(is_drop(Cents(3), Cents(2), 3333));
        assert!(!is_drop(Cents(3), Cents(2), 3334));
        assert!(is_drop(Cents(200), Cents(195), 250), "2.5%");
        assert!(!is_drop(Cents(100), Cents(100), 0), "equal is never a drop");
        assert!(is_drop(Cents(100), Cents(99), 0));
        assert!(is_drop(Cents(i64::MAX), Cents(1), 9999), "no overflow");
        assert!(
            !is_drop(Cents(i64::MAX), Cents(1), u32::MAX),
            "more than 100% never"
        );
    }

    #[test]
    fn listing_drop_needs_two_available_prices_in_one_currency() {
        assert_eq!(
            listing_drop(Some(&quote(100, true)), &quote(90, true), 500),
            Some((Cents(100), Cents(90)))
        );
        assert_eq!(listing_drop(None, &quote(90, true), 500), None);
        assert_eq!(
            listing_drop(Some(&quote(100, false)), &quote(90, true), 500),
            None
        );
        assert_eq!(
            listing_drop(Some(&quote(100, true)), &quote(90, false), 500),
            None
        );
        let mut euro = quote(90, true);
        euro.currency = Currency(*b"EUR");
        assert_eq!(listing_drop(Some(&quote(100, true)), &euro, 500), None);
    }

    #[test]
    fn event_low_only_counts_going_down() {
        assert_eq!(
            event_low(Some(Cents(10)), Some(Cents(9))),
            Some((Cents(10), Cents(9)))
        );
        assert_eq!(event_low(None, Some(Cents(9))), None);
        assert_eq!(event_low(Some(Cents(9)), Some(Cents(9))), None);
        assert_eq!(event_low(Some(Cents(9)), Some(Cents(10))), None);
        assert_eq!(event_low(Some(Cents(9)), None), None);
    }
}
