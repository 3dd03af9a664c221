//! The change feed, on the same listeners and token rules as ingest:
//!
//! - `GET /v1/events?after=SEQ&limit=N`: a page of retained events after a
//!   cursor, in seq order, and the cursor to ask with next;
//! - `GET /v1/stream?after=SEQ` (Server-Sent Events, `id:` = seq,
//!   `Last-Event-ID` honoured): retained events after the cursor, then the
//!   live tail. The hand-over has no gap and no duplicate because the tail
//!   is subscribed to before the outbox is read, and events the replay
//!   already sent are dropped by seq.
//!
//! Both take `session_id` (exact) and `type` (a glob) filters. A cursor
//! older than what is retained gets `feed_reset` naming the oldest seq. A
//! burst that passes the live ring sends a subscriber back to the outbox to
//! catch up; one more than `feed.max_lag` events behind the head gets
//! `lagged` and is disconnected (it reconnects with `Last-Event-ID`), so no
//! subscriber is ever buffered without bound.

use super::error::IngestError;
use super::IngestState;
use crate::event::LiveEvent;
use crate::format::push_with_seq;
use crate::outbox::Outbox;
use crate::shutdown::Shutdown;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, Semaphore};

/// Rows read per query while replaying or paging.
const CHUNK: i64 = 500;
/// A page scans at most this many rows past filters before it answers.
const PAGE_SCAN: usize = 20_000;
/// A page answers once its events reach this size (with at least one):
/// `limit` events of up to 1 MiB each would otherwise be a gigabyte.
const PAGE_MAX_BYTES: usize = 4 << 20;
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The feed's shared parts: the subscriber cap, how far behind a
/// subscriber may fall, and the daemon's shutdown.
pub struct Feed {
    subscribers: Arc<Semaphore>,
    max_subscribers: usize,
    max_lag: i64,
    shutdown: Option<Shutdown>,
}

impl Feed {
    pub fn new(max_subscribers: usize, max_lag: u64, shutdown: Option<Shutdown>) -> Feed {
        Feed {
            subscribers: Arc::new(Semaphore::new(max_subscribers)),
            max_subscribers,
            max_lag: max_lag.min(i64::MAX as u64) as i64,
            shutdown,
        }
    }
}

/// What a reader asked for.
struct Request {
    after: i64,
    limit: usize,
    filter: Filter,
}

struct Filter {
    session_id: Option<String>,
    event_type: Option<glob::Pattern>,
}

impl Filter {
    fn matches(&self, event_type: &str, session_id: Option<&str>) -> bool {
        self.event_type
            .as_ref()
            .is_none_or(|p| p.matches(event_type))
            && self
                .session_id
                .as_deref()
                .is_none_or(|wanted| session_id == Some(wanted))
    }
}

fn bad_query(message: String) -> IngestError {
    IngestError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}

fn parse_seq(name: &str, value: &str) -> Result<i64, IngestError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            bad_query(format!(
                "`{name}` must be a seq (an integer >= 0), got `{value}`"
            ))
        })
}

fn parse_request(
    query: Vec<(String, String)>,
    last_event_id: Option<&str>,
    paged: bool,
) -> Result<Request, IngestError> {
    let mut request = Request {
        after: 0,
        limit: DEFAULT_LIMIT,
        filter: Filter {
            session_id: None,
            event_type: None,
        },
    };
    for (key, value) in query {
        match key.as_str() {
            "after" => request.after = parse_seq("after", &value)?,
            "limit" if paged => {
                request.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad_query(format!("`limit` must be 1-{MAX_LIMIT}, got `{value}`"))
                    })?
            }
            "session_id" => request.filter.session_id = Some(value),
            "type" => {
                request.filter.event_type = Some(glob::Pattern::new(&value).map_err(|e| {
                    bad_query(format!("`type` must be a glob pattern, got `{value}`: {e}"))
                })?)
            }
            other => {
                let known = if paged {
                    "after, limit, session_id, type"
                } else {
                    "after, session_id, type"
                };
                return Err(bad_query(format!(
                    "unknown query parameter `{other}`; known: {known}"
                )));
            }
        }
    }
    // A reconnecting EventSource sends the last id it saw: it wins over the
    // `after` of the URL it reconnects to.
    if let Some(id) = last_event_id {
        request.after = parse_seq("Last-Event-ID", id.trim())?;
    }
    Ok(request)
}

