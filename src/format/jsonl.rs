//! outboxd's own formats: each stored event as it is stored, with its `seq`
//! as the first field, one per line (`ndjson`) or in one array (`json_array`).

use super::Encoder;
use crate::event::StoredEvent;

pub struct Ndjson;
pub struct JsonArray;

impl Encoder for Ndjson {
    fn write(&self, events: &[StoredEvent], out: &mut Vec<u8>) {
        for event in events {
            push_with_seq(out, event.seq, &event.body);
            out.push(b'\n');
        }
    }
}

impl Encoder for JsonArray {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn extension(&self) -> &'static str {
        ".json"
    }

    fn write(&self, events: &[StoredEvent], out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_with_seq(out, event.seq, &event.body);
        }
        out.push(b']');
    }
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
