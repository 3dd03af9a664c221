//! Sink progress, written by the writer thread: registering sinks, fixing a
//! batch's range before its first attempt, advancing cursors, dead letters
//! and their replay, and deleting what [`super::retention`] allows.

use super::bodies::Segments;
use super::sessions::{self, SessionOp};
use crate::clock::now_ms;
use crate::event::ROW_OVERHEAD_BYTES;
use rusqlite::{params, OptionalExtension, Transaction};

/// A change to a sink's progress; each runs in its own transaction.
#[derive(Debug, Clone)]
pub enum SinkOp {
    /// Makes sure these sinks have a cursor row (new ones start at 0).
    Register { sinks: Vec<String> },
    /// Records the range of a batch about to be sent (before its first attempt).
    RecordBatch { sink: String, first: i64, last: i64 },
    /// The recorded batch starting at `first` is sent as two halves from now on.
    SplitBatch {
        sink: String,
        first: i64,
        halves: [(i64, i64); 2],
    },
    /// Everything up to `to` is delivered (or skipped); clears the batches up to it.
    Advance { sink: String, to: i64 },
    /// Copies `seqs` into the dead letters with `reason` and advances to `to`.
    DeadLetter {
        sink: String,
        seqs: Vec<i64>,
        reason: String,
        to: i64,
    },
    /// Marks dead letters for redelivery (all of the sink's, or those ids).
    Requeue {
        sink: String,
        ids: Option<Vec<String>>,
    },
    /// An operator gives up on dead letters (all of the sink's, or those ids).
    Purge {
        sink: String,
        ids: Option<Vec<String>>,
    },
    /// A requeued dead letter was delivered: remove it.
    Redelivered { sink: String, seq: i64 },
    /// A requeued dead letter failed again: keep it, with the new reason.
    StillDead {
        sink: String,
        seq: i64,
        reason: String,
    },
    /// A session-assembling sink's progress (see [`super::sessions`]).
    Sessions { sink: String, op: SessionOp },
}

impl SinkOp {
    pub fn sink(&self) -> Option<&str> {
        match self {
            SinkOp::Register { .. } => None,
            SinkOp::RecordBatch { sink, .. }
            | SinkOp::SplitBatch { sink, .. }
            | SinkOp::Advance { sink, .. }
            | SinkOp::DeadLetter { sink, .. }
            | SinkOp::Requeue { sink, .. }
            | SinkOp::Purge { sink, .. }
            | SinkOp::Redelivered { sink, .. }
            | SinkOp::StillDead { sink, .. }
            | SinkOp::Sessions { sink, .. } => Some(sink),
        }
    }
}

/// Runs `statement` (an UPDATE or DELETE of `dead_letters`) on all of a
/// sink's dead letters, or on those with the given ids; returns how many.
fn for_dead_letters(
    tx: &Transaction,
    statement: &str,
    sink: &str,
    ids: &Option<Vec<String>>,
) -> rusqlite::Result<u64> {
    Ok(match ids {
        None => tx.execute(&format!("{statement} WHERE sink = ?1"), [sink])? as u64,
        Some(ids) => {
            let mut each =
                tx.prepare_cached(&format!("{statement} WHERE sink = ?1 AND id = ?2"))?;
            let mut n = 0;
            for id in ids {
                n += each.execute(params![sink, id])? as u64;
            }
            n
        }
    })
}

/// Applies one op; returns a count (rows affected) and, for cursor moves, the new cursor.
/// `bodies` reads the bodies kept in the body log (dead letters keep their own copy).
pub fn apply(
    tx: &Transaction,
    op: &SinkOp,
    bodies: Option<&Segments>,
) -> rusqlite::Result<(u64, Option<i64>)> {
    let now = now_ms();
    match op {
        SinkOp::Register { sinks } => {
            let mut insert = tx.prepare_cached(
                // A new sink starts at the oldest event still held, so its lag counts
                // real events even when seqs do not start at 1 (after a quarantine).
                "INSERT OR IGNORE INTO sink_cursors (sink, delivered_seq, updated_ms) VALUES (?1, \
                 COALESCE((SELECT MIN(seq) FROM events) - 1, (SELECT last_seq FROM outbox_state WHERE singleton = 0)), ?2)",
            )?;
            let mut added = 0;
            for sink in sinks {
                added += insert.execute(params![sink, now])? as u64;
            }
            Ok((added, None))
        }
        SinkOp::RecordBatch { sink, first, last } => {
            Ok((record_batch(tx, sink, *first, *last)?, None))
        }
        SinkOp::SplitBatch {
            sink,
            first,
            halves,
        } => {
            tx.execute(
                "DELETE FROM sink_batches WHERE sink = ?1 AND first_seq = ?2",
                params![sink, first],
            )?;
            let mut n = 0;
            for (first, last) in halves {
                n += record_batch(tx, sink, *first, *last)?;
            }
            Ok((n, None))
        }
        SinkOp::Advance { sink, to } => {
            let n = advance(tx, sink, *to, now)?;
            Ok((n, Some(*to)))
        }
        SinkOp::DeadLetter {
            sink,
            seqs,
            reason,
            to,
        } => {
            let n = copy_to_dead_letters(tx, sink, seqs, reason, now, bodies)?;
            advance(tx, sink, *to, now)?;
            Ok((n, Some(*to)))
        }
        SinkOp::Requeue { sink, ids } => Ok((
            for_dead_letters(tx, "UPDATE dead_letters SET requeued = 1", sink, ids)?,
            None,
        )),
        SinkOp::Purge { sink, ids } => Ok((
            for_dead_letters(tx, "DELETE FROM dead_letters", sink, ids)?,
            None,
        )),
        SinkOp::Redelivered { sink, seq } => {
            let n = tx.execute(
                "DELETE FROM dead_letters WHERE sink = ?1 AND seq = ?2",
                params![sink, seq],
            )?;
            Ok((n as u64, None))
        }
        SinkOp::StillDead { sink, seq, reason } => {
            let n = tx.execute(
                "UPDATE dead_letters SET requeued = 0, reason = ?3, failed_ms = ?4 WHERE sink = ?1 AND seq = ?2",
                params![sink, seq, reason, now],
            )?;
            Ok((n as u64, None))
        }
        SinkOp::Sessions { sink, op } => {
            let n = sessions::apply(tx, sink, op, now, bodies)?;
            let cursor = match op {
                SessionOp::Scan { to, .. } => Some(*to),
                _ => None,
            };
            Ok((n, cursor))
        }
    }
}

