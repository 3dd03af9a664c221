//! Request bodies to [`Event`]s: JSON (one object or an array), NDJSON and
//! CloudEvents 1.0 structured / batch JSON.
//!
//! A body is parsed completely before anything is stored: the first problem
//! fails the whole request with an error naming the event index or line.
//!
//! This file frames a body into events and checks the request as a whole
//! (limits, ids repeated within it); `mapping` reads one event as native or
//! CloudEvents fields, `fields` holds the checks every attribute shares, and
//! `envelope` writes the canonical body.

mod envelope;
mod fields;
mod mapping;
#[cfg(test)]
mod tests;

use super::json::check_depth;
use super::Event;
use crate::clock::format_time_ms;
use mapping::parse_event;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fmt;

pub const MAX_ID_BYTES: usize = 128;
pub const MAX_TYPE_CHARS: usize = 128;
/// Limit for `source`, `subject`, `agent_id`, `session_id`, `run_id`, `correlation_id`.
pub const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// The shape of a request body, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`: one event object or an array of them.
    Json,
    /// `application/x-ndjson`: one event object per line.
    Ndjson,
    /// `application/cloudevents+json`: one structured CloudEvent.
    CloudEvent,
    /// `application/cloudevents-batch+json`: an array of CloudEvents.
    CloudEventBatch,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    pub max_event_bytes: usize,
    pub max_depth: usize,
}

/// Where in the request an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Whole,
    /// Zero-based index in a JSON array (0 for a single object).
    Index(usize),
    /// One-based NDJSON line.
    Line(usize),
}

/// Why a body was refused; `too_large` ones answer 413, the rest 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub code: &'static str,
    pub message: String,
    pub location: Location,
}

impl ParseError {
    fn new(code: &'static str, location: Location, message: impl Into<String>) -> Self {
        ParseError {
            code,
            message: message.into(),
            location,
        }
    }

    pub fn is_too_large(&self) -> bool {
        matches!(self.code, "too_many_events" | "event_too_large")
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Location::Whole => write!(f, "{}", self.message),
            Location::Index(i) => write!(f, "event {i}: {}", self.message),
            Location::Line(l) => write!(f, "line {l}: {}", self.message),
        }
    }
}

/// What must hold for any body, valid or not (the fuzz target in `fuzz/`
/// and the mutation test check it): parsing never panics, and every
/// accepted event is stored as one line that parses again to itself.
/// Returns whether the body was accepted.
pub fn check_body(body: &[u8], format: Format, limits: &Limits, received_ms: i64) -> bool {
    let Ok(events) = parse_body(body, format, limits, received_ms) else {
        return false;
    };
    for event in events {
        assert!(
            !event.body.contains('\n'),
            "a stored body is one line: {}",
            event.body
        );
        let again = parse_body(event.body.as_bytes(), Format::Json, limits, received_ms)
            .unwrap_or_else(|e| panic!("canonical body refused ({e}): {}", event.body));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].body, event.body, "normalisation is a fixed point");
    }
    true
}

