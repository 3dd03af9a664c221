//! The delivery loop of a session-assembling sink (`format =
//! "openai_sessions"`): the same read → fix → encode → deliver → classify
//! steps as the batch loop, where a "batch" is a set of finished sessions.
//!
//! 1. Scan: events after the cursor are counted into their sessions'
//!    durable rows, and the cursor moves past them in the same transaction.
//!    A session ends at one of `session_end_types`, or when nothing came for
//!    it for `session_idle_timeout` (measured against the scan's own
//!    progress while it catches up, so a backlog never ends sessions early).
//! 2. Plan: ended sessions are packed into one object up to the batch
//!    bounds, or a session over `session_max_bytes` gets its next part cut
//!    at a point where no tool call waits for its result. The choice is
//!    stored before the first attempt (each session's `sending_upto`), so
//!    retries, restarts and kill -9 send the same sessions in the same object.
//! 3. Send: each session is read back from the outbox by its index,
//!    assembled into its line, delivered, classified; written sessions are
//!    forgotten in the same transaction that records the delivery.
//!
//! Memory holds one object's sessions (or one part), whatever the number of
//! open sessions or their length: everything else stays in the outbox.

use super::{Delivery, Verdict, Wake, READ_CHUNK};
use crate::clock::now_ms;
use crate::event::StoredEvent;
use crate::format::openai::sessions::{part_len, write_session, SessionInfo};
use crate::format::{finish, EncodedBatch};
use crate::outbox::sessions::{Segment, SessionOp, SessionRow, SessionUnit};
use crate::outbox::SinkOp;
use crate::sinks::config::SessionsConfig;
use crate::telemetry::names;
use std::collections::HashMap;

/// Ended sessions read per planning query (an object takes at most these).
const PLAN_ROWS: i64 = 256;

/// An object assembled from the sessions in flight.
struct Assembled {
    batch: EncodedBatch,
    units: Vec<SessionUnit>,
    seqs: Vec<i64>,
    /// Sessions that made a line (the others had no conversation message).
    lines: usize,
}

/// Splits a scanned chunk into per-session runs: events this sink takes
/// that carry a session id, a run ending at a terminal type.
pub(super) fn segments(
    events: &[StoredEvent],
    takes: impl Fn(&StoredEvent) -> bool,
    end_types: &[String],
) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
    for event in events {
        let Some(session_id) = event.session_id.as_deref() else {
            continue;
        };
        if !takes(event) {
            continue;
        }
        let index = *open.entry(session_id).or_insert_with(|| {
            segments.push(Segment {
                session_id: session_id.to_string(),
                first_seq: event.seq,
                last_seq: event.seq,
                last_received_ms: event.received_ms,
                events: 0,
                bytes: 0,
                ended_by: None,
            });
            segments.len() - 1
        });
        let segment = &mut segments[index];
        segment.last_seq = event.seq;
        segment.last_received_ms = segment.last_received_ms.max(event.received_ms);
        segment.events += 1;
        segment.bytes += event.body.len() as i64;
        if end_types.contains(&event.event_type) {
            segment.ended_by = Some(event.event_type.clone());
            open.remove(session_id);
        }
    }
    segments
}

impl Delivery {
    pub(super) async fn run_sessions(mut self, mut cursor: i64, sessions: SessionsConfig) {
        let idle_ms = sessions.idle_timeout.0.as_millis() as i64;
        let mut last_seq = self.outbox.watch_last_seq();
        let mut requeues = self.outbox.watch_requeues();
        loop {
            if self.shutdown.is_shutdown()
                || self.unless_paused().await.is_none()
                || self.redeliver_requeued().await.is_none()
            {
                break;
            }
            // An object fixed earlier (maybe before a crash) goes first, as it was.
            let Some(in_flight) = self
                .read(|| self.outbox.ended_sessions(&self.name, true, PLAN_ROWS))
                .await
            else {
                break;
            };
            if !in_flight.is_empty() {
                if self.send_sessions(&in_flight).await.is_none() {
                    break;
                }
                continue;
            }
            let Some(chunk) = self
                .read(|| self.outbox.read_after(cursor, READ_CHUNK))
                .await
            else {
                break;
            };
            let caught_up = chunk.complete;
            // "Now" for idleness is the scan's position until it is caught up.
            let now = match chunk.last() {
                Some(last) if !caught_up => last.received_ms,
                _ => now_ms(),
            };
            if let Some(last) = chunk.last().map(|e| e.seq) {
                let segments = segments(&chunk, |e| self.filter.matches(e), &sessions.end_types);
                drop(chunk);
                if self
                    .session_op(SessionOp::Scan { segments, to: last })
                    .await
                    .is_none()
                {
                    break;
                }
                cursor = last;
                self.status.advanced(cursor);
            }
            let Some(oldest_open) = self
                .read(|| self.outbox.oldest_open_session_ms(&self.name))
                .await
            else {
                break;
            };
            if oldest_open.is_some_and(|ms| ms <= now - idle_ms)
                && self
                    .session_op(SessionOp::EndIdle {
                        last_before_ms: now - idle_ms,
                    })
                    .await
                    .is_none()
            {
                break;
            }
            let Some(ended) = self
                .read(|| self.outbox.ended_sessions(&self.name, false, PLAN_ROWS))
                .await
            else {
                break;
            };
            if !ended.is_empty() {
                let Some(units) = self.plan(&ended, &sessions).await else {
                    break;
                };
                if self.session_op(SessionOp::Send { units }).await.is_none() {
                    break;
                }
                continue;
            }
            if caught_up {
                let deadline = oldest_open.map(|ms| ms + idle_ms);
                match self
                    .wait_for_events(&mut last_seq, &mut requeues, cursor + 1, deadline)
                    .await
                {
                    Wake::Events | Wake::Requeued => {}
                    Wake::Shutdown => break,
                }
            }
        }
        tracing::info!(sink = %self.name, cursor, "sink stopped");
    }

