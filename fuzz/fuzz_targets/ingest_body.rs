//! Request bodies as the ingest path sees them: the first byte picks the
//! content type and encoding, the rest is the body. Decoding must fail
//! cleanly or stay under its cap, and parsing must hold `check_body`'s
//! properties (no panic; accepted events normalise to a fixed point).

#![no_main]

use libfuzzer_sys::fuzz_target;
use outboxd::event::parse::{check_body, Format, Limits};
use outboxd::ingest::decode::{decode, Encoding};

const FORMATS: [Format; 4] = [
    Format::Json,
    Format::Ndjson,
    Format::CloudEvent,
    Format::CloudEventBatch,
];
const ENCODINGS: [Encoding; 4] = [
    Encoding::Identity,
    Encoding::Gzip,
    Encoding::Zstd,
    Encoding::Identity,
];
const MAX_DECODED: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let format = FORMATS[usize::from(selector & 3)];
    let encoding = ENCODINGS[usize::from((selector >> 2) & 3)];
    let Ok(body) = decode(bytes::Bytes::copy_from_slice(body), encoding, MAX_DECODED) else {
        return;
    };
    assert!(body.len() <= MAX_DECODED, "the decoded size is capped");
    let limits = Limits {
        max_events: 100,
        max_event_bytes: 64 << 10,
        max_depth: 32,
    };
    check_body(&body, format, &limits, 1_700_000_000_123);
});
