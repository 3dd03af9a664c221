//! Ingest round trips against the real daemon: every content type and
//! encoding over TCP and the Unix socket, durability across restarts and
//! kill -9, dedup, auth.

mod common;

use bytes::Bytes;
use common::{gzip, zstd, Daemon};
use hyper::StatusCode;
use std::collections::{HashMap, HashSet};

/// (content type, body holding two events with the given id prefix)
fn bodies(prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("application/json", format!(r#"{{"type":"message.created","id":"{prefix}-obj","session_id":"s1","data":{{"text":"hi"}}}}"#)),
        ("application/json", format!(r#"[{{"type":"tool.called","id":"{prefix}-arr1"}},{{"type":"tool.result","id":"{prefix}-arr2","fidelity":"domain"}}]"#)),
        ("application/x-ndjson", format!("{{\"type\":\"reasoning\",\"id\":\"{prefix}-nd1\"}}\n{{\"type\":\"token.delta\",\"id\":\"{prefix}-nd2\",\"fidelity\":\"observed\"}}\n")),
        ("application/cloudevents+json", format!(r#"{{"specversion":"1.0","id":"{prefix}-ce","source":"/agent/7","type":"run.started","sessionid":"s1"}}"#)),
        ("application/cloudevents-batch+json", format!(r#"[{{"specversion":"1.0","id":"{prefix}-ceb1","source":"/a","type":"run.step"}},{{"specversion":"1.0","id":"{prefix}-ceb2","source":"/a","type":"run.finished","data":{{"ok":true}}}}]"#)),
    ]
}

fn count_events(body: &str, content_type: &str) -> usize {
    if content_type.contains("ndjson") {
        body.lines().filter(|l| !l.trim().is_empty()).count()
    } else if body.starts_with('[') {
        serde_json::from_str::<Vec<serde_json::Value>>(body)
            .unwrap()
            .len()
    } else {
        1
    }
}

#[tokio::test]
async fn every_content_type_and_encoding_round_trips_over_tcp_and_unix() {
    let daemon = Daemon::start("").await;
    let mut expected_ids = Vec::new();
    let mut last_seq = 0;
    for transport in ["tcp", "unix"] {
        for encoding in ["identity", "gzip", "zstd"] {
            for (content_type, body) in bodies(&format!("{transport}-{encoding}")) {
                let encoded = match encoding {
                    "gzip" => gzip(body.as_bytes()),
                    "zstd" => zstd(body.as_bytes()),
                    _ => body.clone().into_bytes(),
                };
                let headers = [
                    ("content-type", content_type),
                    ("content-encoding", encoding),
                ];
                let mut client = if transport == "tcp" {
                    daemon.client()
                } else {
                    daemon.unix_client()
                };
                let answer = client
                    .request(hyper::Method::POST, None, &headers, Bytes::from(encoded))
                    .await
                    .unwrap();
                assert_eq!(
                    answer.status,
                    StatusCode::OK,
                    "{transport} {encoding} {content_type}: {:?}",
                    answer.body
                );
                let json = answer.json();
                let n = count_events(&body, content_type);
                assert_eq!(json["accepted"], n as u64);
                assert_eq!(json["duplicates"], 0);
                assert_eq!(json["last_seq"].as_i64().unwrap(), last_seq + n as i64);
                last_seq += n as i64;
                for value in
                    serde_json::Deserializer::from_str(&body).into_iter::<serde_json::Value>()
                {
                    match value.unwrap() {
                        serde_json::Value::Array(items) => expected_ids
                            .extend(items.iter().map(|v| v["id"].as_str().unwrap().to_string())),
                        item => expected_ids.push(item["id"].as_str().unwrap().to_string()),
                    }
                }
            }
        }
    }
    let stored = daemon.stored().await;
    assert_eq!(
        stored.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        expected_ids
    );
    let seqs: Vec<i64> = stored.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, (1..=expected_ids.len() as i64).collect::<Vec<_>>());
    for event in &stored {
        assert_eq!(event.body["id"], event.id.as_str());
        assert_eq!(event.body["type"], event.event_type.as_str());
        assert!(event.body["received"].is_string());
    }
    let ce = stored.iter().find(|s| s.id == "unix-zstd-ce").unwrap();
    assert_eq!(ce.body["source"], "/agent/7");
    assert_eq!(ce.body["session_id"], "s1");
    let observed = stored.iter().find(|s| s.id == "tcp-gzip-nd2").unwrap();
    assert_eq!(observed.body["fidelity"], "observed");
}

#[tokio::test]
async fn events_seqs_and_dedup_survive_a_restart() {
    let mut daemon = Daemon::start("").await;
    let first = daemon
        .post(
            "application/x-ndjson",
            "{\"type\":\"a\",\"id\":\"r1\"}\n{\"type\":\"b\"}\n",
        )
        .await;
    assert_eq!(first.json()["last_seq"], 2);
    daemon.restart().await;
    let again = daemon
        .post(
            "application/json",
            r#"[{"type":"a","id":"r1"},{"type":"c","id":"r2"}]"#,
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["accepted"], 1);
    assert_eq!(again.json()["duplicates"], 1);
    assert_eq!(again.json()["last_seq"], 3);
    let stored = daemon.stored().await;
    assert_eq!(stored.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(stored[0].id, "r1");
    assert_eq!(stored[2].id, "r2");
}

#[tokio::test]
async fn duplicates_are_accepted_again_after_the_dedup_window() {
    let window = std::time::Duration::from_secs(2);
    let daemon = Daemon::start("[ingest]\ndedup_window = \"2s\"\n").await;
    // Both commits fall inside the window when the first request was sent
    // and the second answered within it. A machine too busy for that gets
    // another try with a new id; the check itself never depends on speed.
    let mut checked = None;
    for attempt in 0..5 {
        let body = format!(r#"{{"type":"a","id":"w{attempt}"}}"#);
        let started = std::time::Instant::now();
        assert_eq!(
            daemon.post("application/json", body.clone()).await.json()["accepted"],
            1
        );
        let again = daemon.post("application/json", body.clone()).await.json();
        if started.elapsed() < window {
            assert_eq!(again["duplicates"], 1, "within the window: {again}");
            checked = Some(body);
            break;
        }
    }
    let body = checked.expect("no two requests within 2 s in 5 tries");
    tokio::time::sleep(window + std::time::Duration::from_millis(300)).await;
    let later = daemon.post("application/json", body).await.json();
    assert_eq!(later["accepted"], 1, "after the window: {later}");
    let stored = daemon.stored().await;
    let last = stored.last().unwrap();
    assert_eq!(
        stored.iter().filter(|s| s.id == last.id).count(),
        2,
        "stored once per window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_event_and_duplicates_none() {
    let mut daemon = Daemon::start("").await;
    let mut tasks = common::load_until_gone(daemon.http_port, 8, 20, "w", 200);
    // Let acknowledged requests pile up, then pull the plug mid-stream.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    daemon.kill9();
    let mut acked = Vec::new();
    while let Some(ids) = tasks.join_next().await {
        acked.extend(ids.unwrap());
    }
    assert!(
        acked.len() > 200,
        "too few requests before the kill: {}",
        acked.len()
    );
    daemon.spawn().await;
    let stored = daemon.stored().await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for event in &stored {
        *counts.entry(event.id.as_str()).or_default() += 1;
    }
    assert!(
        counts.values().all(|n| *n == 1),
        "an event was stored twice"
    );
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
    // Writing continues after recovery, with seqs past everything stored.
    let answer = daemon.post("application/json", r#"{"type":"after"}"#).await;
    assert_eq!(
        answer.json()["last_seq"].as_i64().unwrap(),
        stored.last().unwrap().seq + 1
    );
    // Retrying every acknowledged request stores nothing new.
    let retry: String = acked
        .iter()
        .take(500)
        .map(|id| format!("{{\"type\":\"load\",\"id\":\"{id}\"}}\n"))
        .collect();
    let answer = daemon.post("application/x-ndjson", retry).await;
    assert_eq!(answer.json()["accepted"], 0);
    let unique: HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len());
}

#[tokio::test]
async fn the_tcp_listener_requires_the_token_and_the_socket_does_not() {
    let daemon = Daemon::start("[ingest]\nauth_token = \"s3cret\"\n").await;
    let body = r#"{"type":"a"}"#;
    let refused = daemon.post("application/json", body).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json()["error"], "unauthorized");
    let wrong = daemon
        .post_with(
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer nope"),
            ],
            body,
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let ok = daemon
        .post_with(
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer s3cret"),
            ],
            body,
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let unix = daemon
        .unix_client()
        .post("application/json", Bytes::from(body))
        .await
        .unwrap();
    assert_eq!(unix.status, StatusCode::OK);
    assert_eq!(daemon.stored().await.len(), 2);
}

#[tokio::test]
async fn every_tcp_route_but_healthz_requires_the_token() {
    let daemon = Daemon::start(&format!(
        "[ingest]\nauth_token = \"s3cret\"\n[admin]\ntoken = \"adm1n\"\n[sinks.remote]\nkind = \"http\"\nurl = \"http://127.0.0.1:{}/\"\n",
        common::free_port()
    ))
    .await;
    let routes: &[(hyper::Method, &str, &str)] = &[
        (hyper::Method::POST, "/v1/events", r#"{"type":"a"}"#),
        (hyper::Method::GET, "/v1/sinks", ""),
        (hyper::Method::GET, "/v1/events?after=0", ""),
        (hyper::Method::GET, "/v1/dead-letters", ""),
        (
            hyper::Method::POST,
            "/v1/dead-letters/replay",
            r#"{"sink":"remote"}"#,
        ),
        (
            hyper::Method::POST,
            "/v1/dead-letters/purge",
            r#"{"sink":"remote","ids":["none"]}"#,
        ),
        (hyper::Method::GET, "/v1/dead-letters/remote/1", ""),
        (hyper::Method::POST, "/v1/sinks/remote/pause", ""),
        (hyper::Method::POST, "/v1/sinks/remote/resume", ""),
        (hyper::Method::GET, "/v1/no-such-route", ""),
    ];
    let admin = |path: &str| {
        path.ends_with("/replay")
            || path.ends_with("/purge")
            || path.ends_with("/pause")
            || path.ends_with("/resume")
    };
    for (method, path, body) in routes {
        // Admin actions take the admin token only: the ingest token an agent
        // holds does not pause sinks or purge dead letters.
        let ingest_token = admin(path).then_some("Bearer s3cret");
        for authorization in [
            None,
            Some("Bearer nope"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
            Some("Bearer adm1n2"),
        ]
        .into_iter()
        .chain([ingest_token])
        {
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(authorization.map(|a| ("authorization", a)));
            let answer = daemon
                .client()
                .request(method.clone(), Some(path), &headers, Bytes::from(*body))
                .await
                .unwrap();
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {authorization:?}"
            );
            assert_eq!(answer.headers["www-authenticate"], "Bearer");
            assert_eq!(answer.json()["error"], "unauthorized");
        }
        let answer = daemon
            .client()
            .request(
                method.clone(),
                Some(path),
                &[
                    ("content-type", "application/json"),
                    (
                        "authorization",
                        if admin(path) {
                            "Bearer adm1n"
                        } else {
                            "Bearer s3cret"
                        },
                    ),
                ],
                Bytes::from(*body),
            )
            .await
            .unwrap();
        let expected = if *path == "/v1/no-such-route" || *path == "/v1/dead-letters/remote/1" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(
            answer.status, expected,
            "{method} {path} with the token: {:?}",
            answer.body
        );
    }
    // Liveness stays open for probes; nothing was stored by refused requests.
    let health = daemon.client().get("/healthz").await.unwrap();
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(daemon.stored().await.len(), 1);
}

#[tokio::test]
async fn the_socket_takes_the_configured_mode_and_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Root may give the socket any group; anyone else their own.
    let gid = if unsafe { libc::geteuid() } == 0 {
        1
    } else {
        unsafe { libc::getegid() }
    };
    let daemon = Daemon::start(&format!(
        "[ingest]\nunix_socket_mode = \"0640\"\nunix_socket_group = \"{gid}\"\n"
    ))
    .await;
    let meta = std::fs::metadata(daemon.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), gid);
    let unix = daemon
        .unix_client()
        .post("application/json", Bytes::from(r#"{"type":"a"}"#))
        .await
        .unwrap();
    assert_eq!(unix.status, StatusCode::OK);
}

/// Posts one CloudEvent in binary content mode, headers as an SDK sends them.
async fn post_binary(
    daemon: &Daemon,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> outboxd::client::Answer {
    daemon
        .client()
        .request(hyper::Method::POST, None, headers, Bytes::from_static(body))
        .await
        .unwrap()
}

#[tokio::test]
async fn cloudevents_binary_mode_is_stored_like_structured_mode() {
    let daemon = Daemon::start("").await;
    // As the CloudEvents SDKs send it: attributes in ce-* headers, the data
    // as the body, its type in Content-Type.
    let binary = post_binary(
        &daemon,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "bin-1"),
            ("ce-source", "/agents/planner"),
            ("ce-type", "tool.result"),
            ("ce-time", "2026-11-23T10:00:00Z"),
            ("ce-subject", "caf%C3%A9"),
            ("ce-sessionid", "s-9"),
            ("content-type", "application/json"),
        ],
        br#"{"call_id":"c1","content":"42"}"#,
    )
    .await;
    assert_eq!(binary.status, StatusCode::OK, "{:?}", binary.body);
    let structured = daemon
        .post(
            "application/cloudevents+json",
            r#"{"specversion":"1.0","id":"str-1","source":"/agents/planner","type":"tool.result",
               "time":"2026-11-23T10:00:00Z","subject":"café","sessionid":"s-9",
               "datacontenttype":"application/json","data":{"call_id":"c1","content":"42"}}"#,
        )
        .await;
    assert_eq!(structured.status, StatusCode::OK, "{:?}", structured.body);
    let text = post_binary(
        &daemon,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "bin-2"),
            ("ce-source", "/agents/planner"),
            ("ce-type", "message"),
            ("content-type", "text/plain; charset=utf-8"),
        ],
        b"plain words",
    )
    .await;
    assert_eq!(text.status, StatusCode::OK, "{:?}", text.body);
    let stored = daemon.stored().await;
    assert_eq!(stored.len(), 3);
    let without_id = |s: &common::Stored| {
        let mut body = s.body.clone();
        body.as_object_mut().unwrap().remove("id");
        body.as_object_mut().unwrap().remove("received");
        body
    };
    assert_eq!(without_id(&stored[0]), without_id(&stored[1]));
    assert_eq!(stored[0].body["session_id"], "s-9");
    assert_eq!(stored[2].body["data"], "plain words");

    // Bad input: a clear 400 and nothing stored.
    let refusals: [(&[(&str, &str)], &'static [u8], &str); 3] = [
        (
            &[
                ("ce-specversion", "1.0"),
                ("ce-source", "/a"),
                ("ce-type", "t"),
                ("content-type", "application/json"),
            ],
            b"{}",
            "`id` is missing",
        ),
        (
            &[
                ("ce-specversion", "0.3"),
                ("ce-id", "x"),
                ("ce-source", "/a"),
                ("ce-type", "t"),
                ("content-type", "application/json"),
            ],
            b"{}",
            "specversion",
        ),
        (
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "x"),
                ("ce-source", "/a"),
                ("ce-type", "t"),
                ("content-type", "application/json"),
            ],
            b"{not json",
            "not JSON",
        ),
    ];
    for (headers, body, says) in refusals {
        let answer = post_binary(&daemon, headers, body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{headers:?}");
        let message = answer.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{message} should say {says}");
    }
    assert_eq!(daemon.stored().await.len(), 3);
}
