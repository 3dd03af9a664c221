//! Soak: a steady load (2000 events/s) beside an S3 sink and an HTTP sink whose
//! receiver flaps (503 for 2 s in every 5 s). RSS, open file descriptors,
//! threads and tokio tasks must not drift, and everything acknowledged
//! arrives at both sinks.
//!
//! `SOAK_SECS` sets the duration (default 20; the 30-minute soak is
//! `SOAK_SECS=1800 cargo test --release --test soak -- --nocapture`).

mod common;

use common::receiver::{Receiver, Reply};
use common::s3::{ids_once, S3Server, ACCESS_KEY, SECRET_KEY};
use common::{env_number, rss_mib, sample, Daemon};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_mib: f64,
    fds: usize,
    threads: u64,
    tasks: f64,
}

async fn sample_of(daemon: &Daemon) -> Sample {
    let pid = daemon.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Sample {
        rss_mib: rss_mib(pid),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count(),
        threads,
        tasks: sample(&daemon.metrics().await, "outboxd_runtime_tasks").unwrap(),
    }
}

/// The largest value of each figure over some samples.
fn peak(samples: &[Sample]) -> Sample {
    samples.iter().fold(samples[0], |a, b| Sample {
        rss_mib: a.rss_mib.max(b.rss_mib),
        fds: a.fds.max(b.fds),
        threads: a.threads.max(b.threads),
        tasks: a.tasks.max(b.tasks),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_with_a_flapping_sink_does_not_drift() {
    let duration = Duration::from_secs(env_number("SOAK_SECS", 20));
    let down = Arc::new(AtomicBool::new(false));
    let receiver = {
        let down = down.clone();
        Receiver::start(move |_, _| {
            if down.load(Ordering::Relaxed) {
                Reply::status(503)
            } else {
                Reply::ok()
            }
        })
        .await
    };
    let s3 = S3Server::start().await;
    let daemon = Daemon::start(&format!(
        "[sinks.s3]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"soak\"\naccess_key = \"{ACCESS_KEY}\"\n\
         secret_key = \"{SECRET_KEY}\"\ncreate_bucket = true\n\
         [sinks.s3.batch]\nmax_age = \"500ms\"\n\
         [sinks.http]\nkind = \"http\"\nurl = \"{}\"\n\
         [sinks.http.batch]\nmax_age = \"100ms\"\n\
         [sinks.http.retry]\ninitial = \"50ms\"\nmax = \"500ms\"\n",
        s3.endpoint(),
        receiver.url()
    ))
    .await;
    let acked_log = daemon.dir.path().join("acked.txt");
    // A burst first, so SQLite's page caches (bounded: 8 MiB for the writer)
    // are warm before the first sample and their filling is not read as drift.
    let burst = common::start_load(
        &daemon,
        &acked_log,
        Duration::from_secs(60),
        &[
            "--batch",
            "200",
            "--concurrency",
            "2",
            "--total-events",
            "60000",
        ],
    );
    assert!(common::finish(burst).await.success());
    let load = common::start_load(
        &daemon,
        &acked_log,
        duration,
        &[
            "--batch",
            "20",
            "--concurrency",
            "2",
            "--event-size",
            "300",
            "--rate",
            "2000",
        ],
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        // Down for 2 s of every 5.
        let phase = started.elapsed().as_millis() % 5000;
        down.store(phase >= 3000, Ordering::Relaxed);
        samples.push(sample_of(&daemon).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    down.store(false, Ordering::Relaxed);
    assert!(common::finish(load).await.success());
    common::wait_drained(&daemon, Duration::from_secs(120)).await;

    let acked = common::acked_ids(&acked_log);
    assert!(acked.len() > 1000, "too little load: {}", acked.len());
    let in_s3 = ids_once(&s3.objects("soak"));
    assert!(acked.is_subset(&in_s3), "acknowledged events missing in S3");
    let received = common::count_once("the receiver", receiver.accepted_ids());
    assert!(
        acked.is_subset(&received),
        "acknowledged events missing at the receiver"
    );
    let flaps = receiver.seen().iter().filter(|s| s.status == 503).count();
    assert!(flaps > 0, "the sink never flapped");

    // Skip the first quarter (the allocator's arenas and the first
    // connections warm up); then compare the peaks of the first and the last
    // third of the rest.
    let steady = &samples[samples.len() / 4..];
    let third = steady.len() / 3;
    let (first, last) = (
        peak(&steady[..third]),
        peak(&steady[steady.len() - third..]),
    );
    println!(
        "soak of {:.0}s: {} events, {flaps} refused requests while flapping; \
         first third peak {first:?}, last third peak {last:?}",
        duration.as_secs_f64(),
        acked.len()
    );
    assert!(
        last.rss_mib <= first.rss_mib * 1.10 + 2.0,
        "RSS drifted: {first:?} -> {last:?}"
    );
    assert!(
        last.fds <= first.fds + 4,
        "fds drifted: {first:?} -> {last:?}"
    );
    assert!(
        last.threads <= first.threads + 2,
        "threads drifted: {first:?} -> {last:?}"
    );
    assert!(
        last.tasks <= first.tasks + 4.0,
        "tasks drifted: {first:?} -> {last:?}"
    );
}
