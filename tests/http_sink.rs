//! The HTTP sink against a real HTTP server scripted per request: split on
//! 413, Retry-After on 429, backoff over 5xx, halting on 401 until the
//! config is fixed, isolating and dead-lettering a poison event, 409 as
//! delivered, a stable Idempotency-Key across retries and kill -9, and a
//! window of batches in flight whose cursor waits for the oldest.

mod common;

use common::receiver::{Gate, Receiver, Reply};
use common::{ids, sample, Daemon};
use std::collections::BTreeSet;
use std::time::Duration;

fn http_sink(url: &str, extra: &str) -> String {
    format!(
        "[sinks.remote]\nkind = \"http\"\nurl = \"{url}\"\n{extra}\n[sinks.remote.batch]\nmax_age = \"100ms\"\n[sinks.remote.retry]\ninitial = \"50ms\"\nmax = \"400ms\"\nhalted_probe = \"300ms\"\n"
    )
}

fn set(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

const WAIT: Duration = Duration::from_secs(20);

/// A receiver that answers 413 to any request body over `limit` bytes.
async fn refusing_requests_over(limit: usize) -> Receiver {
    Receiver::start(move |seen, _| {
        if seen.bytes > limit {
            Reply::status(413)
        } else {
            Reply::ok()
        }
    })
    .await
}

/// A receiver that answers the batch starting at seq 1 only once the gate
/// opens, and everything else at once.
async fn holding_the_first_batch() -> (Receiver, Gate) {
    let gate = Gate::new();
    let held = gate.clone();
    let receiver = Receiver::start(move |seen, _| {
        if seen.seqs.first() == Some(&1) {
            Reply::ok().held(&held)
        } else {
            Reply::ok()
        }
    })
    .await;
    (receiver, gate)
}

#[tokio::test]
async fn batches_in_flight_go_out_together_and_the_cursor_waits_for_the_oldest() {
    let (receiver, gate) = holding_the_first_batch().await;
    let config = format!(
        "[sinks.remote]\nkind = \"http\"\nurl = \"{}\"\n[sinks.remote.batch]\nmax_events = 10\nin_flight = 3\n",
        receiver.url()
    );
    let daemon = Daemon::start(&config).await;
    let sent = ids("window", 50);
    daemon.post_ids(&sent, "window.test").await;
    // Three batches at once while the oldest is held...
    common::eventually("three batches in flight", || async {
        receiver.seen().len() == 3
    })
    .await;
    let firsts: BTreeSet<i64> = receiver.seen().iter().map(|s| s.seqs[0]).collect();
    assert_eq!(firsts, BTreeSet::from([1, 11, 21]));
    // ...and no fourth: the window is full until the oldest is concluded,
    // and the cursor does not pass the batch that is not delivered yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.seen().len(), 3, "{:?}", receiver.seen());
    let status = daemon.sink("remote").await;
    assert_eq!(status["cursor"], 0, "{status}");
    assert_eq!(status["batch"], serde_json::json!([1, 10]), "{status}");
    daemon
        .wait_samples(&[("outboxd_sink_batches_in_flight{sink=\"remote\"}", 3.0)])
        .await;
    gate.open();
    assert!(receiver.wait_for(&set(&sent), WAIT).await);
    daemon
        .wait_sink("remote", WAIT, |s| s["cursor"] == 50)
        .await;
    let mut accepted = receiver.accepted_ids();
    accepted.sort();
    assert_eq!(accepted, sent, "every event exactly once");
    assert_eq!(receiver.seen().len(), 5, "one request per batch");
    daemon
        .wait_samples(&[("outboxd_sink_batches_in_flight{sink=\"remote\"}", 0.0)])
        .await;
}

/// A range with nothing for the sink is skipped without being recorded;
/// when the daemon stops while it waits behind an older batch, the restart
/// reads it again, so events the sink's new filters take are not passed over.
#[tokio::test]
async fn a_skipped_range_behind_a_stopped_batch_is_read_again_after_a_restart() {
    let (receiver, gate) = holding_the_first_batch().await;
    let sink = |include: &str| {
        format!(
            "[shutdown]\ndrain_timeout = \"1s\"\n[sinks.remote]\nkind = \"http\"\nurl = \"{}\"\ninclude_types = {include}\n\
             [sinks.remote.batch]\nmax_events = 10\nin_flight = 3\n[sinks.remote.retry]\ninitial = \"50ms\"\nmax = \"200ms\"\n",
            receiver.url()
        )
    };
    let mut daemon = Daemon::start(&sink("[\"keep\"]")).await;
    let first = ids("first", 10);
    daemon.post_ids(&first, "keep").await;
    common::eventually("the oldest batch held", || async {
        receiver.seen().len() == 1
    })
    .await;
    // Seqs 11-15: nothing this sink takes, skipped behind the held batch.
    let other = ids("other", 5);
    daemon.post_ids(&other, "other").await;
    daemon
        .wait_samples(&[("outboxd_sink_batches_in_flight{sink=\"remote\"}", 2.0)])
        .await;
    let last = ids("last", 10);
    daemon.post_ids(&last, "keep").await;
    common::eventually("the newest batch delivered", || async {
        receiver.seen().iter().any(|s| s.seqs.first() == Some(&16))
    })
    .await;
    daemon
        .wait_samples(&[("outboxd_sink_batches_in_flight{sink=\"remote\"}", 3.0)])
        .await;
    assert_eq!(daemon.sink("remote").await["cursor"], 0);
    // The held attempt is abandoned after the drain timeout: nothing concluded.
    assert!(daemon.terminate().success());
    gate.open();
    daemon.reconfigure(&sink("[\"keep\", \"other\"]"));
    daemon.spawn().await;
    daemon
        .wait_sink("remote", WAIT, |s| s["cursor"] == 25)
        .await;
    let delivered: BTreeSet<String> = receiver.accepted_ids().into_iter().collect();
    assert!(
        delivered.is_superset(&set(&other)),
        "the skipped range was passed over after the filters changed: {:?}",
        receiver.seen()
    );
    let mut accepted = receiver.accepted_ids();
    accepted.sort();
    let mut all: Vec<String> = first.iter().chain(&other).chain(&last).cloned().collect();
    all.sort();
    assert_eq!(accepted, all, "every event exactly once");
}

#[tokio::test]
async fn a_413_splits_the_batch_until_the_halves_fit() {
    let receiver = refusing_requests_over(2500).await;
    let daemon = Daemon::start(&http_sink(&receiver.url(), "")).await;
    let sent = ids("split", 40);
    daemon.post_ids(&sent, "split.test").await;
    assert!(
        receiver.wait_for(&set(&sent), WAIT).await,
        "not all delivered:\n{}",
        daemon.log()
    );
    let seen = receiver.seen();
    assert!(
        seen.iter().any(|s| s.status == 413),
        "the first batch should have been too large"
    );
    assert!(seen
        .iter()
        .filter(|s| s.status == 200)
        .all(|s| s.bytes <= 2500));
    let mut accepted = receiver.accepted_ids();
    accepted.sort();
    assert_eq!(accepted, sent, "every event exactly once");
    daemon
        .wait_samples(&[("outboxd_sink_events_sent_total{sink=\"remote\"}", 40.0)])
        .await;
    let metrics = daemon.metrics().await;
    assert!(sample(&metrics, "outboxd_sink_splits_total{sink=\"remote\"}").unwrap() >= 1.0);
}

#[tokio::test]
async fn a_429_waits_for_retry_after_and_resends_the_same_key() {
    let receiver = Receiver::start(|_, n| {
        if n == 0 {
            Reply::status(429).header("retry-after", "1")
        } else {
            Reply::ok()
        }
    })
    .await;
    // Retry-After is capped by retry.max: give it room.
    let daemon =
        Daemon::start(&http_sink(&receiver.url(), "").replace("max = \"400ms\"", "max = \"5s\""))
            .await;
    let sent = ids("ra", 5);
    daemon.post_ids(&sent, "t").await;
    assert!(receiver.wait_for(&set(&sent), WAIT).await);
    let seen = receiver.seen();
    assert_eq!(seen[0].status, 429);
    assert_eq!(
        seen[1].key, seen[0].key,
        "a retry carries the same Idempotency-Key"
    );
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured ({waited:?})"
    );
}

