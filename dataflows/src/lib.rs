//! conscope's pure dataflow: every stage is a function from stream to stream, with
//! no IO, tested with in-memory inputs.
//!
//! ```text
//! RawMessage ─► parse ─► ProcessorInput ─► exchange(event_id) ─► processor ─┬─► SinkRecord
//!                 └─► Rejected                       (dedup → listing_state  │
//!                                                     → event_state → drops  │
//!                                                     → rules, per message)  │
//!                     current listings (differential collection, per epoch) ◄┘
//!                        └─► summaries: reduce by (event, currency) and by
//!                            (event, section, currency) ─► SinkRecord
//! ```

pub mod alert_id;
pub mod dedup;
pub mod drops;
pub mod event_state;
pub mod ingest;
pub mod listing_state;
pub mod model;
pub mod parse;
pub mod processor;
pub mod rules;
pub mod summaries;
