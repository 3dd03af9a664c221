//! Attempting one batch until it is delivered, given up, split or stopped:
//! the retry, backoff, halt and pause rules, apart from the loop that orders
//! batches, so each batch in flight can run as its own task.

use super::backoff;
use super::status::{SinkState, SinkStatus};
use crate::format::EncodedBatch;
use crate::shutdown::Shutdown;
use crate::sinks::config::RetryConfig;
use crate::sinks::{Outcome, Sink};
use crate::telemetry::names;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the attempts concluded for one batch.
#[derive(Debug)]
pub(super) enum Verdict {
    Delivered,
    /// Give these events up: a metric label and the full reason.
    Dead(&'static str, String),
    /// Too large or rejected with more than one event: deliver in halves.
    Split,
    /// Shutting down; the range stays recorded and is sent again on start.
    Stopped,
}

/// Everything attempting a batch needs; cheap to clone into a task.
#[derive(Clone)]
pub(super) struct Attempts {
    pub name: String,
    pub sink: Arc<Sink>,
    pub status: Arc<SinkStatus>,
    pub retry: RetryConfig,
    pub shutdown: Shutdown,
    /// How long an attempt in flight may finish after shutdown.
    pub drain_timeout: Duration,
}

impl Attempts {
    /// Attempts `batch` until a verdict. `can_split`: it holds more than one
    /// event, so a refusal of its size or content splits it.
    pub async fn run(&self, batch: &EncodedBatch, can_split: bool) -> Verdict {
        let retry = &self.retry;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let started = Instant::now();
            let outcome = {
                let deliver = self.sink.deliver(batch);
                tokio::pin!(deliver);
                let mut shutdown = self.shutdown.clone();
                tokio::select! {
                    outcome = &mut deliver => outcome,
                    _ = shutdown.recv() => match tokio::time::timeout(self.drain_timeout, &mut deliver).await {
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
                    tracing::warn!(sink = %self.name, attempt = attempts, first = batch.first_seq, %reason, "delivery failed; will retry");
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

    /// Waits while an operator has the sink paused; None on shutdown.
    pub async fn unless_paused(&self) -> Option<()> {
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
    pub async fn sleep(&self, duration: Duration) -> bool {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(duration) => true,
            _ = shutdown.recv() => false,
        }
    }
}

/// A spawned attempt that is aborted when dropped, so a delivery loop that
/// stops (or is aborted) never leaves attempts running behind it.
pub(super) struct AttemptTask(tokio::task::JoinHandle<Verdict>);

impl AttemptTask {
    pub fn spawn(attempts: Attempts, batch: Arc<EncodedBatch>, can_split: bool) -> AttemptTask {
        AttemptTask(tokio::spawn(async move {
            attempts.run(&batch, can_split).await
        }))
    }

    /// The verdict; Err when the task panicked.
    pub async fn verdict(&mut self) -> Result<Verdict, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl Drop for AttemptTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
