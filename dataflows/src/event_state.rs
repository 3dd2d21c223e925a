//! Event state stage: the `events` row of one event. Each of `event_name`, `venue`
//! and `event_date` comes from the carrier with the greatest `(observed_at,
//! position)` ([`Stamped::order`]): the most recent observation that carried
//! it, ties going to the later message; `first_seen`/`last_seen` span all
//! stored observations. An observation older than its listing's current state
//! may be stale or a duplicate, which only the stored history tells: its fields
//! are applied by the Postgres writer once it has inserted the row (and the
//! writer merges each field by the same order, so the rows of this stage never
//! undo that, whichever of the two is written first); here it can only lower
//! `first_seen` ([`widen`]).

use crate::model::{EventRow, Micros, Observation, Position, Stamped};

/// The row of an event first seen in `observation`, the message at `position`.
pub fn new_row(observation: &Observation, position: Position) -> EventRow {
    let mut row = EventRow {
        event_id: observation.listing.event_id.clone(),
        event_name: None,
        venue: None,
        event_date: None,
        first_seen: observation.observed_at,
        last_seen: observation.observed_at,
    };
    apply(&mut row, observation, position);
    row
}

/// Folds a stored (non-duplicate) observation, the message at `position`, into
/// the row; `true` if it changed.
pub fn apply(row: &mut EventRow, observation: &Observation, position: Position) -> bool {
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
    let position = Some(position);
    changed |= stamp(&mut row.event_name, &observation.event_name, at, position);
    changed |= stamp(&mut row.venue, &observation.venue, at, position);
    changed |= stamp(&mut row.event_date, &observation.event_date, at, position);
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

/// Takes `value`, carried at `observed_at` by the message at `position`, if
/// that carrier comes after the stored one ([`Stamped::order`]), even with an
/// equal value: the writer compares positions too, so the stored carrier must
/// be the true winner, or a stale carrier between the two (applied by the
/// writer, never seen here) would win over the later message.
fn stamp<V: Clone>(
    field: &mut Option<Stamped<V>>,
    value: &Option<V>,
    observed_at: Micros,
    position: Option<Position>,
) -> bool {
    let Some(value) = value else {
        return false;
    };
    if field
        .as_ref()
        .is_some_and(|stored| stored.order() >= (observed_at, position))
    {
        return false;
    }
    *field = Some(Stamped {
        value: value.clone(),
        observed_at,
        position,
    });
    true
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

    fn pos(partition: i32, offset: i64) -> Position {
        Position { partition, offset }
    }

    fn name_of(row: &EventRow) -> Option<(&str, Micros, Option<Position>)> {
        row.event_name
            .as_ref()
            .map(|name| (name.value.as_str(), name.observed_at, name.position))
    }

    #[test]
    fn fields_come_from_the_most_recent_carrier() {
        let mut row = new_row(&observation(20, Some("Late"), None), pos(0, 1));
        assert_eq!(row.display_name(), "Late");
        assert!(apply(
            &mut row,
            &observation(10, Some("Early"), Some("Hall")),
            pos(0, 2)
        ));
        assert_eq!(row.display_name(), "Late", "older name loses");
        assert_eq!(row.venue.as_ref().map(|v| v.value.as_str()), Some("Hall"));
        assert_eq!((row.first_seen, row.last_seen), (10, 20));
        assert!(apply(&mut row, &observation(30, None, None), pos(0, 3)));
        assert_eq!(row.display_name(), "Late", "absent field keeps the stored one");
        assert_eq!(row.last_seen, 30);
    }

    #[test]
    fn equal_times_go_to_the_later_message() {
        let mut row = new_row(&observation(20, Some("First"), None), pos(0, 1));
        assert!(apply(&mut row, &observation(20, Some("Second"), None), pos(0, 2)));
        assert_eq!(row.display_name(), "Second");
        assert!(
            !apply(&mut row, &observation(20, Some("Second"), None), pos(0, 2)),
            "the same carrier again changes nothing"
        );
        assert!(
            apply(&mut row, &observation(20, Some("Second"), None), pos(0, 3)),
            "an equal value from a later message moves the position"
        );
        assert_eq!(name_of(&row), Some(("Second", 20, Some(pos(0, 3)))));
    }

    /// The row may hold a value the writer applied from a stale carrier (and
    /// restored from there): an earlier message at the same time loses to it,
    /// a later one wins, whatever order they are applied in.
    #[test]
    fn equal_times_go_to_the_later_message_whichever_is_applied_first() {
        let restored = |position: Option<Position>| EventRow {
            event_id: "ev".into(),
            event_name: Some(Stamped {
                value: "Stale".into(),
                observed_at: 20,
                position,
            }),
            venue: None,
            event_date: None,
            first_seen: 20,
            last_seen: 30,
        };
        let mut row = restored(Some(pos(0, 5)));
        assert!(!apply(
            &mut row,
            &observation(20, Some("Earlier"), None),
            pos(0, 4)
        ));
        assert_eq!(name_of(&row), Some(("Stale", 20, Some(pos(0, 5)))));
        assert!(apply(&mut row, &observation(20, Some("Later"), None), pos(0, 6)));
        assert_eq!(name_of(&row), Some(("Later", 20, Some(pos(0, 6)))));

        // Across partitions the position is a fixed tie-break.
        let mut row = restored(Some(pos(1, 0)));
        assert!(!apply(&mut row, &observation(20, Some("P0"), None), pos(0, 9)));
        let mut row = restored(Some(pos(0, 9)));
        assert!(apply(&mut row, &observation(20, Some("P1"), None), pos(1, 0)));

        // A value stored before positions were loses to any carrier at its time.
        let mut row = restored(None);
        assert!(apply(&mut row, &observation(20, Some("Any"), None), pos(0, 0)));
        assert_eq!(row.display_name(), "Any");
    }

    #[test]
    fn name_defaults_to_the_event_id() {
        let row = new_row(&observation(1, None, None), pos(0, 0));
        assert_eq!(row.display_name(), "ev");
        assert_eq!(row.event_name, None);
    }
}
