//! The sinks' side of the API: `GET /v1/sinks` (state, cursor, lag, errors,
//! dead letters), `GET /v1/dead-letters` (and `/{sink}/{seq}`, with the
//! event), `POST /v1/dead-letters/replay` and `POST /v1/dead-letters/purge`,
//! pause and resume, and `POST /v1/admin/reload`.

use super::error::IngestError;
use super::IngestState;
use crate::clock::now_ms;
use crate::delivery::status::SinkStatus;
use crate::outbox::{Outbox, SinkOp};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use crate::delivery::status::SinkRegistry;

#[derive(Serialize)]
pub struct SinkReport {
    pub name: String,
    pub kind: &'static str,
    pub state: &'static str,
    pub cursor: i64,
    pub batch: Option<(i64, i64)>,
    pub lag_events: i64,
    pub lag_seconds: f64,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub dead_letters: i64,
    pub paused: bool,
}

fn storage(e: sqlx::Error) -> IngestError {
    IngestError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_error",
        format!("reading the outbox failed: {e}"),
    )
}

/// Lag of one sink: (events behind, age in seconds of the oldest undelivered event).
pub async fn lag(outbox: &Outbox, cursor: i64) -> Result<(i64, f64), sqlx::Error> {
    let events = (outbox.last_seq() - cursor).max(0);
    let seconds = match outbox.oldest_received_after(cursor).await? {
        Some(ms) => (now_ms() - ms).max(0) as f64 / 1000.0,
        None => 0.0,
    };
    Ok((events, seconds))
}

pub async fn sinks(State(state): State<IngestState>) -> Result<Json<Vec<SinkReport>>, IngestError> {
    let outbox = &state.shared.outbox;
    let mut reports = Vec::new();
    for status in state.shared.sinks.list().iter() {
        // The count first, then the durable cursor, which moved in the same
        // transaction as any dead-lettering the count shows: the report never
        // shows dead letters with the cursor still before them.
        let dead_letters = outbox
            .dead_letter_count(&status.name)
            .await
            .map_err(storage)?;
        let durable = outbox
            .sink_cursor(&status.name)
            .await
            .map_err(storage)?
            .map_or(0, |cursor| cursor.delivered_seq);
        let snapshot = status.snapshot();
        let paused = status.is_paused();
        let cursor = snapshot.cursor.max(durable);
        let (lag_events, lag_seconds) = lag(outbox, cursor).await.map_err(storage)?;
        reports.push(SinkReport {
            name: status.name.clone(),
            kind: status.kind,
            // The operator's word shows at once; the attempt in flight finishes first.
            state: if paused {
                "paused"
            } else {
                snapshot.state.as_str()
            },
            cursor,
            batch: snapshot.batch,
            lag_events,
            lag_seconds,
            last_error: snapshot.last_error,
            last_error_ms: snapshot.last_error_ms,
            last_success_ms: snapshot.last_success_ms,
            dead_letters,
            paused,
        });
    }
    Ok(Json(reports))
}

#[derive(Deserialize)]
pub struct ListQuery {
    sink: Option<String>,
    limit: Option<i64>,
}

pub async fn dead_letters(
    State(state): State<IngestState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<crate::outbox::DeadLetter>>, IngestError> {
    let limit = query.limit.unwrap_or(1000).clamp(1, 100_000);
    let list = state
        .shared
        .outbox
        .dead_letters(query.sink.as_deref(), limit)
        .await
        .map_err(storage)?;
    Ok(Json(list))
}

/// One dead letter with its event, as stored.
#[derive(Serialize)]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    letter: crate::outbox::DeadLetter,
    event: Box<serde_json::value::RawValue>,
}

pub async fn dead_letter(
    State(state): State<IngestState>,
    Path((sink, seq)): Path<(String, String)>,
) -> Result<Json<DeadLetterDetail>, IngestError> {
    let seq: i64 = seq.parse().map_err(|_| {
        IngestError::new(
            StatusCode::BAD_REQUEST,
            "invalid_seq",
            format!("`{seq}` is not a seq; GET /v1/dead-letters/SINK/SEQ"),
        )
    })?;
    let (letter, body) = state
        .shared
        .outbox
        .dead_letter(&sink, seq)
        .await
        .map_err(storage)?
        .ok_or_else(|| {
            IngestError::new(
                StatusCode::NOT_FOUND,
                "no_dead_letter",
                format!("sink `{sink}` has no dead letter at seq {seq}"),
            )
        })?;
    let event = String::from_utf8(body)
        .ok()
        .and_then(|text| serde_json::value::RawValue::from_string(text).ok())
        .ok_or_else(|| {
            IngestError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unreadable_event",
                format!("the stored event of seq {seq} is not JSON"),
            )
        })?;
    Ok(Json(DeadLetterDetail { letter, event }))
}