/// Parses a whole (decoded) body. `received_ms` stamps every event.
pub fn parse_body(
    body: &[u8],
    format: Format,
    limits: &Limits,
    received_ms: i64,
) -> Result<Vec<Event>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let location = match format {
            Format::Ndjson => Location::Line(
                1 + body[..e.valid_up_to()]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count(),
            ),
            _ => Location::Whole,
        };
        ParseError::new(
            "invalid_utf8",
            location,
            format!("body is not valid UTF-8 (byte {})", e.valid_up_to()),
        )
    })?;
    if text.trim().is_empty() {
        return Err(ParseError::new(
            "empty",
            Location::Whole,
            "request body is empty",
        ));
    }
    let mut batch = Batch::new(limits, received_ms);
    match format {
        Format::Ndjson => {
            for (number, line) in text.split('\n').enumerate() {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.trim().is_empty() {
                    continue;
                }
                batch.add(line, Location::Line(number + 1), false)?;
            }
        }
        Format::Json | Format::CloudEvent | Format::CloudEventBatch => {
            let trimmed = text.trim_start();
            let cloudevents = format != Format::Json;
            match (trimmed.as_bytes()[0], format) {
                (b'[', Format::Json | Format::CloudEventBatch) => {
                    check_depth(trimmed.as_bytes(), limits.max_depth, true).map_err(|deep| {
                        let location = deep.element.map(Location::Index).unwrap_or(Location::Whole);
                        too_deep(location, limits.max_depth)
                    })?;
                    let elements: Vec<&RawValue> = serde_json::from_str(trimmed).map_err(|e| {
                        ParseError::new(
                            "invalid_json",
                            Location::Whole,
                            format!("invalid JSON: {e}"),
                        )
                    })?;
                    if elements.len() > limits.max_events {
                        return Err(too_many(limits.max_events, elements.len()));
                    }
                    for (index, element) in elements.into_iter().enumerate() {
                        batch.add(element.get(), Location::Index(index), cloudevents)?;
                    }
                }
                (b'{', Format::Json | Format::CloudEvent) => {
                    batch.add(trimmed, Location::Whole, cloudevents)?
                }
                (_, Format::CloudEventBatch) => {
                    return Err(ParseError::new(
                        "invalid_json",
                        Location::Whole,
                        "expected a JSON array of CloudEvents",
                    ))
                }
                (_, Format::CloudEvent) => {
                    return Err(ParseError::new(
                        "invalid_json",
                        Location::Whole,
                        "expected one CloudEvent JSON object",
                    ))
                }
                _ => {
                    return Err(ParseError::new(
                        "invalid_json",
                        Location::Whole,
                        "expected a JSON object or an array of objects",
                    ))
                }
            }
        }
    }
    if batch.events.is_empty() {
        return Err(ParseError::new(
            "empty",
            Location::Whole,
            "request holds no events",
        ));
    }
    Ok(batch.events)
}

fn too_deep(location: Location, limit: usize) -> ParseError {
    ParseError::new(
        "too_deep",
        location,
        format!("JSON nests deeper than ingest.max_depth ({limit})"),
    )
}

fn too_many(limit: usize, got: usize) -> ParseError {
    ParseError::new(
        "too_many_events",
        Location::Whole,
        format!("request holds {got} events, more than ingest.max_events_per_request ({limit})"),
    )
}

/// The events of one request so far, with what is needed to check them as a whole.
struct Batch<'l> {
    limits: &'l Limits,
    received_ms: i64,
    received: String,
    events: Vec<Event>,
    client_ids: HashMap<String, Location>,
}

impl<'l> Batch<'l> {
    fn new(limits: &'l Limits, received_ms: i64) -> Self {
        Batch {
            limits,
            received_ms,
            received: format_time_ms(received_ms),
            events: Vec::new(),
            client_ids: HashMap::new(),
        }
    }

    fn add(&mut self, text: &str, location: Location, cloudevents: bool) -> Result<(), ParseError> {
        if self.events.len() == self.limits.max_events {
            return Err(ParseError::new(
                "too_many_events",
                location,
                format!(
                    "more than ingest.max_events_per_request ({}) events",
                    self.limits.max_events
                ),
            ));
        }
        if text.len() > self.limits.max_event_bytes {
            return Err(ParseError::new(
                "event_too_large",
                location,
                format!(
                    "event is {} bytes, more than ingest.max_event_bytes ({})",
                    text.len(),
                    self.limits.max_event_bytes
                ),
            ));
        }
        // Array elements were checked with the whole array.
        if !matches!(location, Location::Index(_)) {
            check_depth(text.as_bytes(), self.limits.max_depth, false)
                .map_err(|_| too_deep(location, self.limits.max_depth))?;
        }
        let event = parse_event(text, cloudevents, self.received_ms, &self.received)
            .map_err(|message| ParseError::new(message.code, location, message.text))?;
        if event.client_id {
            if let Some(first) = self.client_ids.insert(event.id.clone(), location) {
                let first = match first {
                    Location::Index(i) => format!("event {i}"),
                    Location::Line(l) => format!("line {l}"),
                    Location::Whole => "another event".into(),
                };
                return Err(ParseError::new(
                    "duplicate_id",
                    location,
                    format!(
                        "id `{}` already appears in {first} of this request",
                        event.id
                    ),
                ));
            }
        }
        self.events.push(event);
        Ok(())
    }
}
