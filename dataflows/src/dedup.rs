//! Dedup stage: the observation identities (listing + `observed_at`) one event has
//! already stored in `price_history`. An identity seen before is a duplicate (a
//! producer retry or an overlapping replay) and changes nothing; the first one in
//! partition order wins because observations are applied in that order.

use std::collections::HashMap;

use crate::model::{Micros, Seat};

/// The stored identities of one event, per listing.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Sorted ascending. A sorted `Vec` rather than a set: scrapers observe forward
    /// in time, so inserts are almost always appends, and 8 bytes per identity keeps
    /// a long history affordable.
    by_listing: HashMap<Seat, Vec<Micros>>,
}

impl Seen {
    /// Records an identity; `true` if it is new, `false` for a duplicate.
    pub fn insert(&mut self, seat: &Seat, observed_at: Micros) -> bool {
        let Some(times) = self.by_listing.get_mut(seat) else {
            self.by_listing.insert(seat.clone(), vec![observed_at]);
            return true;
        };
        insert_sorted(times, observed_at)
    }

    pub fn contains(&self, seat: &Seat, observed_at: Micros) -> bool {
        self.by_listing
            .get(seat)
            .is_some_and(|times| times.binary_search(&observed_at).is_ok())
    }

    pub fn is_empty(&self) -> bool {
        self.by_listing.is_empty()
    }
}

/// Inserts into a sorted vector unless present; `true` if inserted.
fn insert_sorted(times: &mut Vec<Micros>, observed_at: Micros) -> bool {
    if times.last().is_none_or(|&last| last < observed_at) {
        times.push(observed_at);
        return true;
    }
    match times.binary_search(&observed_at) {
        Ok(_) => false,
        Err(index) => {
            times.insert(index, observed_at);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(name: &str) -> Seat {
        Seat {
            section: "A".into(),
            row: "1".into(),
            seat: name.into(),
            source: "s".into(),
        }
    }

    #[test]
    fn second_sighting_of_an_identity_is_a_duplicate() {
        let mut seen = Seen::default();
        assert!(seen.insert(&seat("1"), 10));
        assert!(!seen.insert(&seat("1"), 10));
        assert!(seen.insert(&seat("2"), 10), "another listing, same time");
        assert!(seen.insert(&seat("1"), 11));
    }

    #[test]
    fn out_of_order_times_are_kept_sorted() {
        let mut seen = Seen::default();
        for t in [50, 10, 30, 20, 40, 30, 10] {
            seen.insert(&seat("1"), t);
        }
        for t in [10, 20, 30, 40, 50] {
            assert!(seen.contains(&seat("1"), t));
            assert!(!seen.insert(&seat("1"), t));
        }
        assert!(!seen.contains(&seat("1"), 25));
        assert!(!seen.contains(&seat("2"), 10));
    }
}
