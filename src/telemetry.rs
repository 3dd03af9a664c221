//! Metric names in one place, the Prometheus recorder, and logging set-up
//! (the `[log]` table).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

pub mod names {
    pub const INGEST_REQUESTS: &str = "outboxd_ingest_requests_total";
    pub const INGEST_EVENTS_ACCEPTED: &str = "outboxd_ingest_events_accepted_total";
    pub const INGEST_DUPLICATES: &str = "outboxd_ingest_duplicates_total";
    pub const INGEST_SKIPPED: &str = "outboxd_ingest_events_skipped_total";
    pub const INGEST_REDACTIONS: &str = "outboxd_ingest_redactions_total";
    pub const INGEST_REJECTED: &str = "outboxd_ingest_rejected_requests_total";
    pub const INGEST_BYTES: &str = "outboxd_ingest_bytes_total";
    pub const INGEST_DURATION: &str = "outboxd_ingest_request_duration_seconds";
    pub const OUTBOX_EVENTS: &str = "outboxd_outbox_events";
    pub const OUTBOX_BYTES: &str = "outboxd_outbox_bytes";
    pub const OUTBOX_MAX_BYTES: &str = "outboxd_outbox_max_bytes";
    pub const OUTBOX_LAST_SEQ: &str = "outboxd_outbox_last_seq";
    pub const OUTBOX_OLDEST_AGE: &str = "outboxd_outbox_oldest_event_age_seconds";
    pub const OUTBOX_EVICTED: &str = "outboxd_outbox_evicted_events_total";
    pub const OUTBOX_DELETED: &str = "outboxd_outbox_deleted_events_total";
    pub const OUTBOX_QUARANTINED: &str = "outboxd_outbox_quarantined_databases";
    pub const OUTBOX_DISK_RESERVE: &str = "outboxd_outbox_disk_reserve_bytes";
    pub const OUTBOX_BODY_LOG_BYTES: &str = "outboxd_outbox_body_log_bytes";
    pub const RUNTIME_TASKS: &str = "outboxd_runtime_tasks";
    pub const SINK_EVENTS: &str = "outboxd_sink_events_sent_total";
    pub const SINK_BATCHES: &str = "outboxd_sink_batches_sent_total";
    pub const SINK_BYTES: &str = "outboxd_sink_bytes_sent_total";
    pub const SINK_ATTEMPTS: &str = "outboxd_sink_attempts_total";
    pub const SINK_RETRIES: &str = "outboxd_sink_retries_total";
    pub const SINK_SPLITS: &str = "outboxd_sink_splits_total";
    pub const SINK_SESSIONS: &str = "outboxd_sink_sessions_total";
    pub const SINK_DEAD_LETTERED: &str = "outboxd_sink_dead_lettered_events_total";
    pub const SINK_LAG_EVENTS: &str = "outboxd_sink_lag_events";
    pub const SINK_LAG_SECONDS: &str = "outboxd_sink_lag_seconds";
    pub const SINK_STATE: &str = "outboxd_sink_state";
    pub const SINK_IN_FLIGHT: &str = "outboxd_sink_batches_in_flight";
    pub const SINK_DELIVERY_DURATION: &str = "outboxd_sink_delivery_duration_seconds";
    pub const SINK_BATCH_EVENTS: &str = "outboxd_sink_batch_events";
    pub const COMMIT_BATCH_EVENTS: &str = "outboxd_outbox_commit_batch_events";
    pub const COMMIT_DURATION: &str = "outboxd_outbox_commit_duration_seconds";
    pub const CONFIG_RELOADS: &str = "outboxd_config_reload_total";
    pub const CONFIG_RELOAD_OK: &str = "outboxd_config_last_reload_successful";
}

