//! Sinks that go away or turn hostile under load: the backlog waits on disk
//! with memory flat, and once the sink is back everything arrives, once.
//!
//! `OUTAGE_SECS` sets how long S3 stays down (default 5; the long mode is
//! `OUTAGE_SECS=60 cargo test --release --test outages -- --nocapture`).

mod common;

use common::receiver::{Receiver, Reply, RESET};
use common::s3::{ids_once, S3Server, ACCESS_KEY, SECRET_KEY};
use common::{count_once, env_number, ids, rss_mib, Daemon};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_under_load_backlogs_on_disk_with_flat_memory_then_drains_once() {
    let outage = Duration::from_secs(env_number("OUTAGE_SECS", 5));
    let mut s3 = S3Server::start().await;
    let daemon = Daemon::start(&format!(
        "[sinks.s3]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"outage\"\naccess_key = \"{ACCESS_KEY}\"\n\
         secret_key = \"{SECRET_KEY}\"\ncreate_bucket = true\n\
         [sinks.s3.batch]\nmax_age = \"100ms\"\nmax_events = 2000\n\
         [sinks.s3.retry]\ninitial = \"50ms\"\nmax = \"1s\"\nhalted_probe = \"500ms\"\n",
        s3.endpoint()
    ))
    .await;
    let acked_log = daemon.dir.path().join("acked.txt");
    let load = common::start_load(
        &daemon,
        &acked_log,
        outage + Duration::from_secs(3),
        &["--batch", "50", "--concurrency", "4", "--event-size", "512"],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    s3.stop();
    let down = Instant::now();
    // Memory while the backlog grows on disk: a baseline once the outage
    // has settled in, then every 250 ms until S3 is back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lag_before = daemon.sink("s3").await["lag_events"].as_u64().unwrap();
    let baseline = rss_mib(daemon.pid());
    let mut peak = baseline;
    while down.elapsed() < outage {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(rss_mib(daemon.pid()));
    }
    let backlog = daemon.sink("s3").await["lag_events"].as_u64().unwrap();
    assert!(
        backlog > lag_before && backlog > 5000,
        "the backlog grew during the outage: {lag_before} -> {backlog}"
    );
    s3.resume().await;
    assert!(common::finish(load).await.success());
    common::wait_drained(&daemon, Duration::from_secs(120)).await;

    let acked = common::acked_ids(&acked_log);
    let objects = s3.objects("outage");
    let stored = ids_once(&objects);
    let missing: Vec<&String> = acked.difference(&stored).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in S3: {missing:?}"
    );
    assert_eq!(stored, acked, "nothing but the acknowledged events");
    println!(
        "S3 outage of {:.0}s: backlog {backlog} events; RSS {baseline:.1} MiB -> peak {peak:.1} MiB \
         while it grew; {} events in {} objects after, 0 lost, 0 duplicated",
        outage.as_secs_f64(),
        acked.len(),
        objects.len()
    );
    assert!(
        peak <= baseline * 1.15 + 2.0,
        "memory grew with the backlog: {baseline:.1} -> {peak:.1} MiB"
    );
}

/// The first 25 requests meet a storm: 500, 429 with Retry-After, answers
/// slower than the sink's timeout, connection resets, 503. Then the storm ends
/// and every event arrives, once per Idempotency-Key, none dead-lettered.
#[tokio::test]
async fn an_http_storm_of_errors_throttling_timeouts_and_resets_ends_with_everything_delivered() {
    let receiver = Receiver::start(|_, n| {
        if n >= 25 {
            return Reply::ok();
        }
        match n % 5 {
            0 => Reply::status(500),
            1 => Reply::status(429).header("retry-after", "1"),
            2 => Reply::ok().after(Duration::from_millis(1500)),
            3 => Reply::reset(),
            _ => Reply::status(503),
        }
    })
    .await;
    let daemon = Daemon::start(&format!(
        "[sinks.remote]\nkind = \"http\"\nurl = \"{}\"\ntimeout = \"300ms\"\n\
         [sinks.remote.batch]\nmax_age = \"50ms\"\nmax_events = 100\n\
         [sinks.remote.retry]\ninitial = \"20ms\"\nmax = \"2s\"\n",
        receiver.url()
    ))
    .await;
    let sent = ids("storm", 1000);
    for chunk in sent.chunks(100) {
        daemon.post_ids(chunk, "storm").await;
    }
    let wanted: BTreeSet<String> = sent.into_iter().collect();
    assert!(
        receiver.wait_for(&wanted, Duration::from_secs(60)).await,
        "not everything arrived:\n{}",
        daemon.log()
    );
    common::wait_drained(&daemon, Duration::from_secs(10)).await;
    let delivered = count_once(
        "the receiver (one request per key)",
        receiver.accepted_ids(),
    );
    assert_eq!(delivered, wanted);
    let status = daemon.sink("remote").await;
    assert_eq!(status["dead_letters"], 0, "{status}");

    // The storm happened as scripted, and Retry-After (within retry.max)
    // was honoured rather than the sink's own 20 ms first backoff.
    let seen = receiver.seen();
    let statuses: BTreeSet<u16> = seen[..25].iter().map(|s| s.status).collect();
    assert_eq!(statuses, BTreeSet::from([RESET, 200, 429, 500, 503]));
    for (i, request) in seen.iter().enumerate().take(25) {
        if request.status == 429 {
            let next = &seen[i + 1];
            let waited = next.at - request.at;
            assert!(
                waited >= Duration::from_millis(950),
                "retried after {waited:?}"
            );
        }
    }
}