#[tokio::test]
async fn a_run_of_500s_backs_off_and_then_delivers() {
    let receiver = Receiver::start(|_, n| {
        if n < 4 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    })
    .await;
    let daemon = Daemon::start(&http_sink(&receiver.url(), "")).await;
    let sent = ids("flaky", 12);
    daemon.post_ids(&sent, "t").await;
    assert!(receiver.wait_for(&set(&sent), WAIT).await);
    let seen = receiver.seen();
    assert_eq!(seen.iter().filter(|s| s.status == 500).count(), 4);
    assert!(
        seen.iter().all(|s| s.key == seen[0].key),
        "every attempt at the range uses one key"
    );
    let metrics = daemon.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "outboxd_sink_attempts_total{sink=\"remote\",outcome=\"retry\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(&metrics, "outboxd_sink_retries_total{sink=\"remote\"}"),
        Some(4.0)
    );
    // Delivered events leave the outbox.
    let status = daemon
        .wait_sink("remote", WAIT, |s| s["lag_events"] == 0)
        .await;
    assert_eq!(status["state"], "running");
    common::eventually("delivered events are deleted", || async {
        daemon.stored().await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_401_halts_the_sink_until_the_config_is_fixed() {
    let receiver = Receiver::start(|seen, _| {
        if seen.authorization == "Bearer right" {
            Reply::ok()
        } else {
            Reply::status(401)
        }
    })
    .await;
    let mut daemon = Daemon::start(&http_sink(&receiver.url(), "token = \"wrong\"")).await;
    let sent = ids("auth", 8);
    daemon.post_ids(&sent, "t").await;
    let status = daemon
        .wait_sink("remote", WAIT, |s| s["state"] == "halted")
        .await;
    assert!(
        status["last_error"].as_str().unwrap().contains("401"),
        "{status}"
    );
    let metrics = daemon.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "outboxd_sink_state{sink=\"remote\",state=\"halted\"}"
        ),
        Some(1.0)
    );
    // Probing goes on, nothing is lost or dead-lettered meanwhile.
    common::eventually("the halted sink probes again", || async {
        receiver.seen().len() >= 3
    })
    .await;
    assert_eq!(daemon.stored().await.len(), 8);
    assert_eq!(daemon.sink("remote").await["dead_letters"], 0);
    daemon.rewrite_config("token = \"wrong\"", "token = \"right\"");
    daemon.restart().await;
    assert!(
        receiver.wait_for(&set(&sent), WAIT).await,
        "{}",
        daemon.log()
    );
    daemon
        .wait_sink("remote", WAIT, |s| {
            s["state"] == "running" && s["lag_events"] == 0
        })
        .await;
}

