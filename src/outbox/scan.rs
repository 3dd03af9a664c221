//! Bulk reads of event rows on plain synchronous connections, off the async
//! runtime: the delivery loops, session assembly and the change feed read
//! the backlog through here, thousands of rows per query. sqlx's SQLite
//! driver hands every row across a channel from its worker thread and copies
//! each value twice; measured on a drain to S3, gathering one 8 MiB batch
//! took 90 ms that way. Everything else stays on the sqlx reader pool.

use super::bodies::Segments;
use super::integrity;
use super::read::stored;
use super::Stats;
use crate::event::StoredEvent;
use rusqlite::{params_from_iter, Connection, OpenFlags, ToSql};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Connections kept open between reads (more are opened when busy).
const IDLE_CONNECTIONS: usize = 4;

/// Bodies one read returns, at most (and at least one event): with
/// events of up to `ingest.max_event_bytes` (1 MiB), a read of 1000 rows
/// could otherwise hold a gigabyte.
pub const READ_BUDGET_BYTES: usize = 2 << 20;

/// The events of one bulk read, in seq order: at most its `limit` of rows
/// and [`READ_BUDGET_BYTES`] of bodies.
#[derive(Debug, Default)]
pub struct Chunk {
    pub events: Vec<StoredEvent>,
    /// Whether the query had no rows left: the read reached the end of
    /// what it asked for, rather than its limit or its budget.
    pub complete: bool,
}

impl std::ops::Deref for Chunk {
    type Target = Vec<StoredEvent>;
    fn deref(&self) -> &Vec<StoredEvent> {
        &self.events
    }
}

