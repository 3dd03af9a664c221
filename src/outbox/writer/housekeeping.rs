//! The writer's work besides appends: sink progress, deleting what
//! retention allows, pruning expired dedup ids.

use super::Writer;
use crate::clock::now_ms;
use crate::event::ROW_OVERHEAD_BYTES;
use crate::outbox::progress::{self, SinkOp};
use crate::outbox::{retention, sessions};
use crate::telemetry::names;
use rusqlite::{params, Connection, OptionalExtension};

/// Rows the feed's byte window walks past per run.
const FEED_WALK: i64 = 20_000;
/// Dedup rows removed per pruning pass, so a pass never stalls commits for long.
const PRUNE_CHUNK: i64 = 50_000;
/// Delivered events deleted per pass, between groups of requests.
const GC_CHUNK: i64 = 4_000;
/// ...and while ingest is stopped for lack of disk space.
const GC_CHUNK_TIGHT: i64 = 1_000;

impl Writer {
    pub(super) fn apply_sink_op(&mut self, op: SinkOp) -> Result<u64, String> {
        let segments = self.segments();
        let result = self.housekeeping(|connection| {
            let tx = connection.transaction()?;
            let (count, cursor) = progress::apply(&tx, &op, segments.as_deref())?;
            let registered = match &op {
                SinkOp::Register { sinks } => Some(progress::cursors(&tx, sinks)?),
                _ => None,
            };
            // Which sinks' session holds may have changed, and to what.
            let session_holds = match &op {
                SinkOp::Register { sinks } => sessions::holds(&tx, sinks)?,
                SinkOp::Sessions { sink, .. } => sessions::holds(&tx, std::slice::from_ref(sink))?,
                _ => Vec::new(),
            };
            tx.commit()?;
            Ok((count, cursor, registered, session_holds))
        });
        match result {
            Ok((count, cursor, registered, session_holds)) => {
                if let Some(registered) = registered {
                    self.holds.cursors = registered.into_iter().collect();
                    self.holds.open_sessions.clear();
                }
                for (sink, held) in session_holds {
                    match held {
                        Some(first) => self.holds.open_sessions.insert(sink, first),
                        None => self.holds.open_sessions.remove(&sink),
                    };
                }
                if matches!(op, SinkOp::Requeue { .. }) && count > 0 {
                    self.stats.requeue_watch.send_modify(|n| *n += 1);
                }
                if let (Some(cursor), Some(sink)) = (cursor, op.sink()) {
                    if let Some(stored) = self.holds.cursors.get_mut(sink) {
                        *stored = (*stored).max(cursor);
                    }
                }
                Ok(count)
            }
            Err(e) => {
                self.watch_for_corruption(&e);
                tracing::error!(error = %e, op = ?op, "sink progress could not be stored");
                Err(format!("the outbox could not store sink progress: {e}"))
            }
        }
    }

    /// Deletes one chunk of what retention allows.
    pub(super) fn collect(&mut self) {
        let Some(upto) = retention::deletable_upto(&self.holds) else {
            return;
        };
        // On a tight disk, small steps: each one's WAL is truncated before
        // the next, so deleting never needs much space itself.
        let chunk = if self.tight() {
            GC_CHUNK_TIGHT
        } else {
            GC_CHUNK
        };
        let log = self.log.take();
        let result = self.housekeeping(|connection| {
            let tx = connection.transaction()?;
            let (events, bytes, gone_upto, done) = progress::delete_upto(&tx, upto, chunk)?;
            tx.execute(
                "UPDATE outbox_state SET event_count = event_count - ?1, byte_count = byte_count - ?2 WHERE singleton = 0",
                params![events, bytes],
            )?;
            let released = match &log {
                Some(log) => log.release(&tx, gone_upto)?,
                None => Vec::new(),
            };
            tx.commit()?;
            Ok((events, bytes, gone_upto, done, released))
        });
        self.log = log;
        match result {
            Ok((events, bytes, gone_upto, done, released)) => {
                if let Some(log) = self.log.as_mut() {
                    log.remove(&released, gone_upto);
                }
                self.events -= events;
                self.bytes -= bytes;
                if done {
                    self.collected_upto = upto;
                }
                if events > 0 {
                    metrics::counter!(names::OUTBOX_DELETED).increment(events as u64);
                    self.publish();
                }
            }
            Err(e) => {
                self.watch_for_corruption(&e);
                tracing::error!(error = %e, "deleting delivered events failed; will retry");
                self.collected_upto = upto; // retried when a cursor moves again
            }
        }
    }