#[tokio::test]
async fn a_poison_event_is_isolated_and_dead_lettered_alone() {
    let receiver = Receiver::start(|seen, _| {
        if seen.types.iter().any(|t| t == "poison") {
            Reply::status(400)
        } else {
            Reply::ok()
        }
    })
    .await;
    // Batches of five, three at a time: the poison's batch splits while
    // its neighbours are in flight.
    let daemon = Daemon::start(&http_sink(&receiver.url(), "").replace(
        "[sinks.remote.batch]\n",
        "[sinks.remote.batch]\nmax_events = 5\nin_flight = 3\n",
    ))
    .await;
    let good_before = ids("good-a", 9);
    let good_after = ids("good-b", 6);
    let body: String = good_before
        .iter()
        .map(|id| format!("{{\"type\":\"fine\",\"id\":\"{id}\"}}\n"))
        .chain(std::iter::once(
            "{\"type\":\"poison\",\"id\":\"the-poison\"}\n".to_string(),
        ))
        .chain(
            good_after
                .iter()
                .map(|id| format!("{{\"type\":\"fine\",\"id\":\"{id}\"}}\n")),
        )
        .collect();
    assert_eq!(
        daemon.post("application/x-ndjson", body).await.status,
        hyper::StatusCode::OK
    );
    let mut good = good_before.clone();
    good.extend(good_after);
    assert!(
        receiver.wait_for(&set(&good), WAIT).await,
        "{}",
        daemon.log()
    );
    let status = daemon
        .wait_sink("remote", WAIT, |s| {
            s["dead_letters"] == 1 && s["lag_events"] == 0
        })
        .await;
    assert_eq!(status["state"], "running");
    let mut accepted = receiver.accepted_ids();
    accepted.sort();
    good.sort();
    assert_eq!(
        accepted, good,
        "every good event exactly once, the poison never"
    );
    let letters = daemon.dead_letters(Some("remote")).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["id"], "the-poison");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("rejected: 400"),
        "{}",
        letters[0]
    );
    daemon
        .wait_samples(&[(
            "outboxd_sink_dead_lettered_events_total{sink=\"remote\",reason=\"rejected\"}",
            1.0,
        )])
        .await;
    // The CLI shows the same, as tables.
    let url = format!("http://127.0.0.1:{}", daemon.http_port);
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(common::binary())
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let status = cli(&["status", "--url", &url]);
    let row = status
        .lines()
        .find(|l| l.starts_with("remote"))
        .expect(&status);
    assert!(row.contains("http") && row.contains("running"), "{status}");
    let listed = cli(&["dlq", "list", "--sink", "remote", "--url", &url]);
    assert!(
        listed.contains("the-poison") && listed.contains("rejected: 400"),
        "{listed}"
    );
    // Replay after the cause is fixed: the receiver now takes it. Admin
    // actions go over the socket (over TCP they need admin.token).
    receiver.set_script(|_, _| Reply::ok());
    let socket = daemon.socket();
    let replayed = cli(&[
        "dlq",
        "replay",
        "--sink",
        "remote",
        "--ids",
        "the-poison",
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert!(replayed.contains("requeued 1"), "{replayed}");
    assert!(
        receiver
            .wait_for(&set(&["the-poison".to_string()]), WAIT)
            .await
    );
    daemon
        .wait_sink("remote", WAIT, |s| s["dead_letters"] == 0)
        .await;
}

#[tokio::test]
async fn a_409_counts_as_delivered() {
    let receiver = Receiver::start(|_, _| Reply::status(409)).await;
    let daemon = Daemon::start(&http_sink(&receiver.url(), "")).await;
    daemon.post_ids(&ids("dup", 3), "t").await;
    daemon
        .wait_sink("remote", WAIT, |s| s["lag_events"] == 0 && s["cursor"] == 3)
        .await;
    assert_eq!(receiver.seen().len(), 1);
    assert_eq!(daemon.sink("remote").await["dead_letters"], 0);
}

#[tokio::test]
async fn the_idempotency_key_survives_kill_9() {
    // The receiver holds the first request long enough to kill the daemon mid-attempt.
    let receiver = Receiver::start(|_, n| {
        if n == 0 {
            Reply::ok().after(Duration::from_secs(600))
        } else {
            Reply::ok()
        }
    })
    .await;
    let mut daemon = Daemon::start(&http_sink(&receiver.url(), "")).await;
    let sent = ids("crash", 10);
    daemon.post_ids(&sent, "t").await;
    let deadline = std::time::Instant::now() + WAIT;
    while receiver.seen().is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.kill9();
    daemon.spawn().await;
    while receiver.seen().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no resend after the restart:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = receiver.seen();
    assert_eq!(
        seen[1].key, seen[0].key,
        "the batch in flight is resent with the same key after a restart"
    );
    assert_eq!(seen[1].ids, seen[0].ids, "the same range");
    assert_eq!(
        seen[0].key,
        "remote-00000000000000000001-00000000000000000010"
    );
}

#[tokio::test]
async fn a_dead_receiver_does_not_hold_back_another_sink_or_ingest() {
    let receiver = Receiver::start(|_, _| Reply::ok()).await;
    receiver.stop();
    let config = format!(
        "{}\n[sinks.disk]\nkind = \"file\"\ndir = \"out\"\n[sinks.disk.batch]\nmax_age = \"50ms\"\n",
        http_sink(&receiver.url(), "")
    );
    let daemon = Daemon::start(&config).await;
    for round in 0..5 {
        daemon.post_ids(&ids(&format!("iso{round}"), 20), "t").await;
    }
    let disk = daemon.wait_sink("disk", WAIT, |s| s["cursor"] == 100).await;
    assert_eq!(disk["state"], "running");
    let remote = daemon
        .wait_sink("remote", WAIT, |s| s["state"] == "backoff")
        .await;
    assert_eq!(remote["cursor"], 0);
    assert!(
        remote["last_error"].as_str().unwrap().contains("POST"),
        "{remote}"
    );
    // The events wait for the slow sink: nothing is deleted before it has them.
    assert_eq!(daemon.stored().await.len(), 100);
    let files: Vec<_> = std::fs::read_dir(daemon.data_dir().join("out"))
        .unwrap()
        .collect();
    assert!(!files.is_empty());
    receiver.resume().await;
    let all: BTreeSet<String> = (0..5).flat_map(|r| ids(&format!("iso{r}"), 20)).collect();
    assert!(receiver.wait_for(&all, WAIT).await);
}

#[tokio::test]
async fn max_attempts_dead_letters_the_batch_instead_of_dropping_it() {
    let receiver = Receiver::start(|_, _| Reply::status(503)).await;
    let config =
        http_sink(&receiver.url(), "").replace("halted_probe", "max_attempts = 3\nhalted_probe");
    let daemon = Daemon::start(&config).await;
    let sent = ids("gaveup", 4);
    daemon.post_ids(&sent, "t").await;
    let status = daemon
        .wait_sink("remote", WAIT, |s| s["dead_letters"] == 4)
        .await;
    assert_eq!(status["cursor"], 4);
    assert_eq!(receiver.seen().len(), 3, "exactly max_attempts attempts");
    let letters = daemon.dead_letters(None).await;
    let mut dead: Vec<String> = letters
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    dead.sort();
    assert_eq!(dead, sent);
    assert!(letters[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("retries exhausted: 3 attempts"));
    daemon
        .wait_samples(&[(
            "outboxd_sink_dead_lettered_events_total{sink=\"remote\",reason=\"retries_exhausted\"}",
            4.0,
        )])
        .await;
}

#[tokio::test]
async fn sigterm_abandons_a_slow_attempt_after_the_drain_timeout_and_resends_it() {
    let receiver = Receiver::start(|_, n| {
        if n == 0 {
            Reply::ok().after(Duration::from_secs(600))
        } else {
            Reply::ok()
        }
    })
    .await;
    // The attempt would wait 300 s for its own timeout; the drain timeout
    // (1 s) must cut it short. Any exit well under 300 s shows it did.
    let config = format!(
        "[shutdown]\ndrain_timeout = \"1s\"\n{}",
        http_sink(&receiver.url(), "timeout = \"300s\"")
    );
    let mut daemon = Daemon::start(&config).await;
    let sent = ids("slow", 12);
    daemon.post_ids(&sent, "t").await;
    let deadline = std::time::Instant::now() + WAIT;
    while receiver.seen().is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = daemon.terminate();
        (status, daemon)
    });
    let (status, mut daemon) = status.await.unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "drain_timeout was not applied: {:?}",
        started.elapsed()
    );
    // Even with a smaller batch.max_bytes now, the recorded range is resent
    // whole: shrinking it would give a new key next to the first attempt's.
    daemon.rewrite_config(
        "[sinks.remote.batch]\n",
        "[sinks.remote.batch]\nmax_bytes = \"1KiB\"\n",
    );
    daemon.spawn().await;
    while receiver.seen().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = receiver.seen();
    assert_eq!(
        (seen[1].key.as_str(), &seen[1].ids),
        (seen[0].key.as_str(), &seen[0].ids)
    );
}