fn storage_error(error: sqlx::Error) -> IngestError {
    IngestError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_error",
        format!("reading the outbox failed: {error}"),
    )
}

/// Where reading after `after` starts: `Some(oldest)` when events after
/// the cursor are no longer retained (the reader missed them).
async fn reset_point(outbox: &Outbox, after: i64) -> Result<Option<i64>, sqlx::Error> {
    let oldest = match outbox.oldest_seq().await? {
        Some(oldest) => oldest,
        None => outbox.last_seq() + 1,
    };
    Ok((after + 1 < oldest).then_some(oldest))
}

/// `GET /v1/events`
pub async fn page(
    State(state): State<IngestState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, IngestError> {
    let request = parse_request(query, None, true)?;
    let outbox = &state.shared.outbox;
    let reset = reset_point(outbox, request.after)
        .await
        .map_err(storage_error)?;
    let mut cursor = reset.map_or(request.after, |oldest| oldest - 1);
    let mut body = Vec::from(&b"{\"events\":["[..]);
    let (mut returned, mut scanned) = (0, 0);
    'scan: loop {
        let chunk = outbox
            .read_after(cursor, CHUNK)
            .await
            .map_err(storage_error)?;
        let caught_up = chunk.complete;
        for event in chunk {
            scanned += 1;
            if request
                .filter
                .matches(&event.event_type, event.session_id.as_deref())
            {
                if returned > 0 {
                    body.push(b',');
                }
                push_with_seq(&mut body, event.seq, &event.body);
                returned += 1;
            }
            cursor = event.seq;
            if returned == request.limit || scanned >= PAGE_SCAN || body.len() >= PAGE_MAX_BYTES {
                break 'scan;
            }
        }
        if caught_up {
            break;
        }
    }
    let tail = serde_json::json!({
        "next_after": cursor,
        "last_seq": outbox.last_seq(),
        "reset": reset.map(|oldest| serde_json::json!({"oldest_seq": oldest})),
    });
    body.extend_from_slice(b"],");
    body.extend_from_slice(&serde_json::to_vec(&tail).expect("json")[1..]);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /v1/stream`
pub async fn stream(
    State(state): State<IngestState>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, IngestError> {
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| bad_query("Last-Event-ID is not text".into()))
        })
        .transpose()?;
    let request = parse_request(query, last_event_id, false)?;
    let feed = &state.shared.feed;
    let permit = feed.subscribers.clone().try_acquire_owned().map_err(|_| {
        IngestError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            format!(
                "feed.max_subscribers ({}) streams are open; try again later",
                feed.max_subscribers
            ),
        )
    })?;
    // Subscribed before anything is read: nothing committed from here on
    // can fall between the replay and the tail.
    let live = state.shared.outbox.subscribe_live();
    let (events, receiver) = mpsc::channel(16);
    let outbox = state.shared.outbox.clone();
    let shutdown = feed.shutdown.clone();
    let max_lag = feed.max_lag;
    tokio::spawn(async move {
        let _permit = permit;
        let mut subscriber = Subscriber {
            events,
            filter: request.filter,
            cursor: request.after,
        };
        tokio::select! {
            _ = subscriber.run(&outbox, live, max_lag) => {}
            _ = until_shutdown(shutdown) => {}
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), receiver))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn until_shutdown(shutdown: Option<Shutdown>) {
    match shutdown {
        Some(mut shutdown) => shutdown.recv().await,
        None => std::future::pending().await,
    }
}

/// One SSE subscriber's task: replay, then the tail, into its channel.
struct Subscriber {
    events: mpsc::Sender<Event>,
    filter: Filter,
    /// The last seq sent or passed over.
    cursor: i64,
}

fn sse_event(seq: Option<i64>, body: &[u8]) -> Event {
    match seq {
        Some(seq) => {
            let mut data = Vec::with_capacity(body.len() + 16);
            push_with_seq(&mut data, seq, body);
            Event::default()
                .id(seq.to_string())
                .data(String::from_utf8_lossy(&data))
        }
        // Not stored: no id, so a reconnect's Last-Event-ID stays a seq.
        None => Event::default().data(String::from_utf8_lossy(body)),
    }
}

/// How a stretch of following the live tail ended.
enum Followed {
    /// The ring moved past this subscriber: catch up from the outbox.
    FellBehind,
    /// The client is gone, was cut off, or the daemon stops.
    End,
}

impl Subscriber {
    /// Ends when the client is gone, cut off, or the outbox cannot be read.
    async fn run(
        &mut self,
        outbox: &Outbox,
        mut live: broadcast::Receiver<Arc<LiveEvent>>,
        max_lag: i64,
    ) {
        loop {
            if !self.replay(outbox).await {
                return;
            }
            match self.follow(outbox, &mut live, max_lag).await {
                Followed::FellBehind => continue,
                Followed::End => return,
            }
        }
    }

    /// Sends the retained events after the cursor, from the outbox, until
    /// a short read (then everything committed before it was sent). A
    /// cursor older than what is retained gets `feed_reset` first. False
    /// when the stream should end.
    async fn replay(&mut self, outbox: &Outbox) -> bool {
        match reset_point(outbox, self.cursor).await {
            Ok(Some(oldest)) => {
                let reset = serde_json::json!({"oldest_seq": oldest, "after": self.cursor});
                let event = Event::default().event("feed_reset").data(reset.to_string());
                if self.events.send(event).await.is_err() {
                    return false;
                }
                self.cursor = oldest - 1;
            }
            Ok(None) => {}
            Err(e) => {
                self.fail(e).await;
                return false;
            }
        }
        loop {
            let chunk = match outbox.read_after(self.cursor, CHUNK).await {
                Ok(chunk) => chunk,
                Err(e) => {
                    self.fail(e).await;
                    return false;
                }
            };
            let caught_up = chunk.complete;
            for event in chunk {
                self.cursor = event.seq;
                if self
                    .filter
                    .matches(&event.event_type, event.session_id.as_deref())
                    && self
                        .events
                        .send(sse_event(Some(event.seq), &event.body))
                        .await
                        .is_err()
                {
                    return false;
                }
            }
            if caught_up {
                return true;
            }
        }
    }

    /// Sends from the live ring, dropping what the replay already sent.
    async fn follow(
        &mut self,
        outbox: &Outbox,
        live: &mut broadcast::Receiver<Arc<LiveEvent>>,
        max_lag: i64,
    ) -> Followed {
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                _ = self.events.closed() => return Followed::End,
            };
            let event = match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // A burst passed the ring; stored events are still in the
                    // outbox. Only a subscriber far behind the head is cut off.
                    let behind = outbox.last_seq() - self.cursor;
                    if behind <= max_lag {
                        return Followed::FellBehind;
                    }
                    let lagged = serde_json::json!({"behind": behind, "resume_after": self.cursor});
                    let event = Event::default().event("lagged").data(lagged.to_string());
                    let _ = self.events.send(event).await;
                    return Followed::End;
                }
                Err(broadcast::error::RecvError::Closed) => return Followed::End,
            };
            if let Some(seq) = event.seq {
                if seq <= self.cursor {
                    continue; // the replay sent it already
                }
                self.cursor = seq;
            }
            if self
                .filter
                .matches(&event.event_type, event.session_id.as_deref())
                && self
                    .events
                    .send(sse_event(event.seq, event.body.as_bytes()))
                    .await
                    .is_err()
            {
                return Followed::End;
            }
        }
    }

    async fn fail(&self, error: sqlx::Error) {
        tracing::warn!(%error, "change feed: reading the outbox failed; closing the stream");
        let data = serde_json::json!({"error": error.to_string()});
        let _ = self
            .events
            .send(Event::default().event("error").data(data.to_string()))
            .await;
    }
}
