//! Reads for the delivery loops and the status API: bulk reads of events
//! through [`super::scan`], the rest on the sqlx reader pool. None of them
//! scans the backlog: every query walks an index from a known seq and stops
//! at a limit.

use super::scan::{Chunk, Param};
use super::Outbox;
use crate::event::{Fidelity, StoredEvent};
use serde::Serialize;

pub(super) type Row = (i64, String, i64, Option<String>, i64, Vec<u8>);

pub(super) fn stored(
    (seq, event_type, fidelity, session_id, received_ms, body): Row,
) -> StoredEvent {
    StoredEvent {
        seq,
        event_type,
        fidelity: Fidelity::from_i64(fidelity).unwrap_or(Fidelity::Committed),
        session_id,
        received_ms,
        body,
    }
}

/// A sink's durable progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkCursor {
    pub delivered_seq: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub sink: String,
    pub seq: i64,
    pub id: String,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub reason: String,
    pub failed_ms: i64,
    pub requeued: bool,
}

impl Outbox {
    /// Up to `limit` events with seq > `after`, in seq order (fewer when
    /// their bodies pass the read budget; see [`Chunk::complete`]).
    pub async fn read_after(&self, after: i64, limit: i64) -> Result<Chunk, sqlx::Error> {
        self.scanner
            .events(
                &self.stats,
                "SELECT seq, type, fidelity, session_id, received_ms, body, body_at, body_len FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                vec![Param::Int(after)],
                limit,
            )
            .await
    }

    /// Up to `limit` events of `(after, last]`, in seq order.
    pub async fn read_between(
        &self,
        after: i64,
        last: i64,
        limit: i64,
    ) -> Result<Chunk, sqlx::Error> {
        self.scanner
            .events(
                &self.stats,
                "SELECT seq, type, fidelity, session_id, received_ms, body, body_at, body_len FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                vec![Param::Int(after), Param::Int(last)],
                limit,
            )
            .await
    }

    pub async fn sink_cursor(&self, sink: &str) -> Result<Option<SinkCursor>, sqlx::Error> {
        let row: Option<i64> =
            sqlx::query_scalar("SELECT delivered_seq FROM sink_cursors WHERE sink = ?")
                .bind(sink)
                .fetch_optional(&self.readers)
                .await?;
        Ok(row.map(|delivered_seq| SinkCursor { delivered_seq }))
    }

    /// The fixed ranges of a sink's batches in flight when it last stopped,
    /// oldest first (those past its cursor: the rest were delivered).
    pub async fn recorded_batches(&self, sink: &str) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT b.first_seq, b.last_seq FROM sink_batches b JOIN sink_cursors c ON c.sink = b.sink \
             WHERE b.sink = ? AND b.last_seq > c.delivered_seq ORDER BY b.first_seq",
        )
        .bind(sink)
        .fetch_all(&self.readers)
        .await
    }

    /// The oldest seq still in the outbox (None when it is empty).
    pub async fn oldest_seq(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT MIN(seq) FROM events")
            .fetch_one(&self.readers)
            .await
    }

    /// Receive time of the oldest event after `seq` (a sink's lag in time).
    pub async fn oldest_received_after(&self, seq: i64) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT received_ms FROM events WHERE seq > ? ORDER BY seq LIMIT 1")
            .bind(seq)
            .fetch_optional(&self.readers)
            .await
    }

    /// The oldest dead letter of `sink` marked for redelivery.
    pub async fn requeued_dead_letter(
        &self,
        sink: &str,
    ) -> Result<Option<StoredEvent>, sqlx::Error> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT seq, type, fidelity, json_extract(body, '$.session_id'), received_ms, body FROM dead_letters WHERE sink = ? AND requeued = 1 ORDER BY seq LIMIT 1",
        )
        .bind(sink)
        .fetch_optional(&self.readers)
        .await?;
        Ok(row.map(stored))
    }

    pub async fn dead_letters(
        &self,
        sink: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, sqlx::Error> {
        sqlx::query_as(
            "SELECT sink, seq, id, type, reason, failed_ms, requeued FROM dead_letters \
             WHERE ?1 IS NULL OR sink = ?1 ORDER BY sink, seq LIMIT ?2",
        )
        .bind(sink)
        .bind(limit)
        .fetch_all(&self.readers)
        .await
    }

    /// One dead letter with the event as it was stored.
    pub async fn dead_letter(
        &self,
        sink: &str,
        seq: i64,
    ) -> Result<Option<(DeadLetter, Vec<u8>)>, sqlx::Error> {
        #[derive(sqlx::FromRow)]
        struct WithBody {
            #[sqlx(flatten)]
            letter: DeadLetter,
            body: Vec<u8>,
        }
        let row: Option<WithBody> = sqlx::query_as(
            "SELECT sink, seq, id, type, reason, failed_ms, requeued, body FROM dead_letters WHERE sink = ? AND seq = ?",
        )
        .bind(sink)
        .bind(seq)
        .fetch_optional(&self.readers)
        .await?;
        Ok(row.map(|row| (row.letter, row.body)))
    }

    pub async fn dead_letter_count(&self, sink: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE sink = ?")
            .bind(sink)
            .fetch_one(&self.readers)
            .await
    }
}