#[tokio::test]
async fn one_event_too_large_for_the_receiver_is_dead_lettered_and_the_sink_goes_on() {
    // The receiver takes at most 2 KB per request; one event alone is larger.
    let receiver = refusing_requests_over(2000).await;
    let daemon = Daemon::start(&http_sink(&receiver.url(), "")).await;
    let big = "b".repeat(4000);
    let body = format!(
        "{{\"type\":\"t\",\"id\":\"small-1\"}}\n{{\"type\":\"t\",\"id\":\"huge\",\"data\":\"{big}\"}}\n{{\"type\":\"t\",\"id\":\"small-2\"}}\n"
    );
    assert_eq!(
        daemon.post("application/x-ndjson", body).await.status,
        hyper::StatusCode::OK
    );
    let small = set(&["small-1".to_string(), "small-2".to_string()]);
    assert!(receiver.wait_for(&small, WAIT).await, "{}", daemon.log());
    let status = daemon
        .wait_sink("remote", WAIT, |s| {
            s["dead_letters"] == 1 && s["lag_events"] == 0
        })
        .await;
    assert_eq!(status["state"], "running");
    let letters = daemon.dead_letters(Some("remote")).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["id"], "huge");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("too large"),
        "{letters:?}"
    );
    assert!(!receiver.accepted_ids().contains(&"huge".to_string()));
    // The sink goes on with what comes next.
    daemon.post_ids(&ids("later", 3), "t").await;
    assert!(receiver.wait_for(&set(&ids("later", 3)), WAIT).await);
}