/// Copies the events `seqs` still in the outbox into `sink`'s dead letters,
/// with their bodies (read from the body log for those stored there).
pub(super) fn copy_to_dead_letters(
    tx: &Transaction,
    sink: &str,
    seqs: &[i64],
    reason: &str,
    now: i64,
    bodies: Option<&Segments>,
) -> rusqlite::Result<u64> {
    let mut copy = tx.prepare_cached(
        "INSERT OR REPLACE INTO dead_letters (sink, seq, id, type, fidelity, received_ms, body, reason, failed_ms, requeued) \
         SELECT ?1, seq, id, type, fidelity, received_ms, body, ?3, ?4, 0 FROM events WHERE seq = ?2",
    )?;
    let mut in_log = tx.prepare_cached(
        "SELECT body_at, body_len FROM events WHERE seq = ?1 AND body_at IS NOT NULL",
    )?;
    let mut fill =
        tx.prepare_cached("UPDATE dead_letters SET body = ?3 WHERE sink = ?1 AND seq = ?2")?;
    let mut n = 0;
    for seq in seqs {
        n += copy.execute(params![sink, seq, reason, now])? as u64;
        let place: Option<(i64, i64)> = in_log
            .query_row([seq], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        if let Some((at, len)) = place {
            let body = bodies
                .ok_or_else(|| {
                    body_error(format!(
                        "event {seq} has its body in the body log, which is not open"
                    ))
                })?
                .read(*seq, at as u64, len as u64)
                .map_err(|e| body_error(e.0))?
                .ok_or_else(|| {
                    body_error(format!("the body of event {seq} is gone from the body log"))
                })?;
            fill.execute(params![sink, seq, body])?;
        }
    }
    Ok(n)
}

fn body_error(text: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(text.into())
}

fn record_batch(tx: &Transaction, sink: &str, first: i64, last: i64) -> rusqlite::Result<u64> {
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO sink_batches (sink, first_seq, last_seq) VALUES (?1, ?2, ?3)",
    )?;
    Ok(insert.execute(params![sink, first, last])? as u64)
}

pub(super) fn advance(tx: &Transaction, sink: &str, to: i64, now: i64) -> rusqlite::Result<u64> {
    // MAX: a cursor never moves back, whatever arrives late.
    let n = tx
        .prepare_cached(
            "UPDATE sink_cursors SET delivered_seq = MAX(delivered_seq, ?2), updated_ms = ?3 WHERE sink = ?1",
        )?
        .execute(params![sink, to, now])?;
    tx.prepare_cached("DELETE FROM sink_batches WHERE sink = ?1 AND last_seq <= ?2")?
        .execute(params![sink, to])?;
    Ok(n as u64)
}

/// Deletes the events in the next `limit` seqs up to `upto`; returns
/// (events, bytes) freed, the seq every event up to which is now gone,
/// and whether that is `upto`.
///
/// A plain range delete, with the bytes counted by a read before it: the
/// earlier `DELETE ... WHERE seq IN (SELECT ... LIMIT) RETURNING` made
/// SQLite keep a statement journal, a copy of every page the delete
/// rebalanced, written to a temp file (a fifth of the writer's time while
/// draining to S3).
pub fn delete_upto(
    tx: &Transaction,
    upto: i64,
    limit: i64,
) -> rusqlite::Result<(i64, i64, i64, bool)> {
    let first: Option<i64> = tx
        .prepare_cached("SELECT MIN(seq) FROM events")?
        .query_row([], |row| row.get(0))?;
    let Some(first) = first.filter(|first| *first <= upto) else {
        return Ok((0, 0, upto, true));
    };
    let last = upto.min(first.saturating_add(limit - 1));
    let (events, bytes): (i64, i64) = tx
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(length(body) + IFNULL(body_len, 0)), 0) FROM events WHERE seq BETWEEN ?1 AND ?2",
        )?
        .query_row(params![first, last], |row| Ok((row.get(0)?, row.get(1)?)))?;
    tx.prepare_cached("DELETE FROM events WHERE seq BETWEEN ?1 AND ?2")?
        .execute(params![first, last])?;
    Ok((
        events,
        bytes + events * ROW_OVERHEAD_BYTES as i64,
        last,
        last == upto,
    ))
}

/// Cursors of the given sinks, as stored.
pub fn cursors(tx: &Transaction, sinks: &[String]) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut read = tx.prepare_cached("SELECT delivered_seq FROM sink_cursors WHERE sink = ?1")?;
    sinks
        .iter()
        .map(|sink| Ok((sink.clone(), read.query_row([sink], |row| row.get(0))?)))
        .collect()
}
