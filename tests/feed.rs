//! The change feed: `GET /v1/events` pages and `GET /v1/stream` (SSE, read
//! with a real SSE parser over TCP and the Unix socket): replay then live
//! with no gap and no duplicate, `Last-Event-ID` reconnects under
//! concurrent ingest, `feed_reset`, `lagged`, filters, the subscriber cap,
//! unstored events live only, and `feed.retain`.

mod common;

use common::sse::{self, Via};
use common::Daemon;
use serde_json::{json, Value};
use std::time::Duration;

fn data(event: &eventsource_stream::Event) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

/// Posts `total` events in requests of 10 from 4 concurrent clients.
fn concurrent_ingest(daemon: &Daemon, total: usize) -> tokio::task::JoinHandle<()> {
    let clients: Vec<_> = (0..4).map(|_| daemon.client()).collect();
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for (c, mut client) in clients.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                for r in (c * 10..total).step_by(40) {
                    let body: String = (r..(r + 10).min(total))
                        .map(|i| {
                            json!({"type": "step", "session_id": format!("s{}", i % 3), "data": i})
                                .to_string()
                                + "\n"
                        })
                        .collect();
                    let answer = client
                        .post("application/x-ndjson", body.into())
                        .await
                        .unwrap();
                    assert!(answer.status.is_success());
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    })
}

async fn every_seq_once_in_order_across_a_reconnect(
    daemon: &Daemon,
    via: impl Fn() -> Via<'static>,
) {
    let total = 3000;
    daemon.post_ids(&common::ids("before", 50), "early").await;
    let ingest = concurrent_ingest(daemon, total);
    let mut seen: Vec<i64> = Vec::new();
    let (status, mut events) = sse::open(via(), "/v1/stream?after=0", &[]).await;
    assert_eq!(status, 200);
    let mut reconnected = false;
    while seen.len() < total + 50 {
        let event = sse::next(&mut events).await;
        // Half way the client drops the connection; on a busy machine it may
        // also fall behind and be cut off (`lagged`). Either way it comes
        // back with the last id it saw.
        let lost = match &event {
            None => true,
            Some(event) if event.event == "lagged" => true,
            Some(_) => seen.len() == 1500 && !reconnected,
        };
        if lost {
            reconnected = true;
            drop(events);
            let last = seen.last().copied().unwrap_or(0).to_string();
            let (status, again) =
                sse::open(via(), "/v1/stream?after=0", &[("last-event-id", &last)]).await;
            assert_eq!(status, 200);
            events = again;
            continue;
        }
        let event = event.unwrap();
        assert_eq!(event.event, "message", "{event:?}");
        assert_eq!(event.id, data(&event)["seq"].to_string(), "id is the seq");
        seen.push(event.id.parse().unwrap());
    }
    assert!(reconnected);
    ingest.await.unwrap();
    let expected: Vec<i64> = (1..=(total as i64 + 50)).collect();
    assert_eq!(
        seen, expected,
        "every seq once, in order, across replay, tail and reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_sees_every_seq_once_across_a_reconnect_over_tcp() {
    let daemon = Daemon::start("").await;
    let port = daemon.http_port;
    every_seq_once_in_order_across_a_reconnect(&daemon, move || Via::Tcp(port)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_sees_every_seq_once_across_a_reconnect_over_the_unix_socket() {
    let daemon = Daemon::start("").await;
    let socket: &'static std::path::Path = Box::leak(daemon.socket().into_boxed_path());
    every_seq_once_in_order_across_a_reconnect(&daemon, move || Via::Unix(socket)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_cut_off_and_ingest_never_waits() {
    let daemon = Daemon::start("[feed]\nmax_lag = 500\n").await;
    let (status, mut slow) = sse::open(Via::Tcp(daemon.http_port), "/v1/stream", &[]).await;
    assert_eq!(status, 200);
    // Far more than feed.max_lag, the live ring and the socket buffers hold.
    let payload = "x".repeat(8 * 1024);
    for r in 0..80 {
        let body: String = (0..100)
            .map(|i| {
                json!({"type": "big", "data": format!("{r}-{i} {payload}")}).to_string() + "\n"
            })
            .collect();
        // Ingest never waits on a subscriber: every request is answered.
        daemon.post_ndjson(body).await;
    }
    let mut last_seq = 0;
    let lagged = loop {
        let event = sse::next(&mut slow)
            .await
            .expect("a lagged event before the end");
        if event.event == "lagged" {
            break data(&event);
        }
        last_seq = event.id.parse().unwrap();
    };
    assert!(lagged["behind"].as_u64().unwrap() > 500, "{lagged}");
    assert_eq!(lagged["resume_after"], last_seq, "{lagged}");
    assert!(
        sse::next(&mut slow).await.is_none(),
        "the stream ends after lagged"
    );
    // The slot is free again, and a reconnect resumes where it stopped.
    let after = last_seq.to_string();
    let (status, mut again) = sse::open(
        Via::Tcp(daemon.http_port),
        "/v1/stream",
        &[("last-event-id", &after)],
    )
    .await;
    assert_eq!(status, 200);
    let next = sse::next(&mut again).await.unwrap();
    assert_eq!(next.id, (last_seq + 1).to_string());
}

fn eight_events() -> String {
    (0..8)
        .map(|i| json!({"id": format!("e{i}"), "type": if i % 2 == 0 { "tool.call" } else { "message" }, "session_id": format!("s{}", i % 4)}).to_string() + "\n")
        .collect()
}

#[tokio::test]
async fn pages_follow_the_cursor_with_filters_and_refuse_bad_queries() {
    let daemon = Daemon::start("").await;
    daemon.post_ndjson(eight_events()).await;
    let page = daemon
        .client()
        .get("/v1/events?after=2&limit=3&type=tool.*")
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{:?}", page.body);
    let page = page.json();
    let seqs: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 5, 7]);
    assert_eq!(page["next_after"], 7);
    let session = daemon.get_json("/v1/events?session_id=s1").await;
    let ids: Vec<&str> = session["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e1", "e5"]);
    assert_eq!(
        session["next_after"], 8,
        "the cursor passes what the filter skipped"
    );
    for bad in [
        "/v1/events?after=x",
        "/v1/events?limit=0",
        "/v1/events?type=%5B",
        "/v1/events?sort=desc",
    ] {
        let answer = daemon.client().get(bad).await.unwrap();
        assert_eq!(answer.status, 400, "{bad}");
        assert_eq!(answer.json()["error"], "invalid_query", "{bad}");
    }
}

#[tokio::test]
async fn a_page_of_large_events_stops_near_4_mib_and_the_next_goes_on() {
    let daemon = Daemon::start("").await;
    // Ten events of 900 KiB (under the 1 MiB event limit), in two requests.
    let big = "y".repeat(900 << 10);
    for half in 0..2 {
        let body: String = (0..5)
            .map(|i| {
                json!({"id": format!("big{}", half * 5 + i), "type": "tool.result", "data": big})
                    .to_string()
                    + "\n"
            })
            .collect();
        daemon.post_ndjson(body).await;
    }
    let (mut after, mut ids, mut pages) = (0, Vec::new(), 0);
    loop {
        let page = daemon
            .get_json(&format!("/v1/events?after={after}&limit=100"))
            .await;
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        pages += 1;
        assert!(
            events.len() <= 5,
            "a page of {} events of 900 KiB",
            events.len()
        );
        ids.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_string()));
        after = page["next_after"].as_i64().unwrap();
    }
    let want: Vec<String> = (0..10).map(|i| format!("big{i}")).collect();
    assert_eq!(ids, want, "every event once, in order, across the pages");
    assert!(pages >= 2);
}

