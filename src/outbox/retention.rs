//! The one rule for what may be deleted from the outbox.
//!
//! Nothing else in the code decides to delete events (the quota's
//! `drop_oldest` eviction is the only other way out, and it is a refusal to
//! keep, not a decision that an event is done). Every reason to keep an
//! event is a [`Holds`] field, and [`deletable_upto`] is the lowest of them.
//!
//! Dead letters never hold events back: dead-lettering copies the event into
//! its own table in the same transaction that moves the cursor past it.

use std::collections::BTreeMap;

/// Everything that may keep events in the outbox.
#[derive(Debug, Default, Clone)]
pub struct Holds {
    /// Each configured sink's cursor: every event at or below it is
    /// delivered or dead-lettered. A sink that has delivered nothing (0)
    /// holds everything.
    pub cursors: BTreeMap<String, i64>,
    /// For each session-assembling sink, the first seq still needed by a
    /// session it has not written yet (it reads a whole session when the
    /// session ends, so those events stay past its cursor).
    pub open_sessions: BTreeMap<String, i64>,
    /// The first seq the change feed must keep replayable (`feed.retain`).
    pub feed_from: Option<i64>,
}

/// The highest seq that may be deleted, if any.
pub fn deletable_upto(holds: &Holds) -> Option<i64> {
    // With no sink nothing is ever delivered, so nothing is done with.
    let delivered = holds.cursors.values().copied().min()?;
    let kept_from = holds
        .open_sessions
        .values()
        .copied()
        .chain(holds.feed_from)
        .min();
    let upto = match kept_from {
        Some(first_kept) => delivered.min(first_kept - 1),
        None => delivered,
    };
    (upto > 0).then_some(upto)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sinks(cursors: &[(&str, i64)]) -> Holds {
        Holds {
            cursors: cursors.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            ..Holds::default()
        }
    }

    #[test]
    fn no_sink_keeps_everything() {
        assert_eq!(deletable_upto(&Holds::default()), None);
        // Even when the other holds would allow some.
        let holds = Holds {
            feed_from: Some(50),
            ..Holds::default()
        };
        assert_eq!(deletable_upto(&holds), None);
    }

    #[test]
    fn the_slowest_sink_cursor_holds() {
        assert_eq!(
            deletable_upto(&sinks(&[("fast", 900), ("slow", 120)])),
            Some(120)
        );
        assert_eq!(deletable_upto(&sinks(&[("fast", 900), ("new", 0)])), None);
    }

    #[test]
    fn an_open_session_holds_its_events_past_the_cursor() {
        let mut holds = sinks(&[("sessions", 900), ("s3", 950)]);
        holds.open_sessions.insert("sessions".into(), 300);
        assert_eq!(deletable_upto(&holds), Some(299));
        holds.open_sessions.insert("other_sessions".into(), 120);
        assert_eq!(
            deletable_upto(&holds),
            Some(119),
            "every sessions sink holds"
        );
        holds.open_sessions.clear();
        holds.open_sessions.insert("sessions".into(), 1);
        assert_eq!(deletable_upto(&holds), None);
        // A session opened after the cursor holds nothing the cursor does not.
        holds.open_sessions.insert("sessions".into(), 2000);
        assert_eq!(deletable_upto(&holds), Some(900));
    }

    #[test]
    fn the_feed_window_holds_delivered_events() {
        let mut holds = sinks(&[("s3", 900)]);
        holds.feed_from = Some(701);
        assert_eq!(deletable_upto(&holds), Some(700));
        holds.open_sessions.insert("sessions".into(), 500);
        assert_eq!(deletable_upto(&holds), Some(499), "the lowest hold wins");
    }
}
