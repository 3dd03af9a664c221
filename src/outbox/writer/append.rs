//! Planning one group's append: which events are duplicates, what the quota
//! allows (refusing or evicting), and the seqs each request gets.

use super::{Reply, WriterSettings};
use crate::event::{Event, ROW_OVERHEAD_BYTES};
use crate::outbox::{AppendError, Stats, WhenFull};
use rusqlite::{OptionalExtension, Transaction};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub(super) const RETRY_AFTER_FULL: Duration = Duration::from_secs(1);

/// One request in a group, with what the plan decided for it.
pub(super) struct Pending {
    pub(super) events: Vec<Event>,
    pub(super) reply: Reply,
    /// Per event: false when it is a duplicate of an accepted id.
    pub(super) fresh: Vec<bool>,
    pub(super) first_seq: i64,
    pub(super) accepted: usize,
}

impl Pending {
    /// The events this request stores (its duplicates left out), each with
    /// the seq it gets.
    pub(super) fn stored(&self) -> impl Iterator<Item = (&Event, i64)> {
        self.events
            .iter()
            .zip(&self.fresh)
            .filter(|(_, fresh)| **fresh)
            .map(|(event, _)| event)
            .zip(self.first_seq..)
    }
}

/// What one group's transaction must do.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) evict_bytes: u64,
    pub(super) events: i64,
    pub(super) bytes: i64,
}

/// Marks events whose client id was accepted within the dedup window as
/// not fresh.
pub(super) fn mark_known(
    tx: &Transaction,
    group: &mut [Pending],
    cutoff: i64,
) -> rusqlite::Result<()> {
    let mut lookup = tx.prepare_cached("SELECT accepted_ms FROM dedup WHERE id = ?1")?;
    for pending in group.iter_mut() {
        for (event, fresh) in pending.events.iter().zip(pending.fresh.iter_mut()) {
            if !event.client_id {
                continue;
            }
            let accepted: Option<i64> =
                lookup.query_row([&event.id], |row| row.get(0)).optional()?;
            if accepted.is_some_and(|ms| ms >= cutoff) {
                *fresh = false;
            }
        }
    }
    Ok(())
}

/// Marks duplicates within the group, applies the quota and assigns seqs.
/// Requests refused for the quota are answered here and removed from `group`.
pub(super) fn plan(
    group: &mut Vec<Pending>,
    settings: &WriterSettings,
    used_before: u64,
    last_seq: i64,
    stats: &Stats,
) -> Plan {
    let mut plan = Plan::default();
    let max = settings.max_bytes;
    let mut refusals: Vec<Option<AppendError>> = Vec::with_capacity(group.len());
    {
        // Ids accepted by earlier requests of this group (not by refused ones).
        let mut seen: HashSet<&str> = HashSet::new();
        for pending in group.iter_mut() {
            let Pending {
                events,
                fresh,
                first_seq,
                accepted,
                ..
            } = pending;
            let events: &Vec<Event> = events;
            let mut bytes = 0u64;
            let mut count = 0usize;
            for (event, fresh) in events.iter().zip(fresh.iter_mut()) {
                if *fresh && event.client_id && seen.contains(event.id.as_str()) {
                    *fresh = false;
                }
                if *fresh {
                    bytes += event.stored_bytes();
                    count += 1;
                }
            }
            let used = used_before + plan.bytes as u64 - plan.evict_bytes;
            if count > 0 && used + bytes > max {
                if bytes > max {
                    refusals.push(Some(AppendError::LargerThanQuota(format!(
                        "the request needs {bytes} bytes, more than the whole outbox (outbox.max_bytes = {max})"
                    ))));
                    continue;
                }
                // Only committed events can be evicted; this group alone may overflow.
                if settings.when_full == WhenFull::Reject
                    || plan.evict_bytes + (used + bytes - max) > used_before
                {
                    stats.full.store(true, Ordering::Relaxed);
                    refusals.push(Some(AppendError::Full {
                        message: format!("outbox is full ({used} of {max} bytes); retry later"),
                        retry_after: RETRY_AFTER_FULL,
                    }));
                    continue;
                }
                plan.evict_bytes += used + bytes - max;
            }
            seen.extend(
                events
                    .iter()
                    .zip(fresh.iter())
                    .filter(|(event, fresh)| **fresh && event.client_id)
                    .map(|(event, _)| event.id.as_str()),
            );
            *first_seq = last_seq + plan.events + 1;
            *accepted = count;
            plan.events += count as i64;
            plan.bytes += bytes as i64;
            refusals.push(None);
        }
    }
    let mut kept = Vec::with_capacity(group.len());
    for (pending, refusal) in group.drain(..).zip(refusals) {
        match refusal {
            Some(error) => {
                let _ = pending.reply.send(Err(error));
            }
            None => kept.push(pending),
        }
    }
    *group = kept;
    plan
}

