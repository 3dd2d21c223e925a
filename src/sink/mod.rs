//! Sinks: everything the job writes.
//!
//! - `postgres`: the writer thread, one transaction per batch of epochs (rows,
//!   alerts, outbox, offsets).
//! - `publisher`: the outbox publisher (alerts topic, dead-letter topic).
//! - `delivery`: the producer settings the publisher relies on, and which
//!   delivery failures are final.
//! - `recovery`: after a crash, which outbox rows already reached their topic.
//! - `encode`: the wire format of outbox messages.
//!
//! This module holds the timely side: the `PostgresSink` operator on worker 0
//! gathers each epoch's records once the epoch is complete, hands them to the
//! writer, and holds the epoch's capability until the writer reports it
//! committed. A probe on its output therefore tells every worker, in every
//! process, which epochs are durable.

pub mod delivery;
pub mod encode;
pub mod postgres;
pub mod publisher;
pub mod recovery;

use std::collections::BTreeMap;
use std::sync::mpsc;

use conscope_dataflows::model::SinkRecord;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator};
use timely::dataflow::Stream;
use timely::scheduling::SyncActivator;

use postgres::EpochBatch;

/// Starts the writer for the sink operator on worker 0: given the operator's
/// activator, returns where to send batches and where committed epochs come back.
pub type WriterStarter = Box<dyn FnOnce(SyncActivator) -> (mpsc::Sender<EpochBatch>, mpsc::Receiver<u64>)>;

pub fn postgres_sink<'scope>(
    records: Stream<'scope, u64, Vec<SinkRecord>>,
    writer: Option<WriterStarter>,
) -> Stream<'scope, u64, Vec<()>> {
    let scope = records.scope();
    // Everything goes to worker 0: one writer commits rows and offsets together.
    records.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_: &SinkRecord| 0),
        "PostgresSink",
        move |initial, info| {
            drop(initial);
            let channels =
                writer.map(|start| start(scope.worker().sync_activator_for(info.address.to_vec())));
            let mut stash: BTreeMap<u64, (Capability<u64>, Vec<SinkRecord>)> = BTreeMap::new();
            let mut awaiting_commit: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|capability, batches| {
                    let Some(capability) = capability.retain_least(output.output_index()) else {
                        return;
                    };
                    let entry = stash
                        .entry(*capability.time())
                        .or_insert_with(|| (capability, Vec::new()));
                    for batch in batches {
                        entry.1.append(batch);
                    }
                });
                let Some((batches, committed)) = channels.as_ref() else {
                    return;
                };
                while let Some(entry) = stash.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (time, (capability, records)) = entry.remove_entry();
                    if batches.send(EpochBatch { epoch: time, records }).is_err() {
                        tracing::error!("the Postgres writer stopped");
                        return;
                    }
                    awaiting_commit.insert(time, capability);
                }
                while let Ok(epoch) = committed.try_recv() {
                    awaiting_commit.remove(&epoch);
                }
            }
        },
    )
}
