//! What ingest keeps (`ingest.store`, `ingest.ephemeral_types`): events are
//! sorted before they reach the disk, so a UI's token deltas need not cost
//! an fsync. The decision is per event, by type and fidelity only.

use crate::event::{Event, Fidelity};
use glob::Pattern;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreMode {
    /// Every event.
    #[default]
    Full,
    /// Committed, domain and control events; `observed` ones (token deltas,
    /// progress) are not stored.
    Compacted,
    /// Nothing: events only pass through to live subscribers.
    None,
}

/// Why an event was not stored (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    Ephemeral,
    Observed,
    StoreNone,
}

impl Skipped {
    pub fn label(self) -> &'static str {
        match self {
            Skipped::Ephemeral => "ephemeral_type",
            Skipped::Observed => "observed",
            Skipped::StoreNone => "store_none",
        }
    }
}

pub struct StorePolicy {
    mode: StoreMode,
    ephemeral: Vec<Pattern>,
}

impl StorePolicy {
    /// `ephemeral_types` are checked globs (config validation); a bad one
    /// here is left out rather than trusted.
    pub fn new(mode: StoreMode, ephemeral_types: &[String]) -> StorePolicy {
        StorePolicy {
            mode,
            ephemeral: ephemeral_types
                .iter()
                .filter_map(|p| Pattern::new(p).ok())
                .collect(),
        }
    }

    /// Whether every event is stored (the common case: nothing to sort).
    pub fn stores_everything(&self) -> bool {
        self.mode == StoreMode::Full && self.ephemeral.is_empty()
    }

    /// None when the event is stored, else why not.
    pub fn skips(&self, event: &Event) -> Option<Skipped> {
        if self.ephemeral.iter().any(|p| p.matches(&event.event_type)) {
            return Some(Skipped::Ephemeral);
        }
        match self.mode {
            StoreMode::Full => None,
            StoreMode::Compacted => {
                (event.fidelity == Fidelity::Observed).then_some(Skipped::Observed)
            }
            StoreMode::None => Some(Skipped::StoreNone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, fidelity: Fidelity) -> Event {
        Event {
            id: "e".into(),
            client_id: false,
            event_type: event_type.into(),
            session_id: None,
            fidelity,
            received_ms: 0,
            body: "{}".into(),
        }
    }

    #[test]
    fn each_mode_keeps_what_it_says() {
        let delta = event("message.delta", Fidelity::Observed);
        let message = event("message", Fidelity::Committed);
        let ended = event("run.finished", Fidelity::Control);
        let full = StorePolicy::new(StoreMode::Full, &[]);
        assert!(full.stores_everything());
        assert_eq!(
            [&delta, &message, &ended].map(|e| full.skips(e)),
            [None, None, None]
        );
        let compacted = StorePolicy::new(StoreMode::Compacted, &[]);
        assert!(!compacted.stores_everything());
        assert_eq!(
            [&delta, &message, &ended].map(|e| compacted.skips(e)),
            [Some(Skipped::Observed), None, None]
        );
        let none = StorePolicy::new(StoreMode::None, &[]);
        assert_eq!(none.skips(&ended), Some(Skipped::StoreNone));
    }

    #[test]
    fn ephemeral_types_are_never_stored_whatever_the_mode() {
        let policy = StorePolicy::new(StoreMode::Full, &["*.heartbeat".into(), "ui.*".into()]);
        assert!(!policy.stores_everything());
        assert_eq!(
            policy.skips(&event("agent.heartbeat", Fidelity::Control)),
            Some(Skipped::Ephemeral)
        );
        assert_eq!(
            policy.skips(&event("ui.cursor", Fidelity::Committed)),
            Some(Skipped::Ephemeral)
        );
        assert_eq!(policy.skips(&event("heartbeat", Fidelity::Control)), None);
    }
}
