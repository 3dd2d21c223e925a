//! Where the writer's history rows may go: below the pruned boundary nowhere,
//! and otherwise into the month partition of `price_history` their
//! `observed_at` falls in (migration 0010), which must exist first.
//!
//! Touches `history_retention` (read `FOR SHARE`) and, through
//! `price_history_ensure_months`, the partitions of `price_history`; nothing
//! else.
//!
//! # Order within a commit, and locks
//! Before it touches `price_history` a commit reads `pruned_before` `FOR SHARE`
//! ([`pruned_before`]); rows observed before it are not written and count as
//! stale. `conscope history prune` updates that row before it drops
//! partitions (see `crate::history`), so a commit either ends before a prune's
//! drops or sees its boundary: no commit writes into, or makes again, a month
//! being dropped. Then [`ensure_months`] makes the partitions of the remaining
//! rows' months exist, in the same transaction: it attaches new ones under
//! SHARE UPDATE EXCLUSIVE on `price_history`, which dashboard reads and the
//! COPY do not wait for, and which is held until the commit ends (a second
//! creator, or a prune, waits for it).
//!
//! The months known to exist ([`KnownMonths`]) are learnt from committed
//! transactions only, so a rolled-back creation is never taken for one that
//! exists; a month dropped behind the writer's back (by hand) makes its
//! commit fail for good once, and the writer then forgets what it knew and
//! tries again before it looks for offending messages.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use conscope_dataflows::model::Micros;
use tokio_postgres::Transaction;

use crate::sink::write_error::WriteError;

/// A UTC month: `year * 12 + month0`.
pub(crate) type Month = i32;

/// The month `observed_at` falls in.
pub(super) fn month_of(observed_at: Micros) -> Month {
    let time = DateTime::from_timestamp_micros(observed_at).unwrap_or_default();
    time.year() * 12 + time.month0() as i32
}

/// The first instant of `month`.
fn month_start(month: Month) -> DateTime<Utc> {
    let (year, month0) = (month.div_euclid(12), month.rem_euclid(12));
    Utc.with_ymd_and_hms(year, month0 as u32 + 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// The months whose partition a committed transaction of this writer made or
/// found: no need to ask again.
#[derive(Debug, Default)]
pub(crate) struct KnownMonths(BTreeSet<Month>);

impl KnownMonths {
    /// After a commit: `months` exist.
    pub(crate) fn learn(&mut self, months: &[Month]) {
        self.0.extend(months.iter().copied());
    }

    /// Whether the month of `observed_at` is known to exist.
    pub(crate) fn knows(&self, observed_at: Micros) -> bool {
        self.0.contains(&month_of(observed_at))
    }

    /// Forgets everything; whether it knew anything.
    pub(crate) fn forget(&mut self) -> bool {
        let knew = !self.0.is_empty();
        self.0.clear();
        knew
    }
}

/// `history_retention.pruned_before`, locked `FOR SHARE` until the commit ends
/// (see the module doc); `None` when nothing was pruned.
pub(super) async fn pruned_before(transaction: &Transaction<'_>) -> Result<Option<Micros>, WriteError> {
    let row = transaction
        .query_opt(
            "SELECT pruned_before FROM history_retention WHERE id = 1 FOR SHARE",
            &[],
        )
        .await
        .map_err(WriteError::at("cannot read history_retention"))?;
    Ok(row
        .and_then(|row| row.get::<_, Option<DateTime<Utc>>>(0))
        .map(|before| before.timestamp_micros()))
}

/// Makes the partitions of the months of `observed` exist; returns the months
/// it asked for (to learn once the transaction commits).
pub(super) async fn ensure_months(
    transaction: &Transaction<'_>,
    known: &KnownMonths,
    observed: impl IntoIterator<Item = Micros>,
) -> Result<Vec<Month>, WriteError> {
    // Rows come in time order mostly: skip the month just seen cheaply.
    let mut months = BTreeSet::new();
    let mut last = None;
    for at in observed {
        let month = month_of(at);
        if last != Some(month) {
            last = Some(month);
            if !known.0.contains(&month) {
                months.insert(month);
            }
        }
    }
    if months.is_empty() {
        return Ok(Vec::new());
    }
    let starts: Vec<DateTime<Utc>> = months.iter().copied().map(month_start).collect();
    transaction
        .execute("SELECT price_history_ensure_months($1)", &[&starts])
        .await
        .map_err(WriteError::at("cannot create the partitions of price_history"))?;
    Ok(months.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(text: &str) -> Micros {
        DateTime::parse_from_rfc3339(text).unwrap().timestamp_micros()
    }

    #[test]
    fn months_are_utc_months() {
        let march = month_of(micros("2025-03-01T00:00:00Z"));
        assert_eq!(march, 2025 * 12 + 2);
        assert_eq!(month_of(micros("2025-03-31T23:59:59.999999Z")), march);
        assert_eq!(
            month_of(micros("2025-04-01T00:00:00+02:00")),
            march,
            "still March in UTC"
        );
        assert_eq!(month_of(micros("2025-02-28T23:59:59.999999Z")), march - 1);
        assert_eq!(
            month_start(march),
            DateTime::parse_from_rfc3339("2025-03-01T00:00:00Z").unwrap()
        );
        for text in ["2000-01-01T00:00:00Z", "2100-12-31T23:59:59Z"] {
            let month = month_of(micros(text));
            assert!(month_start(month).timestamp_micros() <= micros(text));
            assert!(micros(text) < month_start(month + 1).timestamp_micros());
        }
    }

    #[test]
    fn known_months_are_learnt_and_forgotten() {
        let mut known = KnownMonths::default();
        assert!(!known.forget());
        known.learn(&[5, 6]);
        assert!(known.0.contains(&5));
        assert!(known.forget());
        assert!(known.0.is_empty());
    }
}
