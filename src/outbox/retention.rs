//! The one rule for what may be deleted from the outbox.
//!
//! An event may go once every configured sink's cursor is past it. With no
//! sink configured nothing is deleted here (the quota's `drop_oldest` is the
//! only other way out). Holds planned for later (the change feed's retention
//! window, sessions still open for a session-assembling format) join this
//! function as further lower bounds; nothing else in the code deletes events.

use std::collections::BTreeMap;

/// The highest seq that may be deleted, if any.
pub fn deletable_upto(cursors: &BTreeMap<String, i64>) -> Option<i64> {
    cursors.values().copied().min().filter(|seq| *seq > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_sink_decides_and_no_sink_keeps_everything() {
        let mut cursors = BTreeMap::new();
        assert_eq!(deletable_upto(&cursors), None);
        cursors.insert("fast".to_string(), 900);
        cursors.insert("slow".to_string(), 120);
        assert_eq!(deletable_upto(&cursors), Some(120));
        cursors.insert("new".to_string(), 0);
        assert_eq!(deletable_upto(&cursors), None);
    }
}
