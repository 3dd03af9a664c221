//! Bad input: each gets its documented status and error, the daemon keeps
//! serving, and the outbox is left exactly as it was.

mod common;

use common::{gzip, zstd, Daemon};
use hyper::StatusCode;

struct Case {
    name: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
    message: &'static str,
}

fn json(
    name: &'static str,
    body: &str,
    status: u16,
    code: &'static str,
    message: &'static str,
) -> Case {
    typed(
        name,
        "application/json",
        body.as_bytes().to_vec(),
        status,
        code,
        message,
    )
}

fn typed(
    name: &'static str,
    content_type: &str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    message: &'static str,
) -> Case {
    Case {
        name,
        headers: vec![("content-type", content_type.to_string())],
        body,
        status: StatusCode::from_u16(status).unwrap(),
        code,
        message,
    }
}

fn encoded(mut case: Case, encoding: &str) -> Case {
    case.headers
        .push(("content-encoding", encoding.to_string()));
    case
}

fn cases() -> Vec<Case> {
    let deep = format!(
        "{{\"type\":\"a\",\"data\":{}1{}}}",
        "[".repeat(70),
        "]".repeat(70)
    );
    let big_event = format!("{{\"type\":\"a\",\"data\":\"{}\"}}", "x".repeat(3000));
    let too_many = (0..21)
        .map(|_| "{\"type\":\"a\"}")
        .collect::<Vec<_>>()
        .join("\n");
    let bomb = gzip(&vec![b' '; 200_000]);
    vec![
        json(
            "malformed JSON",
            "{\"type\":\"a\",",
            400,
            "invalid_json",
            "invalid JSON",
        ),
        typed(
            "truncated NDJSON line",
            "application/x-ndjson",
            b"{\"type\":\"a\"}\n{\"type\":\"b\"".to_vec(),
            400,
            "invalid_json",
            "line 2",
        ),
        typed(
            "invalid UTF-8",
            "application/x-ndjson",
            b"{\"type\":\"a\"}\n{\"type\":\"\xc3\x28\"}".to_vec(),
            400,
            "invalid_utf8",
            "UTF-8",
        ),
        json(
            "missing type",
            r#"{"id":"x"}"#,
            400,
            "invalid_event",
            "`type` is missing",
        ),
        json(
            "empty type",
            r#"{"type":""}"#,
            400,
            "invalid_event",
            "must not be empty",
        ),
        json(
            "overlong type",
            &format!("{{\"type\":\"{}\"}}", "t".repeat(129)),
            400,
            "invalid_event",
            "1-128",
        ),
        json(
            "type with a space",
            r#"{"type":"tool call"}"#,
            400,
            "invalid_event",
            "1-128 characters",
        ),
        json(
            "non-string id",
            r#"{"type":"a","id":42}"#,
            400,
            "invalid_event",
            "`id` must be a string",
        ),
        json(
            "overlong id",
            &format!("{{\"type\":\"a\",\"id\":\"{}\"}}", "i".repeat(129)),
            400,
            "invalid_event",
            "`id` is 129 bytes",
        ),
        json(
            "bad time",
            r#"{"type":"a","time":"2024-13-45"}"#,
            400,
            "invalid_event",
            "RFC 3339",
        ),
        json(
            "unknown fidelity",
            r#"{"type":"a","fidelity":"loud"}"#,
            400,
            "invalid_event",
            "`fidelity` must be one of",
        ),
        json(
            "unknown field",
            r#"{"type":"a","sesion_id":"s"}"#,
            400,
            "invalid_event",
            "unknown field `sesion_id`",
        ),
        json(
            "array with one bad element",
            r#"[{"type":"a"},{"type":"b"},{"type":7},{"type":"c"}]"#,
            400,
            "invalid_event",
            "event 2",
        ),
        json(
            "duplicate ids in one request",
            r#"[{"type":"a","id":"d"},{"type":"b","id":"d"}]"#,
            400,
            "duplicate_id",
            "already appears in event 0",
        ),
        json(
            "not an object",
            r#"[1,2]"#,
            400,
            "invalid_event",
            "must be a JSON object",
        ),
        json("empty array", "[]", 400, "empty", "no events"),
        json("empty body", "", 400, "empty", "empty"),
        json("too deep", &deep, 400, "too_deep", "max_depth"),
        json(
            "event over max_event_bytes",
            &big_event,
            413,
            "event_too_large",
            "max_event_bytes",
        ),
        typed(
            "too many events",
            "application/x-ndjson",
            too_many.into_bytes(),
            413,
            "too_many_events",
            "max_events_per_request",
        ),
        json(
            "body over max_body_bytes",
            &format!(
                "[{}]",
                vec![r#"{"type":"a","data":"0123456789012345678901234567890123456789"}"#; 1000]
                    .join(",")
            ),
            413,
            "body_too_large",
            "max_body_bytes",
        ),
        encoded(
            json(
                "invalid gzip",
                "{\"type\":\"a\"}",
                400,
                "invalid_encoding",
                "not valid gzip",
            ),
            "gzip",
        ),
        encoded(
            typed(
                "invalid zstd",
                "application/json",
                b"\x28\xb5\x2f\xfdgarbage".to_vec(),
                400,
                "invalid_encoding",
                "not valid zstd",
            ),
            "zstd",
        ),
        encoded(
            typed(
                "gzip decoded-size bomb",
                "application/json",
                bomb,
                413,
                "decoded_too_large",
                "decoded body exceeds",
            ),
            "gzip",
        ),
        encoded(
            typed(
                "zstd decoded-size bomb",
                "application/json",
                zstd(&vec![b' '; 200_000]),
                413,
                "decoded_too_large",
                "decoded body exceeds",
            ),
            "zstd",
        ),
        encoded(
            json(
                "unknown encoding",
                "{\"type\":\"a\"}",
                415,
                "unsupported_media_type",
                "`br`",
            ),
            "br",
        ),
        typed(
            "wrong content type",
            "text/plain",
            b"{\"type\":\"a\"}".to_vec(),
            415,
            "unsupported_media_type",
            "`text/plain`",
        ),
        Case {
            headers: vec![],
            ..typed(
                "no content type",
                "",
                b"{\"type\":\"a\"}".to_vec(),
                415,
                "unsupported_media_type",
                "required",
            )
        },
        typed(
            "wrong charset",
            "application/json; charset=latin1",
            b"{\"type\":\"a\"}".to_vec(),
            415,
            "unsupported_media_type",
            "latin1",
        ),
        typed(
            "CloudEvent without specversion",
            "application/cloudevents+json",
            br#"{"id":"1","source":"s","type":"a"}"#.to_vec(),
            400,
            "invalid_event",
            "specversion",
        ),
        typed(
            "CloudEvent without source",
            "application/cloudevents+json",
            br#"{"specversion":"1.0","id":"1","type":"a"}"#.to_vec(),
            400,
            "invalid_event",
            "`source` is missing",
        ),
        typed(
            "CloudEvents batch that is an object",
            "application/cloudevents-batch+json",
            br#"{"specversion":"1.0","id":"1","source":"s","type":"a"}"#.to_vec(),
            400,
            "invalid_json",
            "array of CloudEvents",
        ),
        json(
            "duplicate key",
            r#"{"type":"a","type":"b"}"#,
            400,
            "invalid_event",
            "appears twice",
        ),
    ]
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let daemon = Daemon::start(
        "[ingest]\nmax_body_bytes = \"32KiB\"\nmax_inflight_bytes = \"1MiB\"\nmax_event_bytes = \"2KiB\"\nmax_events_per_request = 20\n",
    )
    .await;
    let baseline = daemon
        .post("application/json", r#"{"type":"baseline","id":"b0"}"#)
        .await;
    assert_eq!(baseline.status, StatusCode::OK);
    let before = daemon.stored().await;
    let cases = cases();
    assert!(cases.len() >= 20);
    for case in &cases {
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = daemon.post_with(&headers, case.body.clone()).await;
        let json = answer.json();
        assert_eq!(
            answer.status,
            case.status,
            "{}: {}",
            case.name,
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(json["error"], case.code, "{}: {json}", case.name);
        let message = json["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(case.message),
            "{}: `{message}` should mention `{}`",
            case.name,
            case.message
        );
    }
    // Nothing changed, and the daemon still serves.
    let after = daemon.stored().await;
    assert_eq!(after.len(), before.len());
    assert_eq!(after[0].id, "b0");
    let good = daemon
        .post("application/json", r#"{"type":"still.serving"}"#)
        .await;
    assert_eq!(good.status, StatusCode::OK);
    assert_eq!(
        good.json()["last_seq"],
        2,
        "refused requests must not consume seqs"
    );
    let metrics = daemon.metrics().await;
    let invalid_events = cases.iter().filter(|c| c.code == "invalid_event").count() as f64;
    common::assert_samples(
        &metrics,
        &[
            (
                "outboxd_ingest_rejected_requests_total{reason=\"invalid_event\"}",
                invalid_events,
            ),
            ("outboxd_ingest_requests_total{status=\"413\"}", 5.0),
            ("outboxd_ingest_events_accepted_total", 2.0),
        ],
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let daemon = Daemon::start("").await;
    let answer = daemon.client().get("/v2/things").await.unwrap();
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json()["error"], "not_found");
    // GET /v1/events is the change feed; other methods are refused.
    for (method, path) in [
        (hyper::Method::PUT, "/v1/events"),
        (hyper::Method::DELETE, "/v1/events"),
        (hyper::Method::POST, "/v1/stream"),
    ] {
        let answer = daemon
            .client()
            .request(
                method.clone(),
                Some(path),
                &[],
                bytes::Bytes::from_static(b"{}"),
            )
            .await
            .unwrap();
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
    }
    assert!(daemon.stored().await.is_empty());
}

/// The header section is bounded by the connection's read buffer (64 KiB,
/// so each connection holds at most that while reading): a far larger one
/// gets 431 and stores nothing, a large legal one still passes.
#[tokio::test]
async fn oversized_headers_get_431_and_change_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let daemon = Daemon::start("").await;
    let legal = "a".repeat(32 * 1024);
    let answer = daemon
        .post_with(
            &[("content-type", "application/json"), ("x-padding", &legal)],
            r#"{"type":"t","id":"legal"}"#,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);

    // Raw, so that the client's own limits play no part. The server stops
    // reading at its limit; the rest may be refused, the answer is read anyway.
    let body = r#"{"type":"t","id":"too-big"}"#;
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         x-padding: {}\r\ncontent-length: {}\r\n\r\n{body}",
        "a".repeat(256 * 1024),
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", daemon.http_port))
        .await
        .unwrap();
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "expected 431 Request Header Fields Too Large, got `{}`",
        answer.lines().next().unwrap_or("")
    );

    let ids: Vec<String> = daemon.stored().await.into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["legal"]);
    let good = daemon
        .post("application/json", r#"{"type":"still.serving"}"#)
        .await;
    assert_eq!(good.status, StatusCode::OK);
}