impl IntoIterator for Chunk {
    type Item = StoredEvent;
    type IntoIter = std::vec::IntoIter<StoredEvent>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

/// A small pool of read-only connections to the outbox database.
pub struct Scanner {
    path: PathBuf,
    /// Where bodies kept in the body log are read (None: it is not open).
    bodies: Option<Arc<Segments>>,
    idle: Mutex<Vec<Connection>>,
    closed: AtomicBool,
}

impl Scanner {
    pub fn new(path: &Path, bodies: Option<Arc<Segments>>) -> Scanner {
        Scanner {
            path: path.to_path_buf(),
            bodies,
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Runs `sql` (selecting the columns of [`super::read::Row`], then
    /// `body_at, body_len`, and ending in `LIMIT ?`) with `params` and then
    /// `limit` on a blocking thread, stopping early at [`READ_BUDGET_BYTES`];
    /// SQLite's corruption reports raise the alarm in `stats`.
    pub async fn events(
        self: &Arc<Self>,
        stats: &Stats,
        sql: &'static str,
        mut params: Vec<Param>,
        limit: i64,
    ) -> Result<Chunk, sqlx::Error> {
        let scanner = self.clone();
        params.push(Param::Int(limit));
        let result =
            tokio::task::spawn_blocking(move || scanner.query(sql, &params, limit as usize))
                .await
                .map_err(|_| sqlx::Error::WorkerCrashed)?;
        result.map_err(|e| {
            if integrity::rusqlite_is_corrupt(&e) {
                stats.corrupt(e.to_string());
            }
            // The text keeps SQLite's own message, which is what callers log.
            sqlx::Error::Protocol(format!("reading events: {e}"))
        })
    }

    fn query(&self, sql: &str, params: &[Param], limit: usize) -> rusqlite::Result<Chunk> {
        let connection = match self.idle.lock().expect("scanner pool").pop() {
            Some(connection) => connection,
            None => self.open()?,
        };
        let rows = {
            let mut statement = connection.prepare_cached(sql)?;
            let rows = statement.query_map(params_from_iter(params.iter()), |row| {
                let place: LogPlace = (row.get(6)?, row.get(7)?);
                Ok((
                    stored((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    )),
                    place,
                ))
            })?;
            within_budget(rows, limit).and_then(|(rows, complete)| {
                Ok(Chunk {
                    events: self.fill_bodies(rows)?,
                    complete,
                })
            })
        };
        let mut idle = self.idle.lock().expect("scanner pool");
        if idle.len() < IDLE_CONNECTIONS && !self.closed.load(Ordering::Acquire) {
            idle.push(connection);
        }
        rows
    }

    /// Reads the bodies kept in the body log. A row whose segment went
    /// after this read's snapshot was deleted meanwhile and is left out.
    fn fill_bodies(
        &self,
        rows: Vec<(StoredEvent, LogPlace)>,
    ) -> rusqlite::Result<Vec<StoredEvent>> {
        let mut events = Vec::with_capacity(rows.len());
        for (mut event, place) in rows {
            if let (Some(at), Some(len)) = place {
                let Some(bodies) = &self.bodies else {
                    return Err(missing(format!(
                        "event {} has its body in the body log, which is not open",
                        event.seq
                    )));
                };
                match bodies.read(event.seq, at as u64, len as u64) {
                    Ok(Some(body)) => event.body = body,
                    Ok(None) => continue,
                    Err(e) => return Err(missing(e.0)),
                }
            }
            events.push(event);
        }
        Ok(events)
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Reads stream through the backlog once; a big cache buys nothing.
        connection.execute_batch("PRAGMA cache_size = -1024; PRAGMA busy_timeout = 10000;")?;
        Ok(connection)
    }

    /// Closes the idle connections and keeps no more, so the writer closes
    /// the database last and leaves no WAL behind.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle.lock().expect("scanner pool").clear();
    }
}

/// `body_at, body_len` of a row: both NULL when the body is inline.
type LogPlace = (Option<i64>, Option<i64>);

/// Takes rows until the query ends, `limit` rows or [`READ_BUDGET_BYTES`]
/// of bodies (counted before the log's are read); whether it ended.
fn within_budget(
    rows: impl Iterator<Item = rusqlite::Result<(StoredEvent, LogPlace)>>,
    limit: usize,
) -> rusqlite::Result<(Vec<(StoredEvent, LogPlace)>, bool)> {
    let mut taken = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let row = row?;
        bytes += row.0.body.len() + row.1 .1.unwrap_or(0) as usize;
        taken.push(row);
        if taken.len() >= limit || bytes >= READ_BUDGET_BYTES {
            return Ok((taken, false));
        }
    }
    Ok((taken, true))
}

fn missing(text: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(text.into())
}

/// A bound value of a scan query.
pub enum Param {
    Int(i64),
    Text(String),
}

impl ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Param::Int(value) => value.to_sql(),
            Param::Text(value) => value.to_sql(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fidelity;

    /// A row with an inline body of `inline` bytes, or one of `in_log`
    /// bytes still in the body log (read after the budget is applied).
    fn row(
        seq: i64,
        inline: usize,
        in_log: Option<i64>,
    ) -> rusqlite::Result<(StoredEvent, LogPlace)> {
        let event = StoredEvent {
            seq,
            event_type: "t".into(),
            fidelity: Fidelity::Committed,
            session_id: None,
            received_ms: 0,
            body: vec![b' '; inline],
        };
        Ok((event, (in_log.map(|_| 0), in_log)))
    }

    fn seqs(taken: &[(StoredEvent, LogPlace)]) -> Vec<i64> {
        taken.iter().map(|(event, _)| event.seq).collect()
    }

    #[test]
    fn a_read_stops_at_its_limit_its_budget_or_the_end() {
        let small = (1..=5).map(|seq| row(seq, 100, None));
        let (taken, complete) = within_budget(small.clone(), 10).unwrap();
        assert_eq!((seqs(&taken), complete), (vec![1, 2, 3, 4, 5], true));
        let (taken, complete) = within_budget(small, 3).unwrap();
        assert_eq!(
            (seqs(&taken), complete),
            (vec![1, 2, 3], false),
            "the limit"
        );
        // 900 KiB bodies: the third passes 2 MiB, inline or in the log.
        let big = 900 << 10;
        let inline = (1..=10).map(|seq| row(seq, big, None));
        let (taken, complete) = within_budget(inline, 1000).unwrap();
        assert_eq!(
            (seqs(&taken), complete),
            (vec![1, 2, 3], false),
            "the budget"
        );
        let in_log = (1..=10).map(|seq| row(seq, 0, Some(big as i64)));
        let (taken, complete) = within_budget(in_log, 1000).unwrap();
        assert_eq!((seqs(&taken), complete), (vec![1, 2, 3], false));
        // One event larger than the budget still goes, alone.
        let huge = (1..=2).map(|seq| row(seq, 3 << 20, None));
        let (taken, complete) = within_budget(huge, 1000).unwrap();
        assert_eq!((seqs(&taken), complete), (vec![1], false));
    }
}