#[tokio::test]
async fn a_403_halts_and_keeps_the_events_and_a_503_backs_off_with_retry_after() {
    // 403 until the receiver is told otherwise: halted, nothing lost.
    let receiver = Receiver::start(|_, _| Reply::status(403)).await;
    let daemon =
        Daemon::start(&http_sink(&receiver.url(), "").replace("max = \"400ms\"", "max = \"5s\""))
            .await;
    let sent = ids("forbidden", 5);
    daemon.post_ids(&sent, "t").await;
    let status = daemon
        .wait_sink("remote", WAIT, |s| s["state"] == "halted")
        .await;
    assert!(
        status["last_error"].as_str().unwrap().contains("403"),
        "{status}"
    );
    assert_eq!(daemon.stored().await.len(), 5);
    assert_eq!(status["dead_letters"], 0);
    // Now overloaded: 503 with Retry-After, then fine.
    let overloaded = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = overloaded.clone();
    receiver.set_script(move |_, _| {
        if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::status(503).header("retry-after", "1")
        } else {
            Reply::ok()
        }
    });
    assert!(
        receiver.wait_for(&set(&sent), WAIT).await,
        "{}",
        daemon.log()
    );
    let seen = receiver.seen();
    let first_503 = seen.iter().position(|s| s.status == 503).expect("a 503");
    let waited = seen[first_503 + 1].at - seen[first_503].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 on a 503 was not honoured ({waited:?})"
    );
    assert_eq!(seen[first_503 + 1].key, seen[first_503].key);
    daemon
        .wait_sink("remote", WAIT, |s| {
            s["state"] == "running" && s["lag_events"] == 0
        })
        .await;
    let metrics = daemon.metrics().await;
    assert!(
        sample(
            &metrics,
            "outboxd_sink_attempts_total{sink=\"remote\",outcome=\"halted\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "outboxd_sink_attempts_total{sink=\"remote\",outcome=\"retry\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_operator_can_read_a_dead_letter_and_purge_dead_letters() {
    let receiver = Receiver::start(|_, _| Reply::status(400)).await;
    let daemon = Daemon::start(&http_sink(&receiver.url(), "")).await;
    daemon
        .post_ids(
            &[
                "bad-1".to_string(),
                "bad-2".to_string(),
                "bad-3".to_string(),
            ],
            "tool.result",
        )
        .await;
    daemon
        .wait_sink("remote", WAIT, |s| s["dead_letters"] == 3)
        .await;
    let socket = daemon.socket();
    let cli = |args: &[&str]| {
        std::process::Command::new(common::binary())
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap()
    };
    let stdout =
        |output: &std::process::Output| String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr =
        |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).into_owned();
    let seq = daemon.dead_letters(Some("remote")).await[0]["seq"].to_string();

    // show: the reason and the event as stored.
    let shown = cli(&["dlq", "show", "--sink", "remote", &seq]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let text = stdout(&shown);
    assert!(text.contains("reason:   rejected: 400"), "{text}");
    assert!(
        text.contains("\"id\": \"bad-1\"") && text.contains("\"type\": \"tool.result\""),
        "{text}"
    );
    let missing = cli(&["dlq", "show", "--sink", "remote", "999"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no dead letter at seq 999"),
        "{}",
        stderr(&missing)
    );

    // purge: by id, then all; nothing without saying which.
    let unsure = cli(&["dlq", "purge", "--sink", "remote"]);
    assert!(!unsure.status.success(), "purge needs --ids or --all");
    assert_eq!(daemon.dead_letters(Some("remote")).await.len(), 3);
    let one = cli(&["dlq", "purge", "--sink", "remote", "--ids", "bad-2"]);
    assert!(
        stdout(&one).contains("purged 1 dead letters"),
        "{}{}",
        stdout(&one),
        stderr(&one)
    );
    let left: Vec<String> = daemon
        .dead_letters(Some("remote"))
        .await
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, ["bad-1", "bad-3"]);
    let unknown = cli(&["dlq", "purge", "--sink", "nope", "--all"]);
    assert!(
        stderr(&unknown).contains("no sink named `nope`"),
        "{}",
        stderr(&unknown)
    );
    let all = cli(&["dlq", "purge", "--sink", "remote", "--all"]);
    assert!(
        stdout(&all).contains("purged 2 dead letters"),
        "{}",
        stdout(&all)
    );
    let status = daemon.sink("remote").await;
    assert_eq!(status["dead_letters"], 0, "{status}");
    assert_eq!(status["state"], "running");
}
