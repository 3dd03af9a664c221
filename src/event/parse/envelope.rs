//! The attributes both input formats map to, and the canonical JSON body
//! written from them (what is stored and sent).

use super::fields::{invalid, kind_of, shorten, string_value, valid_type, Problem};
use super::{MAX_ATTRIBUTE_BYTES, MAX_ID_BYTES, MAX_TYPE_CHARS};
use crate::event::json::push_compact;
use crate::event::{Event, Fidelity};
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The attributes common to both formats, gathered before writing the body.
#[derive(Default)]
pub(super) struct Envelope<'a> {
    pub(super) id: Option<(String, &'a RawValue)>,
    pub(super) event_type: Option<(String, &'a RawValue)>,
    pub(super) time: Option<String>,
    pub(super) attributes: [Option<&'a RawValue>; 6],
    pub(super) session_id: Option<String>,
    pub(super) fidelity: Option<Fidelity>,
    pub(super) data: Option<&'a RawValue>,
    pub(super) extensions: Vec<(String, &'a RawValue)>,
}

/// The optional string attributes, in body order.
pub(super) const ATTRIBUTES: [&str; 6] = [
    "source",
    "subject",
    "agent_id",
    "session_id",
    "run_id",
    "correlation_id",
];
pub(super) const SESSION_ID: usize = 3;

pub(super) fn attribute_slot(native_name: &str) -> Option<usize> {
    ATTRIBUTES.iter().position(|a| *a == native_name)
}

impl<'a> Envelope<'a> {
    pub(super) fn set_attribute(
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

    pub(super) fn set_common(&mut self, name: &str, raw: &'a RawValue) -> Result<bool, Problem> {
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

    pub(super) fn into_event(self, received_ms: i64, received: &str) -> Result<Event, Problem> {
        let (type_value, type_raw) = self
            .event_type
            .ok_or_else(|| invalid("field `type` is missing"))?;
        let (id, client_id) = match &self.id {
            Some((value, _)) => (value.clone(), true),
            None => (generated_id(received_ms), false),
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

thread_local! {
    /// Seeded once per thread from the OS's random source (a UUIDv7's
    /// random bits).
    static ID_RANDOM: std::cell::RefCell<fastrand::Rng> = std::cell::RefCell::new(
        fastrand::Rng::with_seed(uuid::Uuid::now_v7().as_u64_pair().1),
    );
}

/// A UUIDv7 for an event sent without an id: its receive time and 74
/// random bits. `Uuid::now_v7` asks the OS for them on every call, a
/// syscall per event (5% of parsing a batch); a per-thread generator does
/// not. Ids only need to be unique: dedup never looks at generated ones.
fn generated_id(received_ms: i64) -> String {
    let random = ID_RANDOM
        .with(|rng| rng.borrow_mut().u128(..))
        .to_le_bytes();
    let random: &[u8; 10] = random[..10].try_into().expect("10 bytes");
    uuid::Builder::from_unix_timestamp_millis(received_ms.max(0) as u64, random)
        .into_uuid()
        .to_string()
}
