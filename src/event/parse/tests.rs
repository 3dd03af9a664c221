//! Parsing through the public entry points: formats, normalisation,
//! every refusal and its place, and the round trip of the canonical body.

use super::*;
use crate::event::Fidelity;

const LIMITS: Limits = Limits {
    max_events: 10,
    max_event_bytes: 1024,
    max_depth: 8,
};
const NOW: i64 = 1_700_000_000_123;

fn parse(body: &str, format: Format) -> Result<Vec<Event>, ParseError> {
    parse_body(body.as_bytes(), format, &LIMITS, NOW)
}

fn body_json(event: &Event) -> serde_json::Value {
    serde_json::from_str(&event.body).unwrap()
}

#[test]
fn native_event_is_normalised() {
    let events = parse(
        r#"{"type":"message.created","id":"m-1","time":"2024-01-02T03:04:05+02:00","session_id":"s1","data":{ "text" : "hi there" }}"#,
        Format::Json,
    )
    .unwrap();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.id, "m-1");
    assert!(event.client_id);
    assert_eq!(event.session_id.as_deref(), Some("s1"));
    assert_eq!(event.fidelity, Fidelity::Committed);
    assert_eq!(
        event.body,
        r#"{"id":"m-1","type":"message.created","time":"2024-01-02T01:04:05Z","received":"2023-11-14T22:13:20.123Z","session_id":"s1","fidelity":"committed","data":{"text":"hi there"}}"#
    );
}

