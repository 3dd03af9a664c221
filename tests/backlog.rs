//! Memory must not depend on the backlog: nothing loads it, nothing keeps
//! an in-memory index per event. A backlog is built with the sink down, the
//! daemon restarted on it, and drained; RSS is sampled along the way.
//!
//! `BACKLOG_EVENTS` sets its size (default 100000 events of 512 B). The
//! issue's figure, 2M events, with start-up times: `bench/backlog.sh`, or
//! `BACKLOG_EVENTS=2000000 cargo test --release --test backlog -- --nocapture`.

mod common;

use common::receiver::{Receiver, Reply};
use common::{env_number, rss_mib, Daemon};
use std::time::{Duration, Instant};

/// Within 10% (plus 1 MiB of allocator noise).
fn flat(early: f64, late: f64) -> bool {
    late <= early * 1.10 + 1.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_flat_while_a_backlog_grows_restarts_and_drains() {
    backlog_rss("inline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_flat_with_bodies_in_the_body_log() {
    backlog_rss("segments").await;
}

/// Builds, restarts on and drains a backlog with `outbox.bodies = bodies`.
/// SQLite's page caches (bounded by `cache_size`) fill during the first
/// quarter of growing and of draining, more slowly when rows hold no body:
/// flatness is measured after that, from half the backlog on.
async fn backlog_rss(bodies: &str) {
    let total = env_number("BACKLOG_EVENTS", 100_000);
    let receiver = Receiver::start(|_, _| Reply::ok()).await;
    receiver.stop();
    let mut daemon = Daemon::start(&format!(
        "[outbox]\nmax_bytes = \"8GiB\"\nbodies = \"{bodies}\"\n[log]\nlevel = \"info\"\n\
         [sinks.remote]\nkind = \"http\"\nurl = \"{}\"\n\
         [sinks.remote.batch]\nmax_events = 2000\nmax_age = \"100ms\"\n\
         [sinks.remote.retry]\ninitial = \"100ms\"\nmax = \"500ms\"\n",
        receiver.url()
    ))
    .await;
    let acked_log = daemon.dir.path().join("acked.txt");
    let idle = rss_mib(daemon.pid());

    // Grow the backlog in four steps, sampling after each.
    let mut growing = Vec::new();
    let quarter = (total / 4).to_string();
    for _ in 0..4 {
        let load = common::start_load(
            &daemon,
            &acked_log,
            Duration::from_secs(600),
            &[
                "--batch",
                "500",
                "--concurrency",
                "4",
                "--event-size",
                "512",
                "--total-events",
                &quarter,
            ],
        );
        assert!(common::finish(load).await.success());
        growing.push(rss_mib(daemon.pid()));
    }
    let backlog = daemon.sink("remote").await["lag_events"].as_u64().unwrap();

    // Restart on the backlog.
    assert!(daemon.terminate().success());
    let started = Instant::now();
    daemon.spawn().await;
    let startup = started.elapsed();
    let after_restart = rss_mib(daemon.pid());

    // Drain, sampling at about 3/4, 1/2 and 1/4 of the backlog left, and at 0.
    receiver.resume().await;
    let mut draining = Vec::new();
    for left in [backlog * 3 / 4, backlog / 2, backlog / 4, 0] {
        let deadline = Instant::now() + Duration::from_secs(600);
        while daemon.sink("remote").await["lag_events"].as_u64().unwrap() > left {
            assert!(
                Instant::now() < deadline,
                "drain too slow:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        draining.push(rss_mib(daemon.pid()));
    }
    let acked = common::acked_ids(&acked_log);
    assert!(
        receiver.wait_for(&acked, Duration::from_secs(60)).await,
        "not every acknowledged event arrived"
    );
    println!(
        "bodies {bodies}: backlog of {backlog} events (512 B): RSS idle {idle:.1} MiB; while growing {growing:.1?} MiB; \
         start-up on it {:.0} ms (debug build unless --release), RSS {after_restart:.1} MiB; \
         while draining {draining:.1?} MiB",
        startup.as_secs_f64() * 1000.0
    );
    assert!(
        flat(growing[1], growing[3]),
        "RSS grew with the backlog: {growing:?}"
    );
    assert!(
        flat(draining[1], draining[3]) && flat(draining[3], draining[1]),
        "RSS changed with the backlog left: {draining:?}"
    );
}