    /// Chooses the next object: whole ended sessions up to the batch bounds,
    /// or the next part of one session over `session_max_bytes`.
    async fn plan(
        &self,
        ended: &[SessionRow],
        sessions: &SessionsConfig,
    ) -> Option<Vec<(i64, i64)>> {
        let bounds = &self.config.batch;
        let mut units = Vec::new();
        let (mut bytes, mut events) = (0i64, 0i64);
        for row in ended {
            if row.parts > 0 || row.bytes > sessions.max_bytes.0 as i64 {
                if units.is_empty() {
                    let upto = self.part_end(row, sessions.max_bytes.as_usize()).await?;
                    units.push((row.first_seq, upto));
                }
                break;
            }
            if !units.is_empty()
                && (bytes + row.bytes > bounds.max_bytes.0 as i64
                    || events + row.events > bounds.max_events as i64)
            {
                break;
            }
            bytes += row.bytes;
            events += row.events;
            units.push((row.first_seq, row.last_seq));
        }
        Some(units)
    }

    /// Where the next part of a long session ends (see [`part_len`]).
    async fn part_end(&self, row: &SessionRow, max_bytes: usize) -> Option<i64> {
        let mut buffered: Vec<StoredEvent> = Vec::new();
        let mut bytes = 0;
        let mut from = row.next_seq();
        loop {
            let chunk = self
                .read(|| {
                    self.outbox
                        .read_session(&row.session_id, from, row.last_seq, READ_CHUNK)
                })
                .await?;
            let done = chunk.complete;
            if let Some(last) = chunk.last() {
                from = last.seq + 1;
            }
            for event in chunk.into_iter().filter(|e| self.filter.matches(e)) {
                bytes += event.body.len();
                buffered.push(event);
            }
            if bytes > max_bytes {
                let keep = part_len(&buffered, max_bytes);
                return Some(buffered[keep - 1].seq);
            }
            if done {
                return Some(row.last_seq);
            }
        }
    }

    /// Reads back and assembles the sessions in flight, one line each.
    async fn assemble(&self, rows: &[SessionRow]) -> Option<Assembled> {
        let mut plain = Vec::new();
        let mut units = Vec::with_capacity(rows.len());
        let mut seqs = Vec::new();
        let mut first_received_ms = i64::MAX;
        let mut lines = 0;
        for row in rows {
            let upto = row.sending_upto.unwrap_or(row.last_seq);
            let mut events = Vec::new();
            let mut from = row.next_seq();
            loop {
                let chunk = self
                    .read(|| {
                        self.outbox
                            .read_session(&row.session_id, from, upto, READ_CHUNK)
                    })
                    .await?;
                let done = (chunk.len() as i64) < READ_CHUNK;
                if let Some(last) = chunk.last() {
                    from = last.seq + 1;
                }
                events.extend(chunk.into_iter().filter(|e| self.filter.matches(e)));
                if done {
                    break;
                }
            }
            let finished = upto >= row.last_seq;
            let read = events.len() as i64;
            let info = SessionInfo {
                session_id: Some(&row.session_id),
                ended_by: row.ended_by.as_deref(),
                part: (row.parts > 0 || !finished).then_some((row.parts + 1, finished)),
                lost_events: if finished {
                    (row.events - row.events_written - read).max(0)
                } else {
                    0
                },
            };
            if write_session(&events, &info, &mut plain) {
                lines += 1;
            }
            if let Some(first) = events.first() {
                first_received_ms = first_received_ms.min(first.received_ms);
            }
            seqs.extend(events.iter().map(|e| e.seq));
            units.push(SessionUnit {
                first_seq: row.first_seq,
                upto,
                events: read,
            });
        }
        let mut batch = finish(plain, &*self.encoder, self.config.compression);
        // The object's name comes from the durable rows, never from what was
        // still readable, so an eviction between attempts cannot rename it.
        batch.first_seq = rows.iter().map(SessionRow::next_seq).min().unwrap_or(0);
        batch.last_seq = units.iter().map(|u| u.upto).max().unwrap_or(0);
        batch.first_received_ms = if first_received_ms == i64::MAX {
            rows.iter().map(|r| r.last_received_ms).min().unwrap_or(0)
        } else {
            first_received_ms
        };
        batch.events = seqs.len();
        Some(Assembled {
            batch,
            units,
            seqs,
            lines,
        })
    }

