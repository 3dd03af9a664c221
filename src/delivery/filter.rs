//! Which events a sink receives: `include_types` / `exclude_types` globs
//! and `min_fidelity`. Skipped events still advance the sink's cursor.

use crate::event::Fidelity;
use crate::event::StoredEvent;
use crate::sinks::config::SinkConfig;
use glob::Pattern;

pub struct Filter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
    min_fidelity: Fidelity,
}

impl Filter {
    pub fn new(config: &SinkConfig) -> Filter {
        let compile = |patterns: &[String]| {
            patterns
                .iter()
                .filter_map(|p| Pattern::new(p).ok())
                .collect()
        };
        Filter {
            include: compile(&config.include_types),
            exclude: compile(&config.exclude_types),
            min_fidelity: config.min_fidelity,
        }
    }

    pub fn matches(&self, event: &StoredEvent) -> bool {
        event.fidelity >= self.min_fidelity
            && (self.include.is_empty()
                || self.include.iter().any(|p| p.matches(&event.event_type)))
            && !self.exclude.iter().any(|p| p.matches(&event.event_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, fidelity: Fidelity) -> StoredEvent {
        StoredEvent {
            seq: 1,
            event_type: event_type.into(),
            fidelity,
            session_id: None,
            received_ms: 0,
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn globs_and_fidelity_decide() {
        let filter = Filter {
            include: vec![
                Pattern::new("tool.*").unwrap(),
                Pattern::new("message.created").unwrap(),
            ],
            exclude: vec![Pattern::new("tool.debug*").unwrap()],
            min_fidelity: Fidelity::Committed,
        };
        assert!(filter.matches(&event("tool.called", Fidelity::Committed)));
        assert!(filter.matches(&event("message.created", Fidelity::Control)));
        assert!(!filter.matches(&event("tool.debug.trace", Fidelity::Committed)));
        assert!(!filter.matches(&event("reasoning", Fidelity::Committed)));
        assert!(!filter.matches(&event("tool.called", Fidelity::Observed)));
    }
}
