//! The exact comparison crash and fault tests end with: what a job left behind
//! (every output table, the alerts topic, the dead-letter topic) against an
//! uninterrupted run of the same topic, counting what is missing and what is
//! doubled rather than stopping at the first difference. Dead letters are
//! compared whole (input position, reason, key, value).
//!
//! Reads the job's database and its two output topics; writes nothing.

use std::collections::BTreeMap;
use std::fmt;

use crate::{dump, query_strings, read_all_at, Job};

/// Everything a job produced, in comparable form.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Per table, its rows as strings, sorted (wall-clock columns left out).
    pub tables: BTreeMap<&'static str, Vec<String>>,
    /// How often each `alert_id` is on the alerts topic.
    pub alerts: BTreeMap<String, usize>,
    /// How often each dead letter is on the dead-letter topic.
    pub dead_letters: BTreeMap<DeadLetter, usize>,
    /// Messages on the alerts topic that are not an alert with an id.
    pub unreadable_alerts: usize,
}

impl Outputs {
    /// Reads `job`'s tables and topics (on the broker at `brokers`).
    pub fn collect(job: &Job, brokers: &str) -> Outputs {
        let mut tables = dump(&job.database_url);
        // The arming state the last commit left: a function of the input too.
        tables.insert(
            "rule_state",
            query_strings(
                &job.database_url,
                "SELECT concat_ws('|', rule_id, below, definition) FROM rule_state ORDER BY rule_id",
            ),
        );
        let mut alerts = BTreeMap::new();
        let mut unreadable_alerts = 0;
        for message in read_all_at(brokers, &job.alerts) {
            let id =
                serde_json::from_slice::<serde_json::Value>(message.value.as_deref().unwrap_or_default())
                    .ok()
                    .and_then(|value| value["alert_id"].as_str().map(str::to_owned));
            match id {
                Some(id) => *alerts.entry(id).or_insert(0) += 1,
                None => unreadable_alerts += 1,
            }
        }
        let mut dead_letters = BTreeMap::new();
        for message in read_all_at(brokers, &job.dlq) {
            let header = |name: &str| message.headers.get(name).cloned().unwrap_or_default();
            let letter = DeadLetter {
                partition: header("conscope.partition"),
                offset: header("conscope.offset"),
                error: header("conscope.error"),
                key: message.key,
                value: message.value,
            };
            *dead_letters.entry(letter).or_insert(0) += 1;
        }
        Outputs {
            tables,
            alerts,
            dead_letters,
            unreadable_alerts,
        }
    }

    /// Rows, alert ids and dead letters an uninterrupted run must show, for the
    /// replay to say something: each output holds something.
    pub fn assert_meaningful(&self) {
        for (table, rows) in &self.tables {
            assert!(!rows.is_empty(), "the reference run left {table} empty");
        }
        assert!(!self.alerts.is_empty(), "the reference run published no alert");
        assert!(
            !self.dead_letters.is_empty(),
            "the reference run published no dead letter"
        );
    }
}

/// A dead letter: the input position it names (`conscope.partition`,
/// `conscope.offset`), its reason, key and value. Ordered by position; shown by
/// position and reason only (a value may be 64 KiB).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadLetter {
    pub partition: String,
    pub offset: String,
    pub error: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} ({})", self.partition, self.offset, self.error)
    }
}

/// Missing and unexpected counts of one output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// In the reference, not (or less often) in the run.
    pub missing: usize,
    /// In the run more often than in the reference (doubled, or never expected).
    pub extra: usize,
}

impl Count {
    fn add(&mut self, other: Count) {
        self.missing += other.missing;
        self.extra += other.extra;
    }
}

/// How a run differs from the reference.
#[derive(Clone, Debug, Default)]
pub struct Diff {
    /// Rows of the reference's tables, its alert ids and dead letters: what was compared.
    pub compared: usize,
    /// Table rows, summed over the tables (a changed row is one missing and one extra).
    pub tables: Count,
    /// Alert ids on the alerts topic.
    pub alerts: Count,
    /// Dead letters (a changed one is one missing and one extra).
    pub dead_letters: Count,
    /// One line per output that differs, with examples.
    pub details: Vec<String>,
}

