//! Request bodies to [`Event`]s: JSON (one object or an array), NDJSON and
//! CloudEvents 1.0 structured / batch JSON.
//!
//! A body is parsed completely before anything is stored: the first problem
//! fails the whole request with an error naming the event index or line.

use super::json::{check_depth, push_compact};
use super::{Event, Fidelity};
use crate::clock::format_time_ms;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

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

struct Problem {
    code: &'static str,
    text: String,
}

fn invalid(text: impl Into<String>) -> Problem {
    Problem {
        code: "invalid_event",
        text: text.into(),
    }
}

/// The fields of one event object in order, values still raw JSON.
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FieldsVisitor<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Fields<'a>, M::Error> {
                let mut fields: Vec<(String, &'a RawValue)> = Vec::with_capacity(8);
                while let Some(key) = map.next_key::<String>()? {
                    if fields.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!("field `{key}` appears twice")));
                    }
                    let value: &'a RawValue = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor(std::marker::PhantomData))
    }
}

fn kind_of(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Decodes a string attribute; its raw JSON token is what gets stored.
fn string_value(name: &str, raw: &RawValue, max_bytes: usize) -> Result<String, Problem> {
    if !raw.get().starts_with('"') {
        return Err(invalid(format!(
            "field `{name}` must be a string, got {}",
            kind_of(raw)
        )));
    }
    let value: String = serde_json::from_str(raw.get())
        .map_err(|e| invalid(format!("field `{name}` is not a valid string: {e}")))?;
    if value.is_empty() {
        return Err(invalid(format!("field `{name}` must not be empty")));
    }
    if value.len() > max_bytes {
        return Err(invalid(format!(
            "field `{name}` is {} bytes, longer than {max_bytes}",
            value.len()
        )));
    }
    Ok(value)
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

fn valid_type(value: &str) -> bool {
    let count = value.chars().count();
    (1..=MAX_TYPE_CHARS).contains(&count)
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
}

fn shorten(value: &str) -> String {
    if value.chars().count() <= 64 {
        value.to_string()
    } else {
        format!("{}…", value.chars().take(64).collect::<String>())
    }
}

/// The attributes common to both formats, gathered before writing the body.
#[derive(Default)]
struct Envelope<'a> {
    id: Option<(String, &'a RawValue)>,
    event_type: Option<(String, &'a RawValue)>,
    time: Option<String>,
    attributes: [Option<&'a RawValue>; 6],
    session_id: Option<String>,
    fidelity: Option<Fidelity>,
    data: Option<&'a RawValue>,
    extensions: Vec<(String, &'a RawValue)>,
}

/// The optional string attributes, in body order.
const ATTRIBUTES: [&str; 6] = [
    "source",
    "subject",
    "agent_id",
    "session_id",
    "run_id",
    "correlation_id",
];
const SESSION_ID: usize = 3;

fn attribute_slot(native_name: &str) -> Option<usize> {
    ATTRIBUTES.iter().position(|a| *a == native_name)
}

impl<'a> Envelope<'a> {
    fn set_attribute(
        &mut self,
        name: &str,
        native: &str,
        raw: &'a RawValue,
    ) -> Result<(), Problem> {
        let slot = attribute_slot(native).expect("known attribute");
        let value = string_value(name, raw, MAX_ATTRIBUTE_BYTES)?;
        if slot == SESSION_ID {
            self.session_id = Some(value);
        }
        self.attributes[slot] = Some(raw);
        Ok(())
    }

    fn set_common(&mut self, name: &str, raw: &'a RawValue) -> Result<bool, Problem> {
        match name {
            "id" => self.id = Some((string_value("id", raw, MAX_ID_BYTES)?, raw)),
            "type" => {
                if !raw.get().starts_with('"') {
                    return Err(invalid(format!(
                        "field `type` must be a string, got {}",
                        kind_of(raw)
                    )));
                }
                let value: String = serde_json::from_str(raw.get())
                    .map_err(|e| invalid(format!("field `type` is not a valid string: {e}")))?;
                if value.is_empty() {
                    return Err(invalid("field `type` must not be empty"));
                }
                if !valid_type(&value) {
                    return Err(invalid(format!(
                        "field `type` must be 1-{MAX_TYPE_CHARS} characters of A-Z a-z 0-9 . _ : / -, got `{}`",
                        shorten(&value)
                    )));
                }
                self.event_type = Some((value, raw));
            }
            "time" => {
                let value = string_value("time", raw, 64)?;
                let parsed = OffsetDateTime::parse(&value, &Rfc3339).map_err(|_| {
                    invalid(format!(
                        "field `time` must be an RFC 3339 timestamp, got `{}`",
                        shorten(&value)
                    ))
                })?;
                self.time = Some(
                    parsed
                        .to_offset(UtcOffset::UTC)
                        .format(&Rfc3339)
                        .map_err(|e| invalid(format!("field `time` cannot be represented: {e}")))?,
                );
            }
            "fidelity" => {
                let value = string_value("fidelity", raw, 32)?;
                self.fidelity = Some(Fidelity::parse(&value).ok_or_else(|| {
                    invalid(format!(
                        "field `fidelity` must be one of observed, committed, domain, control; got `{}`",
                        shorten(&value)
                    ))
                })?);
            }
            "data" => self.data = Some(raw),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn into_event(self, received_ms: i64, received: &str) -> Result<Event, Problem> {
        let (type_value, type_raw) = self
            .event_type
            .ok_or_else(|| invalid("field `type` is missing"))?;
        let (id, client_id) = match &self.id {
            Some((value, _)) => (value.clone(), true),
            None => (uuid::Uuid::now_v7().to_string(), false),
        };
        let fidelity = self.fidelity.unwrap_or(Fidelity::Committed);
        let mut body = String::with_capacity(192 + self.data.map_or(0, |d| d.get().len()));
        body.push_str("{\"id\":");
        match &self.id {
            Some((_, raw)) => body.push_str(raw.get()),
            None => {
                body.push('"');
                body.push_str(&id);
                body.push('"');
            }
        }
        body.push_str(",\"type\":");
        body.push_str(type_raw.get());
        body.push_str(",\"time\":\"");
        body.push_str(self.time.as_deref().unwrap_or(received));
        body.push_str("\",\"received\":\"");
        body.push_str(received);
        body.push('"');
        for (name, raw) in ATTRIBUTES.iter().zip(self.attributes) {
            if let Some(raw) = raw {
                body.push_str(",\"");
                body.push_str(name);
                body.push_str("\":");
                body.push_str(raw.get());
            }
        }
        body.push_str(",\"fidelity\":\"");
        body.push_str(fidelity.as_str());
        body.push('"');
        if let Some(data) = self.data {
            body.push_str(",\"data\":");
            push_compact(data.get(), &mut body);
        }
        if !self.extensions.is_empty() {
            body.push_str(",\"extensions\":{");
            for (i, (name, raw)) in self.extensions.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&serde_json::to_string(name).expect("string serialises"));
                body.push(':');
                push_compact(raw.get(), &mut body);
            }
            body.push('}');
        }
        body.push('}');
        Ok(Event {
            id,
            client_id,
            event_type: type_value,
            session_id: self.session_id,
            fidelity,
            received_ms,
            body,
        })
    }
}

fn parse_event(
    text: &str,
    cloudevents: bool,
    received_ms: i64,
    received: &str,
) -> Result<Event, Problem> {
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        // Report malformed JSON as such, not as "not an object".
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
            return Err(Problem {
                code: "invalid_json",
                text: format!("invalid JSON: {e}"),
            });
        }
        return Err(invalid("an event must be a JSON object"));
    }
    let fields: Fields = serde_json::from_str(text).map_err(|e| Problem {
        code: if e.is_data() {
            "invalid_event"
        } else {
            "invalid_json"
        },
        text: if e.is_data() {
            e.to_string()
        } else {
            format!("invalid JSON: {e}")
        },
    })?;
    let is_cloudevent = cloudevents || fields.0.iter().any(|(k, _)| k == "specversion");
    let mut envelope = Envelope::default();
    if is_cloudevent {
        fill_cloudevent(&mut envelope, fields)?;
    } else {
        fill_native(&mut envelope, fields)?;
    }
    envelope.into_event(received_ms, received)
}

fn fill_native<'a>(envelope: &mut Envelope<'a>, fields: Fields<'a>) -> Result<(), Problem> {
    for (name, raw) in fields.0 {
        if is_null(raw) && name != "data" {
            continue;
        }
        if envelope.set_common(&name, raw)? {
            continue;
        }
        match name.as_str() {
            n if attribute_slot(n).is_some() => envelope.set_attribute(n, n, raw)?,
            "extensions" => {
                let map: Vec<(String, &RawValue)> = match serde_json::from_str::<Fields>(raw.get()) {
                    Ok(map) if raw.get().starts_with('{') => map.0,
                    _ => return Err(invalid(format!("field `extensions` must be an object, got {}", kind_of(raw)))),
                };
                envelope.extensions = map;
            }
            // Assigned by outboxd; accepted so that outboxd's own output can be re-ingested.
            "seq" | "received" => {}
            other => {
                return Err(invalid(format!(
                    "unknown field `{}` (known: id, type, time, source, subject, agent_id, session_id, run_id, correlation_id, fidelity, data, extensions; put anything else in `data`)",
                    shorten(other)
                )))
            }
        }
    }
    Ok(())
}

/// CloudEvents 1.0 attributes and their native names.
const CE_ATTRIBUTES: [(&str, &str); 6] = [
    ("source", "source"),
    ("subject", "subject"),
    ("agentid", "agent_id"),
    ("sessionid", "session_id"),
    ("runid", "run_id"),
    ("correlationid", "correlation_id"),
];

fn fill_cloudevent<'a>(envelope: &mut Envelope<'a>, fields: Fields<'a>) -> Result<(), Problem> {
    let mut specversion = false;
    for (name, raw) in fields.0 {
        if name == "specversion" {
            if raw.get() != "\"1.0\"" {
                return Err(invalid(format!(
                    "CloudEvents `specversion` must be \"1.0\", got {}",
                    shorten(raw.get())
                )));
            }
            specversion = true;
            continue;
        }
        if is_null(raw) {
            continue;
        }
        if envelope.set_common(&name, raw)? {
            continue;
        }
        if let Some((_, native)) = CE_ATTRIBUTES.iter().find(|(ce, _)| *ce == name) {
            envelope.set_attribute(&name, native, raw)?;
            continue;
        }
        let valid_name = name == "data_base64"
            || (!name.is_empty()
                && name.len() <= 20
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        if !valid_name {
            return Err(invalid(format!(
                "`{}` is not a CloudEvents attribute name (lowercase letters and digits, at most 20)",
                shorten(&name)
            )));
        }
        if matches!(raw.get().as_bytes().first(), Some(b'{' | b'[')) {
            return Err(invalid(format!(
                "CloudEvents attribute `{name}` must be a string, number or boolean, got {}",
                kind_of(raw)
            )));
        }
        envelope.extensions.push((name, raw));
    }
    if !specversion {
        return Err(invalid("CloudEvents field `specversion` is missing"));
    }
    if envelope.id.is_none() {
        return Err(invalid("CloudEvents field `id` is missing"));
    }
    if envelope.attributes[0].is_none() {
        return Err(invalid("CloudEvents field `source` is missing"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_events: 10,
        max_event_bytes: 1024,
        max_depth: 8,
    };
    const NOW: i64 = 1_700_000_000_123;

    fn parse(body: &str, format: Format) -> Result<Vec<Event>, ParseError> {
        parse_body(body.as_bytes(), format, &LIMITS, NOW)
    }

    fn body_json(event: &Event) -> serde_json::Value {
        serde_json::from_str(&event.body).unwrap()
    }

    #[test]
    fn native_event_is_normalised() {
        let events = parse(
            r#"{"type":"message.created","id":"m-1","time":"2024-01-02T03:04:05+02:00","session_id":"s1","data":{ "text" : "hi there" }}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.id, "m-1");
        assert!(event.client_id);
        assert_eq!(event.session_id.as_deref(), Some("s1"));
        assert_eq!(event.fidelity, Fidelity::Committed);
        assert_eq!(
            event.body,
            r#"{"id":"m-1","type":"message.created","time":"2024-01-02T01:04:05Z","received":"2023-11-14T22:13:20.123Z","session_id":"s1","fidelity":"committed","data":{"text":"hi there"}}"#
        );
    }

    #[test]
    fn missing_id_gets_a_uuid_v7_and_skips_dedup() {
        let events = parse(r#"{"type":"t"}"#, Format::Json).unwrap();
        let id = uuid::Uuid::parse_str(&events[0].id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert!(!events[0].client_id);
        assert_eq!(body_json(&events[0])["time"], "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn arrays_and_ndjson_keep_order() {
        let array = parse(r#"[{"type":"a"},{"type":"b"}]"#, Format::Json).unwrap();
        assert_eq!(
            array
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        let lines = parse("{\"type\":\"a\"}\r\n\n{\"type\":\"b\"}\n", Format::Ndjson).unwrap();
        assert_eq!(
            lines
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn cloudevents_map_to_the_envelope() {
        let events = parse(
            r#"{"specversion":"1.0","id":"ce-1","source":"/agents/a1","type":"com.example.tool.called","subject":"run/7","sessionid":"s9","runid":"r7","agentid":"a1","correlationid":"c1","fidelity":"control","datacontenttype":"application/json","traceparent":"00-abc","data":{"tool":"grep"}}"#,
            Format::CloudEvent,
        )
        .unwrap();
        let body = body_json(&events[0]);
        assert_eq!(body["id"], "ce-1");
        assert_eq!(body["source"], "/agents/a1");
        assert_eq!(body["subject"], "run/7");
        assert_eq!(body["session_id"], "s9");
        assert_eq!(body["run_id"], "r7");
        assert_eq!(body["agent_id"], "a1");
        assert_eq!(body["correlation_id"], "c1");
        assert_eq!(body["fidelity"], "control");
        assert_eq!(body["data"]["tool"], "grep");
        assert_eq!(body["extensions"]["datacontenttype"], "application/json");
        assert_eq!(body["extensions"]["traceparent"], "00-abc");
        assert!(body.get("specversion").is_none());
        // A CloudEvent sent as plain JSON is recognised by its specversion.
        let plain = parse(
            r#"{"specversion":"1.0","id":"x","source":"s","type":"t"}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(body_json(&plain[0])["source"], "s");
    }

    #[test]
    fn canonical_output_is_accepted_again_unchanged() {
        let first = parse(
            r#"{"type":"t","id":"i","extensions":{"k":1},"data":[1,2]}"#,
            Format::Json,
        )
        .unwrap();
        let again = parse(&first[0].body, Format::Ndjson).unwrap();
        assert_eq!(again[0].body, first[0].body);
    }

    fn error(body: &str, format: Format) -> ParseError {
        parse(body, format).expect_err(body)
    }

    #[test]
    fn bad_events_name_the_problem_and_place() {
        let cases: &[(&str, Format, &str, Location, &str)] = &[
            ("{\"type\":", Format::Json, "invalid_json", Location::Whole, "invalid JSON"),
            ("{\"type\":\"a\"}\n{\"type\":", Format::Ndjson, "invalid_json", Location::Line(2), "invalid JSON"),
            ("{}", Format::Json, "invalid_event", Location::Whole, "`type` is missing"),
            ("{\"type\":\"\"}", Format::Json, "invalid_event", Location::Whole, "`type` must not be empty"),
            ("{\"type\":\"a b\"}", Format::Json, "invalid_event", Location::Whole, "`type` must be 1-128"),
            ("{\"type\":5}", Format::Json, "invalid_event", Location::Whole, "`type` must be a string, got a number"),
            ("{\"type\":\"a\",\"id\":7}", Format::Json, "invalid_event", Location::Whole, "`id` must be a string"),
            ("{\"type\":\"a\",\"time\":\"yesterday\"}", Format::Json, "invalid_event", Location::Whole, "RFC 3339"),
            ("{\"type\":\"a\",\"fidelity\":\"loud\"}", Format::Json, "invalid_event", Location::Whole, "`fidelity` must be one of"),
            ("{\"type\":\"a\",\"sesion_id\":\"x\"}", Format::Json, "invalid_event", Location::Whole, "unknown field `sesion_id`"),
            ("{\"type\":\"a\",\"type\":\"b\"}", Format::Json, "invalid_event", Location::Whole, "appears twice"),
            ("[{\"type\":\"a\"},{\"type\":1}]", Format::Json, "invalid_event", Location::Index(1), "`type` must be a string"),
            ("[{\"type\":\"a\",\"id\":\"x\"},{\"type\":\"a\",\"id\":\"x\"}]", Format::Json, "duplicate_id", Location::Index(1), "already appears in event 0"),
            ("[1]", Format::Json, "invalid_event", Location::Index(0), "must be a JSON object"),
            ("\"hi\"", Format::Json, "invalid_json", Location::Whole, "expected a JSON object"),
            ("[]", Format::Json, "empty", Location::Whole, "no events"),
            ("  \n", Format::Ndjson, "empty", Location::Whole, "empty"),
            ("{\"type\":\"a\",\"data\":[[[[[[[[[1]]]]]]]]]}", Format::Json, "too_deep", Location::Whole, "max_depth"),
            ("{\"type\":\"a\"}\n{\"type\":\"a\",\"data\":[[[[[[[[[1]]]]]]]]]}", Format::Ndjson, "too_deep", Location::Line(2), "max_depth"),
            ("[{\"type\":\"a\"},{\"type\":\"a\",\"data\":[[[[[[[[[1]]]]]]]]]}]", Format::Json, "too_deep", Location::Index(1), "max_depth"),
            ("{\"type\":\"a\"}", Format::CloudEvent, "invalid_event", Location::Whole, "specversion"),
            ("{\"specversion\":\"0.3\",\"type\":\"a\"}", Format::CloudEvent, "invalid_event", Location::Whole, "\"1.0\""),
            ("{\"specversion\":\"1.0\",\"type\":\"a\",\"source\":\"s\"}", Format::CloudEvent, "invalid_event", Location::Whole, "`id` is missing"),
            ("{\"specversion\":\"1.0\",\"type\":\"a\",\"id\":\"i\",\"source\":\"s\",\"Bad-Name\":1}", Format::CloudEvent, "invalid_event", Location::Whole, "not a CloudEvents attribute name"),
            ("[{\"specversion\":\"1.0\",\"type\":\"a\",\"id\":\"i\",\"source\":\"s\"}]", Format::CloudEvent, "invalid_json", Location::Whole, "one CloudEvent"),
            ("{\"specversion\":\"1.0\",\"type\":\"a\",\"id\":\"i\",\"source\":\"s\"}", Format::CloudEventBatch, "invalid_json", Location::Whole, "array of CloudEvents"),
        ];
        for (body, format, code, location, needle) in cases {
            let e = error(body, *format);
            assert_eq!((e.code, e.location), (*code, *location), "{body}: {e}");
            assert!(
                e.message.contains(needle),
                "{body}: `{}` should contain `{needle}`",
                e.message
            );
        }
    }

    #[test]
    fn limits_answer_too_large() {
        let many = (0..11)
            .map(|_| "{\"type\":\"a\"}")
            .collect::<Vec<_>>()
            .join("\n");
        let e = error(&many, Format::Ndjson);
        assert_eq!(e.code, "too_many_events");
        assert!(e.is_too_large());
        let many_array = format!(
            "[{}]",
            (0..11)
                .map(|_| "{\"type\":\"a\"}")
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(error(&many_array, Format::Json).code, "too_many_events");
        let big = format!("{{\"type\":\"a\",\"data\":\"{}\"}}", "x".repeat(2000));
        let e = error(&big, Format::Json);
        assert_eq!((e.code, e.location), ("event_too_large", Location::Whole));
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_line() {
        let e = parse_body(
            b"{\"type\":\"a\"}\n{\"type\":\"\xff\"}",
            Format::Ndjson,
            &LIMITS,
            NOW,
        )
        .unwrap_err();
        assert_eq!((e.code, e.location), ("invalid_utf8", Location::Line(2)));
    }

    #[test]
    fn receive_time_formats_with_milliseconds() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time_ms(NOW), "2023-11-14T22:13:20.123Z");
    }

    /// Deterministic mutation testing: bodies derived from valid ones by
    /// flipping, cutting, duplicating and splicing bytes must never panic,
    /// and whatever is accepted must normalise to a fixed point (its
    /// canonical body parses again to the same body). Longer hunts:
    /// `MUTATION_ROUNDS=5000000 MUTATION_SEED=7 cargo test --release --lib mutated`.
    #[test]
    fn mutated_bodies_never_panic_and_normalise_idempotently() {
        let seeds: &[(&str, Format)] = &[
            (
                r#"{"type":"a.b","id":"x1","time":"2024-01-02T03:04:05.123+01:00","session_id":"s","data":{"k":[1,2,{"z":"\u00e9\n"}]}}"#,
                Format::Json,
            ),
            (
                r#"[{"type":"a"},{"type":"b","fidelity":"observed","extensions":{"e":true}}]"#,
                Format::Json,
            ),
            (
                "{\"type\":\"a\"}\n{\"type\":\"b\",\"data\":\"x y\"}\r\n\n",
                Format::Ndjson,
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","sessionid":"q","traceparent":"00-1","data":[1]}"#,
                Format::CloudEvent,
            ),
            (
                r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"u","data":null}]"#,
                Format::CloudEventBatch,
            ),
        ];
        let specials: &[&[u8]] = &[
            b"\"", b"\\", b"{", b"}", b"[", b"]", b",", b":", b"\n", b" ", b"\xff", b"\xc3",
            b"\\u", b"\\ud800", b"null", b"1e999", b"-0",
        ];
        let limits = Limits {
            max_events: 50,
            max_event_bytes: 4096,
            max_depth: 16,
        };
        let env = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let mut rng = fastrand::Rng::with_seed(env("MUTATION_SEED", 0x0b0c_5eed));
        let mut accepted = 0;
        for round in 0..env("MUTATION_ROUNDS", 30_000) as usize {
            let (seed, format) = seeds[round % seeds.len()];
            let mut body = seed.as_bytes().to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(0..=body.len());
                match rng.u8(0..5) {
                    0 if !body.is_empty() => {
                        let i = at.min(body.len() - 1);
                        body[i] ^= 1 << rng.u8(0..8);
                    }
                    1 => body.truncate(at),
                    2 => {
                        let piece = specials[rng.usize(0..specials.len())];
                        body.splice(at..at, piece.iter().copied());
                    }
                    3 if at < body.len() => {
                        let end = rng.usize(at..=body.len());
                        let copy = body[at..end].to_vec();
                        body.splice(at..at, copy);
                    }
                    _ => {
                        let end = rng.usize(at..=body.len());
                        body.drain(at..end);
                    }
                }
            }
            let format = if rng.bool() {
                format
            } else {
                [
                    Format::Json,
                    Format::Ndjson,
                    Format::CloudEvent,
                    Format::CloudEventBatch,
                ][rng.usize(0..4)]
            };
            if check_body(&body, format, &limits, NOW) {
                accepted += 1;
            }
        }
        assert!(
            accepted > 500,
            "the mutations should keep some bodies valid ({accepted})"
        );
    }
}