const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process) and describes every metric.
pub fn install_metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_events".into()), COUNT_BUCKETS)
                })
                .expect("buckets are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use names::*;
    describe_counter!(INGEST_REQUESTS, "Ingest requests answered, by HTTP status.");
    describe_counter!(INGEST_EVENTS_ACCEPTED, "Events committed to the outbox.");
    describe_counter!(
        INGEST_DUPLICATES,
        "Events skipped because their id was accepted within the dedup window."
    );
    describe_counter!(
        INGEST_SKIPPED,
        "Valid events not stored, by reason: observed (ingest.store = compacted), ephemeral_type, store_none."
    );
    describe_counter!(
        INGEST_REDACTIONS,
        "Values masked or dropped before storing, by redaction rule."
    );
    describe_counter!(INGEST_REJECTED, "Ingest requests refused, by reason.");
    describe_counter!(
        INGEST_BYTES,
        Unit::Bytes,
        "Request body bytes received, as sent (before decoding)."
    );
    describe_histogram!(
        INGEST_DURATION,
        Unit::Seconds,
        "Time from request to answer, commit included."
    );
    describe_gauge!(OUTBOX_EVENTS, "Events in the outbox.");
    describe_gauge!(
        OUTBOX_BYTES,
        Unit::Bytes,
        "Bytes the outbox's events count against outbox.max_bytes."
    );
    describe_gauge!(
        OUTBOX_MAX_BYTES,
        Unit::Bytes,
        "The outbox quota, outbox.max_bytes."
    );
    describe_gauge!(OUTBOX_LAST_SEQ, "The highest seq assigned.");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest event in the outbox (0 when empty)."
    );
    describe_counter!(
        OUTBOX_EVICTED,
        "Events evicted by outbox.when_full = \"drop_oldest\"."
    );
    describe_histogram!(COMMIT_BATCH_EVENTS, "Events per group commit.");
    describe_counter!(
        OUTBOX_DELETED,
        "Events deleted after every sink delivered them."
    );
    describe_gauge!(
        OUTBOX_DISK_RESERVE,
        Unit::Bytes,
        "Size of the disk reserve file in place; 0 after a full disk made outboxd release it."
    );
    describe_gauge!(
        OUTBOX_BODY_LOG_BYTES,
        Unit::Bytes,
        "Bytes the body log's segment files hold on disk, delivered bodies not yet freed included."
    );
    describe_gauge!(
        RUNTIME_TASKS,
        "Tokio tasks alive (connections, sinks, housekeeping); should not drift."
    );
    describe_gauge!(
        OUTBOX_QUARANTINED,
        "Corrupt outbox databases moved to data_dir/quarantine and not yet removed by an operator."
    );
    describe_counter!(SINK_EVENTS, "Events delivered, per sink.");
    describe_counter!(SINK_BATCHES, "Batches delivered, per sink.");
    describe_counter!(
        SINK_BYTES,
        Unit::Bytes,
        "Encoded bytes delivered, per sink."
    );
    describe_counter!(SINK_ATTEMPTS, "Delivery attempts, per sink and outcome.");
    describe_counter!(
        SINK_RETRIES,
        "Attempts that will be retried after a backoff, per sink."
    );
    describe_counter!(
        SINK_SESSIONS,
        "Sessions (or parts) a session-assembling sink finished, by result: written, empty (no conversation message: no line), dead_lettered."
    );
    describe_counter!(
        SINK_SPLITS,
        "Batches split in two (too large, or to isolate a rejected event), per sink."
    );
    describe_counter!(
        SINK_DEAD_LETTERED,
        "Events moved to the dead letters, per sink and reason."
    );
    describe_gauge!(
        SINK_LAG_EVENTS,
        "Outbox positions the sink is behind (last_seq - cursor)."
    );
    describe_gauge!(
        SINK_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest event the sink has not delivered."
    );
    describe_gauge!(
        SINK_STATE,
        "1 for the sink's current state (running, backoff, halted), 0 otherwise."
    );
    describe_gauge!(
        SINK_IN_FLIGHT,
        "Batches started and not yet concluded, per sink (at most batch.in_flight, one more while a split's halves go)."
    );
    describe_histogram!(
        SINK_DELIVERY_DURATION,
        Unit::Seconds,
        "Duration of one delivery attempt, per sink."
    );
    describe_histogram!(SINK_BATCH_EVENTS, "Events per delivered batch, per sink.");
    describe_histogram!(
        COMMIT_DURATION,
        Unit::Seconds,
        "Duration of one group commit, fsync included."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Config reloads (SIGHUP, POST /v1/admin/reload), by result: applied, unchanged, invalid, restart_required, failed."
    );
    describe_gauge!(
        CONFIG_RELOAD_OK,
        "1 if the last config reload applied (or there was none), 0 if it was refused."
    );
}

/// Sets up tracing: `RUST_LOG` wins over `log.level`.
pub fn init_logging(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging was already set up: {e}");
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// Filter used when `RUST_LOG` is not set, e.g. "info" or "outboxd=debug".
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}
