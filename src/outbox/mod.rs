//! The SQLite outbox: where an event becomes durable before it is
//! acknowledged, and where sinks read from.
//!
//! One writer task ([`writer`]) owns every write and allocates `seq`; the
//! rest of the daemon talks to it through the [`Outbox`] handle. Reads go
//! through small pools of read-only connections: bulk reads of events on
//! plain synchronous ones ([`scan`]), the rest on sqlx's.

pub mod bodies;
mod checkpoint;
pub mod integrity;
mod open;
pub mod progress;
mod read;
pub mod reserve;
pub mod retention;
mod scan;
pub mod sessions;
mod settings;
mod writer;

pub use open::{open, OpenError, Opened};
pub use progress::SinkOp;
pub use read::{DeadLetter, SinkCursor};
pub use scan::Chunk;
pub use settings::{BodyStore, OnCorruption, OutboxConfig, Settings, SyncMode, WhenFull};

use crate::event::{Event, LiveEvent};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What a committed append reports back to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    pub accepted: usize,
    pub duplicates: usize,
    /// The highest seq in the outbox after this commit.
    pub last_seq: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// `outbox.max_bytes` is reached and `when_full = "reject"`.
    #[error("{message}")]
    Full {
        message: String,
        retry_after: Duration,
    },
    /// The request alone is larger than the whole outbox quota.
    #[error("{0}")]
    LargerThanQuota(String),
    /// The disk (or filesystem quota) is full: nothing of the request was stored.
    #[error("{0}")]
    DiskFull(String),
    /// Any other storage failure: nothing of the request was stored.
    #[error("{0}")]
    Storage(String),
    /// The daemon is shutting down.
    #[error("outboxd is shutting down")]
    Closed,
}

pub(crate) enum Command {
    Append {
        events: Vec<Event>,
        reply: oneshot::Sender<Result<AppendAck, AppendError>>,
    },
    Probe {
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Wakes an idle writer for its periodic housekeeping.
    Tick,
    /// A change to a sink's progress; replies with the rows affected.
    Sink {
        op: SinkOp,
        reply: oneshot::Sender<Result<u64, String>>,
    },
}

/// Figures the writer keeps current, read by metrics and readiness.
#[derive(Debug)]
pub struct Stats {
    pub last_seq: AtomicI64,
    pub events: AtomicU64,
    pub bytes: AtomicU64,
    /// Why the last write failed, cleared by the next successful commit.
    pub last_error: Mutex<Option<String>>,
    /// A request was refused for the quota and none has been accepted since.
    pub full: std::sync::atomic::AtomicBool,
    /// `last_seq` for waiters: delivery loops sleep on it when caught up.
    pub last_seq_watch: tokio::sync::watch::Sender<i64>,
    /// Bumped when dead letters are requeued, to wake sleeping loops.
    pub requeue_watch: tokio::sync::watch::Sender<u64>,
    /// Set when a read or write saw SQLite report corruption: the daemon
    /// restarts itself so that open checks (and quarantines) the file.
    pub corruption: tokio::sync::watch::Sender<Option<String>>,
    /// Quarantined databases waiting for an operator, for `/readyz`.
    pub quarantine: Option<String>,
    /// Committed events (and ones not stored) for the change feed's live
    /// tail; sent to only while someone listens.
    pub live: tokio::sync::broadcast::Sender<Arc<LiveEvent>>,
}

/// Events the live tail's ring keeps, shared by every subscriber: one that
/// falls further behind catches up from the outbox (stored events) instead.
pub const LIVE_BUFFER: usize = 4096;

impl Stats {
    pub fn new(last_seq: i64, events: u64, bytes: u64) -> Stats {
        Stats {
            last_seq: AtomicI64::new(last_seq),
            events: AtomicU64::new(events),
            bytes: AtomicU64::new(bytes),
            last_error: Mutex::new(None),
            full: std::sync::atomic::AtomicBool::new(false),
            last_seq_watch: tokio::sync::watch::Sender::new(last_seq),
            requeue_watch: tokio::sync::watch::Sender::new(0),
            corruption: tokio::sync::watch::Sender::new(None),
            quarantine: None,
            live: tokio::sync::broadcast::Sender::new(LIVE_BUFFER),
        }
    }

