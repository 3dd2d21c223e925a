//! Consumer lag of the input partitions this process owns: per partition, the
//! high watermark minus the durable offset (the next offset PostgreSQL holds).
//! Pure bookkeeping for [`crate::metrics`]; touches nothing else.
//!
//! # Why every process knows its durable offsets
//! Only worker 0 of process 0 writes to PostgreSQL, so no other process sees a
//! commit. None needs to: each Kafka source reports its partitions' next offsets
//! as `Progress` at the epoch they close ([`Lag::reported`]), and the
//! `PostgresSink` holds each epoch's capability until the transaction holding
//! that epoch's rows and offsets has committed. Timely's progress tracking is
//! global, so the sink's probe, which every worker of every process holds, passes
//! epoch `e` only once `e` is durable everywhere: the offsets a process reported
//! at epochs below the probe's frontier are exactly the offsets stored in
//! `kafka_offsets` for its partitions ([`Lag::durable_below`], called by the
//! workers with that frontier). No message between processes and no database
//! read is added, and the figure can never run ahead of the commit.
//!
//! It rests on the sink releasing an epoch's capability only after its commit:
//! the sink drops capabilities otherwise only when the writer has stopped, which
//! ends the process.
//!
//! A partition's lag starts from its stored offset and the high watermark read
//! when the source opened it; librdkafka's statistics keep the high watermark
//! current (for a `read_committed` consumer, the last stable offset).

use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Partition {
    /// The next offset PostgreSQL holds for this partition.
    durable: i64,
    /// The last high watermark seen, once one is known.
    high: Option<i64>,
    /// Where this run started reading, and the high watermark then (if known):
    /// the span a bounded replay covers.
    start: i64,
    end: Option<i64>,
}

/// Owned partitions, their durable offsets and high watermarks.
#[derive(Debug, Default)]
pub struct Lag {
    partitions: BTreeMap<i32, Partition>,
    /// `(partition, next offset)` reported by the sources, by epoch, not yet durable.
    pending: BTreeMap<u64, Vec<(i32, i64)>>,
}

impl Lag {
    /// A partition this process reads from now on, starting at `durable` (its
    /// stored offset, or where it starts when none is stored: nothing below is
    /// ever read), with the high watermark if known.
    pub fn own(&mut self, partition: i32, durable: i64, high: Option<i64>) {
        let entry = self.partitions.entry(partition).or_insert(Partition {
            durable,
            high,
            start: durable,
            end: high,
        });
        entry.durable = entry.durable.max(durable);
        if high.is_some() {
            entry.high = high;
        }
    }

    /// A newer high watermark of `partition`; ignored for partitions this
    /// process does not own (librdkafka's statistics may list those too).
    pub fn set_high(&mut self, partition: i32, high: i64) {
        if let Some(entry) = self.partitions.get_mut(&partition) {
            entry.high = Some(high);
        }
    }

    /// A source reported `next` as `partition`'s next offset at `epoch`: durable
    /// once `epoch` is.
    pub fn reported(&mut self, epoch: u64, partition: i32, next: i64) {
        self.pending.entry(epoch).or_default().push((partition, next));
    }

    /// Every epoch below `frontier` is durable (`None`: every epoch). Returns
    /// the offsets that became durable, as `(partition, next)`.
    pub fn durable_below(&mut self, frontier: Option<u64>) -> Vec<(i32, i64)> {
        let mut done = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if frontier.is_some_and(|frontier| *entry.key() >= frontier) {
                break;
            }
            for (partition, next) in entry.remove() {
                let owned = self.partitions.entry(partition).or_default();
                owned.durable = owned.durable.max(next);
                done.push((partition, next));
            }
        }
        done
    }

    /// Lag per owned partition whose high watermark is known.
    pub fn by_partition(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions.iter().filter_map(|(partition, state)| {
            state.high.map(|high| (*partition, (high - state.durable).max(0)))
        })
    }

    /// Total lag over the owned partitions; `None` until a high watermark is known.
    pub fn total(&self) -> Option<i64> {
        self.by_partition()
            .map(|(_, lag)| lag)
            .reduce(|sum, lag| sum + lag)
    }

    /// Messages committed since start and messages between the start offsets and
    /// the high watermarks seen at start, over the owned partitions: how far a
    /// bounded replay has come.
    pub fn progress(&self) -> (u64, u64) {
        self.partitions
            .values()
            .filter_map(|state| {
                let end = state.end?;
                let done = (state.durable.min(end) - state.start).max(0);
                Some((done as u64, (end - state.start).max(0) as u64))
            })
            .fold((0, 0), |(done, total), (d, t)| (done + d, total + t))
    }

    /// The partitions this process owns.
    pub fn owned(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_as_durable_once_their_epoch_is() {
        let mut lag = Lag::default();
        assert_eq!(lag.total(), None);
        lag.own(0, 10, Some(100));
        lag.own(2, 0, None);
        assert_eq!(lag.total(), Some(90));
        lag.reported(5, 0, 40);
        lag.reported(5, 2, 7);
        lag.reported(6, 0, 70);
        // Epoch 5 not below the frontier yet: nothing moved.
        assert!(lag.durable_below(Some(5)).is_empty());
        assert_eq!(lag.total(), Some(90));
        assert_eq!(lag.durable_below(Some(6)), vec![(0, 40), (2, 7)]);
        assert_eq!(lag.by_partition().collect::<Vec<_>>(), vec![(0, 60)]);
        lag.set_high(2, 9);
        lag.set_high(3, 1_000); // not owned: ignored
        assert_eq!(lag.by_partition().collect::<Vec<_>>(), vec![(0, 60), (2, 2)]);
        assert_eq!(lag.durable_below(None), vec![(0, 70)]);
        assert_eq!(lag.total(), Some(32));
        // A stale high watermark below the durable offset is no negative lag.
        lag.set_high(0, 50);
        assert_eq!(lag.by_partition().collect::<Vec<_>>(), vec![(0, 0), (2, 2)]);
        assert_eq!(lag.owned().collect::<Vec<_>>(), vec![0, 2]);
        // From 10 to 70 of the 90 seen at start on partition 0; partition 2 had no
        // high watermark at start.
        assert_eq!(lag.progress(), (60, 90));
    }
}
