//! outboxd's own formats: each stored event as it is stored, with its `seq`
//! as the first field, one per line (`ndjson`) or in one array (`json_array`).

use super::{Encoder, Framing};
use crate::event::StoredEvent;

pub struct Ndjson;
pub struct JsonArray;

impl Encoder for Ndjson {
    fn write_event(&self, event: &StoredEvent, out: &mut Vec<u8>) {
        push_with_seq(out, event.seq, &event.body);
        out.push(b'\n');
    }
}

impl Encoder for JsonArray {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn extension(&self) -> &'static str {
        ".json"
    }

    fn framing(&self) -> Framing {
        Framing {
            open: b"[",
            separator: b",",
            close: b"]",
        }
    }

    fn write_event(&self, event: &StoredEvent, out: &mut Vec<u8>) {
        push_with_seq(out, event.seq, &event.body);
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