    /// Raises the corruption alarm (first reason wins).
    pub fn corrupt(&self, reason: String) {
        self.corruption.send_if_modified(|current| {
            if current.is_none() {
                tracing::error!(%reason, "SQLite reports the outbox database as corrupt");
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Raises the alarm if `error` is SQLite reporting corruption.
    pub fn observe(&self, error: &sqlx::Error) {
        if integrity::sqlx_is_corrupt(error) {
            self.corrupt(error.to_string());
        }
    }
}

/// A cloneable handle to the outbox.
#[derive(Clone)]
pub struct Outbox {
    commands: mpsc::Sender<Command>,
    readers: sqlx::SqlitePool,
    scanner: Arc<scan::Scanner>,
    stats: Arc<Stats>,
    max_bytes: u64,
}

impl Outbox {
    /// Appends one request's events as a unit: all are committed (and, with
    /// `sync = "full"`, fsynced) before this returns Ok, or none are.
    pub async fn append(&self, events: Vec<Event>) -> Result<AppendAck, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append { events, reply })
            .await
            .map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }

    /// Ok when the writer answers promptly and its last write succeeded.
    pub async fn check_writable(&self) -> Result<(), String> {
        match self.probe_writer().await? {
            Some(last_error) => Err(last_error),
            None => Ok(()),
        }
    }

    /// Err when the writer thread does not answer within 2 s (stopped or
    /// wedged); otherwise the error of its last write, if that failed.
    pub async fn probe_writer(&self) -> Result<Option<String>, String> {
        let (reply, answer) = oneshot::channel();
        let probe = async {
            self.commands
                .send(Command::Probe { reply })
                .await
                .map_err(|_| "the outbox writer has stopped".to_string())?;
            answer
                .await
                .map_err(|_| "the outbox writer has stopped".to_string())
        };
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(answered) => answered.map(|state| state.err()),
            Err(_) => Err("the outbox writer did not answer within 2s".into()),
        }
    }

    /// Applies a change to a sink's progress durably (through the writer).
    pub async fn sink_op(&self, op: SinkOp) -> Result<u64, String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Sink { op, reply })
            .await
            .map_err(|_| "the outbox writer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the outbox writer has stopped".to_string())?
    }

    /// Changes whenever dead letters are requeued.
    pub fn watch_requeues(&self) -> tokio::sync::watch::Receiver<u64> {
        self.stats.requeue_watch.subscribe()
    }

    /// Changes whenever new events are committed.
    /// The live tail: every event committed from now on, in seq order, and
    /// those `ingest.store` skipped, as they arrive.
    pub fn subscribe_live(&self) -> tokio::sync::broadcast::Receiver<Arc<LiveEvent>> {
        self.stats.live.subscribe()
    }

    /// Hands events that are not stored to live subscribers, if any.
    pub fn publish_unstored(&self, events: impl Iterator<Item = LiveEvent>) {
        if self.stats.live.receiver_count() > 0 {
            for event in events {
                let _ = self.stats.live.send(Arc::new(event));
            }
        }
    }

    pub fn watch_last_seq(&self) -> tokio::sync::watch::Receiver<i64> {
        self.stats.last_seq_watch.subscribe()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn last_seq(&self) -> i64 {
        self.stats.last_seq.load(Ordering::Relaxed)
    }

    /// Receive time (unix ms) of the oldest event in the outbox.
    /// Closes the reader connections (all handles share them), so that the
    /// writer closes the database last and leaves no WAL behind.
    pub async fn close_readers(&self) {
        self.scanner.close();
        self.readers.close().await;
    }

    pub async fn oldest_received_ms(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT received_ms FROM events ORDER BY seq LIMIT 1")
            .fetch_optional(&self.readers)
            .await
    }
}
