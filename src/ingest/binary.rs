//! CloudEvents' HTTP binary content mode, the default of the official SDKs:
//! the attributes come as `ce-*` headers and the body is the event's data.
//!
//! Such a request is rewritten into one structured CloudEvent (JSON), which
//! then goes through the same parser, validation and all-or-nothing rules
//! as every other body. Per the HTTP binding: header values are
//! percent-decoded; `content-type` becomes `datacontenttype`; the body is
//! `data`, as JSON when the content type says JSON, otherwise as a string
//! when it is UTF-8 text, otherwise base64 in `data_base64`.

use super::error::IngestError;
use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine;
use serde_json::value::RawValue;

const PREFIX: &str = "ce-";

/// True when the request is a binary-mode CloudEvent: it carries
/// `ce-specversion` and its body is not itself a structured CloudEvent.
pub fn is_binary(headers: &HeaderMap) -> bool {
    let structured = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/cloudevents")
        });
    headers.contains_key("ce-specversion") && !structured
}

/// The structured CloudEvent (JSON text) a binary-mode request stands for.
pub fn to_structured(headers: &HeaderMap, body: &[u8]) -> Result<String, IngestError> {
    let mut event = serde_json::Map::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix(PREFIX) else {
            continue;
        };
        let value = percent_decode(value.as_bytes()).ok_or_else(|| {
            bad(format!(
                "header `{name}` is not valid percent-encoded UTF-8"
            ))
        })?;
        if attribute == "data" || attribute == "data_base64" || attribute == "datacontenttype" {
            return Err(bad(format!(
                "header `{name}` is not allowed: in binary mode the body is the data and Content-Type its type"
            )));
        }
        event.insert(attribute.to_string(), serde_json::Value::String(value));
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| bad("Content-Type is not readable text".into()))?
                .to_string(),
        ),
        None => None,
    };
    if let Some(content_type) = &content_type {
        event.insert(
            "datacontenttype".into(),
            serde_json::Value::String(content_type.clone()),
        );
    }
    let mut text = serde_json::to_string(&event).expect("a map of strings serialises");
    if body.is_empty() {
        return Ok(text);
    }
    text.pop(); // the closing brace: the data goes in as it is
    let is_json = content_type.as_deref().is_some_and(is_json_type);
    if is_json {
        let data = std::str::from_utf8(body)
            .ok()
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
            .ok_or_else(|| {
                bad(format!(
                    "the body is not JSON, though Content-Type `{}` says it is",
                    content_type.as_deref().unwrap_or_default()
                ))
            })?;
        text.push_str(",\"data\":");
        text.push_str(data.get());
    } else if let Ok(data) = std::str::from_utf8(body) {
        text.push_str(",\"data\":");
        text.push_str(&serde_json::to_string(data).expect("a string serialises"));
    } else {
        text.push_str(",\"data_base64\":\"");
        text.push_str(&base64::engine::general_purpose::STANDARD.encode(body));
        text.push('"');
    }
    text.push('}');
    Ok(text)
}

/// `application/json`, `text/json` and any `+json` type, parameters aside.
fn is_json_type(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// Decodes `%XX` escapes; None when one is malformed or the result is not UTF-8.
fn percent_decode(value: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.iter();
    while let Some(&byte) = bytes.next() {
        if byte == b'%' {
            let high = (*bytes.next()? as char).to_digit(16)?;
            let low = (*bytes.next()? as char).to_digit(16)?;
            out.push((high * 16 + low) as u8);
        } else {
            out.push(byte);
        }
    }
    String::from_utf8(out).ok()
}

fn bad(message: String) -> IngestError {
    IngestError::new(
        StatusCode::BAD_REQUEST,
        "invalid_cloudevent",
        format!("CloudEvents binary mode: {message}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn structured(pairs: &[(&str, &str)], body: &[u8]) -> serde_json::Value {
        serde_json::from_str(&to_structured(&headers(pairs), body).unwrap()).unwrap()
    }

    #[test]
    fn headers_become_attributes_and_the_body_data() {
        let event = structured(
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "a-1"),
                ("ce-subject", "caf%C3%A9 %25"),
                ("content-type", "application/json; charset=utf-8"),
            ],
            br#"{"n":1}"#,
        );
        assert_eq!(event["id"], "a-1");
        assert_eq!(event["subject"], "café %");
        assert_eq!(event["datacontenttype"], "application/json; charset=utf-8");
        assert_eq!(event["data"], serde_json::json!({"n": 1}));
        let text = structured(&[("ce-id", "t"), ("content-type", "text/plain")], b"hello");
        assert_eq!(text["data"], "hello");
        let binary = structured(
            &[("ce-id", "b"), ("content-type", "application/octet-stream")],
            &[0xff, 0x00, 0x10],
        );
        assert_eq!(binary["data_base64"], "/wAQ");
        assert!(binary.get("data").is_none());
    }

    #[test]
    fn malformed_input_is_refused() {
        for (pairs, body) in [
            (vec![("ce-id", "x%zz")], &b""[..]),
            (vec![("ce-id", "x%ff")], &b""[..]),
            (
                vec![("ce-id", "x"), ("content-type", "application/json")],
                &b"{nope"[..],
            ),
            (vec![("ce-data", "x")], &b""[..]),
        ] {
            let error = to_structured(&headers(&pairs), body).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{pairs:?}");
        }
    }

    #[test]
    fn only_requests_with_ce_specversion_are_binary_mode() {
        assert!(is_binary(&headers(&[
            ("ce-specversion", "1.0"),
            ("content-type", "text/plain")
        ])));
        assert!(!is_binary(&headers(&[(
            "content-type",
            "application/json"
        )])));
        assert!(!is_binary(&headers(&[
            ("ce-specversion", "1.0"),
            ("content-type", "application/cloudevents+json")
        ])));
    }
}