#[test]
fn missing_id_gets_a_uuid_v7_and_skips_dedup() {
    let events = parse(r#"{"type":"t"}"#, Format::Json).unwrap();
    let id = uuid::Uuid::parse_str(&events[0].id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    let (seconds, nanos) = id.get_timestamp().unwrap().to_unix();
    assert_eq!(
        seconds as i64 * 1000 + nanos as i64 / 1_000_000,
        NOW,
        "the id carries the receive time"
    );
    assert!(!events[0].client_id);
    let ids: std::collections::HashSet<String> = (0..100)
        .flat_map(|_| parse(&"{\"type\":\"t\"}\n".repeat(10), Format::Ndjson).unwrap())
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 1000, "generated ids are unique");
    assert_eq!(body_json(&events[0])["time"], "2023-11-14T22:13:20.123Z");
}

#[test]
fn arrays_and_ndjson_keep_order() {
    let array = parse(r#"[{"type":"a"},{"type":"b"}]"#, Format::Json).unwrap();
    assert_eq!(
        array
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let lines = parse("{\"type\":\"a\"}\r\n\n{\"type\":\"b\"}\n", Format::Ndjson).unwrap();
    assert_eq!(
        lines
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
}

#[test]
fn cloudevents_map_to_the_envelope() {
    let events = parse(
        r#"{"specversion":"1.0","id":"ce-1","source":"/agents/a1","type":"com.example.tool.called","subject":"run/7","sessionid":"s9","runid":"r7","agentid":"a1","correlationid":"c1","fidelity":"control","datacontenttype":"application/json","traceparent":"00-abc","data":{"tool":"grep"}}"#,
        Format::CloudEvent,
    )
    .unwrap();
    let body = body_json(&events[0]);
    assert_eq!(body["id"], "ce-1");
    assert_eq!(body["source"], "/agents/a1");
    assert_eq!(body["subject"], "run/7");
    assert_eq!(body["session_id"], "s9");
    assert_eq!(body["run_id"], "r7");
    assert_eq!(body["agent_id"], "a1");
    assert_eq!(body["correlation_id"], "c1");
    assert_eq!(body["fidelity"], "control");
    assert_eq!(body["data"]["tool"], "grep");
    assert_eq!(body["extensions"]["datacontenttype"], "application/json");
    assert_eq!(body["extensions"]["traceparent"], "00-abc");
    assert!(body.get("specversion").is_none());
    // A CloudEvent sent as plain JSON is recognised by its specversion.
    let plain = parse(
        r#"{"specversion":"1.0","id":"x","source":"s","type":"t"}"#,
        Format::Json,
    )
    .unwrap();
    assert_eq!(body_json(&plain[0])["source"], "s");
}

#[test]
fn canonical_output_is_accepted_again_unchanged() {
    let first = parse(
        r#"{"type":"t","id":"i","extensions":{"k":1},"data":[1,2]}"#,
        Format::Json,
    )
    .unwrap();
    let again = parse(&first[0].body, Format::Ndjson).unwrap();
    assert_eq!(again[0].body, first[0].body);
}

fn error(body: &str, format: Format) -> ParseError {
    parse(body, format).expect_err(body)
}

#[test]
fn bad_events_name_the_problem_and_place() {
    let cases: &[(&str, Format, &str, Location, &str)] = &[
        (
            "{\"type\":",
            Format::Json,
            "invalid_json",
            Location::Whole,
            "invalid JSON",
        ),
        (
            "{\"type\":\"a\"}\n{\"type\":",
            Format::Ndjson,
            "invalid_json",
            Location::Line(2),
            "invalid JSON",
        ),
        (
            "{}",
            Format::Json,
            "invalid_event",
            Location::Whole,
            "`type` is missing",
        ),
        (
            "{\"type\":\"\"}",
            Format::Json,
            "invalid_event",
            Location::Whole,
            "`type` must not be empty",
        ),
        (
            "{\"type\":\"a b\"}",
            Format::Json,
            "invalid_event",
            Location::Whole,
            "`type` must be 1-128",
        ),
        (
            "{\"type\":5}",
            Format::Json,
            "invalid_event",
            Location::Whole,
            "`type` must be a string, got a number",
        ),
        (
            "{\"type\":\"a\",\"id\":7}",
            Format::Json,
            "invalid_event",
            Location::Whole,
            "`id` must be a string",
        ),
        (
            "{\"type\":\"a\",\"time\":\"yesterday\"}",
            Format::Json,
            "invalid_event",
            Location::Whole,
            "RFC 3339",
        ),
        (
            "{\"type\":\"a\",\"fidelity\":\"loud\"}",
            Format::Json,
            "invalid_event",
            Location::Whole,
            "`fidelity` must be one of",
        ),
        (
            "{\"type\":\"a\",\"sesion_id\":\"x\"}",
            Format::Json,
            "invalid_event",
            Location::Whole,
            "unknown field `sesion_id`",
        ),
        (
            "{\"type\":\"a\",\"type\":\"b\"}",
            Format::Json,
            "invalid_event",
            Location::Whole,
            "appears twice",
        ),
        (
            "[{\"type\":\"a\"},{\"type\":1}]",
            Format::Json,
            "invalid_event",
            Location::Index(1),
            "`type` must be a string",
        ),
        (
            "[{\"type\":\"a\",\"id\":\"x\"},{\"type\":\"a\",\"id\":\"x\"}]",
            Format::Json,
            "duplicate_id",
            Location::Index(1),
            "already appears in event 0",
        ),
        (
            "[1]",
            Format::Json,
            "invalid_event",
            Location::Index(0),
            "must be a JSON object",
        ),
        (
            "\"hi\"",
            Format::Json,
            "invalid_json",
            Location::Whole,
            "expected a JSON object",
        ),
        ("[]", Format::Json, "empty", Location::Whole, "no events"),
        ("  \n", Format::Ndjson, "empty", Location::Whole, "empty"),
        (
            "{\"type\":\"a\",\"data\":[[[[[[[[[1]]]]]]]]]}",
            Format::Json,
            "too_deep",
            Location::Whole,
            "max_depth",
        ),
        (
            "{\"type\":\"a\"}\n{\"type\":\"a\",\"data\":[[[[[[[[[1]]]]]]]]]}",
            Format::Ndjson,
            "too_deep",
            Location::Line(2),
            "max_depth",
        ),
        (
            "[{\"type\":\"a\"},{\"type\":\"a\",\"data\":[[[[[[[[[1]]]]]]]]]}]",
            Format::Json,
            "too_deep",
            Location::Index(1),
            "max_depth",
        ),
        (
            "{\"type\":\"a\"}",
            Format::CloudEvent,
            "invalid_event",
            Location::Whole,
            "specversion",
        ),
        (
            "{\"specversion\":\"0.3\",\"type\":\"a\"}",
            Format::CloudEvent,
            "invalid_event",
            Location::Whole,
            "\"1.0\"",
        ),
        (
            "{\"specversion\":\"1.0\",\"type\":\"a\",\"source\":\"s\"}",
            Format::CloudEvent,
            "invalid_event",
            Location::Whole,
            "`id` is missing",
        ),
        (
            "{\"specversion\":\"1.0\",\"type\":\"a\",\"id\":\"i\",\"source\":\"s\",\"Bad-Name\":1}",
            Format::CloudEvent,
            "invalid_event",
            Location::Whole,
            "not a CloudEvents attribute name",
        ),
        (
            "[{\"specversion\":\"1.0\",\"type\":\"a\",\"id\":\"i\",\"source\":\"s\"}]",
            Format::CloudEvent,
            "invalid_json",
            Location::Whole,
            "one CloudEvent",
        ),
        (
            "{\"specversion\":\"1.0\",\"type\":\"a\",\"id\":\"i\",\"source\":\"s\"}",
            Format::CloudEventBatch,
            "invalid_json",
            Location::Whole,
            "array of CloudEvents",
        ),
    ];
    for (body, format, code, location, needle) in cases {
        let e = error(body, *format);
        assert_eq!((e.code, e.location), (*code, *location), "{body}: {e}");
        assert!(
            e.message.contains(needle),
            "{body}: `{}` should contain `{needle}`",
            e.message
        );
    }
}

#[test]
fn limits_answer_too_large() {
    let many = (0..11)
        .map(|_| "{\"type\":\"a\"}")
        .collect::<Vec<_>>()
        .join("\n");
    let e = error(&many, Format::Ndjson);
    assert_eq!(e.code, "too_many_events");
    assert!(e.is_too_large());
    let many_array = format!(
        "[{}]",
        (0..11)
            .map(|_| "{\"type\":\"a\"}")
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(error(&many_array, Format::Json).code, "too_many_events");
    let big = format!("{{\"type\":\"a\",\"data\":\"{}\"}}", "x".repeat(2000));
    let e = error(&big, Format::Json);
    assert_eq!((e.code, e.location), ("event_too_large", Location::Whole));
}

#[test]
fn invalid_utf8_is_refused_with_its_line() {
    let e = parse_body(
        b"{\"type\":\"a\"}\n{\"type\":\"\xff\"}",
        Format::Ndjson,
        &LIMITS,
        NOW,
    )
    .unwrap_err();
    assert_eq!((e.code, e.location), ("invalid_utf8", Location::Line(2)));
}

#[test]
fn receive_time_formats_with_milliseconds() {
    assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(format_time_ms(NOW), "2023-11-14T22:13:20.123Z");
}

/// Deterministic mutation testing: bodies derived from valid ones by
/// flipping, cutting, duplicating and splicing bytes must never panic,
/// and whatever is accepted must normalise to a fixed point (its
/// canonical body parses again to the same body). Longer hunts:
/// `MUTATION_ROUNDS=5000000 MUTATION_SEED=7 cargo test --release --lib mutated`.
#[test]
fn mutated_bodies_never_panic_and_normalise_idempotently() {
    let seeds: &[(&str, Format)] = &[
        (
            r#"{"type":"a.b","id":"x1","time":"2024-01-02T03:04:05.123+01:00","session_id":"s","data":{"k":[1,2,{"z":"\u00e9\n"}]}}"#,
            Format::Json,
        ),
        (
            r#"[{"type":"a"},{"type":"b","fidelity":"observed","extensions":{"e":true}}]"#,
            Format::Json,
        ),
        (
            "{\"type\":\"a\"}\n{\"type\":\"b\",\"data\":\"x y\"}\r\n\n",
            Format::Ndjson,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","sessionid":"q","traceparent":"00-1","data":[1]}"#,
            Format::CloudEvent,
        ),
        (
            r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"u","data":null}]"#,
            Format::CloudEventBatch,
        ),
    ];
    let specials: &[&[u8]] = &[
        b"\"", b"\\", b"{", b"}", b"[", b"]", b",", b":", b"\n", b" ", b"\xff", b"\xc3", b"\\u",
        b"\\ud800", b"null", b"1e999", b"-0",
    ];
    let limits = Limits {
        max_events: 50,
        max_event_bytes: 4096,
        max_depth: 16,
    };
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mut rng = fastrand::Rng::with_seed(env("MUTATION_SEED", 0x0b0c_5eed));
    let mut accepted = 0;
    for round in 0..env("MUTATION_ROUNDS", 30_000) as usize {
        let (seed, format) = seeds[round % seeds.len()];
        let mut body = seed.as_bytes().to_vec();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(0..=body.len());
            match rng.u8(0..5) {
                0 if !body.is_empty() => {
                    let i = at.min(body.len() - 1);
                    body[i] ^= 1 << rng.u8(0..8);
                }
                1 => body.truncate(at),
                2 => {
                    let piece = specials[rng.usize(0..specials.len())];
                    body.splice(at..at, piece.iter().copied());
                }
                3 if at < body.len() => {
                    let end = rng.usize(at..=body.len());
                    let copy = body[at..end].to_vec();
                    body.splice(at..at, copy);
                }
                _ => {
                    let end = rng.usize(at..=body.len());
                    body.drain(at..end);
                }
            }
        }
        let format = if rng.bool() {
            format
        } else {
            [
                Format::Json,
                Format::Ndjson,
                Format::CloudEvent,
                Format::CloudEventBatch,
            ][rng.usize(0..4)]
        };
        if check_body(&body, format, &limits, NOW) {
            accepted += 1;
        }
    }
    assert!(
        accepted > 500,
        "the mutations should keep some bodies valid ({accepted})"
    );
}