    /// Sends the object in flight to its end. None when stopping.
    async fn send_sessions(&mut self, rows: &[SessionRow]) -> Option<()> {
        let Assembled {
            batch,
            units,
            seqs,
            lines,
        } = self.assemble(rows).await?;
        let empty = (units.len() - lines) as u64;
        if lines == 0 {
            // Nothing to send: the sessions are done all the same.
            self.session_op(SessionOp::Sent { units, dead: None })
                .await?;
            self.count_sessions("empty", empty);
            return Some(());
        }
        self.status.batch(Some((batch.first_seq, batch.last_seq)));
        match self.attempt(&batch, units.len() > 1).await {
            Verdict::Delivered => {
                self.session_op(SessionOp::Sent { units, dead: None })
                    .await?;
                self.count_delivered(&batch);
                self.count_sessions("written", lines as u64);
                self.count_sessions("empty", empty);
            }
            Verdict::Dead(kind, reason) => {
                tracing::warn!(sink = %self.name, sessions = units.len(), events = seqs.len(), %reason, "dead-lettering sessions");
                let events = seqs.len() as u64;
                self.session_op(SessionOp::Sent {
                    units,
                    dead: Some((reason, seqs)),
                })
                .await?;
                metrics::counter!(names::SINK_DEAD_LETTERED, "sink" => self.name.clone(), "reason" => kind)
                    .increment(events);
                self.count_sessions("dead_lettered", lines as u64);
                self.count_sessions("empty", empty);
            }
            Verdict::Split => {
                // Nothing of it was stored: the first half goes alone, the
                // rest returns to the ended sessions for later objects.
                tracing::info!(sink = %self.name, sessions = units.len(), "splitting the sessions in flight in two");
                metrics::counter!(names::SINK_SPLITS, "sink" => self.name.clone()).increment(1);
                let half = units[..units.len() / 2]
                    .iter()
                    .map(|u| (u.first_seq, u.upto))
                    .collect();
                self.session_op(SessionOp::Send { units: half }).await?;
            }
            Verdict::Stopped => return None,
        }
        self.status.batch(None);
        Some(())
    }

    fn count_sessions(&self, result: &'static str, n: u64) {
        if n > 0 {
            metrics::counter!(names::SINK_SESSIONS, "sink" => self.name.clone(), "result" => result)
                .increment(n);
        }
    }

    async fn session_op(&self, op: SessionOp) -> Option<u64> {
        let sink = self.name.clone();
        self.durably(|| {
            let (outbox, op) = (
                self.outbox.clone(),
                SinkOp::Sessions {
                    sink: sink.clone(),
                    op: op.clone(),
                },
            );
            async move { outbox.sink_op(op).await }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fidelity;

    fn event(seq: i64, session: Option<&str>, event_type: &str) -> StoredEvent {
        StoredEvent {
            seq,
            event_type: event_type.into(),
            fidelity: Fidelity::Committed,
            session_id: session.map(str::to_string),
            received_ms: seq * 10,
            body: vec![b'x'; 10],
        }
    }

    #[test]
    fn a_chunk_becomes_one_run_per_session_ended_by_terminal_types() {
        let chunk = [
            event(1, Some("a"), "message"),
            event(2, Some("b"), "message"),
            event(3, None, "message"),
            event(4, Some("a"), "heartbeat"),
            event(5, Some("a"), "run.finished"),
            event(6, Some("a"), "message"),
            event(7, Some("b"), "tool.call"),
        ];
        let ends = vec!["run.finished".to_string()];
        let runs = segments(&chunk, |e| e.event_type != "heartbeat", &ends);
        let summary: Vec<_> = runs
            .iter()
            .map(|s| {
                (
                    s.session_id.as_str(),
                    s.first_seq,
                    s.last_seq,
                    s.events,
                    s.bytes,
                    s.ended_by.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a", 1, 5, 2, 20, Some("run.finished")),
                ("b", 2, 7, 2, 20, None),
                ("a", 6, 6, 1, 10, None),
            ]
        );
        assert_eq!(runs[1].last_received_ms, 70);
    }
}
