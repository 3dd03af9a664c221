//! The delivery loop every sink shares, one tokio task per sink:
//!
//! read a batch after the cursor → fix its range durably → encode →
//! deliver → classify → advance / back off / split / dead-letter.
//!
//! Up to `batch.in_flight` batches are attempted at once, each on its own
//! task ([`attempt`]); their verdicts are taken in seq order, so the cursor
//! only ever moves past a contiguous run of finished ranges. Sinks only
//! know their protocol and return an [`Outcome`]; everything about cursors,
//! retries and dead letters is here, once.

mod attempt;
mod backoff;
mod filter;
mod replay;
mod sessions;
pub mod status;

use crate::clock::now_ms;
use crate::format::Compression;
use crate::format::{encode, BodyWriter, EncodedBatch, Encoder, Replay};
use crate::outbox::{Outbox, SinkOp};
use crate::shutdown::Shutdown;
use crate::sinks::config::SinkConfig;
use crate::sinks::Sink;
use crate::telemetry::names;
use attempt::{AttemptTask, Attempts, Verdict};
use filter::Filter;
use replay::ReplayRange;
use status::SinkStatus;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Rows read per query while gathering a batch.
const READ_CHUNK: i64 = 1000;

/// A batch being gathered: its range so far and the body of the events
/// this sink takes, written as they are read.
struct Gathered {
    first: i64,
    last: i64,
    body: BodyWriter,
    full: bool,
}

/// Why a waiting loop woke up.
enum Wake {
    Events,
    Requeued,
    Shutdown,
}

/// A gathered batch: `body` holds the events of `[first, last]` this sink
/// receives (the rest are filtered out).
struct Batch {
    first: i64,
    last: i64,
    body: BodyWriter,
}

/// A batch in the window: its fixed range and the task attempting it.
struct InFlight {
    first: i64,
    last: i64,
    /// The seqs it carries, to split or dead-letter it.
    seqs: Vec<i64>,
    /// None when nothing in the range is for this sink: it is skipped, in turn.
    sending: Option<(Arc<EncodedBatch>, AttemptTask)>,
    /// Whether concluding it makes room in the window for another batch.
    holds_room: bool,
}

impl InFlight {
    async fn verdict(&mut self) -> Verdict {
        let Some((_, task)) = self.sending.as_mut() else {
            return Verdict::Delivered;
        };
        match task.verdict().await {
            Ok(verdict) => verdict,
            Err(e) => {
                // A bug in a sink, not the batch's fault: stop here; the range
                // stays recorded and goes out again on the next start.
                tracing::error!(error = %e, first = self.first, "a delivery attempt failed unexpectedly; the sink stops");
                Verdict::Stopped
            }
        }
    }
}

/// What became of the oldest batch in flight.
enum Concluded {
    /// The cursor moved to here.
    Advanced(i64),
    /// Split: its halves, started, go before anything newer.
    Split(InFlight, InFlight),
    Stopped,
}

/// Batches started and not concluded, shown as a gauge.
struct InFlightCount<'a> {
    count: std::sync::atomic::AtomicIsize,
    status: &'a SinkStatus,
}

impl<'a> InFlightCount<'a> {
    fn new(status: &'a SinkStatus) -> Self {
        InFlightCount {
            count: std::sync::atomic::AtomicIsize::new(0),
            status,
        }
    }

    fn add(&self, delta: isize) {
        let now = self
            .count
            .fetch_add(delta, std::sync::atomic::Ordering::Relaxed)
            + delta;
        self.status.batches_in_flight(now.max(0) as usize);
    }
}

/// A range to send again after a stop, before anything new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Recorded before the stop: sent exactly as it was.
    Recorded(i64, i64),
    /// Before or between recorded ranges: a range that held nothing for
    /// this sink when it was skipped (skips are not recorded), concluded
    /// in order behind older batches when the daemon stopped. It is read
    /// again, so that if the sink's filters changed meanwhile, what it
    /// holds now is not passed over.
    Gap(i64, i64),
}

impl Resend {
    fn last(self) -> i64 {
        match self {
            Resend::Recorded(_, last) | Resend::Gap(_, last) => last,
        }
    }
}

