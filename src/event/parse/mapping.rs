//! One event's text to an [`Event`]: outboxd's native fields or CloudEvents
//! 1.0 attributes, both filled into the same envelope.

use super::envelope::{attribute_slot, Envelope};
use super::fields::{invalid, is_null, kind_of, shorten, Fields, Problem};
use crate::event::Event;
use serde_json::value::RawValue;

pub(super) fn parse_event(
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

pub(super) fn fill_native<'a>(
    envelope: &mut Envelope<'a>,
    fields: Fields<'a>,
) -> Result<(), Problem> {
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
pub(super) const CE_ATTRIBUTES: [(&str, &str); 6] = [
    ("source", "source"),
    ("subject", "subject"),
    ("agentid", "agent_id"),
    ("sessionid", "session_id"),
    ("runid", "run_id"),
    ("correlationid", "correlation_id"),
];

pub(super) fn fill_cloudevent<'a>(
    envelope: &mut Envelope<'a>,
    fields: Fields<'a>,
) -> Result<(), Problem> {
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
