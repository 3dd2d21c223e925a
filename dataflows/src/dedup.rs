//! Dedup stage: whether an observation's identity (listing + `observed_at`) is
//! stored already, decided from its listing's current state alone, so the job
//! keeps no set of seen identities and its state follows the listings, not the
//! history.
//!
//! The current state of a listing is its stored observation with the greatest
//! `observed_at`, and observations are applied in partition order, so:
//! - a listing without a current state has no stored observation: *new*;
//! - newer than the current state: no stored identity can match: *new*;
//! - at the current state's time: that identity is stored: *duplicate*;
//! - older: it changes no listing, rule or alert either way (SPEC §2: stale),
//!   and whether its identity is stored only the history knows. The processor
//!   hands it to the writer as a `SinkRecord::MaybeStale` row, which inserts such
//!   rows in partition order with `ON CONFLICT DO NOTHING` on the identity (first
//!   one wins), counts what it skipped as duplicates and the rest as stale, and
//!   applies the event fields of the stale ones.

use crate::model::Micros;

/// What an observation is, given its listing's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not stored yet: history, and it becomes the listing's current state.
    New,
    /// The listing's current state again: counted, changes nothing.
    Duplicate,
    /// Older than the current state: stale or a duplicate, decided where the
    /// history is written.
    Older,
}

/// Classifies an observation at `observed_at` of a listing whose current state
/// was observed at `current` (`None`: no state yet).
pub fn classify(current: Option<Micros>, observed_at: Micros) -> Verdict {
    match current {
        None => Verdict::New,
        Some(current) if observed_at > current => Verdict::New,
        Some(current) if observed_at == current => Verdict::Duplicate,
        Some(_) => Verdict::Older,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_time_decides() {
        assert_eq!(classify(None, 10), Verdict::New);
        assert_eq!(classify(Some(10), 11), Verdict::New);
        assert_eq!(classify(Some(10), 10), Verdict::Duplicate);
        assert_eq!(classify(Some(10), 9), Verdict::Older);
    }
}