/// The ranges to send again, in order: the recorded ones and the gaps
/// between them (and before the first), after `cursor`.
fn resend_after(cursor: i64, recorded: &[(i64, i64)]) -> VecDeque<Resend> {
    let mut resend = VecDeque::new();
    let mut end = cursor;
    for &(first, last) in recorded {
        if first > end + 1 {
            resend.push_back(Resend::Gap(end + 1, first - 1));
        }
        resend.push_back(Resend::Recorded(first, last));
        end = end.max(last);
    }
    resend
}

/// What the next new batch turned out to be.
type Next = Option<Option<Batch>>;

pub struct Delivery {
    name: String,
    config: SinkConfig,
    encoder: Arc<dyn Encoder>,
    /// Whether batch bodies are read again while they are sent (see
    /// [`replay`]) rather than held in memory.
    replays: bool,
    outbox: Outbox,
    status: Arc<SinkStatus>,
    filter: Arc<Filter>,
    shutdown: Shutdown,
    attempts: Attempts,
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
            filter: Arc::new(Filter::new(&config)),
            encoder: config.format.encoder().into(),
            replays: config.kind.streams_body() && config.compression == Compression::None,
            attempts: Attempts {
                name: name.to_string(),
                sink: Arc::new(sink),
                status: status.clone(),
                retry: config.retry.clone(),
                shutdown: shutdown.clone(),
                drain_timeout,
            },
            config,
            outbox,
            status,
            shutdown,
        }
    }

    pub async fn run(self) {
        let Some(stored) = self.read(|| self.outbox.sink_cursor(&self.name)).await else {
            return;
        };
        let Some(stored) = stored else {
            tracing::error!(sink = %self.name, "sink has no cursor row; was it registered?");
            return;
        };
        let cursor = stored.delivered_seq;
        self.status.advanced(cursor);
        if let Some(sessions) = self.config.sessions.clone() {
            return self.run_sessions(cursor, sessions).await;
        }
        let Some(recorded) = self.read(|| self.outbox.recorded_batches(&self.name)).await else {
            return;
        };
        if let (Some(first), Some(last)) = (recorded.first(), recorded.last()) {
            tracing::info!(sink = %self.name, batches = recorded.len(), first = first.0, last = last.1, "resending the batches in flight at the last stop");
        }
        let cursor = self
            .deliver_in_order(cursor, resend_after(cursor, &recorded))
            .await;
        tracing::info!(sink = %self.name, cursor, "sink stopped");
    }

    /// Two loops over one window of at most `batch.in_flight` batches: one
    /// starts batches (ranges recorded before a stop first, as they were,
    /// then new ones), the other takes their verdicts oldest first. Returns
    /// the cursor when stopping.
    async fn deliver_in_order(&self, cursor: i64, resend: VecDeque<Resend>) -> i64 {
        let limit = self.config.batch.in_flight;
        let window = Semaphore::new(limit);
        let (started, in_order) = mpsc::channel(limit);
        // New batches start after the last range taken so far.
        let taken = resend
            .back()
            .map_or(cursor, |range| range.last().max(cursor));
        let in_flight = InFlightCount::new(&self.status);
        let conclude = self.conclude_in_order(cursor, &window, in_order, &in_flight);
        tokio::pin!(conclude);
        let cursor = tokio::select! {
            cursor = &mut conclude => cursor,
            () = self.start_in_order(resend, taken, &window, started, &in_flight) => {
                // Nothing more starts: the batches in flight finish (or are
                // abandoned after the drain timeout) and their verdicts count.
                conclude.await
            }
        };
        self.status.batches_in_flight(0);
        cursor
    }

    /// Starts batches while the window has room, until stopping.
    async fn start_in_order(
        &self,
        mut resend: VecDeque<Resend>,
        mut taken: i64,
        window: &Semaphore,
        started: mpsc::Sender<InFlight>,
        in_flight: &InFlightCount<'_>,
    ) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let room = tokio::select! {
                room = window.acquire() => room,
                _ = shutdown.recv() => return,
            };
            // Given back when the batch is concluded.
            room.expect("the window is never closed").forget();
            if self.shutdown.is_shutdown() || self.unless_paused().await.is_none() {
                return;
            }
            let batch = match resend.pop_front() {
                Some(Resend::Recorded(first, last)) => self.start_recorded((first, last)).await,
                Some(Resend::Gap(first, last)) => self.start_gap((first, last)).await,
                None => match self.next_new(taken).await {
                    Some(Some(batch)) => {
                        taken = batch.last;
                        self.start_new(batch).await
                    }
                    Some(None) => {
                        // Requeued dead letters came first; look again.
                        window.add_permits(1);
                        continue;
                    }
                    None => return,
                },
            };
            let Some(batch) = batch else { return };
            in_flight.add(1);
            if started.send(batch).await.is_err() {
                return;
            }
        }
    }

    /// Requeued dead letters first, then the next new batch after `taken`.
    async fn next_new(&self, taken: i64) -> Next {
        self.redeliver_requeued().await?;
        let batch = self.next_batch(taken).await?;
        // Paused while it was gathered: hold it (one batch) until resumed.
        self.unless_paused().await?;
        Some(batch)
    }

    /// Takes the verdicts of started batches in seq order and acts on each;
    /// returns the cursor when the starting loop is done and every batch
    /// is concluded, or at the first batch that stops.
    async fn conclude_in_order(
        &self,
        mut cursor: i64,
        window: &Semaphore,
        mut in_order: mpsc::Receiver<InFlight>,
        in_flight: &InFlightCount<'_>,
    ) -> i64 {
        // Halves of a split batch, before anything newer.
        let mut halves: VecDeque<InFlight> = VecDeque::new();
        loop {
            let Some(mut batch) = (match halves.pop_front() {
                Some(half) => Some(half),
                None => in_order.recv().await,
            }) else {
                return cursor;
            };
            self.status.batch(Some((batch.first, batch.last)));
            let verdict = batch.verdict().await;
            let holds_room = batch.holds_room;
            match self.conclude(batch, verdict).await {
                Concluded::Advanced(to) => {
                    cursor = to;
                    in_flight.add(-1);
                    if holds_room {
                        window.add_permits(1);
                    }
                }
                Concluded::Split(mut first, mut second) => {
                    // The later half gives the room back.
                    second.holds_room = holds_room;
                    first.holds_room = false;
                    in_flight.add(1);
                    halves.push_front(second);
                    halves.push_front(first);
                }
                Concluded::Stopped => return cursor,
            }
        }
    }

    /// Acts on a batch's verdict: advances, dead-letters, or splits it and
    /// starts the halves.
    async fn conclude(&self, batch: InFlight, verdict: Verdict) -> Concluded {
        let sink = self.name.clone();
        match verdict {
            Verdict::Delivered => {
                if self
                    .progress(SinkOp::Advance {
                        sink,
                        to: batch.last,
                    })
                    .await
                    .is_none()
                {
                    return Concluded::Stopped;
                }
                // Counted before the status shows the cursor, so whoever
                // sees the cursor also sees the counts.
                if let Some((encoded, _)) = &batch.sending {
                    self.count_delivered(encoded);
                }
                self.status.advanced(batch.last);
                Concluded::Advanced(batch.last)
            }
            Verdict::Dead(kind, reason) => {
                tracing::warn!(sink = %self.name, events = batch.seqs.len(), first = batch.first, last = batch.last, %reason, "dead-lettering");
                let events = batch.seqs.len() as u64;
                let op = SinkOp::DeadLetter {
                    sink,
                    seqs: batch.seqs,
                    reason,
                    to: batch.last,
                };
                if self.progress(op).await.is_none() {
                    return Concluded::Stopped;
                }
                metrics::counter!(names::SINK_DEAD_LETTERED, "sink" => self.name.clone(), "reason" => kind)
                    .increment(events);
                self.status.advanced(batch.last);
                Concluded::Advanced(batch.last)
            }
            Verdict::Split => {
                let middle = batch.seqs.len() / 2;
                let halves = [
                    (batch.first, batch.seqs[middle - 1]),
                    (batch.seqs[middle], batch.last),
                ];
                drop(batch.sending);
                tracing::info!(sink = %self.name, first = batch.first, last = batch.last, "splitting the batch in two");
                metrics::counter!(names::SINK_SPLITS, "sink" => self.name.clone()).increment(1);
                let op = SinkOp::SplitBatch {
                    sink,
                    first: batch.first,
                    halves,
                };
                if self.progress(op).await.is_none() || self.shutdown.is_shutdown() {
                    return Concluded::Stopped;
                }
                let (Some(first), Some(second)) = (
                    self.start_recorded(halves[0]).await,
                    self.start_recorded(halves[1]).await,
                ) else {
                    return Concluded::Stopped;
                };
                Concluded::Split(first, second)
            }
            Verdict::Stopped => Concluded::Stopped,
        }
    }

    /// Finishes a new batch's body, shrunk to fit `batch.max_bytes` (its
    /// range then ends earlier), records the range and starts it.
    async fn start_new(&self, batch: Batch) -> Option<InFlight> {
        if batch.body.events() == 0 {
            return Some(self.skip(batch.first, batch.last));
        }
        let max = Some(self.config.batch.max_bytes.as_usize());
        let (seqs, encoded) = self.finish(batch, max);
        self.progress(SinkOp::RecordBatch {
            sink: self.name.clone(),
            first: encoded.first_seq,
            last: encoded.last_seq,
        })
        .await?;
        Some(self.launch(seqs, encoded))
    }

    /// Starts a recorded range again, exactly as it was fixed.
    async fn start_recorded(&self, range: (i64, i64)) -> Option<InFlight> {
        self.start_range(range, false).await
    }

    /// Reads a gap between recorded ranges again (see [`Resend::Gap`]):
    /// skipped as before, or recorded and started if it holds events for
    /// this sink now.
    async fn start_gap(&self, range: (i64, i64)) -> Option<InFlight> {
        self.start_range(range, true).await
    }

    /// Starts a fixed range as it is (never shrunk), recording it first
    /// when `record` and it holds anything for this sink.
    async fn start_range(&self, (first, last): (i64, i64), record: bool) -> Option<InFlight> {
        let mut body = self.body_writer();
        let mut after = first - 1;
        while after < last {
            let rows = self
                .read(|| self.outbox.read_between(after, last, READ_CHUNK))
                .await?;
            let complete = rows.complete;
            for event in rows.iter().filter(|e| self.filter.matches(e)) {
                body.push(&*self.encoder, event);
            }
            after = if complete {
                last
            } else {
                rows.last().map_or(last, |e| e.seq)
            };
        }
        if body.events() == 0 {
            return Some(self.skip(first, last));
        }
        let (seqs, encoded) = self.finish(Batch { first, last, body }, None);
        if record {
            self.progress(SinkOp::RecordBatch {
                sink: self.name.clone(),
                first,
                last,
            })
            .await?;
        }
        Some(self.launch(seqs, encoded))
    }

    /// A body for a batch: held in memory, or only measured when it is
    /// read again as it is sent.
    fn body_writer(&self) -> BodyWriter {
        if self.replays {
            BodyWriter::measuring(&*self.encoder)
        } else {
            BodyWriter::new(&*self.encoder)
        }
    }

    /// The batch's body as sent, and the seqs it carries (only those are
    /// needed from here on, to split or dead-letter it).
    fn finish(&self, batch: Batch, max_bytes: Option<usize>) -> (Vec<i64>, EncodedBatch) {
        let mut seqs = batch.body.seqs();
        let range = (batch.first, batch.last);
        if self.replays {
            // Gathered within `max_bytes` already; a measured body cannot shrink.
            let encoded = batch
                .body
                .finish_measured(&*self.encoder, range, |measured| {
                    Arc::new(ReplayRange::new(
                        self.outbox.clone(),
                        self.filter.clone(),
                        self.encoder.clone(),
                        range,
                        measured,
                    )) as Arc<dyn Replay>
                });
            return (seqs, encoded);
        }
        let encoded = batch
            .body
            .finish(&*self.encoder, range, self.config.compression, max_bytes);
        // A shrunk body keeps its oldest events.
        seqs.truncate(encoded.events);
        (seqs, encoded)
    }

    fn skip(&self, first: i64, last: i64) -> InFlight {
        InFlight {
            first,
            last,
            seqs: Vec::new(),
            sending: None,
            holds_room: true,
        }
    }

    fn launch(&self, seqs: Vec<i64>, encoded: EncodedBatch) -> InFlight {
        let encoded = Arc::new(encoded);
        let task = AttemptTask::spawn(self.attempts.clone(), encoded.clone(), seqs.len() > 1);
        InFlight {
            first: encoded.first_seq,
            last: encoded.last_seq,
            seqs,
            sending: Some((encoded, task)),
            holds_room: true,
        }
    }

    fn count_delivered(&self, batch: &EncodedBatch) {
        metrics::counter!(names::SINK_EVENTS, "sink" => self.name.clone())
            .increment(batch.events as u64);
        metrics::counter!(names::SINK_BATCHES, "sink" => self.name.clone()).increment(1);
        metrics::counter!(names::SINK_BYTES, "sink" => self.name.clone())
            .increment(batch.body.len());
        metrics::histogram!(names::SINK_BATCH_EVENTS, "sink" => self.name.clone())
            .record(batch.events as f64);
    }

    /// Attempts one batch here, not on a task of its own.
    async fn attempt(&self, batch: &EncodedBatch, can_split: bool) -> Verdict {
        self.attempts.run(batch, can_split).await
    }

    /// Delivers dead letters marked by `dlq replay`, one at a time, before
    /// new batches. None when stopping.
    async fn redeliver_requeued(&self) -> Option<()> {
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
    async fn next_batch(&self, cursor: i64) -> Option<Option<Batch>> {
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
                body,
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
            let oldest = body.first_received_ms();
            let due = oldest.is_none_or(|ms| now_ms() - ms >= bounds.max_age.0.as_millis() as i64);
            if full || due || self.shutdown.is_shutdown() {
                return Some(Some(Batch { first, last, body }));
            }
            // Partial and young: wait until it could be full, or is old enough.
            let average = (body.plain_len() / body.events()).max(1);
            let could_fill = cursor + (plain_limit / average).clamp(1, bounds.max_events) as i64;
            let deadline = oldest.map(|ms| ms + bounds.max_age.0.as_millis() as i64);
            drop(body);
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

    /// Reads the events after `cursor` in chunks, encoding those this sink
    /// takes, until `max_events` or `plain_limit` bytes are reached or the
    /// outbox has no more. Memory holds one body and one chunk of rows,
    /// whatever the backlog.
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
            let caught_up = rows.complete;
            for event in rows {
                let batch = gathered.get_or_insert_with(|| Gathered {
                    first: event.seq,
                    last: event.seq,
                    body: self.body_writer(),
                    full: false,
                });
                if batch.body.events() >= max_events {
                    batch.full = true;
                    return Some(gathered);
                }
                // The event that would pass the size starts the next batch.
                if self.filter.matches(&event)
                    && !batch.body.push_within(&*self.encoder, &event, plain_limit)
                {
                    batch.full = true;
                    return Some(gathered);
                }
                batch.last = event.seq;
                after = event.seq;
            }
            if caught_up {
                if let Some(batch) = gathered.as_mut() {
                    batch.full =
                        batch.body.events() >= max_events || batch.body.plain_len() >= plain_limit;
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

    async fn unless_paused(&self) -> Option<()> {
        self.attempts.unless_paused().await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_before_and_between_recorded_ranges_are_read_again() {
        assert_eq!(resend_after(10, &[]), VecDeque::new());
        assert_eq!(
            resend_after(10, &[(11, 20), (21, 30)]),
            VecDeque::from([Resend::Recorded(11, 20), Resend::Recorded(21, 30)])
        );
        // A skipped range behind the oldest batch, and one between two.
        assert_eq!(
            resend_after(10, &[(15, 20), (31, 40)]),
            VecDeque::from([
                Resend::Gap(11, 14),
                Resend::Recorded(15, 20),
                Resend::Gap(21, 30),
                Resend::Recorded(31, 40)
            ])
        );
    }
}
