//! Encoders from stored events to the bytes a sink sends, one file per
//! format behind the small [`Encoder`] interface, then optional gzip or zstd.
//! Deterministic: the same range always encodes to the same bytes, so a
//! retried batch is the same object. A new format touches this folder only:
//! its file, a [`BodyFormat`] variant and one arm in [`BodyFormat::encoder`].

mod compress;
mod jsonl;
pub mod openai;

use crate::event::StoredEvent;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use jsonl::push_with_seq;

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
    /// One OpenAI chat-completions message per event (training records).
    OpenaiChat,
    /// One line per finished session: `{"messages", "tools", "metadata"}`.
    OpenaiSessions,
}

/// One format: how a batch of events becomes a body. Most formats write
/// one JSON line per record, the default content type and extension.
pub trait Encoder: Send + Sync {
    /// `Content-Type` of the uncompressed body.
    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }
    /// File-name ending before any compression's: `.jsonl`, `.json`.
    fn extension(&self) -> &'static str {
        ".jsonl"
    }
    /// What goes before the first record, between two and after the last.
    fn framing(&self) -> Framing {
        Framing::LINES
    }
    /// Appends the record of one event (already filtered).
    fn write_event(&self, event: &StoredEvent, out: &mut Vec<u8>);
    /// Appends the body for `events` (already filtered, in seq order).
    fn write(&self, events: &[StoredEvent], out: &mut Vec<u8>) {
        let mut body = BodyWriter::new(self);
        for event in events {
            body.push(self, event);
        }
        out.extend_from_slice(&body.plain);
        out.extend_from_slice(self.framing().close);
    }
}

/// The bytes around and between a body's records.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    pub open: &'static [u8],
    pub separator: &'static [u8],
    pub close: &'static [u8],
}

impl Framing {
    /// Each record ends its own line.
    pub const LINES: Framing = Framing {
        open: b"",
        separator: b"",
        close: b"",
    };
}

/// A body written event by event while a batch is gathered, so a batch is
/// held once, as bytes, never also as rows. It can give up its newest
/// events to fit a size (it knows where each record ends) and is
/// compressed once, at the end.
///
/// A measuring writer ([`BodyWriter::measuring`]) keeps only the body's
/// length and CRC-32, for a sink that reads the body again from the outbox
/// while it sends it ([`Body::Replayed`]).
#[derive(Debug, Default)]
pub struct BodyWriter {
    /// Opening bytes and the records so far; the closing bytes come at the
    /// end. When measuring: the record being written, then cleared.
    plain: Vec<u8>,
    /// Where each event's record ends in the body, and its seq.
    ends: Vec<(usize, i64)>,
    first_received_ms: Option<i64>,
    close: &'static [u8],
    /// When measuring: the bytes passed so far and their CRC-32.
    measured: Option<(usize, crc32fast::Hasher)>,
}

impl BodyWriter {
    pub fn new(encoder: &(impl Encoder + ?Sized)) -> BodyWriter {
        let framing = encoder.framing();
        BodyWriter {
            plain: framing.open.to_vec(),
            ends: Vec::new(),
            first_received_ms: None,
            close: framing.close,
            measured: None,
        }
    }

