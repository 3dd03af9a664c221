//! Encoders from stored events to the bytes a sink sends: NDJSON or a JSON
//! array, optionally gzip or zstd compressed. Deterministic: the same range
//! always encodes to the same bytes, so a retried batch is the same object.

use crate::event::StoredEvent;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::Write;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// One stored event per line.
    Ndjson,
    /// A JSON array of stored events.
    JsonArray,
}

/// One batch, encoded and ready to send.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub first_seq: i64,
    pub last_seq: i64,
    /// Receive time of the batch's first event (dates S3 keys).
    pub first_received_ms: i64,
    pub events: usize,
    pub body: Bytes,
    pub content_type: &'static str,
    pub content_encoding: Option<&'static str>,
    /// File-name ending: `.jsonl`, `.json`, plus `.gz` / `.zst`.
    pub extension: &'static str,
}

/// Appends one event as outboxd presents it: the stored body with its `seq`
/// as the first field.
pub fn push_event(out: &mut Vec<u8>, event: &StoredEvent) {
    push_with_seq(out, event.seq, &event.body);
}

/// Appends a stored body (a JSON object) with `seq` inserted as its first field.
pub fn push_with_seq(out: &mut Vec<u8>, seq: i64, body: &[u8]) {
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    match body.first() {
        Some(b'{') if body.len() > 2 => {
            out.push(b',');
            out.extend_from_slice(&body[1..]);
        }
        _ => out.push(b'}'),
    }
}

/// Encodes `events` (already filtered) of the fixed range `[first_seq, last_seq]`.
pub fn encode(
    events: &[StoredEvent],
    first_seq: i64,
    last_seq: i64,
    format: BodyFormat,
    compression: Compression,
) -> EncodedBatch {
    let mut plain = Vec::with_capacity(events.iter().map(|e| e.body.len() + 24).sum::<usize>() + 2);
    match format {
        BodyFormat::Ndjson => {
            for event in events {
                push_event(&mut plain, event);
                plain.push(b'\n');
            }
        }
        BodyFormat::JsonArray => {
            plain.push(b'[');
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    plain.push(b',');
                }
                push_event(&mut plain, event);
            }
            plain.push(b']');
        }
    }
    let (content_type, base) = match format {
        BodyFormat::Ndjson => ("application/x-ndjson", 0),
        BodyFormat::JsonArray => ("application/json", 1),
    };
    let (body, content_encoding, extension) = match compression {
        Compression::None => (plain, None, [".jsonl", ".json"][base]),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(plain.len() / 4),
                flate2::Compression::new(6),
            );
            encoder.write_all(&plain).expect("writing to memory");
            (
                encoder.finish().expect("writing to memory"),
                Some("gzip"),
                [".jsonl.gz", ".json.gz"][base],
            )
        }
        Compression::Zstd => (
            zstd::bulk::compress(&plain, 3).expect("compressing in memory"),
            Some("zstd"),
            [".jsonl.zst", ".json.zst"][base],
        ),
    };
    EncodedBatch {
        first_seq,
        last_seq,
        first_received_ms: events.first().map_or(0, |e| e.received_ms),
        events: events.len(),
        body: Bytes::from(body),
        content_type,
        content_encoding,
        extension,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fidelity;

    fn stored(seq: i64, body: &str) -> StoredEvent {
        StoredEvent {
            seq,
            event_type: "t".into(),
            fidelity: Fidelity::Committed,
            session_id: None,
            received_ms: 1000 * seq,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn ndjson_and_arrays_carry_the_seq_first() {
        let events = [
            stored(7, r#"{"id":"a","type":"t"}"#),
            stored(9, r#"{"id":"b","type":"t"}"#),
        ];
        let ndjson = encode(&events, 7, 10, BodyFormat::Ndjson, Compression::None);
        assert_eq!(
            &ndjson.body[..],
            b"{\"seq\":7,\"id\":\"a\",\"type\":\"t\"}\n{\"seq\":9,\"id\":\"b\",\"type\":\"t\"}\n"
        );
        assert_eq!(
            (
                ndjson.first_seq,
                ndjson.last_seq,
                ndjson.events,
                ndjson.first_received_ms
            ),
            (7, 10, 2, 7000)
        );
        let array = encode(&events, 7, 9, BodyFormat::JsonArray, Compression::None);
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&array.body).unwrap();
        assert_eq!(parsed[1]["seq"], 9);
        assert_eq!(array.extension, ".json");
    }

    #[test]
    fn compression_is_deterministic_and_decodes() {
        let events: Vec<_> = (1..50)
            .map(|i| stored(i, r#"{"id":"x","type":"t","data":"aaaaaaaaaaaaaaaa"}"#))
            .collect();
        let plain = encode(&events, 1, 49, BodyFormat::Ndjson, Compression::None);
        for compression in [Compression::Gzip, Compression::Zstd] {
            let a = encode(&events, 1, 49, BodyFormat::Ndjson, compression);
            let b = encode(&events, 1, 49, BodyFormat::Ndjson, compression);
            assert_eq!(a.body, b.body);
            assert!(a.body.len() < plain.body.len());
            let decoded = match compression {
                Compression::Gzip => {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(
                        &mut flate2::read::GzDecoder::new(&a.body[..]),
                        &mut out,
                    )
                    .unwrap();
                    out
                }
                _ => zstd::decode_all(&a.body[..]).unwrap(),
            };
            assert_eq!(decoded, plain.body.to_vec());
        }
    }
}