    /// Runs a write that brings space back or records progress (sink ops,
    /// deletions, pruning): these must never wedge on a full disk.
    pub(super) fn housekeeping<T>(
        &mut self,
        write: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let changes_before = self.connection.total_changes();
        let result = self.with_reserve(write);
        if result.is_ok() && self.connection.total_changes() != changes_before && self.tight() {
            self.reclaim_wal();
        }
        result
    }

    /// Moves the change feed's hold: to the first event younger than
    /// `feed.retain`, and further while the outbox holds more than
    /// `feed.retain_bytes`. Walks forward from the last hold, so each run
    /// reads only what aged out (or no longer fits) since.
    pub(super) fn hold_feed_window(&mut self) {
        let (retain_ms, retain_bytes) = (
            self.settings.feed_retain_ms,
            self.settings.feed_retain_bytes as i64,
        );
        if retain_ms <= 0 && retain_bytes <= 0 {
            return;
        }
        let mut from = self.holds.feed_from.unwrap_or(0);
        let result = (|| -> rusqlite::Result<i64> {
            if retain_ms > 0 {
                let cutoff = now_ms() - retain_ms;
                from = self
                    .connection
                    .query_row(
                        "SELECT seq FROM events WHERE seq >= ?1 AND received_ms > ?2 ORDER BY seq LIMIT 1",
                        params![from, cutoff],
                        |row| row.get::<_, i64>(0),
                    )
                    .optional()?
                    .unwrap_or(self.last_seq + 1);
            }
            if retain_bytes > 0 && self.bytes > retain_bytes {
                let mut excess = self.bytes - retain_bytes;
                let mut oldest = self.connection.prepare_cached(
                    "SELECT seq, length(body) + IFNULL(body_len, 0) FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
                )?;
                let mut rows = oldest.query(params![from, FEED_WALK])?;
                while let Some(row) = rows.next()? {
                    if excess <= 0 {
                        break;
                    }
                    excess -= row.get::<_, i64>(1)? + ROW_OVERHEAD_BYTES as i64;
                    from = row.get::<_, i64>(0)? + 1;
                }
            }
            Ok(from)
        })();
        match result {
            Ok(from) => self.holds.feed_from = Some(from),
            Err(e) => {
                self.watch_for_corruption(&e);
                tracing::warn!(error = %e, "finding the change feed's window failed");
            }
        }
    }

    /// Drops dedup entries older than the window, or beyond `dedup_max_ids`.
    pub(super) fn prune_dedup(&mut self) {
        self.last_ms = self.last_ms.max(now_ms());
        let cutoff = self.last_ms - self.settings.dedup_window_ms;
        let (max_ids, last_seq) = (self.settings.dedup_max_ids, self.last_seq);
        let result = self.housekeeping(|connection| {
            connection
            .query_row(
                "SELECT MAX(seq) FROM (SELECT seq, accepted_ms FROM dedup ORDER BY seq LIMIT ?1) WHERE accepted_ms < ?2",
                params![PRUNE_CHUNK, cutoff],
                |row| row.get::<_, Option<i64>>(0),
            )
            .and_then(|expired| {
                let bound = expired.unwrap_or(0).max(last_seq - max_ids);
                if bound <= 0 {
                    return Ok(0);
                }
                connection.execute(
                    "DELETE FROM dedup WHERE seq IN (SELECT seq FROM dedup WHERE seq <= ?1 ORDER BY seq LIMIT ?2)",
                    params![bound, PRUNE_CHUNK],
                )
            })
        });
        if let Err(e) = result {
            self.watch_for_corruption(&e);
            tracing::warn!(error = %e, "pruning dedup entries failed");
        }
    }
}