    /// A writer that keeps the body's length and CRC-32, not its bytes.
    pub fn measuring(encoder: &(impl Encoder + ?Sized)) -> BodyWriter {
        let mut body = BodyWriter::new(encoder);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&body.plain);
        body.measured = Some((body.plain.len(), crc));
        body.plain.clear();
        body
    }

    pub fn push(&mut self, encoder: &(impl Encoder + ?Sized), event: &StoredEvent) {
        self.push_within(encoder, event, usize::MAX);
    }

    /// Adds the event's record unless the body would then pass `limit`
    /// bytes (a body's first record is always taken); false when it did not.
    pub fn push_within(
        &mut self,
        encoder: &(impl Encoder + ?Sized),
        event: &StoredEvent,
        limit: usize,
    ) -> bool {
        let before = self.plain.len();
        if !self.ends.is_empty() {
            self.plain.extend_from_slice(encoder.framing().separator);
        }
        encoder.write_event(event, &mut self.plain);
        let len = self.written() + self.close.len();
        if len > limit && !self.ends.is_empty() {
            self.plain.truncate(before);
            return false;
        }
        if let Some((passed, crc)) = &mut self.measured {
            crc.update(&self.plain);
            *passed += self.plain.len();
            self.plain.clear();
        }
        self.ends.push((self.written(), event.seq));
        self.first_received_ms.get_or_insert(event.received_ms);
        true
    }

    /// Bytes of the body so far, without the closing ones.
    fn written(&self) -> usize {
        self.plain.len() + self.measured.as_ref().map_or(0, |(passed, _)| *passed)
    }

    pub fn events(&self) -> usize {
        self.ends.len()
    }

    /// Uncompressed size of the body as it stands.
    pub fn plain_len(&self) -> usize {
        self.written() + self.close.len()
    }

    /// Receive time of the first event.
    pub fn first_received_ms(&self) -> Option<i64> {
        self.first_received_ms
    }

    /// The seqs of the events in the body.
    pub fn seqs(&self) -> Vec<i64> {
        self.ends.iter().map(|&(_, seq)| seq).collect()
    }

    /// Keeps the first `keep` events (at least one), dropping the newer ones.
    /// A measuring writer cannot give bytes back: see [`BodyWriter::push_within`].
    pub fn truncate(&mut self, keep: usize) {
        let keep = keep.max(1);
        assert!(self.measured.is_none(), "a measured body cannot shrink");
        if keep < self.ends.len() {
            self.plain.truncate(self.ends[keep - 1].0);
            self.ends.truncate(keep);
        }
    }

    /// Finishes the body of the range `[first_seq, last_seq]`. With a
    /// `max_bytes`, a body over it gives up its newest half of events until
    /// it fits or holds one event, and the range then ends at the last
    /// event kept.
    pub fn finish(
        mut self,
        encoder: &(impl Encoder + ?Sized),
        (first_seq, mut last_seq): (i64, i64),
        compression: Compression,
        max_bytes: Option<usize>,
    ) -> EncodedBatch {
        assert!(
            self.measured.is_none(),
            "a measured body is finished with `finish_measured`"
        );
        loop {
            let over = |len: usize| max_bytes.is_some_and(|max| len > max) && self.ends.len() > 1;
            let body = match compression {
                Compression::None if over(self.plain_len()) => None,
                Compression::None => {
                    self.plain.extend_from_slice(self.close);
                    Some(std::mem::take(&mut self.plain))
                }
                _ => {
                    let open = self.plain.len();
                    self.plain.extend_from_slice(self.close);
                    let body = compress::compress_slice(&self.plain, compression);
                    self.plain.truncate(open);
                    (!over(body.len())).then_some(body)
                }
            };
            let Some(body) = body else {
                self.truncate(self.ends.len() / 2);
                last_seq = self.ends[self.ends.len() - 1].1;
                continue;
            };
            let (content_encoding, suffix) = compress::naming(compression);
            return EncodedBatch {
                first_seq,
                last_seq,
                first_received_ms: self.first_received_ms.unwrap_or(0),
                events: self.ends.len(),
                body: Body::Bytes(Bytes::from(body)),
                content_type: encoder.content_type(),
                content_encoding,
                extension: format!("{}{suffix}", encoder.extension()),
            };
        }
    }
}

impl BodyWriter {
    /// Finishes a measuring writer's body of `[first_seq, last_seq]`, sent
    /// as it is (bounded while it was gathered with `push_within`, never
    /// compressed) from the `Replay` that `source` makes of its measure.
    pub fn finish_measured(
        mut self,
        encoder: &(impl Encoder + ?Sized),
        (first_seq, last_seq): (i64, i64),
        source: impl FnOnce(Measured) -> Arc<dyn Replay>,
    ) -> EncodedBatch {
        let (passed, mut crc) = self.measured.take().expect("a measuring writer");
        crc.update(self.close);
        let measured = Measured {
            len: (passed + self.close.len()) as u64,
            crc32: crc.finalize(),
        };
        EncodedBatch {
            first_seq,
            last_seq,
            first_received_ms: self.first_received_ms.unwrap_or(0),
            events: self.ends.len(),
            body: Body::Replayed(source(measured)),
            content_type: encoder.content_type(),
            content_encoding: None,
            extension: encoder.extension().to_string(),
        }
    }
}

