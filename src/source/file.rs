//! `--input-file`: JSON lines read as partition 0 of a pseudo-topic named
//! `file:<canonical path>`, line number = offset, with the same semantics as a
//! topic: offsets stored with the rows, restart resumes after the last committed
//! line, rejects go to the dead-letter topic. Read by worker 0; the file is
//! bounded, so the source ends at the end of the file.
//!
//! The name is the canonical path so that `./x.jsonl` and `/abs/x.jsonl` share
//! their stored offsets: otherwise a second name re-reads the file and sends
//! every reject to the dead-letter topic again.
//!
//! Lines are read with the size limit enforced while reading: of a line longer
//! than [`MAX_MESSAGE_BYTES`] only the first `MAX_MESSAGE_BYTES + 1` bytes are
//! kept (what the parser's size rule needs to reject it) and the rest is skipped
//! unbuffered, so a file without newlines is never held in memory whole.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use conscope_dataflows::model::{Position, RawMessage, SourceEvent};
use conscope_dataflows::parse::MAX_MESSAGE_BYTES;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use super::{current_epoch, InFlight, SourceSettings};
use crate::metrics::RateLimited;

#[derive(Debug, thiserror::Error)]
pub enum InputFileError {
    #[error("cannot resolve --input-file {}", path.display())]
    Resolve {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The canonical path of `path` and the pseudo-topic its offsets are stored under.
pub fn input_name(path: &Path) -> Result<(PathBuf, String), InputFileError> {
    let canonical = std::fs::canonicalize(path).map_err(|source| InputFileError::Resolve {
        path: path.to_owned(),
        source,
    })?;
    let name = format!("file:{}", canonical.display());
    Ok((canonical, name))
}

/// A line as read: at most `keep` of its bytes, and its full length.
struct Line {
    kept: Vec<u8>,
    length: usize,
}

/// Reads the next line without its `\n`, keeping at most `keep` bytes of it and
/// skipping the rest without buffering it. `None` at the end of the input.
fn read_line_bounded(reader: &mut impl BufRead, keep: usize) -> io::Result<Option<Line>> {
    let mut line = Line {
        kept: Vec::new(),
        length: 0,
    };
    let mut any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if available.is_empty() {
            return Ok(any.then_some(line));
        }
        any = true;
        let newline = available.iter().position(|byte| *byte == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        let room = keep.saturating_sub(line.kept.len());
        line.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        line.length += chunk.len();
        let used = newline.map_or(available.len(), |at| at + 1);
        reader.consume(used);
        if newline.is_some() {
            return Ok(Some(line));
        }
    }
}

pub struct OpenFile {
    reader: BufReader<File>,
    next: i64,
}

impl OpenFile {
    /// Opens `path` and skips the `start` lines already committed.
    pub fn open(path: &Path, start: i64) -> anyhow::Result<OpenFile> {
        let file =
            File::open(path).with_context(|| format!("cannot open --input-file {}", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        for _ in 0..start {
            // Committed lines are only counted: nothing of them is kept.
            if read_line_bounded(&mut reader, 0)?.is_none() {
                break;
            }
        }
        Ok(OpenFile { reader, next: start })
    }

    /// The next line without its line ending, cut to `MAX_MESSAGE_BYTES + 1`
    /// bytes when longer (with its full length), `None` at the end of the file.
    fn next_line(&mut self) -> Option<io::Result<Line>> {
        let mut line = match read_line_bounded(&mut self.reader, MAX_MESSAGE_BYTES + 1) {
            Ok(line) => line?,
            Err(error) => return Some(Err(error)),
        };
        // A `\r` kept from a cut line is not its ending: dropping it could bring
        // the cut line within the limit.
        if line.length == line.kept.len() && line.kept.last() == Some(&b'\r') {
            line.kept.pop();
            line.length -= 1;
        }
        Some(Ok(line))
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
        let mut oversize_log = RateLimited::new(Duration::from_secs(10));
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
                match open.next_line() {
                    Some(Ok(line)) => {
                        if line.length > line.kept.len() && oversize_log.allow() {
                            // The dead-letter record names the cut size; this names the real one.
                            tracing::warn!(
                                line = open.next,
                                bytes = line.length,
                                limit = MAX_MESSAGE_BYTES,
                                suppressed = oversize_log.suppressed,
                                "--input-file line over the size limit: rejected, read only up to the limit"
                            );
                        }
                        session.give(SourceEvent::Message(RawMessage {
                            position: Position {
                                partition: 0,
                                offset: open.next,
                            },
                            key: None,
                            payload: Some(line.kept),
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use conscope_dataflows::parse::MAX_MESSAGE_BYTES;

    use super::*;

    /// A line over the limit is cut at the limit plus one byte (enough for the
    /// parser's size rule to reject it), never read whole; the next line follows.
    #[test]
    fn a_line_over_the_limit_is_read_only_up_to_it() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b"first\r\n").expect("write");
        file.write_all(&vec![b'x'; 5_000_000]).expect("write");
        file.write_all(b"\nlast\n").expect("write");
        file.flush().expect("flush");

        let mut open = OpenFile::open(file.path(), 0).expect("open");
        let line = |open: &mut OpenFile| open.next_line().expect("a line").expect("readable").kept;
        assert_eq!(line(&mut open), b"first");
        let long = line(&mut open);
        assert_eq!(long.len(), MAX_MESSAGE_BYTES + 1);
        assert!(
            long.capacity() <= 2 * (MAX_MESSAGE_BYTES + 1),
            "{}",
            long.capacity()
        );
        assert_eq!(line(&mut open), b"last");
        assert!(open.next_line().is_none());

        // Resuming after the long line skips it by counting lines, as before.
        let mut resumed = OpenFile::open(file.path(), 2).expect("open");
        assert_eq!(line(&mut resumed), b"last");
    }
}
