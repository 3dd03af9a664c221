//! The durable state of session-assembling sinks (`format =
//! "openai_sessions"`): which sessions each has seen past its cursor, which
//! have ended, which are in the object in flight. The writer applies the
//! changes ([`apply`]); readers see rows and a session's events through the
//! outbox's read API, so assembly never depends on how events are stored.

use super::Outbox;
use rusqlite::{params, Transaction};

/// A run of one session's events in a scanned chunk, in seq order.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub session_id: String,
    pub first_seq: i64,
    pub last_seq: i64,
    pub last_received_ms: i64,
    pub events: i64,
    pub bytes: i64,
    /// The terminal event type that ended the session with this segment.
    pub ended_by: Option<String>,
}

/// One session's share of the object in flight: the session (named by its
/// first seq), its events up to `upto`, and how many of them were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionUnit {
    pub first_seq: i64,
    pub upto: i64,
    pub events: i64,
}

/// A session a sink has seen and not yet written.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    pub first_seq: i64,
    pub session_id: String,
    pub last_seq: i64,
    pub last_received_ms: i64,
    pub events: i64,
    pub bytes: i64,
    pub ended_by: Option<String>,
    pub written_upto: i64,
    pub parts: i64,
    pub events_written: i64,
    pub sending_upto: Option<i64>,
}

impl SessionRow {
    /// The first seq not yet in a written part.
    pub fn next_seq(&self) -> i64 {
        self.first_seq.max(self.written_upto + 1)
    }
}

/// The session changes a sink asks the writer for.
#[derive(Debug, Clone)]
pub enum SessionOp {
    /// Adds a scanned chunk's segments and moves the cursor to `to`.
    Scan { segments: Vec<Segment>, to: i64 },
    /// Ends every open session whose last event arrived at or before this.
    EndIdle { last_before_ms: i64 },
    /// Fixes the object in flight: these sessions, up to these seqs.
    Send { units: Vec<(i64, i64)> },
    /// The object in flight is written (or, with a reason, dead-lettered):
    /// finished sessions are forgotten, parted ones move on.
    Sent {
        units: Vec<SessionUnit>,
        dead: Option<(String, Vec<i64>)>,
    },
}

