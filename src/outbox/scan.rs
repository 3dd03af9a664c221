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
    /// `body_at, body_len`) with `params` on a
    /// blocking thread; SQLite's corruption reports raise the alarm in `stats`.
    pub async fn events(
        self: &Arc<Self>,
        stats: &Stats,
        sql: &'static str,
        params: Vec<Param>,
    ) -> Result<Vec<StoredEvent>, sqlx::Error> {
        let scanner = self.clone();
        let result = tokio::task::spawn_blocking(move || scanner.query(sql, &params))
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

    fn query(&self, sql: &str, params: &[Param]) -> rusqlite::Result<Vec<StoredEvent>> {
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
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .and_then(|rows| self.fill_bodies(rows))
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
