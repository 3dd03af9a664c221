//! The delivery loop every sink shares, one tokio task per sink:
//!
//! read a batch after the cursor → fix its range durably → encode →
//! deliver → classify → advance / back off / split / dead-letter.
//!
//! Sinks only know their protocol and return an [`Outcome`]; everything
//! about cursors, retries and dead letters is here, once.

mod backoff;
mod filter;
mod sessions;
pub mod status;

use crate::clock::now_ms;
use crate::event::StoredEvent;
use crate::format::Compression;
use crate::format::{encode, EncodedBatch, Encoder};
use crate::outbox::{Outbox, SinkOp};
use crate::shutdown::Shutdown;
use crate::sinks::config::SinkConfig;
use crate::sinks::{Outcome, Sink};
use crate::telemetry::names;
use filter::Filter;
use status::{SinkState, SinkStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an attempt loop concluded for one batch.
enum Verdict {
    Delivered,
    /// Give these events up: a metric label and the full reason.
    Dead(&'static str, String),
    /// Too large or rejected with more than one event: deliver in halves.
    Split,
    /// Shutting down; the range stays recorded and is sent again on start.
    Stopped,
}

/// Rows read per query while gathering a batch.
const READ_CHUNK: i64 = 1000;

/// A batch being gathered: its range so far and the events this sink takes.
struct Gathered {
    first: i64,
    last: i64,
    selected: Vec<StoredEvent>,
    bytes: usize,
    full: bool,
}

/// Why a waiting loop woke up.
enum Wake {
    Events,
    Requeued,
    Shutdown,
}

/// A batch whose range is fixed: `selected` are the events of
/// `[first, last]` this sink receives (the rest are filtered out).
struct Batch {
    first: i64,
    last: i64,
    selected: Vec<StoredEvent>,
}

pub struct Delivery {
    name: String,
    config: SinkConfig,
    encoder: Box<dyn Encoder>,
    sink: Sink,
    outbox: Outbox,
    status: Arc<SinkStatus>,
    filter: Filter,
    shutdown: Shutdown,
    drain_timeout: Duration,
}

impl Delivery {
    pub fn new(
        name: &str,
        config: SinkConfig,
        sink: Sink,
        outbox: Outbox,
        status: Arc<SinkStatus>,
        shutdown: Shutdown,
        drain_timeout: Duration,
    ) -> Delivery {
        Delivery {
            name: name.to_string(),
            filter: Filter::new(&config),
            encoder: config.format.encoder(),
            config,
            sink,
            outbox,
            status,
            shutdown,
            drain_timeout,
        }
    }

    pub async fn run(mut self) {
        let Some(stored) = self.read(|| self.outbox.sink_cursor(&self.name)).await else {
            return;
        };
        let Some(stored) = stored else {
            tracing::error!(sink = %self.name, "sink has no cursor row; was it registered?");
            return;
        };
        let mut cursor = stored.delivered_seq;
        self.status.advanced(cursor);
        if let Some(sessions) = self.config.sessions.clone() {
            return self.run_sessions(cursor, sessions).await;
        }
        // Ranges fixed but not delivered yet: a batch in flight at the last
        // stop first, later the halves of split batches. Last in, first out.
        let mut fixed: Vec<(i64, i64)> = stored.batch.into_iter().collect();
        if let Some((first, last)) = stored.batch {
            tracing::info!(sink = %self.name, first, last, "resending the batch in flight at the last stop");
        }
        loop {
            if self.shutdown.is_shutdown() {
                break;
            }
            if self.unless_paused().await.is_none() || self.redeliver_requeued().await.is_none() {
                break;
            }
            // A range from `fixed` is sent as it is; only a new one may shrink to fit.
            let is_new = fixed.is_empty();
            let batch = match fixed.pop() {
                Some((first, last)) => {
                    let events = self.read(|| self.outbox.read_range(first, last)).await;
                    let Some(events) = events else { break };
                    let selected = events
                        .into_iter()
                        .filter(|e| self.filter.matches(e))
                        .collect();
                    Batch {
                        first,
                        last,
                        selected,
                    }
                }
                None => match self.next_batch(cursor).await {
                    Some(Some(batch)) => batch,
                    Some(None) => continue, // woken for requeued dead letters
                    None => break,
                },
            };
            // Paused while the batch was gathered: hold it (one batch) until resumed.
            if self.unless_paused().await.is_none() {
                break;
            }
            match self.send(batch, is_new, &mut fixed).await {
                Some(Some(to)) => cursor = to,
                Some(None) => {}
                None => break,
            }
        }
        tracing::info!(sink = %self.name, cursor, "sink stopped");
    }

    /// Sends one fixed batch to its end. Some(Some(cursor)) when the cursor
    /// moved, Some(None) when the batch was split, None when stopping.
    async fn send(
        &mut self,
        mut batch: Batch,
        is_new: bool,
        fixed: &mut Vec<(i64, i64)>,
    ) -> Option<Option<i64>> {
        if batch.selected.is_empty() {
            // Nothing here is for this sink: skip the range.
            self.progress(SinkOp::Advance {
                sink: self.name.clone(),
                to: batch.last,
            })
            .await?;
            self.status.advanced(batch.last);
            return Some(Some(batch.last));
        }
        let encoded = self.encode_fitting(&mut batch, is_new);
        // From here on only the seqs are needed (to split or dead-letter):
        // the bodies live on in `encoded`, not twice.
        let seqs: Vec<i64> = batch.selected.iter().map(|e| e.seq).collect();
        drop(std::mem::take(&mut batch.selected));
        self.progress(SinkOp::RecordBatch {
            sink: self.name.clone(),
            first: batch.first,
            last: batch.last,
        })
        .await?;
        self.status.batch(Some((batch.first, batch.last)));
        match self.attempt(&encoded, seqs.len() > 1).await {
            Verdict::Delivered => {
                self.progress(SinkOp::Advance {
                    sink: self.name.clone(),
                    to: batch.last,
                })
                .await?;
                // Counted before the status shows the cursor, so whoever
                // sees the cursor also sees the counts.
                self.count_delivered(&encoded);
                self.status.advanced(batch.last);
                Some(Some(batch.last))
            }
            Verdict::Dead(kind, reason) => {
                tracing::warn!(sink = %self.name, events = seqs.len(), first = batch.first, last = batch.last, %reason, "dead-lettering");
                self.progress(SinkOp::DeadLetter {
                    sink: self.name.clone(),
                    seqs: seqs.clone(),
                    reason: reason.clone(),
                    to: batch.last,
                })
                .await?;
                metrics::counter!(names::SINK_DEAD_LETTERED, "sink" => self.name.clone(), "reason" => kind)
                    .increment(seqs.len() as u64);
                self.status.advanced(batch.last);
                Some(Some(batch.last))
            }
            Verdict::Split => {
                let middle = seqs.len() / 2;
                let (left_last, right_first) = (seqs[middle - 1], seqs[middle]);
                tracing::info!(sink = %self.name, first = batch.first, last = batch.last, "splitting the batch in two");
                metrics::counter!(names::SINK_SPLITS, "sink" => self.name.clone()).increment(1);
                fixed.push((right_first, batch.last));
                fixed.push((batch.first, left_last));
                Some(None)
            }
            Verdict::Stopped => None,
        }
    }

    /// Encodes a batch; a new batch (range not yet recorded) is shrunk until
    /// its encoded body fits `batch.max_bytes`. A recorded range never changes.
    fn encode_fitting(&self, batch: &mut Batch, may_shrink: bool) -> EncodedBatch {
        let max = self.config.batch.max_bytes.as_usize();
        loop {
            let encoded = encode(
                &batch.selected,
                batch.first,
                batch.last,
                &*self.encoder,
                self.config.compression,
            );
            if !may_shrink || encoded.body.len() <= max || batch.selected.len() == 1 {
                return encoded;
            }
            let keep = batch.selected.len() / 2;
            batch.selected.truncate(keep);
            batch.last = batch.selected[keep - 1].seq;
        }
    }

    fn count_delivered(&self, batch: &EncodedBatch) {
        metrics::counter!(names::SINK_EVENTS, "sink" => self.name.clone())
            .increment(batch.events as u64);
        metrics::counter!(names::SINK_BATCHES, "sink" => self.name.clone()).increment(1);
        metrics::counter!(names::SINK_BYTES, "sink" => self.name.clone())
            .increment(batch.body.len() as u64);
        metrics::histogram!(names::SINK_BATCH_EVENTS, "sink" => self.name.clone())
            .record(batch.events as f64);
    }

    /// Attempts a batch until it is delivered, given up, split or stopped.
    async fn attempt(&mut self, batch: &EncodedBatch, can_split: bool) -> Verdict {
        let retry = self.config.retry.clone();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let started = Instant::now();
            let outcome = {
                let deliver = self.sink.deliver(batch);
                tokio::pin!(deliver);
                tokio::select! {
                    outcome = &mut deliver => outcome,
                    _ = self.shutdown.recv() => match tokio::time::timeout(self.drain_timeout, &mut deliver).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            tracing::warn!(sink = %self.name, first = batch.first_seq, last = batch.last_seq, "abandoning the attempt in flight; it is sent again on the next start");
                            return Verdict::Stopped;
                        }
                    },
                }
            };
            metrics::histogram!(names::SINK_DELIVERY_DURATION, "sink" => self.name.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(names::SINK_ATTEMPTS, "sink" => self.name.clone(), "outcome" => outcome.label()).increment(1);
            let wait = match outcome {
                Outcome::Delivered => {
                    self.status.succeeded();
                    return Verdict::Delivered;
                }
                Outcome::TooLarge { reason } | Outcome::Rejected { reason } if can_split => {
                    self.status.failed(&reason);
                    return Verdict::Split;
                }
                Outcome::TooLarge { reason } => {
                    self.status.failed(&reason);
                    return Verdict::Dead("too_large", format!("too large: {reason}"));
                }
                Outcome::Rejected { reason } => {
                    self.status.failed(&reason);
                    return Verdict::Dead("rejected", format!("rejected: {reason}"));
                }
                Outcome::Retry { after, reason } => {
                    self.status.failed(&reason);
                    if retry.max_attempts.is_some_and(|max| attempts >= max) {
                        return Verdict::Dead(
                            "retries_exhausted",
                            format!("retries exhausted: {attempts} attempts, last: {reason}"),
                        );
                    }
                    tracing::warn!(sink = %self.name, attempt = attempts, %reason, "delivery failed; will retry");
                    metrics::counter!(names::SINK_RETRIES, "sink" => self.name.clone())
                        .increment(1);
                    self.status.set_state(SinkState::Backoff);
                    match after {
                        Some(after) => after.min(retry.max.0),
                        None => backoff::delay(attempts, retry.initial.0, retry.max.0),
                    }
                }
                Outcome::Halted { reason } => {
                    // Not the batch's fault: does not count towards max_attempts.
                    attempts -= 1;
                    self.status.failed(&reason);
                    if self.status.snapshot().state != SinkState::Halted {
                        tracing::error!(sink = %self.name, %reason, "sink halted; data is kept, probing every {}", retry.halted_probe);
                    }
                    self.status.set_state(SinkState::Halted);
                    retry.halted_probe.0
                }
            };
            if !self.sleep(wait).await || self.unless_paused().await.is_none() {
                return Verdict::Stopped;
            }
        }
    }

    /// Delivers dead letters marked by `dlq replay`, one at a time, before
    /// new batches. None when stopping.
    async fn redeliver_requeued(&mut self) -> Option<()> {
        loop {
            let event = self
                .read(|| self.outbox.requeued_dead_letter(&self.name))
                .await?;
            let Some(event) = event else { return Some(()) };
            let seq = event.seq;
            let encoded = encode(
                std::slice::from_ref(&event),
                seq,
                seq,
                &*self.encoder,
                self.config.compression,
            );
            let op = match self.attempt(&encoded, false).await {
                Verdict::Delivered => SinkOp::Redelivered {
                    sink: self.name.clone(),
                    seq,
                },
                Verdict::Dead(_, reason) => SinkOp::StillDead {
                    sink: self.name.clone(),
                    seq,
                    reason,
                },
                Verdict::Split | Verdict::Stopped => return None,
            };
            self.progress(op).await?;
        }
    }

    /// The next batch after `cursor`, waiting for events and for a partial
    /// batch to fill or age (`batch.max_age`). None when stopping, Some(None)
    /// when dead letters were requeued meanwhile.
    async fn next_batch(&mut self, cursor: i64) -> Option<Option<Batch>> {
        let bounds = self.config.batch.clone();
        // The plain size of a batch is bounded before encoding; compressed
        // bodies are usually several times smaller, then checked exactly.
        let plain_limit = match self.config.compression {
            Compression::None => bounds.max_bytes.as_usize(),
            _ => bounds.max_bytes.as_usize().saturating_mul(4),
        };
        let mut last_seq = self.outbox.watch_last_seq();
        let mut requeues = self.outbox.watch_requeues();
        loop {
            let gathered = self.gather(cursor, bounds.max_events, plain_limit).await?;
            let Some(Gathered {
                first,
                last,
                selected,
                bytes,
                full,
            }) = gathered
            else {
                match self
                    .wait_for_events(&mut last_seq, &mut requeues, cursor + 1, None)
                    .await
                {
                    Wake::Events => continue,
                    Wake::Requeued => return Some(None),
                    Wake::Shutdown => return None,
                }
            };
            let oldest = selected.first().map(|e| e.received_ms);
            let due = oldest.is_none_or(|ms| now_ms() - ms >= bounds.max_age.0.as_millis() as i64);
            if full || due || self.shutdown.is_shutdown() {
                return Some(Some(Batch {
                    first,
                    last,
                    selected,
                }));
            }
            // Partial and young: wait until it could be full, or is old enough.
            let average = (bytes / selected.len()).max(1);
            let could_fill = cursor + (plain_limit / average).clamp(1, bounds.max_events) as i64;
            let deadline = oldest.map(|ms| ms + bounds.max_age.0.as_millis() as i64);
            drop(selected);
            match self
                .wait_for_events(&mut last_seq, &mut requeues, could_fill, deadline)
                .await
            {
                Wake::Events => {}
                Wake::Requeued => return Some(None),
                Wake::Shutdown => return None,
            }
        }
    }

    /// Reads the events after `cursor` in chunks, keeping those this sink
    /// takes, until `max_events` or `plain_limit` bytes are reached or the
    /// outbox has no more. Memory holds one batch, whatever the backlog.
    /// Some(None) when there is nothing after `cursor`; None on shutdown.
    async fn gather(
        &self,
        cursor: i64,
        max_events: usize,
        plain_limit: usize,
    ) -> Option<Option<Gathered>> {
        let mut gathered: Option<Gathered> = None;
        let mut after = cursor;
        loop {
            let rows = self
                .read(|| self.outbox.read_after(after, READ_CHUNK))
                .await?;
            let caught_up = (rows.len() as i64) < READ_CHUNK;
            for event in rows {
                let batch = gathered.get_or_insert_with(|| Gathered {
                    first: event.seq,
                    last: event.seq,
                    selected: Vec::new(),
                    bytes: 0,
                    full: false,
                });
                if batch.selected.len() >= max_events || batch.bytes >= plain_limit {
                    batch.full = true;
                    return Some(gathered);
                }
                batch.last = event.seq;
                after = event.seq;
                if self.filter.matches(&event) {
                    batch.bytes += event.body.len() + 24;
                    batch.selected.push(event);
                }
            }
            if caught_up {
                if let Some(batch) = gathered.as_mut() {
                    batch.full = batch.selected.len() >= max_events || batch.bytes >= plain_limit;
                }
                return Some(gathered);
            }
        }
    }

    /// Waits until `last_seq >= seq`, the deadline (unix ms), a requeue or shutdown.
    async fn wait_for_events(
        &self,
        last_seq: &mut tokio::sync::watch::Receiver<i64>,
        requeues: &mut tokio::sync::watch::Receiver<u64>,
        seq: i64,
        deadline_ms: Option<i64>,
    ) -> Wake {
        let wait = deadline_ms.map_or(Duration::from_secs(3600), |ms| {
            Duration::from_millis((ms - now_ms()).max(0) as u64)
        });
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = last_seq.wait_for(|last| *last >= seq) => Wake::Events,
            _ = tokio::time::sleep(wait) => Wake::Events,
            _ = requeues.changed() => Wake::Requeued,
            _ = shutdown.recv() => Wake::Shutdown,
        }
    }

    /// Waits while an operator has the sink paused; None on shutdown.
    async fn unless_paused(&self) -> Option<()> {
        let mut paused = self.status.watch_paused();
        if !*paused.borrow_and_update() {
            return Some(());
        }
        let before = self.status.snapshot().state;
        self.status.set_state(SinkState::Paused);
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            resumed = paused.wait_for(|paused| !*paused) => { resumed.ok()?; }
            _ = shutdown.recv() => return None,
        }
        self.status.set_state(before);
        Some(())
    }

    /// Sleeps, or returns false on shutdown.
    async fn sleep(&self, duration: Duration) -> bool {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(duration) => true,
            _ = shutdown.recv() => false,
        }
    }

    /// Stores progress through the writer, retrying until it is durable.
    async fn progress(&self, op: SinkOp) -> Option<()> {
        self.durably(|| {
            let (outbox, op) = (self.outbox.clone(), op.clone());
            async move { outbox.sink_op(op).await.map(|_| ()) }
        })
        .await
    }

    async fn read<T, F, Fut>(&self, query: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        self.durably(|| async {
            query().await.map_err(|e| {
                self.outbox.stats().observe(&e);
                e.to_string()
            })
        })
        .await
    }

    /// Runs an outbox operation until it succeeds; None on shutdown.
    async fn durably<T, F, Fut>(&self, operation: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let mut failures = 0;
        loop {
            match operation().await {
                Ok(value) => return Some(value),
                Err(e) => {
                    failures += 1;
                    tracing::error!(sink = %self.name, error = %e, "outbox operation failed; retrying");
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff::delay(failures, Duration::from_millis(100), Duration::from_secs(5))) => {}
                        _ = shutdown.recv() => return None,
                    }
                }
            }
        }
    }
}