impl BodyFormat {
    pub fn encoder(self) -> Box<dyn Encoder> {
        match self {
            BodyFormat::Ndjson => Box::new(jsonl::Ndjson),
            BodyFormat::JsonArray => Box::new(jsonl::JsonArray),
            BodyFormat::OpenaiChat => Box::new(openai::chat::OpenAiChat),
            BodyFormat::OpenaiSessions => Box::new(openai::sessions::OpenAiSessions),
        }
    }

    /// Whether the sink writes whole sessions when they end, rather than
    /// batches of events as they come.
    pub fn assembles_sessions(self) -> bool {
        self == BodyFormat::OpenaiSessions
    }

    /// Event types a sink in this format leaves out unless its
    /// `exclude_types` says otherwise: keep-alives are not conversation.
    pub fn default_exclude_types(self) -> Vec<String> {
        match self {
            BodyFormat::Ndjson | BodyFormat::JsonArray => Vec::new(),
            BodyFormat::OpenaiChat | BodyFormat::OpenaiSessions => {
                vec!["heartbeat".into(), "*.heartbeat".into()]
            }
        }
    }
}

/// One batch, encoded and ready to send.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub first_seq: i64,
    pub last_seq: i64,
    /// Receive time of the batch's first event (dates S3 keys).
    pub first_received_ms: i64,
    pub events: usize,
    pub body: Body,
    pub content_type: &'static str,
    pub content_encoding: Option<&'static str>,
    /// File-name ending: `.jsonl`, `.json`, plus `.gz` / `.zst`.
    pub extension: String,
}

/// A batch's body: its bytes, or a way to read them again from the outbox
/// while they are sent, so that a batch in flight holds no copy of its
/// events (the delivery loop picks this for sinks that stream a body).
#[derive(Clone)]
pub enum Body {
    Bytes(Bytes),
    Replayed(Arc<dyn Replay>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            Body::Replayed(replay) => write!(f, "Replayed({:?})", replay.measured()),
        }
    }
}

/// The length and CRC-32 of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    pub len: u64,
    pub crc32: u32,
}

impl Measured {
    pub fn of(bytes: &[u8]) -> Measured {
        Measured {
            len: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        }
    }
}

/// A body read again, chunk by chunk, each time it is sent. The events it
/// reads can only go away meanwhile (`drop_oldest` eviction), never change:
/// a read that no longer matches the last measure fails before its last
/// byte, so a receiver never takes a wrong body, and the next
/// [`Replay::measure`] measures what is there now.
pub trait Replay: Send + Sync {
    /// The length and CRC-32 of the body: as gathered, or as it reads now
    /// when a read found it changed; None when no event of it is left.
    fn measure(&self) -> BoxFuture<'_, Result<Option<Measured>, String>>;
    /// The last measure.
    fn measured(&self) -> Measured;
    /// The body in chunks, checked against `expected` on the way.
    fn chunks(self: Arc<Self>, expected: Measured) -> BoxStream<'static, Result<Bytes, String>>;
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
pub type BoxStream<'a, T> = std::pin::Pin<Box<dyn futures_util::Stream<Item = T> + Send + 'a>>;

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::Replayed(replay) => replay.measured().len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, when the body is held in memory.
    pub fn in_memory(&self) -> Option<&Bytes> {
        match self {
            Body::Bytes(bytes) => Some(bytes),
            Body::Replayed(_) => None,
        }
    }

    /// The whole body in memory, for a sink that needs it at once.
    pub async fn collect(&self) -> Result<Bytes, String> {
        use futures_util::TryStreamExt;
        match self {
            Body::Bytes(bytes) => Ok(bytes.clone()),
            Body::Replayed(replay) => {
                let Some(expected) = replay.measure().await? else {
                    return Ok(Bytes::new());
                };
                let chunks: Vec<Bytes> = replay.clone().chunks(expected).try_collect().await?;
                Ok(Bytes::from(chunks.concat()))
            }
        }
    }
}

/// A seq as it appears in names: 20 digits, so names sort in seq order.
pub fn seq_key(seq: i64) -> String {
    format!("{seq:020}")
}

impl EncodedBatch {
    /// `{first_seq:020}-{last_seq:020}`: names the batch's fixed range in file
    /// names, object keys and idempotency keys, the same on every attempt.
    pub fn range_key(&self) -> String {
        format!("{}-{}", seq_key(self.first_seq), seq_key(self.last_seq))
    }
}

