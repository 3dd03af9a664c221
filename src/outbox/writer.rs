//! The single writer: every write to the outbox goes through this task.
//!
//! Requests that arrive while a commit is in flight are committed together
//! (one transaction, one fsync: group commit). Because one task allocates
//! `seq` and commits in order, seq order is commit order. A request is the
//! unit of success: it is in the group's transaction whole or not at all.

use super::open::close;
use super::{now_ms, AppendAck, AppendError, Command, Stats};
use crate::config::{Config, WhenFull};
use crate::event::{Event, ROW_OVERHEAD_BYTES};
use crate::telemetry::names;
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Rows per multi-row statement (7 bound values each, well under SQLite's limit).
const ROWS_PER_STATEMENT: usize = 1000;
/// Dedup rows removed per pruning pass, so a pass never stalls commits for long.
const PRUNE_CHUNK: i64 = 50_000;
const RETRY_AFTER_FULL: Duration = Duration::from_secs(1);

pub struct WriterSettings {
    pub max_bytes: u64,
    pub when_full: WhenFull,
    pub commit_max_events: usize,
    pub dedup_window_ms: i64,
    pub dedup_max_ids: i64,
}

impl WriterSettings {
    pub fn from_config(config: &Config) -> Self {
        WriterSettings {
            max_bytes: config.outbox.max_bytes.0,
            when_full: config.outbox.when_full,
            commit_max_events: config.outbox.commit_max_events,
            dedup_window_ms: config.ingest.dedup_window.0.as_millis() as i64,
            dedup_max_ids: config.ingest.dedup_max_ids as i64,
        }
    }
}

pub struct Writer {
    connection: SqliteConnection,
    settings: WriterSettings,
    stats: Arc<Stats>,
    last_seq: i64,
    events: i64,
    bytes: i64,
    /// Never goes back, even if the wall clock does: dedup expiry relies on it.
    last_ms: i64,
}

type Reply = oneshot::Sender<Result<AppendAck, AppendError>>;

/// One request in a group, with what the plan decided for it.
struct Pending {
    events: Vec<Event>,
    reply: Reply,
    /// Per event: false when it is a duplicate of an accepted id.
    fresh: Vec<bool>,
    first_seq: i64,
    accepted: usize,
}

/// What one group's transaction must do.
#[derive(Default)]
struct Plan {
    evict_bytes: u64,
    events: i64,
    bytes: i64,
}

struct Committed {
    evicted_events: i64,
    evicted_bytes: i64,
}

impl Writer {
    pub fn new(
        connection: SqliteConnection,
        settings: WriterSettings,
        stats: Arc<Stats>,
        last_seq: i64,
        events: i64,
        bytes: i64,
    ) -> Self {
        Writer {
            connection,
            settings,
            stats,
            last_seq,
            events,
            bytes,
            last_ms: now_ms(),
        }
    }

    /// Runs until every [`super::Outbox`] handle is dropped, then closes the database.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        self.publish();
        let mut prune = tokio::time::interval(Duration::from_secs(1));
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => command,
                    None => break,
                },
                _ = prune.tick() => {
                    self.prune_dedup().await;
                    continue;
                }
            };
            let mut group = Vec::new();
            let mut events = 0;
            self.take(first, &mut group, &mut events);
            while events < self.settings.commit_max_events {
                match inbox.try_recv() {
                    Ok(command) => self.take(command, &mut group, &mut events),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit(group).await;
            }
        }
        close(self.connection).await;
        tracing::debug!("outbox writer stopped");
    }

    fn take(&self, command: Command, group: &mut Vec<Pending>, events: &mut usize) {
        match command {
            Command::Probe { reply } => {
                let state = self.stats.last_error.lock().expect("stats lock").clone();
                let _ = reply.send(state.map_or(Ok(()), Err));
            }
            Command::Append {
                events: batch,
                reply,
            } => {
                *events += batch.len();
                group.push(Pending {
                    fresh: vec![true; batch.len()],
                    events: batch,
                    reply,
                    first_seq: 0,
                    accepted: 0,
                });
            }
        }
    }

    async fn commit(&mut self, mut group: Vec<Pending>) {
        let started = Instant::now();
        self.last_ms = self.last_ms.max(now_ms());
        let known = match self.known_ids(&group).await {
            Ok(known) => known,
            Err(e) => return self.fail(group, e).await,
        };
        let (plan, refused) = self.plan(&mut group, &known);
        if refused
            .iter()
            .any(|(_, e)| matches!(e, AppendError::Full { .. }))
        {
            self.stats.full.store(true, Ordering::Relaxed);
        }
        for (pending, error) in refused {
            let _ = pending.reply.send(Err(error));
        }
        if group.is_empty() {
            return;
        }
        let committed = match self.write(&group, &plan).await {
            Ok(committed) => committed,
            Err(e) => return self.fail(group, e).await,
        };
        self.last_seq += plan.events;
        self.events += plan.events - committed.evicted_events;
        self.bytes += plan.bytes - committed.evicted_bytes;
        *self.stats.last_error.lock().expect("stats lock") = None;
        if plan.events > 0 {
            self.stats.full.store(false, Ordering::Relaxed);
        }
        self.publish();
        let total: usize = group.iter().map(|p| p.events.len()).sum();
        metrics::histogram!(names::COMMIT_BATCH_EVENTS).record(total as f64);
        metrics::histogram!(names::COMMIT_DURATION).record(started.elapsed().as_secs_f64());
        if committed.evicted_events > 0 {
            metrics::counter!(names::OUTBOX_EVICTED).increment(committed.evicted_events as u64);
            tracing::warn!(
                events = committed.evicted_events,
                "outbox full: evicted the oldest events"
            );
        }
        for pending in group {
            let ack = AppendAck {
                accepted: pending.accepted,
                duplicates: pending.events.len() - pending.accepted,
                last_seq: self.last_seq,
            };
            let _ = pending.reply.send(Ok(ack));
        }
    }

    /// Client ids of this group already accepted within the dedup window.
    async fn known_ids(&mut self, group: &[Pending]) -> Result<HashSet<String>, sqlx::Error> {
        let ids: Vec<&str> = group
            .iter()
            .flat_map(|p| {
                p.events
                    .iter()
                    .filter(|e| e.client_id)
                    .map(|e| e.id.as_str())
            })
            .collect();
        let cutoff = self.last_ms - self.settings.dedup_window_ms;
        let mut known = HashSet::new();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut query =
                QueryBuilder::<Sqlite>::new("SELECT id FROM dedup WHERE accepted_ms >= ");
            query.push_bind(cutoff).push(" AND id IN (");
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            query.push(")");
            let rows: Vec<String> = query
                .build_query_scalar()
                .persistent(false)
                .fetch_all(&mut self.connection)
                .await?;
            known.extend(rows);
        }
        Ok(known)
    }

    /// Marks duplicates, applies the quota, assigns seqs. Returns the plan
    /// and the requests refused (removed from `group`).
    fn plan(
        &self,
        group: &mut Vec<Pending>,
        known: &HashSet<String>,
    ) -> (Plan, Vec<(Pending, AppendError)>) {
        let mut plan = Plan::default();
        // Ids accepted by earlier requests of this group (not by refused ones).
        let mut seen: HashSet<String> = HashSet::new();
        let mut refused = Vec::new();
        let mut kept = Vec::with_capacity(group.len());
        let max = self.settings.max_bytes;
        for mut pending in group.drain(..) {
            let mut bytes = 0u64;
            let mut accepted = 0usize;
            for (event, fresh) in pending.events.iter().zip(pending.fresh.iter_mut()) {
                if event.client_id
                    && (known.contains(&event.id) || seen.contains(event.id.as_str()))
                {
                    *fresh = false;
                    continue;
                }
                bytes += event.stored_bytes();
                accepted += 1;
            }
            let used = self.bytes as u64 + plan.bytes as u64 - plan.evict_bytes;
            if accepted > 0 && used + bytes > max {
                let refusal = if bytes > max {
                    Some(AppendError::LargerThanQuota(format!(
                        "the request needs {bytes} bytes, more than the whole outbox (outbox.max_bytes = {max})"
                    )))
                } else if self.settings.when_full == WhenFull::Reject {
                    Some(AppendError::Full {
                        message: format!(
                            "outbox is full ({used} of {max} bytes); retry later (outbox.when_full = \"reject\")"
                        ),
                        retry_after: RETRY_AFTER_FULL,
                    })
                } else if plan.evict_bytes + (used + bytes - max) > self.bytes as u64 {
                    // Only committed events can be evicted; this group alone overflows.
                    Some(AppendError::Full {
                        message: format!("outbox is full ({used} of {max} bytes) with events of this very commit"),
                        retry_after: RETRY_AFTER_FULL,
                    })
                } else {
                    plan.evict_bytes += used + bytes - max;
                    None
                };
                if let Some(error) = refusal {
                    refused.push((pending, error));
                    continue;
                }
            }
            for (event, fresh) in pending.events.iter().zip(&pending.fresh) {
                if *fresh && event.client_id {
                    seen.insert(event.id.clone());
                }
            }
            pending.first_seq = self.last_seq + plan.events + 1;
            pending.accepted = accepted;
            plan.events += accepted as i64;
            plan.bytes += bytes as i64;
            kept.push(pending);
        }
        *group = kept;
        (plan, refused)
    }

    async fn write(&mut self, group: &[Pending], plan: &Plan) -> Result<Committed, sqlx::Error> {
        let mut tx = self.connection.begin().await?;
        let mut committed = Committed {
            evicted_events: 0,
            evicted_bytes: 0,
        };
        if plan.evict_bytes > 0 {
            let (events, bytes) = evict_oldest(&mut tx, plan.evict_bytes).await?;
            committed.evicted_events = events;
            committed.evicted_bytes = bytes;
        }
        let rows: Vec<(i64, &Event)> = group
            .iter()
            .flat_map(|p| {
                p.events
                    .iter()
                    .zip(&p.fresh)
                    .filter(|(_, fresh)| **fresh)
                    .map(|(event, _)| event)
                    .zip(p.first_seq..)
                    .map(|(event, seq)| (seq, event))
            })
            .collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (seq, id, type, fidelity, session_id, received_ms, body) ",
            );
            insert.push_values(chunk, |mut row, (seq, event)| {
                row.push_bind(*seq)
                    .push_bind(event.id.as_str())
                    .push_bind(event.event_type.as_str())
                    .push_bind(event.fidelity as i64)
                    .push_bind(event.session_id.as_deref())
                    .push_bind(event.received_ms)
                    .push_bind(event.body.as_bytes());
            });
            insert.build().persistent(false).execute(&mut *tx).await?;
        }
        let with_ids: Vec<&(i64, &Event)> = rows.iter().filter(|(_, e)| e.client_id).collect();
        for chunk in with_ids.chunks(ROWS_PER_STATEMENT) {
            let mut insert =
                QueryBuilder::<Sqlite>::new("INSERT INTO dedup (seq, id, accepted_ms) ");
            insert.push_values(chunk, |mut row, (seq, event)| {
                row.push_bind(*seq)
                    .push_bind(event.id.as_str())
                    .push_bind(self.last_ms);
            });
            // An expired entry for the same id is replaced.
            insert.push(" ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, accepted_ms = excluded.accepted_ms");
            insert.build().persistent(false).execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE outbox_state SET last_seq = ?, event_count = ?, byte_count = ? WHERE singleton = 0")
            .bind(self.last_seq + plan.events)
            .bind(self.events + plan.events - committed.evicted_events)
            .bind(self.bytes + plan.bytes - committed.evicted_bytes)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(committed)
    }

    async fn fail(&mut self, group: Vec<Pending>, error: sqlx::Error) {
        let text = error.to_string();
        let disk_full = is_disk_full(&error);
        tracing::error!(error = %text, requests = group.len(), "outbox commit failed; nothing of these requests was stored");
        *self.stats.last_error.lock().expect("stats lock") =
            Some(format!("last commit failed: {text}"));
        for pending in group {
            let error = if disk_full {
                AppendError::DiskFull(format!("the disk holding the outbox is full: {text}"))
            } else {
                AppendError::Storage(format!("the outbox could not commit: {text}"))
            };
            let _ = pending.reply.send(Err(error));
        }
        // A failed COMMIT may still have reached the disk; re-read the totals
        // so the next seq never collides.
        match sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT last_seq, event_count, byte_count FROM outbox_state WHERE singleton = 0",
        )
        .fetch_one(&mut self.connection)
        .await
        {
            Ok((last_seq, events, bytes)) => {
                self.last_seq = last_seq;
                self.events = events;
                self.bytes = bytes;
                self.publish();
            }
            Err(e) => tracing::error!(error = %e, "re-reading outbox totals failed"),
        }
    }

    /// Drops dedup entries older than the window, or beyond `dedup_max_ids`.
    async fn prune_dedup(&mut self) {
        self.last_ms = self.last_ms.max(now_ms());
        let cutoff = self.last_ms - self.settings.dedup_window_ms;
        let expired: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
            "SELECT MAX(seq) FROM (SELECT seq, accepted_ms FROM dedup ORDER BY seq LIMIT ?) WHERE accepted_ms < ?",
        )
        .bind(PRUNE_CHUNK)
        .bind(cutoff)
        .fetch_one(&mut self.connection)
        .await;
        let bound = match expired {
            Ok(expired) => expired
                .unwrap_or(0)
                .max(self.last_seq - self.settings.dedup_max_ids),
            Err(e) => return tracing::warn!(error = %e, "pruning dedup entries failed"),
        };
        if bound <= 0 {
            return;
        }
        let result = sqlx::query("DELETE FROM dedup WHERE seq IN (SELECT seq FROM dedup WHERE seq <= ? ORDER BY seq LIMIT ?)")
            .bind(bound)
            .bind(PRUNE_CHUNK)
            .execute(&mut self.connection)
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "pruning dedup entries failed");
        }
    }

    fn publish(&self) {
        self.stats.last_seq.store(self.last_seq, Ordering::Relaxed);
        self.stats
            .events
            .store(self.events.max(0) as u64, Ordering::Relaxed);
        self.stats
            .bytes
            .store(self.bytes.max(0) as u64, Ordering::Relaxed);
        metrics::gauge!(names::OUTBOX_EVENTS).set(self.events as f64);
        metrics::gauge!(names::OUTBOX_BYTES).set(self.bytes as f64);
        metrics::gauge!(names::OUTBOX_LAST_SEQ).set(self.last_seq as f64);
    }
}

/// Deletes the oldest events until at least `needed` bytes are freed.
async fn evict_oldest(tx: &mut SqliteConnection, needed: u64) -> Result<(i64, i64), sqlx::Error> {
    let (mut freed, mut count, mut upto) = (0u64, 0i64, 0i64);
    'scan: loop {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT seq, length(body) FROM events WHERE seq > ? ORDER BY seq LIMIT 1000",
        )
        .bind(upto)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        for (seq, length) in rows {
            freed += length as u64 + ROW_OVERHEAD_BYTES;
            count += 1;
            upto = seq;
            if freed >= needed {
                break 'scan;
            }
        }
    }
    sqlx::query("DELETE FROM events WHERE seq <= ?")
        .bind(upto)
        .execute(&mut *tx)
        .await?;
    Ok((count, freed as i64))
}

/// SQLITE_FULL, in its primary or an extended code.
fn is_disk_full(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 13)
                || db.message().contains("disk is full")
        }
        sqlx::Error::Io(e) => e.raw_os_error() == Some(28),
        _ => false,
    }
}