#[tokio::test]
async fn resets_the_subscriber_cap_and_unstored_events_live() {
    let daemon = Daemon::start(
        "[ingest]\nstore = \"compacted\"\n[feed]\nmax_subscribers = 1\n\
         [sinks.archive]\nkind = \"file\"\ndir = \"archive\"\n[sinks.archive.batch]\nmax_events = 4\n",
    )
    .await;
    daemon.post_ndjson(eight_events()).await;
    // The archive delivers and, with no feed.retain, the events go.
    common::eventually("delivered events are deleted", || async {
        daemon.stored().await.is_empty()
    })
    .await;
    let page = daemon.get_json("/v1/events?after=0").await;
    assert_eq!(page["reset"]["oldest_seq"], 9, "{page}");
    let (status, mut stream) = sse::open(
        Via::Tcp(daemon.http_port),
        "/v1/stream?after=3&session_id=s2",
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let reset = sse::next(&mut stream).await.unwrap();
    assert_eq!(reset.event, "feed_reset");
    assert_eq!(data(&reset), json!({"oldest_seq": 9, "after": 3}));
    // One subscriber at most.
    let (status, _) = sse::open(Via::Tcp(daemon.http_port), "/v1/stream", &[]).await;
    assert_eq!(status, 503);
    // Live: filtered, and the deltas compacted storage skips arrive without an id.
    let live = [
        json!({"type": "message.delta", "fidelity": "observed", "session_id": "s2", "data": "Hel"}),
        json!({"type": "message", "session_id": "s3"}),
        json!({"id": "live", "type": "message", "session_id": "s2"}),
    ];
    let body: String = live.iter().map(|e| e.to_string() + "\n").collect();
    let ack = daemon.post_ndjson(body).await;
    assert_eq!(
        (ack["accepted"].as_u64(), ack["skipped"].as_u64()),
        (Some(2), Some(1))
    );
    let delta = sse::next(&mut stream).await.unwrap();
    assert_eq!(
        (delta.id.as_str(), data(&delta)["data"].as_str()),
        ("", Some("Hel"))
    );
    let stored = sse::next(&mut stream).await.unwrap();
    assert_eq!(
        (stored.id.as_str(), data(&stored)["id"].as_str()),
        ("10", Some("live"))
    );
}

#[tokio::test]
async fn feed_retain_keeps_delivered_events_replayable() {
    let daemon = Daemon::start(
        "[feed]\nretain = \"1h\"\n[sinks.archive]\nkind = \"file\"\ndir = \"archive\"\n\
         [sinks.archive.batch]\nmax_events = 5\n",
    )
    .await;
    for round in 0..2 {
        daemon
            .post_ids(&common::ids(&format!("r{round}-"), 5), "step")
            .await;
        let end = 5 * (round + 1);
        daemon
            .wait_sink("archive", Duration::from_secs(60), |s| s["cursor"] == end)
            .await;
    }
    assert_eq!(
        daemon.stored().await.len(),
        10,
        "delivered, and still held for the feed"
    );
    let page = daemon.get_json("/v1/events?after=0").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 10);
    assert!(page["reset"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_live_ring_is_caught_up_from_the_outbox() {
    let daemon = Daemon::start("").await;
    let (status, mut events) = sse::open(Via::Tcp(daemon.http_port), "/v1/stream", &[]).await;
    assert_eq!(status, 200);
    // One commit of 10,000 events: more than the 4096 the ring holds.
    let body: String = (0..10_000)
        .map(|i| json!({"type": "delta", "data": i}).to_string() + "\n")
        .collect();
    daemon.post_ndjson(body).await;
    for expected in 1..=10_000i64 {
        let event = sse::next(&mut events).await.expect("stream open");
        assert_eq!(
            event.event, "message",
            "a fast subscriber is not cut off: {event:?}"
        );
        assert_eq!(event.id, expected.to_string());
    }
}

#[tokio::test]
async fn feed_retain_bytes_keeps_the_newest_delivered_events_up_to_the_size() {
    let daemon = Daemon::start(
        "[feed]\nretain_bytes = \"20KiB\"\n[sinks.archive]\nkind = \"file\"\ndir = \"archive\"\n\
         [sinks.archive.batch]\nmax_events = 10\n",
    )
    .await;
    let filler = "y".repeat(1000);
    let body: String = (0..100)
        .map(|i| {
            json!({"id": format!("b{i:03}"), "type": "step", "data": filler}).to_string() + "\n"
        })
        .collect();
    daemon.post_ndjson(body).await;
    daemon
        .wait_sink("archive", Duration::from_secs(60), |s| s["cursor"] == 100)
        .await;
    common::eventually("the outbox shrinks to feed.retain_bytes", || async {
        daemon.stored().await.len() <= 20
    })
    .await;
    let kept: Vec<String> = daemon.stored().await.into_iter().map(|e| e.id).collect();
    assert!(kept.len() >= 10, "the newest stay replayable: {kept:?}");
    let newest: Vec<String> = (100 - kept.len()..100)
        .map(|i| format!("b{i:03}"))
        .collect();
    assert_eq!(kept, newest);
    let page = daemon.get_json("/v1/events?after=0&limit=1").await;
    assert_eq!(page["reset"]["oldest_seq"], 100 - kept.len() as i64 + 1);
}

#[tokio::test]
async fn the_stream_takes_the_token_on_tcp_and_the_file_mode_on_the_socket() {
    let daemon = Daemon::start("[ingest]\nauth_token = \"s3cret\"\n").await;
    for token in [None, Some("Bearer nope")] {
        let headers: Vec<(&str, &str)> = token.map(|t| ("authorization", t)).into_iter().collect();
        let (status, _) = sse::open(Via::Tcp(daemon.http_port), "/v1/stream", &headers).await;
        assert_eq!(status, 401, "{token:?}");
    }
    let (status, _) = sse::open(
        Via::Tcp(daemon.http_port),
        "/v1/stream",
        &[("authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(status, 200);
    let socket = daemon.socket();
    let (status, _) = sse::open(Via::Unix(&socket), "/v1/stream", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_streams_and_the_daemon_exits_cleanly() {
    let mut daemon = Daemon::start("").await;
    let (status, mut events) = sse::open(Via::Tcp(daemon.http_port), "/v1/stream", &[]).await;
    assert_eq!(status, 200);
    daemon.post_ids(&common::ids("t", 1), "step").await;
    assert!(sse::next(&mut events).await.is_some());
    assert!(daemon.terminate().success(), "{}", daemon.log());
    assert!(
        sse::next(&mut events).await.is_none(),
        "the stream ends with the daemon"
    );
}
