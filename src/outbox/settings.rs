//! The outbox's own settings: the `[outbox]` table, plus the few keys from
//! elsewhere it needs (where it lives, how long client ids are remembered).

use crate::units::ByteSize;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Everything [`super::open`] needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub outbox: OutboxConfig,
    /// A client-chosen id accepted within this window is a duplicate.
    pub dedup_window: Duration,
    pub dedup_max_ids: u64,
    /// Keep the index session assembly reads by (a sink assembles sessions).
    pub index_sessions: bool,
    /// Delivered events stay this long for the change feed (0: no time
    /// window), while the outbox holds less than `feed_retain_bytes` (0: no cap).
    pub feed_retain: Duration,
    pub feed_retain_bytes: u64,
}

impl Settings {
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("outbox.db")
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    Reject,
    DropOldest,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// fsync the WAL at every commit: survives power loss.
    Full,
    /// fsync only at checkpoints: survives a process crash, not power loss.
    Normal,
}

/// Where event bodies are stored.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BodyStore {
    /// In the SQLite database, with the rest of each event's row.
    Inline,
    /// A large group's bodies in the append-only body log under
    /// `data_dir/bodies/` (written once, not twice as through the WAL);
    /// the default.
    Segments,
}

/// What start-up does with an outbox database SQLite reports as corrupt.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnCorruption {
    /// Move the files aside under `data_dir/quarantine/` and start on a fresh outbox.
    Quarantine,
    /// Exit with a message; an operator decides.
    Refuse,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    pub max_bytes: ByteSize,
    pub when_full: WhenFull,
    pub sync: SyncMode,
    /// Most events one group commit takes.
    pub commit_max_events: usize,
    pub on_corruption: OnCorruption,
    /// Ingest stops while less than this is left on the outbox's disk
    /// (counting space free inside the database); 0 disables the check.
    pub min_free_disk: ByteSize,
    pub bodies: BodyStore,
    /// With `bodies = "segments"`: a new segment file starts once the
    /// active one holds this much (a segment goes once all its events did).
    pub segment_bytes: ByteSize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_bytes: ByteSize::gib(1),
            when_full: WhenFull::Reject,
            sync: SyncMode::Full,
            commit_max_events: 20_000,
            on_corruption: OnCorruption::Quarantine,
            min_free_disk: ByteSize::mib(64),
            bodies: BodyStore::Segments,
            segment_bytes: ByteSize::mib(64),
        }
    }
}
