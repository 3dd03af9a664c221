//! Reading one event object's fields: in order, values still raw JSON,
//! with the checks every string attribute shares.

use super::MAX_TYPE_CHARS;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

pub(super) struct Problem {
    pub(super) code: &'static str,
    pub(super) text: String,
}

pub(super) fn invalid(text: impl Into<String>) -> Problem {
    Problem {
        code: "invalid_event",
        text: text.into(),
    }
}

/// The fields of one event object in order, values still raw JSON.
pub(super) struct Fields<'a>(pub(super) Vec<(String, &'a RawValue)>);

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

pub(super) fn kind_of(raw: &RawValue) -> &'static str {
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
pub(super) fn string_value(
    name: &str,
    raw: &RawValue,
    max_bytes: usize,
) -> Result<String, Problem> {
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

pub(super) fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

pub(super) fn valid_type(value: &str) -> bool {
    let count = value.chars().count();
    (1..=MAX_TYPE_CHARS).contains(&count)
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
}

pub(super) fn shorten(value: &str) -> String {
    if value.chars().count() <= 64 {
        value.to_string()
    } else {
        format!("{}…", value.chars().take(64).collect::<String>())
    }
}