/// Encodes `events` (already filtered) of the fixed range `[first_seq, last_seq]`.
pub fn encode(
    events: &[StoredEvent],
    first_seq: i64,
    last_seq: i64,
    encoder: &dyn Encoder,
    compression: Compression,
) -> EncodedBatch {
    let mut plain = Vec::with_capacity(events.iter().map(|e| e.body.len() + 24).sum::<usize>() + 2);
    encoder.write(events, &mut plain);
    let mut batch = finish(plain, encoder, compression);
    batch.first_seq = first_seq;
    batch.last_seq = last_seq;
    batch.first_received_ms = events.first().map_or(0, |e| e.received_ms);
    batch.events = events.len();
    batch
}

/// Compresses a body an encoder wrote; the caller fills in the range.
pub fn finish(plain: Vec<u8>, encoder: &dyn Encoder, compression: Compression) -> EncodedBatch {
    let (body, content_encoding, suffix) = compress::compress(plain, compression);
    EncodedBatch {
        first_seq: 0,
        last_seq: 0,
        first_received_ms: 0,
        events: 0,
        body: Body::Bytes(Bytes::from(body)),
        content_type: encoder.content_type(),
        content_encoding,
        extension: format!("{}{suffix}", encoder.extension()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fidelity;

    /// The formats with one record per event.
    const EVENT_FORMATS: [BodyFormat; 3] = [
        BodyFormat::Ndjson,
        BodyFormat::JsonArray,
        BodyFormat::OpenaiChat,
    ];

    fn bytes(batch: &EncodedBatch) -> &Bytes {
        batch.body.in_memory().expect("held in memory")
    }

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
        let ndjson = encode(
            &events,
            7,
            10,
            &*BodyFormat::Ndjson.encoder(),
            Compression::None,
        );
        assert_eq!(
            &bytes(&ndjson)[..],
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
        let array = encode(
            &events,
            7,
            9,
            &*BodyFormat::JsonArray.encoder(),
            Compression::None,
        );
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(bytes(&array)).unwrap();
        assert_eq!(parsed[1]["seq"], 9);
        assert_eq!(array.extension, ".json");
    }

    #[test]
    fn a_body_written_event_by_event_shrinks_to_fit_and_stays_valid() {
        let events: Vec<_> = (1..=10)
            .map(|i| stored(i, r#"{"id":"x","type":"t","data":"0123456789"}"#))
            .collect();
        for format in EVENT_FORMATS {
            let encoder = format.encoder();
            let whole = encode(&events, 1, 12, &*encoder, Compression::None);
            let mut body = BodyWriter::new(&*encoder);
            for event in &events {
                body.push(&*encoder, event);
            }
            assert_eq!(body.plain_len(), bytes(&whole).len(), "{format:?}");
            assert_eq!(body.seqs(), (1..=10).collect::<Vec<_>>());
            // Under half the size: halved until it fits (10 -> 5 -> 2
            // events), and the range ends at the last event kept.
            let max = bytes(&whole).len() / 2 - 1;
            let fitted = body.finish(&*encoder, (1, 12), Compression::None, Some(max));
            assert!(bytes(&fitted).len() <= max, "{format:?}");
            assert_eq!(
                (fitted.events, fitted.first_seq, fitted.last_seq),
                (2, 1, 2)
            );
            assert_eq!(
                *bytes(&fitted),
                *bytes(&encode(&events[..2], 1, 2, &*encoder, Compression::None)),
                "{format:?}: the same bytes as encoding the kept events"
            );
        }
    }

    #[test]
    fn a_measured_body_has_the_length_and_crc_of_the_bytes_it_stands_for() {
        let events: Vec<_> = (1..=10)
            .map(|i| {
                stored(
                    i,
                    &format!(
                        r#"{{"id":"x{i}","type":"t","data":"{}"}}"#,
                        "ab".repeat(i as usize)
                    ),
                )
            })
            .collect();
        for format in EVENT_FORMATS {
            let encoder = format.encoder();
            // A limit that takes some events and refuses the next.
            let limit = bytes(&encode(&events[..6], 1, 6, &*encoder, Compression::None)).len() + 3;
            let (mut kept, mut measuring) =
                (BodyWriter::new(&*encoder), BodyWriter::measuring(&*encoder));
            for event in &events {
                let took = kept.push_within(&*encoder, event, limit);
                assert_eq!(
                    measuring.push_within(&*encoder, event, limit),
                    took,
                    "{format:?}"
                );
                assert_eq!(measuring.plain_len(), kept.plain_len(), "{format:?}");
            }
            assert_eq!(kept.seqs(), (1..=6).collect::<Vec<_>>(), "{format:?}");
            assert_eq!(measuring.seqs(), kept.seqs());
            let plain = kept.finish(&*encoder, (1, 6), Compression::None, None);
            let mut seen = None;
            let measured = measuring.finish_measured(&*encoder, (1, 6), |measured| {
                seen = Some(measured);
                Arc::new(Unread(measured))
            });
            assert_eq!(seen, Some(Measured::of(bytes(&plain))), "{format:?}");
            assert_eq!(measured.body.len(), plain.body.len());
            assert_eq!(
                (
                    measured.events,
                    measured.first_received_ms,
                    &measured.extension
                ),
                (plain.events, plain.first_received_ms, &plain.extension)
            );
        }
    }

    /// A replayed body whose bytes are never read.
    struct Unread(Measured);

    impl Replay for Unread {
        fn measure(&self) -> BoxFuture<'_, Result<Option<Measured>, String>> {
            Box::pin(std::future::ready(Ok(Some(self.0))))
        }
        fn measured(&self) -> Measured {
            self.0
        }
        fn chunks(self: Arc<Self>, _: Measured) -> BoxStream<'static, Result<Bytes, String>> {
            unreachable!("not read in these tests")
        }
    }

    #[test]
    fn a_compressed_body_shrinks_by_its_compressed_size() {
        let events: Vec<_> = (1..=64)
            .map(|i| {
                stored(
                    i,
                    &format!(r#"{{"id":"e{i}","type":"t","n":{}}}"#, i * 7919),
                )
            })
            .collect();
        let encoder = BodyFormat::JsonArray.encoder();
        let mut body = BodyWriter::new(&*encoder);
        for event in &events {
            body.push(&*encoder, event);
        }
        let whole = encode(&events, 1, 64, &*encoder, Compression::Zstd);
        let fitted = body.finish(
            &*encoder,
            (1, 64),
            Compression::Zstd,
            Some(bytes(&whole).len() - 1),
        );
        assert_eq!((fitted.events, fitted.last_seq), (32, 32));
        assert_eq!(fitted.extension, ".json.zst");
        let plain = zstd::decode_all(&bytes(&fitted)[..]).unwrap();
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&plain).unwrap();
        assert_eq!(parsed.len(), 32);
        assert_eq!(parsed[31]["seq"], 32);
    }

    #[test]
    fn ranges_are_named_with_20_digit_seqs() {
        let batch = encode(
            &[stored(7, "{}")],
            7,
            12345,
            &*BodyFormat::Ndjson.encoder(),
            Compression::None,
        );
        assert_eq!(
            batch.range_key(),
            "00000000000000000007-00000000000000012345"
        );
        assert_eq!(seq_key(i64::MAX), "09223372036854775807", "every seq fits");
    }

    #[test]
    fn compression_is_deterministic_and_decodes() {
        let events: Vec<_> = (1..50)
            .map(|i| stored(i, r#"{"id":"x","type":"t","data":"aaaaaaaaaaaaaaaa"}"#))
            .collect();
        let plain = encode(
            &events,
            1,
            49,
            &*BodyFormat::Ndjson.encoder(),
            Compression::None,
        );
        for compression in [Compression::Gzip, Compression::Zstd] {
            let a = encode(&events, 1, 49, &*BodyFormat::Ndjson.encoder(), compression);
            let b = encode(&events, 1, 49, &*BodyFormat::Ndjson.encoder(), compression);
            assert_eq!(bytes(&a), bytes(&b));
            assert!(bytes(&a).len() < bytes(&plain).len());
            let decoded = match compression {
                Compression::Gzip => {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(
                        &mut flate2::read::GzDecoder::new(&bytes(&a)[..]),
                        &mut out,
                    )
                    .unwrap();
                    out
                }
                _ => zstd::decode_all(&bytes(&a)[..]).unwrap(),
            };
            assert_eq!(decoded, bytes(&plain).to_vec());
        }
    }
}