/// Applies one op in the writer's transaction; returns rows affected.
pub fn apply(
    tx: &Transaction,
    sink: &str,
    op: &SessionOp,
    now: i64,
    bodies: Option<&super::bodies::Segments>,
) -> rusqlite::Result<u64> {
    match op {
        SessionOp::Scan { segments, to } => {
            let mut extend = tx.prepare_cached(
                "UPDATE sessions SET last_seq = ?3, last_received_ms = ?4, events = events + ?5, \
                 bytes = bytes + ?6, ended_by = ?7 WHERE sink = ?1 AND session_id = ?2 AND ended_by IS NULL",
            )?;
            let mut open = tx.prepare_cached(
                "INSERT INTO sessions (sink, first_seq, session_id, last_seq, last_received_ms, events, bytes, ended_by) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut n = 0;
            for s in segments {
                let extended = extend.execute(params![
                    sink,
                    s.session_id,
                    s.last_seq,
                    s.last_received_ms,
                    s.events,
                    s.bytes,
                    s.ended_by
                ])?;
                if extended == 0 {
                    open.execute(params![
                        sink,
                        s.first_seq,
                        s.session_id,
                        s.last_seq,
                        s.last_received_ms,
                        s.events,
                        s.bytes,
                        s.ended_by
                    ])?;
                }
                n += 1;
            }
            super::progress::advance(tx, sink, *to, now)?;
            Ok(n)
        }
        SessionOp::EndIdle { last_before_ms } => Ok(tx.execute(
            "UPDATE sessions SET ended_by = 'idle' WHERE sink = ?1 AND ended_by IS NULL AND last_received_ms <= ?2",
            params![sink, last_before_ms],
        )? as u64),
        SessionOp::Send { units } => {
            tx.execute(
                "UPDATE sessions SET sending_upto = NULL WHERE sink = ?1 AND sending_upto IS NOT NULL",
                [sink],
            )?;
            let mut fix = tx.prepare_cached(
                "UPDATE sessions SET sending_upto = ?3 WHERE sink = ?1 AND first_seq = ?2",
            )?;
            let mut n = 0;
            for (first_seq, upto) in units {
                n += fix.execute(params![sink, first_seq, upto])? as u64;
            }
            Ok(n)
        }
        SessionOp::Sent { units, dead } => {
            if let Some((reason, seqs)) = dead {
                super::progress::copy_to_dead_letters(tx, sink, seqs, reason, now, bodies)?;
            }
            let mut done = tx.prepare_cached(
                "DELETE FROM sessions WHERE sink = ?1 AND first_seq = ?2 AND ended_by IS NOT NULL AND ?3 >= last_seq",
            )?;
            let mut part = tx.prepare_cached(
                "UPDATE sessions SET written_upto = ?3, parts = parts + 1, events_written = events_written + ?4, \
                 sending_upto = NULL WHERE sink = ?1 AND first_seq = ?2",
            )?;
            let mut n = 0;
            for unit in units {
                n += match done.execute(params![sink, unit.first_seq, unit.upto])? {
                    0 => part.execute(params![sink, unit.first_seq, unit.upto, unit.events])?,
                    removed => removed,
                } as u64;
            }
            Ok(n)
        }
    }
}

/// For each of `sinks`, the first seq its unwritten sessions still need.
pub fn holds(tx: &Transaction, sinks: &[String]) -> rusqlite::Result<Vec<(String, Option<i64>)>> {
    let mut first = tx.prepare_cached("SELECT MIN(first_seq) FROM sessions WHERE sink = ?1")?;
    sinks
        .iter()
        .map(|sink| Ok((sink.clone(), first.query_row([sink], |row| row.get(0))?)))
        .collect()
}

/// Creates (or drops) the index session assembly reads by; only a daemon
/// with a session-assembling sink pays for it on every append.
pub async fn ensure_index(
    connection: &mut sqlx::SqliteConnection,
    wanted: bool,
) -> Result<(), sqlx::Error> {
    let statement = if wanted {
        "CREATE INDEX IF NOT EXISTS events_session ON events (session_id, seq) WHERE session_id IS NOT NULL"
    } else {
        "DROP INDEX IF EXISTS events_session"
    };
    sqlx::query(statement).execute(connection).await.map(|_| ())
}

const ROW_COLUMNS: &str =
    "first_seq, session_id, last_seq, last_received_ms, events, bytes, ended_by, \
     written_upto, parts, events_written, sending_upto";

impl Outbox {
    /// Up to `limit` ended sessions of `sink` waiting to be written, oldest
    /// end first; with `in_flight`, only those in the object in flight.
    pub async fn ended_sessions(
        &self,
        sink: &str,
        in_flight: bool,
        limit: i64,
    ) -> Result<Vec<SessionRow>, sqlx::Error> {
        // Two statements, so that each can use its partial index.
        let which = if in_flight {
            "sending_upto IS NOT NULL"
        } else {
            "ended_by IS NOT NULL"
        };
        sqlx::query_as(&format!(
            "SELECT {ROW_COLUMNS} FROM sessions WHERE sink = ? AND {which} ORDER BY last_seq LIMIT ?"
        ))
        .bind(sink)
        .bind(limit)
        .fetch_all(&self.readers)
        .await
    }

    /// When the least recently active open session of `sink` last saw an event.
    pub async fn oldest_open_session_ms(&self, sink: &str) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT MIN(last_received_ms) FROM sessions WHERE sink = ? AND ended_by IS NULL",
        )
        .bind(sink)
        .fetch_one(&self.readers)
        .await
    }

    /// Up to `limit` events of session `session_id` with seq in `[from, upto]`.
    pub async fn read_session(
        &self,
        session_id: &str,
        from: i64,
        upto: i64,
        limit: i64,
    ) -> Result<super::scan::Chunk, sqlx::Error> {
        use super::scan::Param;
        self.scanner
            .events(
                &self.stats,
                "SELECT seq, type, fidelity, session_id, received_ms, body, body_at, body_len FROM events \
                 WHERE session_id = ? AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
                vec![
                    Param::Text(session_id.to_string()),
                    Param::Int(from),
                    Param::Int(upto),
                ],
                limit,
            )
            .await
    }
}
