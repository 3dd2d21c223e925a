//! Building processor inputs for the dataflow tests, and feeding them in.

#![allow(dead_code)]

use conscope_dataflows::model::{
    Cents, Currency, ListingKey, ListingRow, Micros, Observation, Position, ProcessorInput, Seat,
};
use timely::dataflow::InputHandleVec;
use timely::worker::Worker;

/// Sends `epochs` (epoch `i` at time `i`) into `input`, each epoch's records dealt
/// round-robin to the workers, so they reach the processor from several places in
/// no particular order; then runs the dataflow to completion.
pub fn feed_and_finish(
    worker: &mut Worker,
    mut input: InputHandleVec<u64, ProcessorInput>,
    epochs: &[Vec<ProcessorInput>],
) {
    let (index, peers) = (worker.index(), worker.peers());
    for (time, records) in epochs.iter().enumerate() {
        input.advance_to(time as u64);
        for (i, record) in records.iter().enumerate() {
            if i % peers == index {
                input.send(record.clone());
            }
        }
    }
    input.close();
    while worker.step() {}
}

/// An observation of event `ev`, section `A`, row `1`, source `s`, USD, available.
#[derive(Clone)]
pub struct Obs(pub Observation);

pub fn obs(seat: &str, price: i64, observed_at: Micros) -> Obs {
    Obs(Observation {
        listing: ListingKey {
            event_id: "ev".into(),
            seat: Seat {
                section: "A".into(),
                row: "1".into(),
                seat: seat.into(),
                source: "s".into(),
            },
        },
        event_name: None,
        venue: None,
        event_date: None,
        price: Cents(price),
        currency: Currency::USD,
        available: true,
        observed_at,
    })
}

impl Obs {
    pub fn event(mut self, event_id: &str) -> Obs {
        self.0.listing.event_id = event_id.into();
        self
    }
    pub fn section(mut self, section: &str) -> Obs {
        self.0.listing.seat.section = section.into();
        self
    }
    pub fn currency(mut self, currency: Currency) -> Obs {
        self.0.currency = currency;
        self
    }
    pub fn sold(mut self) -> Obs {
        self.0.available = false;
        self
    }
    pub fn named(mut self, name: &str) -> Obs {
        self.0.event_name = Some(name.into());
        self
    }
    pub fn key(&self) -> ListingKey {
        self.0.listing.clone()
    }
    pub fn row(&self) -> ListingRow {
        ListingRow {
            listing: self.0.listing.clone(),
            price: self.0.price,
            currency: self.0.currency,
            available: self.0.available,
            observed_at: self.0.observed_at,
        }
    }
}

/// Hands out increasing offsets of partition 0, so the messages of a test are in
/// partition order in the order they are written.
#[derive(Default)]
pub struct Feed {
    offset: i64,
}

impl Feed {
    pub fn msg(&mut self, obs: &Obs) -> ProcessorInput {
        self.offset += 1;
        ProcessorInput::Observation {
            position: Position {
                partition: 0,
                offset: self.offset,
            },
            observation: obs.0.clone(),
        }
    }

    pub fn epoch(&mut self, observations: &[Obs]) -> Vec<ProcessorInput> {
        observations.iter().map(|obs| self.msg(obs)).collect()
    }
}
