//! The event envelope: what one agent event is once outboxd accepted it.
//!
//! Parsing (JSON, NDJSON, CloudEvents) lives in [`parse`]; every format ends
//! in the same [`Event`], whose `body` is the canonical JSON stored in the
//! outbox and sent to sinks.

pub mod json;
pub mod parse;

use serde::{Deserialize, Serialize};

/// How durable an event's meaning is. Ordered: `min_fidelity` filters keep
/// an event whose fidelity is at least the given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fidelity {
    /// Streaming observations such as token deltas.
    Observed = 0,
    /// Messages, tool calls and results: the default.
    Committed = 1,
    /// Domain records derived from the run.
    Domain = 2,
    /// Run lifecycle and control signals.
    Control = 3,
}

impl Fidelity {
    pub fn parse(text: &str) -> Option<Fidelity> {
        match text {
            "observed" => Some(Fidelity::Observed),
            "committed" => Some(Fidelity::Committed),
            "domain" => Some(Fidelity::Domain),
            "control" => Some(Fidelity::Control),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fidelity::Observed => "observed",
            Fidelity::Committed => "committed",
            Fidelity::Domain => "domain",
            Fidelity::Control => "control",
        }
    }

    pub fn from_i64(n: i64) -> Option<Fidelity> {
        [
            Fidelity::Observed,
            Fidelity::Committed,
            Fidelity::Domain,
            Fidelity::Control,
        ]
        .into_iter()
        .find(|f| *f as i64 == n)
    }
}

/// An accepted, normalised event, ready to be appended to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    /// True when the client chose the id: only those take part in dedup,
    /// since an id outboxd generated cannot have been sent before.
    pub client_id: bool,
    pub event_type: String,
    pub session_id: Option<String>,
    pub fidelity: Fidelity,
    /// Receive time, unix milliseconds.
    pub received_ms: i64,
    /// The canonical JSON envelope (one line, no trailing newline).
    pub body: String,
}

impl Event {
    /// Bytes this event counts against `outbox.max_bytes`: its body plus a
    /// fixed allowance for the row, index and dedup entries.
    pub fn stored_bytes(&self) -> u64 {
        self.body.len() as u64 + ROW_OVERHEAD_BYTES
    }
}

/// An event as read back from the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub event_type: String,
    pub fidelity: Fidelity,
    pub session_id: Option<String>,
    pub received_ms: i64,
    /// The canonical JSON envelope.
    pub body: Vec<u8>,
}

/// An event as live subscribers of the change feed see it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    /// None for an event `ingest.store` did not keep: it cannot be replayed.
    pub seq: Option<i64>,
    pub event_type: String,
    pub session_id: Option<String>,
    /// The canonical JSON envelope.
    pub body: String,
}

/// Per-event allowance for row and index overhead in the byte quota.
pub const ROW_OVERHEAD_BYTES: u64 = 64;
