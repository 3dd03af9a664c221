//! The operations listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use crate::clock::now_ms;
use crate::ingest::admin::{lag, SinkRegistry};
use crate::outbox::Outbox;
use crate::telemetry::names;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone)]
pub struct OpsState {
    pub outbox: Outbox,
    pub metrics: PrometheusHandle,
    pub sinks: SinkRegistry,
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    // Gauges that are cheapest to compute when asked for.
    let age = match state.outbox.oldest_received_ms().await {
        Ok(Some(ms)) => (now_ms() - ms).max(0) as f64 / 1000.0,
        Ok(None) => 0.0,
        Err(e) => {
            state.outbox.stats().observe(&e);
            tracing::warn!(error = %e, "reading the oldest event for metrics");
            0.0
        }
    };
    metrics::gauge!(names::OUTBOX_OLDEST_AGE).set(age);
    metrics::gauge!(names::OUTBOX_MAX_BYTES).set(state.outbox.max_bytes() as f64);
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    metrics::gauge!(names::RUNTIME_TASKS).set(tasks as f64);
    for sink in state.sinks.list().iter() {
        if let Ok((events, seconds)) = lag(&state.outbox, sink.snapshot().cursor).await {
            metrics::gauge!(names::SINK_LAG_EVENTS, "sink" => sink.name.clone()).set(events as f64);
            metrics::gauge!(names::SINK_LAG_SECONDS, "sink" => sink.name.clone()).set(seconds);
        }
    }
    state.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<OpsState>) -> (StatusCode, String) {
    if let Some(reason) = state.outbox.stats().corruption.borrow().clone() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the outbox database is corrupt ({reason}); restarting to check it\n"
            ),
        );
    }
    if let Err(reason) = state.outbox.check_writable().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        );
    }
    let stats = state.outbox.stats();
    let used = stats.bytes.load(std::sync::atomic::Ordering::Relaxed);
    if stats.full.load(std::sync::atomic::Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: outbox is full ({used} of {} bytes)\n",
                state.outbox.max_bytes()
            ),
        );
    }
    match &stats.quarantine {
        Some(notice) => (StatusCode::OK, format!("ready\nwarning: {notice}\n")),
        None => (StatusCode::OK, "ready\n".into()),
    }
}
