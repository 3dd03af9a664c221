//! Content negotiation and body decoding: which format a request body is in,
//! and its gzip / zstd encoding undone under a cap on the decoded size.

use super::error::IngestError;
use crate::event::parse::Format;
use axum::http::{header, HeaderMap, StatusCode};
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

fn unsupported(message: String) -> IngestError {
    IngestError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        message,
    )
}

const SUPPORTED_TYPES: &str = "application/json, application/x-ndjson, application/cloudevents+json, application/cloudevents-batch+json";

pub fn format_of(headers: &HeaderMap) -> Result<Format, IngestError> {
    let value = headers.get(header::CONTENT_TYPE).ok_or_else(|| {
        unsupported(format!(
            "Content-Type is required (one of {SUPPORTED_TYPES})"
        ))
    })?;
    let value = value
        .to_str()
        .map_err(|_| unsupported("Content-Type is not readable text".into()))?;
    let mut parts = value.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    for parameter in parts {
        let (name, val) = parameter.split_once('=').unwrap_or((parameter, ""));
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = val.trim().trim_matches('"');
            if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(unsupported(format!(
                    "charset `{charset}` is not supported; send UTF-8"
                )));
            }
        }
    }
    match media.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => Ok(Format::Ndjson),
        "application/cloudevents+json" => Ok(Format::CloudEvent),
        "application/cloudevents-batch+json" => Ok(Format::CloudEventBatch),
        _ => Err(unsupported(format!(
            "Content-Type `{media}` is not supported (use one of {SUPPORTED_TYPES})"
        ))),
    }
}

pub fn encoding_of(headers: &HeaderMap) -> Result<Encoding, IngestError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let value = value
        .to_str()
        .map_err(|_| unsupported("Content-Encoding is not readable text".into()))?
        .trim()
        .to_ascii_lowercase();
    match value.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        other => Err(unsupported(format!(
            "Content-Encoding `{other}` is not supported (use gzip, zstd or none)"
        ))),
    }
}

/// Undoes the encoding; the decoded body may not exceed `max_bytes`.
pub fn decode(
    body: bytes::Bytes,
    encoding: Encoding,
    max_bytes: usize,
) -> Result<bytes::Bytes, IngestError> {
    let name = match encoding {
        Encoding::Identity => return Ok(body),
        Encoding::Gzip => "gzip",
        Encoding::Zstd => "zstd",
    };
    let mut decoded = Vec::with_capacity((body.len() * 4).min(max_bytes + 1));
    let limit = max_bytes as u64 + 1;
    let result = match encoding {
        Encoding::Gzip => flate2::read::MultiGzDecoder::new(&body[..])
            .take(limit)
            .read_to_end(&mut decoded),
        Encoding::Zstd => zstd::stream::read::Decoder::new(&body[..])
            .and_then(|d| d.take(limit).read_to_end(&mut decoded)),
        Encoding::Identity => unreachable!(),
    };
    result.map_err(|e| {
        IngestError::new(
            StatusCode::BAD_REQUEST,
            "invalid_encoding",
            format!("body is not valid {name}: {e}"),
        )
    })?;
    if decoded.len() > max_bytes {
        return Err(IngestError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "decoded_too_large",
            format!("the {name}-decoded body exceeds ingest.max_body_bytes ({max_bytes})"),
        ));
    }
    Ok(decoded.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), value.parse().unwrap());
        }
        map
    }

    #[test]
    fn content_types_map_to_formats() {
        let ct = |v| format_of(&headers(&[(header::CONTENT_TYPE, v)]));
        assert_eq!(ct("application/json").unwrap(), Format::Json);
        assert_eq!(ct("Application/JSON; charset=utf-8").unwrap(), Format::Json);
        assert_eq!(ct("application/x-ndjson").unwrap(), Format::Ndjson);
        assert_eq!(
            ct("application/cloudevents+json").unwrap(),
            Format::CloudEvent
        );
        assert_eq!(
            ct("application/cloudevents-batch+json").unwrap(),
            Format::CloudEventBatch
        );
        assert_eq!(
            ct("text/plain").unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert!(ct("application/json; charset=latin1")
            .unwrap_err()
            .message
            .contains("latin1"));
        assert!(format_of(&HeaderMap::new())
            .unwrap_err()
            .message
            .contains("required"));
    }

    #[test]
    fn gzip_and_zstd_decode_under_a_cap() {
        let plain = b"{\"type\":\"a\"}".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = bytes::Bytes::from(gz.finish().unwrap());
        assert_eq!(
            &decode(gz.clone(), Encoding::Gzip, 10_000).unwrap()[..],
            &plain[..]
        );
        assert_eq!(
            decode(gz, Encoding::Gzip, 100).unwrap_err().code,
            "decoded_too_large"
        );
        let zs = bytes::Bytes::from(zstd::encode_all(&plain[..], 1).unwrap());
        assert_eq!(&decode(zs, Encoding::Zstd, 10_000).unwrap()[..], &plain[..]);
        let bad = decode(bytes::Bytes::from_static(b"not gzip"), Encoding::Gzip, 100).unwrap_err();
        assert_eq!(
            (bad.status, bad.code),
            (StatusCode::BAD_REQUEST, "invalid_encoding")
        );
        let enc = |v| encoding_of(&headers(&[(header::CONTENT_ENCODING, v)]));
        assert_eq!(enc("GZIP").unwrap(), Encoding::Gzip);
        assert_eq!(
            enc("br").unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