/// Deletes the oldest events until at least `needed` bytes are freed;
/// returns (events, bytes) freed and the seq every event up to which is gone.
pub(super) fn evict_oldest(tx: &Transaction, needed: u64) -> rusqlite::Result<(i64, i64, i64)> {
    let (mut freed, mut count, mut upto) = (0u64, 0i64, 0i64);
    {
        let mut oldest = tx.prepare_cached(
            "SELECT seq, length(body) + IFNULL(body_len, 0) FROM events ORDER BY seq",
        )?;
        let mut rows = oldest.query([])?;
        while let Some(row) = rows.next()? {
            freed += row.get::<_, i64>(1)? as u64 + ROW_OVERHEAD_BYTES;
            count += 1;
            upto = row.get(0)?;
            if freed >= needed {
                break;
            }
        }
    }
    tx.execute("DELETE FROM events WHERE seq <= ?1", [upto])?;
    Ok((count, freed as i64, upto))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fidelity;
    use crate::outbox::AppendAck;
    use tokio::sync::oneshot;

    type Answer = oneshot::Receiver<Result<AppendAck, AppendError>>;

    /// An event of `body_bytes` whose stored size is `body_bytes + 64`.
    fn event(id: &str, client_id: bool, body_bytes: usize) -> Event {
        Event {
            id: id.into(),
            client_id,
            event_type: "t".into(),
            session_id: None,
            fidelity: Fidelity::Committed,
            received_ms: 0,
            body: "x".repeat(body_bytes),
        }
    }

    fn request(events: Vec<Event>) -> (Pending, Answer) {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            fresh: vec![true; events.len()],
            events,
            reply,
            first_seq: 0,
            accepted: 0,
        };
        (pending, answer)
    }

    fn settings(max_bytes: u64, when_full: WhenFull) -> WriterSettings {
        WriterSettings {
            max_bytes,
            when_full,
            commit_max_events: 1000,
            dedup_window_ms: 60_000,
            dedup_max_ids: 1000,
            data_dir: std::path::PathBuf::from("unused"),
            min_free_disk: 0,
            feed_retain_ms: 0,
            feed_retain_bytes: 0,
            bodies_in_log: false,
        }
    }

    /// Each request's (first_seq, accepted), for the ones the plan kept.
    fn seqs(group: &[Pending]) -> Vec<(i64, usize)> {
        group.iter().map(|p| (p.first_seq, p.accepted)).collect()
    }

    #[test]
    fn seqs_follow_on_across_the_requests_of_a_group() {
        let stats = Stats::new(41, 0, 0);
        let (a, _) = request(vec![event("a", false, 100), event("b", false, 100)]);
        let (b, _) = request(vec![event("c", false, 100)]);
        let mut group = vec![a, b];
        let planned = plan(
            &mut group,
            &settings(1 << 20, WhenFull::Reject),
            0,
            41,
            &stats,
        );
        assert_eq!(seqs(&group), [(42, 2), (44, 1)]);
        assert_eq!(
            (planned.events, planned.bytes, planned.evict_bytes),
            (3, 3 * 164, 0)
        );
    }

    #[test]
    fn a_client_id_repeated_by_a_later_request_of_the_group_is_a_duplicate() {
        let stats = Stats::new(0, 0, 0);
        let (a, _) = request(vec![event("same", true, 10)]);
        let (b, _) = request(vec![event("same", true, 10), event("new", true, 10)]);
        // Generated ids never take part in dedup, even when equal.
        let (c, _) = request(vec![event("same", false, 10)]);
        let mut group = vec![a, b, c];
        let planned = plan(
            &mut group,
            &settings(1 << 20, WhenFull::Reject),
            0,
            0,
            &stats,
        );
        assert_eq!(seqs(&group), [(1, 1), (2, 1), (3, 1)]);
        assert_eq!(group[1].fresh, [false, true]);
        assert_eq!(planned.events, 3);
    }

    #[test]
    fn over_the_quota_with_reject_only_that_request_is_refused() {
        let stats = Stats::new(10, 0, 0);
        // 1000 bytes of quota, 700 used: 164 fits, 2 x 164 = 328 does not.
        let (fits, _) = request(vec![event("a", false, 100)]);
        let (too_many, mut refused) = request(vec![event("b", false, 100), event("c", false, 100)]);
        let (also_fits, _) = request(vec![event("d", false, 50)]);
        let mut group = vec![fits, too_many, also_fits];
        let planned = plan(
            &mut group,
            &settings(1000, WhenFull::Reject),
            700,
            10,
            &stats,
        );
        assert_eq!(seqs(&group), [(11, 1), (12, 1)]);
        assert_eq!(planned.evict_bytes, 0);
        assert!(matches!(
            refused.try_recv(),
            Ok(Err(AppendError::Full { .. }))
        ));
        assert!(stats.full.load(Ordering::Relaxed));
    }

    #[test]
    fn with_drop_oldest_the_overflow_is_evicted_but_only_from_what_was_committed() {
        let stats = Stats::new(0, 0, 0);
        let (a, _) = request(vec![event("a", false, 236)]); // 300 bytes
        let mut group = vec![a];
        let planned = plan(
            &mut group,
            &settings(1000, WhenFull::DropOldest),
            900,
            0,
            &stats,
        );
        assert_eq!(planned.evict_bytes, 200);
        assert_eq!(seqs(&group), [(1, 1)]);

        // The group's own events cannot be evicted: with 100 committed,
        // 500 fits, and 600 more would need 200 evicted, more than there is.
        let (b, _) = request(vec![event("b", false, 436)]);
        let (c, mut refused) = request(vec![event("c", false, 536)]);
        let mut group = vec![b, c];
        let planned = plan(
            &mut group,
            &settings(1000, WhenFull::DropOldest),
            100,
            0,
            &stats,
        );
        assert_eq!(planned.evict_bytes, 0);
        assert_eq!(seqs(&group), [(1, 1)]);
        assert!(matches!(
            refused.try_recv(),
            Ok(Err(AppendError::Full { .. }))
        ));
    }

    #[test]
    fn a_request_larger_than_the_whole_quota_is_refused_as_such() {
        let stats = Stats::new(0, 0, 0);
        let (huge, mut refused) = request(vec![event("a", false, 2000)]);
        let mut group = vec![huge];
        let planned = plan(
            &mut group,
            &settings(1000, WhenFull::DropOldest),
            0,
            0,
            &stats,
        );
        assert!(group.is_empty());
        assert_eq!(planned.events, 0);
        assert!(matches!(
            refused.try_recv(),
            Ok(Err(AppendError::LargerThanQuota(_)))
        ));
    }
}
