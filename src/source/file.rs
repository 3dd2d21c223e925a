//! `--input-file`: JSON lines read as partition 0 of a pseudo-topic named
//! `file:<path>`, line number = offset, with the same semantics as a topic:
//! offsets stored with the rows, restart resumes after the last committed line,
//! rejects go to the dead-letter topic. Read by worker 0; the file is bounded, so
//! the source ends at the end of the file.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use conscope_dataflows::model::{Position, RawMessage, SourceEvent};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use super::{current_epoch, InFlight, SourceSettings};

pub struct OpenFile {
    lines: std::io::Split<BufReader<File>>,
    next: i64,
}

impl OpenFile {
    /// Opens `path` and skips the `start` lines already committed.
    pub fn open(path: &Path, start: i64) -> anyhow::Result<OpenFile> {
        let file =
            File::open(path).with_context(|| format!("cannot open --input-file {}", path.display()))?;
        let mut lines = BufReader::with_capacity(1 << 20, file).split(b'\n');
        for _ in 0..start {
            if lines.next().transpose()?.is_none() {
                break;
            }
        }
        Ok(OpenFile { lines, next: start })
    }
}

pub fn file_source<'scope>(
    scope: Scope<'scope, u64>,
    file: Option<OpenFile>,
    settings: SourceSettings,
    committed: ProbeHandle<u64>,
) -> Stream<'scope, u64, Vec<SourceEvent>> {
    source(scope, "FileSource", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut capability = file.as_ref().map(|_| capability);
        let mut file = file;
        let mut in_flight = InFlight::default();
        let mut reported = -1i64;
        move |output| {
            let (Some(cap), Some(open)) = (capability.as_mut(), file.as_mut()) else {
                return;
            };
            let mut finished = false;
            let epoch = current_epoch(settings.epoch_ms).max(*cap.time());
            if epoch > *cap.time() {
                if reported != open.next {
                    output.session(&*cap).give(SourceEvent::Progress(Position {
                        partition: 0,
                        offset: open.next,
                    }));
                    reported = open.next;
                }
                in_flight.close(*cap.time());
                cap.downgrade(&epoch);
            }
            if in_flight.full(&committed, settings.max_in_flight) {
                activator.activate_after(Duration::from_millis(5));
                return;
            }
            let mut session = output.session(&*cap);
            for _ in 0..settings.max_batch {
                match open.lines.next() {
                    Some(Ok(mut line)) => {
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                        session.give(SourceEvent::Message(RawMessage {
                            position: Position {
                                partition: 0,
                                offset: open.next,
                            },
                            key: None,
                            payload: Some(line),
                        }));
                        open.next += 1;
                        in_flight.read(1);
                    }
                    Some(Err(error)) => {
                        tracing::error!(%error, line = open.next, "cannot read --input-file; stopping at this line");
                        finished = true;
                        break;
                    }
                    None => {
                        finished = true;
                        break;
                    }
                }
            }
            if finished {
                if reported != open.next {
                    session.give(SourceEvent::Progress(Position {
                        partition: 0,
                        offset: open.next,
                    }));
                }
                drop(session);
                tracing::info!(lines = open.next, "input file read to its end");
                capability = None;
                file = None;
                return;
            }
            drop(session);
            activator.activate();
        }
    })
}