impl Diff {
    pub fn is_exact(&self) -> bool {
        self.details.is_empty()
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_exact() {
            return write!(f, "exact ({} compared)", self.compared);
        }
        write!(f, "{}", self.details.join("; "))
    }
}

/// Compares `got` with the `expected` outputs of an uninterrupted run.
pub fn compare(expected: &Outputs, got: &Outputs) -> Diff {
    let mut diff = Diff::default();
    for (table, want) in &expected.tables {
        let have = got.tables.get(table).map(Vec::as_slice).unwrap_or_default();
        let (count, examples) = multiset_diff(&counts(want.iter()), &counts(have.iter()));
        diff.compared += want.len();
        diff.tables.add(count);
        note(&mut diff.details, table, count, examples);
    }
    let (count, examples) = multiset_diff(&expected.alerts, &got.alerts);
    diff.compared += expected.alerts.len();
    diff.alerts = count;
    note(&mut diff.details, "alerts topic", count, examples);
    if got.unreadable_alerts > 0 {
        diff.details.push(format!(
            "alerts topic: {} messages without an alert_id",
            got.unreadable_alerts
        ));
    }
    let (count, examples) = multiset_diff(&expected.dead_letters, &got.dead_letters);
    diff.compared += expected.dead_letters.len();
    diff.dead_letters = count;
    note(&mut diff.details, "dead-letter topic", count, examples);
    diff
}

fn counts<'a, K: Ord + Clone + 'a>(items: impl Iterator<Item = &'a K>) -> BTreeMap<K, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item.clone()).or_insert(0) += 1;
    }
    counts
}

/// Missing and extra occurrences of `got` against `want`, and a few examples of each.
fn multiset_diff<K: Ord + fmt::Debug>(
    want: &BTreeMap<K, usize>,
    got: &BTreeMap<K, usize>,
) -> (Count, Vec<String>) {
    let mut count = Count::default();
    let mut examples = Vec::new();
    for (key, &wanted) in want {
        let have = got.get(key).copied().unwrap_or(0);
        if have < wanted {
            count.missing += wanted - have;
            if examples.len() < 3 {
                examples.push(format!("missing {key:?}"));
            }
        }
    }
    for (key, &have) in got {
        let wanted = want.get(key).copied().unwrap_or(0);
        if have > wanted {
            count.extra += have - wanted;
            if examples.len() < 6 {
                examples.push(format!("extra {key:?} x{}", have - wanted));
            }
        }
    }
    (count, examples)
}

fn note(details: &mut Vec<String>, what: &str, count: Count, examples: Vec<String>) {
    if count != Count::default() {
        details.push(format!(
            "{what}: {} missing, {} extra ({})",
            count.missing,
            count.extra,
            examples.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(rows: &[&str], alerts: &[(&str, usize)]) -> Outputs {
        let mut tables = BTreeMap::new();
        tables.insert("listings", rows.iter().map(|row| (*row).to_owned()).collect());
        Outputs {
            tables,
            alerts: alerts.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect(),
            ..Outputs::default()
        }
    }

    #[test]
    fn counts_missing_changed_and_doubled() {
        let expected = outputs(&["a|1", "b|2", "c|3"], &[("x", 1), ("y", 1)]);
        let same = compare(&expected, &expected);
        assert!(same.is_exact(), "{same}");
        assert_eq!(same.compared, 5);

        // "b" changed, "c" lost; alert "x" published twice, "y" never, "z" unexpected.
        let got = outputs(&["a|1", "b|9"], &[("x", 2), ("z", 1)]);
        let diff = compare(&expected, &got);
        assert!(!diff.is_exact());
        assert_eq!(diff.tables, Count { missing: 2, extra: 1 });
        assert_eq!(diff.alerts, Count { missing: 1, extra: 2 });
        assert_eq!(diff.dead_letters, Count::default());
        assert_eq!(diff.details.len(), 2, "{diff}");
    }
}
