//! Which consumer offsets may be committed: an alert's offset is passed only
//! once every delivery of it is final (a `notify_deliveries` row committed), and
//! those of every alert before it in its partition. Alerts that need nothing
//! (not routed, already delivered, malformed) are final at once.
//!
//! Pure bookkeeping, fed by the consumer loop; touches nothing.

use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
struct Partition {
    /// Offset -> deliveries not yet final.
    pending: BTreeMap<i64, usize>,
    /// One past the highest offset seen.
    next: i64,
    /// What was last handed out for commit.
    committed: i64,
}

#[derive(Default)]
pub struct Tracker {
    partitions: HashMap<i32, Partition>,
    in_flight: usize,
}

impl Tracker {
    /// An alert read at `offset`, with `deliveries` still to make.
    pub fn add(&mut self, partition: i32, offset: i64, deliveries: usize) {
        let part = self.partitions.entry(partition).or_default();
        part.next = part.next.max(offset + 1);
        if deliveries > 0 {
            part.pending.insert(offset, deliveries);
            self.in_flight += 1;
        }
    }

    /// One delivery of the alert at `offset` is final.
    pub fn done(&mut self, partition: i32, offset: i64) {
        let Some(part) = self.partitions.get_mut(&partition) else {
            return;
        };
        if let Some(left) = part.pending.get_mut(&offset) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                part.pending.remove(&offset);
                self.in_flight -= 1;
            }
        }
    }

    /// Whether the alert at `offset` still has deliveries to make.
    pub fn is_pending(&self, partition: i32, offset: i64) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|part| part.pending.contains_key(&offset))
    }

    /// Alerts with deliveries still to make.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Partitions whose committable offset moved, with that offset (the next
    /// one to read).
    pub fn advanced(&mut self) -> Vec<(i32, i64)> {
        let mut moved = Vec::new();
        for (partition, part) in &mut self.partitions {
            let point = part.pending.keys().next().copied().unwrap_or(part.next);
            if point > part.committed {
                part.committed = point;
                moved.push((*partition, point));
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_wait_for_every_delivery_before_them() {
        let mut tracker = Tracker::default();
        tracker.add(0, 10, 2);
        tracker.add(0, 11, 0);
        tracker.add(0, 12, 1);
        tracker.add(1, 5, 0);
        let mut moved = tracker.advanced();
        moved.sort();
        assert_eq!(moved, [(0, 10), (1, 6)]);
        tracker.done(0, 12);
        assert_eq!(tracker.advanced(), []);
        tracker.done(0, 10);
        assert_eq!(tracker.in_flight(), 1);
        tracker.done(0, 10);
        assert_eq!(tracker.advanced(), [(0, 13)]);
        assert_eq!(tracker.in_flight(), 0);
    }
}