/// `{"sink": NAME, "ids": [ID, ...]?}`: which dead letters to replay or purge.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    sink: String,
    ids: Option<Vec<String>>,
}

impl Selection {
    fn parse(state: &IngestState, body: &[u8]) -> Result<Selection, IngestError> {
        let selection: Selection = serde_json::from_slice(body).map_err(|e| {
            IngestError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("expected {{\"sink\": NAME, \"ids\": [ID, ...]?}}: {e}"),
            )
        })?;
        configured(state, &selection.sink)?;
        Ok(selection)
    }
}

/// The status of the configured sink `name`, or 404.
fn configured(state: &IngestState, name: &str) -> Result<Arc<SinkStatus>, IngestError> {
    state.shared.sinks.get(name).ok_or_else(|| {
        IngestError::new(
            StatusCode::NOT_FOUND,
            "unknown_sink",
            format!("no sink named `{name}` is configured"),
        )
    })
}

async fn sink_op(state: &IngestState, op: SinkOp) -> Result<u64, IngestError> {
    state
        .shared
        .outbox
        .sink_op(op)
        .await
        .map_err(|e| IngestError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_error", e))
}

#[derive(Serialize)]
pub struct ReplayAnswer {
    requeued: u64,
}

pub async fn replay(
    State(state): State<IngestState>,
    body: axum::body::Bytes,
) -> Result<Json<ReplayAnswer>, IngestError> {
    let Selection { sink, ids } = Selection::parse(&state, &body)?;
    let requeued = sink_op(&state, SinkOp::Requeue { sink, ids }).await?;
    Ok(Json(ReplayAnswer { requeued }))
}

#[derive(Serialize)]
pub struct PurgeAnswer {
    purged: u64,
}

pub async fn purge(
    State(state): State<IngestState>,
    body: axum::body::Bytes,
) -> Result<Json<PurgeAnswer>, IngestError> {
    let Selection { sink, ids } = Selection::parse(&state, &body)?;
    let purged = sink_op(&state, SinkOp::Purge { sink, ids }).await?;
    Ok(Json(PurgeAnswer { purged }))
}

#[derive(Serialize)]
pub struct PauseAnswer {
    sink: String,
    paused: bool,
    /// False when the sink already was in that state.
    changed: bool,
}

/// `POST /v1/sinks/{name}/pause` and `/resume`: the sink finishes the
/// attempt in flight, then sends nothing until resumed (its events wait in
/// the outbox, its cursor holds deletion back). Not kept across a restart.
pub async fn pause_or_resume(
    State(state): State<IngestState>,
    Path((sink, action)): Path<(String, String)>,
) -> Result<Json<PauseAnswer>, IngestError> {
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => {
            return Err(IngestError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "POST /v1/sinks/NAME/pause or /v1/sinks/NAME/resume",
            ))
        }
    };
    let changed = configured(&state, &sink)?.set_paused(paused);
    if changed {
        tracing::info!(sink = %sink, paused, "sink {action}d by an operator");
    }
    Ok(Json(PauseAnswer {
        sink,
        paused,
        changed,
    }))
}

/// `POST /v1/admin/reload`: re-reads the config and applies it as SIGHUP
/// does; answers with what changed, or why nothing did (the running
/// configuration then stays).
pub async fn reload(
    State(state): State<IngestState>,
) -> Result<Json<crate::reload::Applied>, IngestError> {
    use crate::reload::{ReloadError, Request};
    let stopping = || {
        IngestError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "outboxd is shutting down; nothing was reloaded",
        )
    };
    let requests = state.shared.reloads.as_ref().ok_or_else(stopping)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    requests
        .send(Request { reply: Some(reply) })
        .await
        .map_err(|_| stopping())?;
    match answer.await.map_err(|_| stopping())? {
        Ok(applied) => Ok(Json(applied)),
        Err(e) => {
            let (status, code) = match &e {
                ReloadError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "config_invalid"),
                ReloadError::RestartRequired(_) => (StatusCode::CONFLICT, "restart_required"),
                ReloadError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "reload_failed"),
            };
            Err(IngestError::new(status, code, e.to_string()))
        }
    }
}
