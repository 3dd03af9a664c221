//! The ingest API: one axum router, served on TCP and on the Unix socket.
//!
//! `POST /v1/events` turns a body into events (all or nothing), hands them
//! to the outbox writer and answers only once they are committed.

pub mod admin;
mod binary;
pub mod decode;
mod error;
pub mod feed;
pub mod listen;
pub mod peer;
pub mod store;

use crate::clock::now_ms;
use crate::config::Config;
use crate::event::parse::{parse_body, Format, Limits};
use crate::event::{Event, LiveEvent};
use crate::outbox::Outbox;
use crate::telemetry::names;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::IngestError;
use http_body_util::BodyExt;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Permits of the in-flight semaphore count KiB, so a permit count fits u32.
const PERMIT_BYTES: usize = 1024;

struct Shared {
    outbox: Outbox,
    sinks: admin::SinkRegistry,
    limits: Limits,
    max_body_bytes: usize,
    body_timeout: std::time::Duration,
    inflight: Semaphore,
    inflight_permits: u32,
    store: store::StorePolicy,
    redaction: crate::redact::LiveRules,
    feed: feed::Feed,
    /// Where `POST /v1/admin/reload` asks for a reload.
    reloads: Option<crate::reload::Requests>,
}

/// Router state: shared parts plus what differs per listener.
#[derive(Clone)]
pub struct IngestState {
    shared: Arc<Shared>,
    /// Bearer token required on this listener, if any.
    token: Option<Arc<str>>,
    /// Who may take admin actions on this listener.
    admin: AdminAccess,
}

/// Admin actions (replay, purge, pause, resume) by listener.
#[derive(Clone)]
enum AdminAccess {
    /// The Unix socket: its file mode decides who connects at all.
    Open,
    /// TCP with `admin.token` set: that token, not the ingest one.
    Token(Arc<str>),
    /// TCP without `admin.token`: refused.
    Refused,
}

impl IngestState {
    /// `shutdown` ends open feed streams when the daemon stops.
    pub fn new(
        config: &Config,
        outbox: Outbox,
        sinks: admin::SinkRegistry,
        shutdown: Option<crate::shutdown::Shutdown>,
        reloads: Option<crate::reload::Requests>,
    ) -> Self {
        let permits = (config.ingest.max_inflight_bytes.as_usize() / PERMIT_BYTES)
            .clamp(1, u32::MAX as usize >> 4) as u32;
        IngestState {
            shared: Arc::new(Shared {
                outbox,
                sinks,
                limits: Limits {
                    max_events: config.ingest.max_events_per_request,
                    max_event_bytes: config.ingest.max_event_bytes.as_usize(),
                    max_depth: config.ingest.max_depth,
                },
                max_body_bytes: config.ingest.max_body_bytes.as_usize(),
                body_timeout: config.ingest.body_timeout.0,
                inflight: Semaphore::new(permits as usize),
                inflight_permits: permits,
                store: store::StorePolicy::new(config.ingest.store, &config.ingest.ephemeral_types),
                redaction: crate::redact::LiveRules::new(&config.redaction)
                    .expect("redaction rules are checked with the config"),
                feed: feed::Feed::new(config.feed.max_subscribers, config.feed.max_lag, shutdown),
                reloads,
            }),
            token: None,
            admin: AdminAccess::Open,
        }
    }

    /// The redaction rules in force, for a reload to replace.
    pub fn redaction(&self) -> crate::redact::LiveRules {
        self.shared.redaction.clone()
    }

    /// The same state for the TCP listener: `Authorization: Bearer <token>`
    /// on every route (when set), and admin actions only with `admin_token`.
    pub fn for_tcp(&self, token: Option<String>, admin_token: Option<String>) -> Self {
        IngestState {
            shared: self.shared.clone(),
            token: token.map(Arc::from),
            admin: match admin_token {
                Some(token) => AdminAccess::Token(Arc::from(token)),
                None => AdminAccess::Refused,
            },
        }
    }
}

