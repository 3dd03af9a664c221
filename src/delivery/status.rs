//! What a sink's loop reports about itself, for `GET /v1/sinks`,
//! `outboxd status` and the per-sink metrics.

use crate::clock::now_ms;
use crate::telemetry::names;
use serde::Serialize;
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    Running,
    Backoff,
    Halted,
    /// An operator paused it (`outboxd sink pause`).
    Paused,
}

const STATES: [SinkState; 4] = [
    SinkState::Running,
    SinkState::Backoff,
    SinkState::Halted,
    SinkState::Paused,
];

impl SinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkState::Running => "running",
            SinkState::Backoff => "backoff",
            SinkState::Halted => "halted",
            SinkState::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub state: SinkState,
    pub cursor: i64,
    /// The batch in flight, if any.
    pub batch: Option<(i64, i64)>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
}

pub struct SinkStatus {
    pub name: String,
    pub kind: &'static str,
    inner: Mutex<Snapshot>,
    /// Set by an operator; the loop waits while it is true. Not stored: a
    /// restart resumes every sink.
    paused: tokio::sync::watch::Sender<bool>,
}

impl SinkStatus {
    pub fn new(name: &str, kind: &'static str, cursor: i64) -> SinkStatus {
        let status = SinkStatus {
            name: name.to_string(),
            kind,
            inner: Mutex::new(Snapshot {
                state: SinkState::Running,
                cursor,
                batch: None,
                last_error: None,
                last_error_ms: None,
                last_success_ms: None,
            }),
            paused: tokio::sync::watch::Sender::new(false),
        };
        status.publish_state(SinkState::Running);
        status
    }

    /// Pauses (true) or resumes (false) the sink; true when that changed anything.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.paused.send_if_modified(|current| {
            let changed = *current != paused;
            *current = paused;
            changed
        })
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    pub fn watch_paused(&self) -> tokio::sync::watch::Receiver<bool> {
        self.paused.subscribe()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().expect("status lock").clone()
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        change(&mut self.inner.lock().expect("status lock"));
    }

    pub fn set_state(&self, state: SinkState) {
        let previous = self.snapshot().state;
        self.update(|s| s.state = state);
        if previous != state {
            tracing::info!(sink = %self.name, state = state.as_str(), "sink state");
            self.publish_state(state);
        }
    }

    fn publish_state(&self, state: SinkState) {
        for candidate in STATES {
            metrics::gauge!(names::SINK_STATE, "sink" => self.name.clone(), "state" => candidate.as_str())
                .set(if candidate == state { 1.0 } else { 0.0 });
        }
    }

    pub fn batch(&self, batch: Option<(i64, i64)>) {
        self.update(|s| s.batch = batch);
    }

    pub fn failed(&self, reason: &str) {
        self.update(|s| {
            s.last_error = Some(reason.to_string());
            s.last_error_ms = Some(now_ms());
        });
    }

    pub fn succeeded(&self) {
        self.update(|s| s.last_success_ms = Some(now_ms()));
        self.set_state(SinkState::Running);
    }

    pub fn advanced(&self, cursor: i64) {
        self.update(|s| {
            s.cursor = s.cursor.max(cursor);
            s.batch = None;
        });
    }

    /// The sink was removed by a reload: its gauges drop to 0, so no alert
    /// keeps firing on a sink that no longer runs (until the next start the
    /// series stays exported).
    pub fn retire(&self) {
        for candidate in STATES {
            metrics::gauge!(names::SINK_STATE, "sink" => self.name.clone(), "state" => candidate.as_str())
                .set(0.0);
        }
        metrics::gauge!(names::SINK_LAG_EVENTS, "sink" => self.name.clone()).set(0.0);
        metrics::gauge!(names::SINK_LAG_SECONDS, "sink" => self.name.clone()).set(0.0);
        self.batches_in_flight(0);
    }

    pub fn batches_in_flight(&self, batches: usize) {
        metrics::gauge!(names::SINK_IN_FLIGHT, "sink" => self.name.clone()).set(batches as f64);
    }
}

/// The running sinks' statuses, in config order, shared by the API, the
/// metrics and the supervisor, which replaces the list on reload.
#[derive(Clone, Default)]
pub struct SinkRegistry(Arc<RwLock<Arc<Vec<Arc<SinkStatus>>>>>);

impl SinkRegistry {
    /// The sinks running now (a snapshot: a reload does not change it).
    pub fn list(&self) -> Arc<Vec<Arc<SinkStatus>>> {
        self.0.read().expect("registry lock").clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<SinkStatus>> {
        self.list().iter().find(|s| s.name == name).cloned()
    }

    pub fn replace(&self, statuses: Vec<Arc<SinkStatus>>) {
        *self.0.write().expect("registry lock") = Arc::new(statuses);
    }
}
