//! Crash consistency under load: the daemon runs an S3 sink (real s3s-fs)
//! and an HTTP sink (a receiver that dedups on Idempotency-Key) while the
//! load generator records every acknowledged id; the daemon is killed with
//! SIGKILL at random moments (during commits, uploads and GC) and restarted.
//! Both sinks keep several batches in flight (S3 by default, HTTP by
//! `in_flight = 3`), so kills also land between their verdicts.
//! At the end every acknowledged id is in the S3 objects exactly once and at
//! the receiver exactly once per key, and no other id appears twice.
//!
//! `CRASH_CYCLES` (default 5) sets the number of kills; the long mode is
//! `CRASH_CYCLES=50 cargo test --release --test crash -- --nocapture`.
//! `CRASH_SEED` replays a run's kill moments.

mod common;

use common::receiver::{Receiver, Reply};
use common::s3::{ids_once, S3Server, ACCESS_KEY, SECRET_KEY};
use common::{count_once, env_number, Daemon};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_moments_loses_and_duplicates_nothing_at_either_sink() {
    harness(
        "",
        &["--batch", "20", "--concurrency", "4", "--event-size", "200"],
    )
    .await;
}

/// The same with `outbox.bodies = "segments"`: requests of ~100 KiB go to
/// the body log, small segments come and go while the daemon is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_bodies_in_the_log_loses_and_duplicates_nothing() {
    let daemon_dir = harness(
        "[outbox]\nbodies = \"segments\"\nsegment_bytes = \"1MiB\"\n",
        &[
            "--batch",
            "100",
            "--concurrency",
            "4",
            "--event-size",
            "1024",
        ],
    )
    .await;
    let connection = rusqlite::Connection::open(daemon_dir.path().join("data/outbox.db")).unwrap();
    let log_end: i64 = connection
        .query_row("SELECT log_end FROM outbox_state", [], |row| row.get(0))
        .unwrap();
    assert!(log_end > 1 << 20, "the body log was used: {log_end} bytes");
}

/// Kills the daemon at random moments under `load`, then checks that both
/// sinks got every acknowledged event once; returns the daemon's directory.
async fn harness(outbox: &str, load: &[&str]) -> tempfile::TempDir {
    let cycles = env_number("CRASH_CYCLES", 5);
    let seed = env_number("CRASH_SEED", fastrand::u64(..));
    println!("crash harness: {cycles} cycles, CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let s3 = S3Server::start().await;
    // Answers after 0-9 ms, so that kills also land while a request is out.
    let receiver =
        Receiver::start(|_, n| Reply::ok().after(Duration::from_millis((n as u64 * 7919) % 10)))
            .await;
    let mut daemon = Daemon::start(&format!(
        "{outbox}[sinks.s3]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"crash\"\naccess_key = \"{ACCESS_KEY}\"\n\
         secret_key = \"{SECRET_KEY}\"\ncreate_bucket = true\n\
         [sinks.s3.batch]\nmax_age = \"100ms\"\nmax_events = 400\n\
         [sinks.s3.retry]\ninitial = \"50ms\"\nmax = \"500ms\"\nhalted_probe = \"300ms\"\n\
         [sinks.http]\nkind = \"http\"\nurl = \"{}\"\n\
         [sinks.http.batch]\nmax_age = \"50ms\"\nmax_events = 1000\nin_flight = 3\n\
         [sinks.http.retry]\ninitial = \"50ms\"\nmax = \"500ms\"\n",
        s3.endpoint(),
        receiver.url()
    ))
    .await;
    let acked_log = daemon.dir.path().join("acked.txt");
    let started = Instant::now();
    for cycle in 0..cycles {
        let load = common::start_load(&daemon, &acked_log, Duration::from_millis(1500), load);
        let kill_after = Duration::from_millis(rng.u64(150..1300));
        tokio::time::sleep(kill_after).await;
        daemon.kill9();
        let status = common::finish(load).await;
        assert!(status.success(), "cycle {cycle}: the load generator failed");
        daemon.spawn().await;
    }
    common::wait_drained(&daemon, Duration::from_secs(300)).await;
    assert!(daemon.terminate().success());

    let acked = common::acked_ids(&acked_log);
    assert!(
        acked.len() >= 1000 * cycles as usize / 2,
        "too little load: {}",
        acked.len()
    );

    let objects = s3.objects("crash");
    let in_s3 = ids_once(&objects);
    let missing_s3: Vec<&String> = acked.difference(&in_s3).take(5).collect();
    assert!(
        missing_s3.is_empty(),
        "acknowledged but not in S3: {missing_s3:?}"
    );

    // A retried request carries exactly the ids of the first one with its key.
    let seen = receiver.seen();
    let mut by_key: HashMap<&str, &Vec<String>> = HashMap::new();
    for request in &seen {
        let first = by_key.entry(&request.key).or_insert(&request.ids);
        assert_eq!(
            *first, &request.ids,
            "key {} was reused for other events",
            request.key
        );
    }
    let at_receiver = count_once(
        "the HTTP receiver (one request per key)",
        receiver.accepted_ids(),
    );
    let missing_http: Vec<&String> = acked.difference(&at_receiver).take(5).collect();
    assert!(
        missing_http.is_empty(),
        "acknowledged but not received: {missing_http:?}"
    );
    assert_eq!(in_s3, at_receiver, "both sinks got the same events");

    println!(
        "crash harness: {cycles} kill -9 cycles in {:.1}s; {} events acknowledged, {} more committed \
         without an ack reaching the client; {} S3 objects; {} HTTP requests for {} keys; \
         0 lost, 0 duplicated",
        started.elapsed().as_secs_f64(),
        acked.len(),
        in_s3.len() - acked.len(),
        objects.len(),
        seen.len(),
        by_key.len()
    );
    daemon.into_dir()
}