pub fn router(state: IngestState) -> Router {
    let auth = axum::middleware::from_fn_with_state(state.clone(), require_token);
    Router::new()
        .route("/v1/events", post(post_events).get(feed::page))
        .route("/v1/stream", get(feed::stream))
        .route("/v1/sinks", get(admin::sinks))
        .route("/v1/sinks/{sink}/{action}", post(admin::pause_or_resume))
        .route("/v1/dead-letters", get(admin::dead_letters))
        .route("/v1/dead-letters/replay", post(admin::replay))
        .route("/v1/dead-letters/purge", post(admin::purge))
        .route("/v1/dead-letters/{sink}/{seq}", get(admin::dead_letter))
        .route("/v1/admin/reload", post(admin::reload))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async {
            IngestError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; POST /v1/events, GET /v1/events, GET /v1/stream",
            )
        })
        .layer(auth)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// With a token set on this listener, every route but `/healthz` requires
/// it (sinks and dead letters as much as ingest); admin actions require the
/// admin token instead, and on TCP are refused without one.
async fn require_token(
    State(state): State<IngestState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if is_admin_action(request.method(), request.uri().path()) {
        let refusal = match &state.admin {
            AdminAccess::Open => None,
            AdminAccess::Token(token) if authorized(token, request.headers()) => None,
            AdminAccess::Token(_) => Some(IngestError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "admin actions need `Authorization: Bearer <admin.token>`",
            )),
            AdminAccess::Refused => Some(IngestError::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "admin actions over TCP need admin.token to be set; or use the Unix socket (--socket)",
            )),
        };
        return match refusal {
            Some(error) => {
                metrics::counter!(names::INGEST_REJECTED, "reason" => error.code).increment(1);
                error.into_response()
            }
            None => next.run(request).await,
        };
    }
    if let Some(token) = &state.token {
        if request.uri().path() != "/healthz" && !authorized(token, request.headers()) {
            metrics::counter!(names::INGEST_REJECTED, "reason" => "unauthorized").increment(1);
            return IngestError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong `Authorization: Bearer` token",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Requests that change what the daemon does, rather than feed or read it.
fn is_admin_action(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::POST
        && (matches!(
            path,
            "/v1/dead-letters/replay" | "/v1/dead-letters/purge" | "/v1/admin/reload"
        ) || (path.starts_with("/v1/sinks/")
            && (path.ends_with("/pause") || path.ends_with("/resume"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(authorized("s3cret", &with("Bearer s3cret")));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer S3CRET",
            "s3cret",
            "Basic s3cret",
            "Bearer ",
        ] {
            assert!(!authorized("s3cret", &with(wrong)), "{wrong}");
        }
        assert!(!authorized("s3cret", &HeaderMap::new()));
    }
}

#[derive(Serialize)]
struct Accepted {
    /// Events stored (new ones; duplicates are not stored again).
    accepted: usize,
    duplicates: usize,
    /// Events valid but not stored by `ingest.store` / `ephemeral_types`.
    skipped: usize,
    last_seq: i64,
}

async fn post_events(State(state): State<IngestState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let response = match ingest(&state, &headers, body).await {
        Ok(accepted) => {
            metrics::counter!(names::INGEST_EVENTS_ACCEPTED).increment(accepted.accepted as u64);
            metrics::counter!(names::INGEST_DUPLICATES).increment(accepted.duplicates as u64);
            (StatusCode::OK, Json(accepted)).into_response()
        }
        Err(error) => {
            metrics::counter!(names::INGEST_REJECTED, "reason" => error.code).increment(1);
            if error.status.is_server_error() {
                tracing::warn!(status = %error.status, reason = error.code, "{}", error.message);
            } else {
                tracing::debug!(status = %error.status, reason = error.code, "{}", error.message);
            }
            error.into_response()
        }
    };
    metrics::counter!(names::INGEST_REQUESTS, "status" => response.status().as_str().to_owned())
        .increment(1);
    metrics::histogram!(names::INGEST_DURATION).record(started.elapsed().as_secs_f64());
    response
}

fn authorized(expected: &str, headers: &HeaderMap) -> bool {
    use sha2::{Digest, Sha256};
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared as SHA-256 digests, byte by byte without an early exit: the
    // time taken tells nothing of the token, not even its length.
    let (given, expected) = (Sha256::digest(given), Sha256::digest(expected));
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

async fn ingest(
    state: &IngestState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, IngestError> {
    let shared = &state.shared;
    let binary = binary::is_binary(headers);
    let format = match binary {
        true => Format::CloudEvent,
        false => decode::format_of(headers)?,
    };
    let encoding = decode::encoding_of(headers)?;
    let max = shared.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let deadline = tokio::time::Instant::now() + shared.body_timeout;
    let (bytes, mut permit) = tokio::time::timeout_at(deadline, read_body(shared, body, max))
        .await
        .map_err(|_| {
            IngestError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within ingest.body_timeout ({:?})",
                    shared.body_timeout
                ),
            )
        })??;
    if encoding != decode::Encoding::Identity {
        // Decoding holds the decoded body too, up to the same cap.
        let decoded = acquire(shared, max).await?;
        permit.merge(decoded);
    }
    metrics::counter!(names::INGEST_BYTES).increment(bytes.len() as u64);
    let mut decoded = decode::decode(bytes, encoding, max)?;
    if binary {
        decoded = binary::to_structured(headers, &decoded)?
            .into_bytes()
            .into();
    }
    let mut events = parse_body(&decoded, format, &shared.limits, now_ms())?;
    drop(decoded);
    if let Some(redactor) = shared.redaction.current() {
        for event in &mut events {
            redactor.apply(event);
        }
    }
    let skipped = skip_unstored(&shared.store, &shared.outbox, &mut events);
    if events.is_empty() {
        return Ok(Accepted {
            accepted: 0,
            duplicates: 0,
            skipped,
            last_seq: shared.outbox.last_seq(),
        });
    }
    let ack = shared.outbox.append(events).await?;
    Ok(Accepted {
        accepted: ack.accepted,
        duplicates: ack.duplicates,
        skipped,
        last_seq: ack.last_seq,
    })
}

/// Removes the events the store policy does not keep (live subscribers
/// still get them); returns how many.
fn skip_unstored(policy: &store::StorePolicy, outbox: &Outbox, events: &mut Vec<Event>) -> usize {
    if policy.stores_everything() {
        return 0;
    }
    let (kept, skipped): (Vec<Event>, Vec<Event>) =
        std::mem::take(events)
            .into_iter()
            .partition(|event| match policy.skips(event) {
                Some(reason) => {
                    metrics::counter!(names::INGEST_SKIPPED, "reason" => reason.label())
                        .increment(1);
                    false
                }
                None => true,
            });
    *events = kept;
    let count = skipped.len();
    outbox.publish_unstored(skipped.into_iter().map(|event| LiveEvent {
        seq: None,
        event_type: event.event_type,
        session_id: event.session_id,
        body: event.body,
    }));
    count
}

/// Reads the body, holding in-flight permits for the bytes as they arrive,
/// never for what a header merely declares: a client that stalls holds
/// only what it sent, and cannot starve the others.
async fn read_body(
    shared: &Shared,
    mut body: Body,
    max: usize,
) -> Result<(bytes::Bytes, tokio::sync::SemaphorePermit<'_>), IngestError> {
    let mut permit = acquire(shared, 1).await?;
    let mut held = PERMIT_BYTES;
    let mut buffer = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            IngestError::new(
                StatusCode::BAD_REQUEST,
                "body_read_failed",
                format!("reading the body failed: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buffer.len() + data.len() > max {
            return Err(too_large(max));
        }
        let needed = buffer.len() + data.len();
        if needed > held {
            permit.merge(acquire(shared, needed - held).await?);
            held = needed.div_ceil(PERMIT_BYTES) * PERMIT_BYTES;
        }
        buffer.extend_from_slice(&data);
    }
    Ok((buffer.freeze(), permit))
}

/// Waits for in-flight permits covering `bytes`.
async fn acquire(
    shared: &Shared,
    bytes: usize,
) -> Result<tokio::sync::SemaphorePermit<'_>, IngestError> {
    let permits = (bytes.div_ceil(PERMIT_BYTES) as u32).clamp(1, shared.inflight_permits);
    shared.inflight.acquire_many(permits).await.map_err(|_| {
        IngestError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "outboxd is shutting down",
        )
    })
}

fn too_large(max: usize) -> IngestError {
    IngestError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("body exceeds ingest.max_body_bytes ({max})"),
    )
}
