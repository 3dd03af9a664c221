//! A batch's body read again from the outbox while a sink sends it, for
//! sinks that stream (`STREAMS_BODY`): a batch in flight then holds its
//! range and the body's length and CRC-32, not its bytes. The rows go
//! through the same filter and encoder as when the batch was gathered, so
//! they encode to the same bytes; only `drop_oldest` eviction can change
//! what the range holds, and then the read fails before its last byte (a
//! receiver never takes a wrong body) and the next attempt measures again.

use super::filter::Filter;
use crate::format::{Encoder, Measured, Replay};
use crate::outbox::Outbox;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Rows read per query: with 1 KiB events a chunk of about 256 KiB.
const ROWS_PER_READ: i64 = 256;

pub struct ReplayRange {
    outbox: Outbox,
    filter: Arc<Filter>,
    encoder: Arc<dyn Encoder>,
    first: i64,
    last: i64,
    /// The last measure, and whether it still holds (false once a read
    /// found the range changed).
    measured: Mutex<(Measured, bool)>,
    /// Whether a measure found nothing left to send.
    emptied: std::sync::atomic::AtomicBool,
}

/// How far a read of the range has come.
struct Position {
    after: i64,
    records: usize,
    done: bool,
}

impl ReplayRange {
    pub fn new(
        outbox: Outbox,
        filter: Arc<Filter>,
        encoder: Arc<dyn Encoder>,
        (first, last): (i64, i64),
        measured: Measured,
    ) -> ReplayRange {
        ReplayRange {
            outbox,
            filter,
            encoder,
            first,
            last,
            measured: Mutex::new((measured, true)),
            emptied: false.into(),
        }
    }

    fn start(&self) -> Position {
        Position {
            after: self.first - 1,
            records: 0,
            done: false,
        }
    }

    /// The next chunk of the body: the opening bytes with the first rows,
    /// the closing ones with the last.
    async fn next_chunk(&self, at: &mut Position) -> Result<Vec<u8>, String> {
        let framing = self.encoder.framing();
        let mut chunk = Vec::new();
        if at.after < self.first {
            chunk.extend_from_slice(framing.open);
        }
        let rows = self
            .outbox
            .read_between(at.after, self.last, ROWS_PER_READ)
            .await
            .map_err(|e| e.to_string())?;
        let complete = rows.complete;
        for event in rows.iter() {
            at.after = event.seq;
            if self.filter.matches(event) {
                if at.records > 0 {
                    chunk.extend_from_slice(framing.separator);
                }
                self.encoder.write_event(event, &mut chunk);
                at.records += 1;
            }
        }
        if complete || at.after >= self.last {
            // Past the range's last row (or no row was left in it).
            at.after = self.last;
            chunk.extend_from_slice(framing.close);
            at.done = true;
        }
        Ok(chunk)
    }

    fn stale(&self) {
        self.measured.lock().expect("replay measure").1 = false;
    }
}

impl Replay for ReplayRange {
    fn measure(&self) -> crate::format::BoxFuture<'_, Result<Option<Measured>, String>> {
        Box::pin(async move {
            let (measured, holds) = *self.measured.lock().expect("replay measure");
            if holds {
                return Ok((!self.emptied.load(Ordering::Relaxed)).then_some(measured));
            }
            let mut at = self.start();
            let (mut len, mut crc) = (0u64, crc32fast::Hasher::new());
            while !at.done {
                let chunk = self.next_chunk(&mut at).await?;
                len += chunk.len() as u64;
                crc.update(&chunk);
            }
            let measured = Measured {
                len,
                crc32: crc.finalize(),
            };
            tracing::warn!(first = self.first, last = self.last, events = at.records, "events of a batch in flight were evicted (drop_oldest); it is sent as it reads now");
            self.emptied.store(at.records == 0, Ordering::Relaxed);
            *self.measured.lock().expect("replay measure") = (measured, true);
            Ok((at.records > 0).then_some(measured))
        })
    }

    fn measured(&self) -> Measured {
        self.measured.lock().expect("replay measure").0
    }

    fn chunks(
        self: Arc<Self>,
        expected: Measured,
    ) -> crate::format::BoxStream<'static, Result<Bytes, String>> {
        let start = (self.start(), 0u64, crc32fast::Hasher::new());
        Box::pin(futures_util::stream::try_unfold(
            (self, start),
            move |(replay, (mut at, mut len, mut crc))| async move {
                if at.done {
                    return Ok(None);
                }
                let chunk = replay.next_chunk(&mut at).await?;
                len += chunk.len() as u64;
                crc.update(&chunk);
                let changed = len > expected.len
                    || (at.done
                        && (len != expected.len || crc.clone().finalize() != expected.crc32));
                if changed {
                    replay.stale();
                    return Err(format!(
                        "the events of {}..={} changed since the batch was gathered",
                        replay.first, replay.last
                    ));
                }
                Ok(Some((Bytes::from(chunk), (replay, (at, len, crc)))))
            },
        ))
    }
}
