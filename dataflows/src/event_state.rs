//! Event state stage: the `events` row of one event. Each of `event_name`, `venue`
//! and `event_date` comes from the most recent observation (by `observed_at`) that
//! carried it, ties going to the later message; `first_seen`/`last_seen` span all
//! stored observations. An observation older than its listing's current state
//! may be stale or a duplicate, which only the stored history tells: its fields
//! are applied by the Postgres writer once it has inserted the row (and the
//! writer merges each field by `observed_at`, so the rows of this stage never
//! undo that); here it can only lower `first_seen` ([`widen`]).

use crate::model::{EventRow, Micros, Observation, Stamped};

/// The row of an event first seen in `observation`.
pub fn new_row(observation: &Observation) -> EventRow {
    let mut row = EventRow {
        event_id: observation.listing.event_id.clone(),
        event_name: None,
        venue: None,
        event_date: None,
        first_seen: observation.observed_at,
        last_seen: observation.observed_at,
    };
    apply(&mut row, observation);
    row
}

/// Folds a stored (non-duplicate) observation into the row; `true` if it changed.
pub fn apply(row: &mut EventRow, observation: &Observation) -> bool {
    let at = observation.observed_at;
    let mut changed = false;
    if at < row.first_seen {
        row.first_seen = at;
        changed = true;
    }
    if at > row.last_seen {
        row.last_seen = at;
        changed = true;
    }
    changed |= stamp(&mut row.event_name, observation.event_name.as_ref(), at);
    changed |= stamp(&mut row.venue, observation.venue.as_ref(), at);
    changed |= stamp(&mut row.event_date, observation.event_date.as_ref(), at);
    changed
}

/// Folds in an observation older than its listing's current state, stale or a
/// duplicate (only the writer knows which): it can lower `first_seen`, which a
/// duplicate never does (its identity is stored, so `first_seen` is at or before
/// it), and never `last_seen` (its listing's current state is newer). `true` if
/// it changed the row.
pub fn widen(row: &mut EventRow, observed_at: Micros) -> bool {
    if observed_at < row.first_seen {
        row.first_seen = observed_at;
        return true;
    }
    false
}

/// Takes `value` if it is at least as recent as the stored one: messages are
/// applied in partition order, so `>=` makes the later of two equal times win.
fn stamp<V: Clone + PartialEq>(
    field: &mut Option<Stamped<V>>,
    value: Option<&V>,
    observed_at: Micros,
) -> bool {
    let Some(value) = value else {
        return false;
    };
    match field {
        Some(stored) if stored.observed_at > observed_at => false,
        Some(stored) if stored.observed_at == observed_at && stored.value == *value => false,
        _ => {
            *field = Some(Stamped {
                value: value.clone(),
                observed_at,
            });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cents, Currency, ListingKey, Seat};

    fn observation(at: Micros, name: Option<&str>, venue: Option<&str>) -> Observation {
        Observation {
            listing: ListingKey {
                event_id: "ev".into(),
                seat: Seat {
                    section: "A".into(),
                    row: String::new(),
                    seat: String::new(),
                    source: "s".into(),
                },
            },
            event_name: name.map(Into::into),
            venue: venue.map(Into::into),
            event_date: None,
            price: Cents(100),
            currency: Currency::USD,
            available: true,
            observed_at: at,
        }
    }

    #[test]
    fn fields_come_from_the_most_recent_carrier() {
        let mut row = new_row(&observation(20, Some("Late"), None));
        assert_eq!(row.display_name(), "Late");
        assert!(apply(&mut row, &observation(10, Some("Early"), Some("Hall"))));
        assert_eq!(row.display_name(), "Late", "older name loses");
        assert_eq!(row.venue.as_ref().map(|v| v.value.as_str()), Some("Hall"));
        assert_eq!((row.first_seen, row.last_seen), (10, 20));
        assert!(apply(&mut row, &observation(30, None, None)));
        assert_eq!(row.display_name(), "Late", "absent field keeps the stored one");
        assert_eq!(row.last_seen, 30);
    }

    #[test]
    fn equal_times_go_to_the_later_message() {
        let mut row = new_row(&observation(20, Some("First"), None));
        assert!(apply(&mut row, &observation(20, Some("Second"), None)));
        assert_eq!(row.display_name(), "Second");
        assert!(!apply(&mut row, &observation(20, Some("Second"), None)));
    }

    #[test]
    fn name_defaults_to_the_event_id() {
        let row = new_row(&observation(1, None, None));
        assert_eq!(row.display_name(), "ev");
        assert_eq!(row.event_name, None);
    }
}
