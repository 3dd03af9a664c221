//! Signals: SIGTERM under load finishes in-flight requests and exits 0 with
//! every acknowledged event stored; a second signal exits at once.

mod common;

use common::Daemon;
use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_0_and_keeps_every_acknowledged_event() {
    let mut daemon = Daemon::start("").await;
    let mut tasks = common::load_until_gone(daemon.http_port, 6, 10, "t", 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = daemon.terminate();
        (status, daemon)
    });
    let (status, daemon) = status.await.unwrap();
    assert!(
        status.success(),
        "SIGTERM should exit 0, got {status}:\n{}",
        daemon.log()
    );
    let mut acked = Vec::new();
    while let Some(ids) = tasks.join_next().await {
        acked.extend(ids.unwrap());
    }
    assert!(!acked.is_empty());
    let stored: HashSet<String> = daemon.stored().await.into_iter().map(|s| s.id).collect();
    let lost = acked.iter().filter(|id| !stored.contains(*id)).count();
    assert_eq!(
        lost, 0,
        "acknowledged events missing after a clean shutdown"
    );
    assert!(daemon.log().contains("stopped"));
}

#[tokio::test]
async fn a_second_signal_exits_at_once_even_with_a_request_hanging() {
    // A drain timeout far beyond the bound below: only the second signal can
    // end the process in time.
    let mut daemon = Daemon::start("[shutdown]\ndrain_timeout = \"300s\"\n").await;
    // A client that sends half a body and then nothing keeps a request in flight.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", daemon.http_port)).unwrap();
    stalled
        .write_all(b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"type\":")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut child = daemon.take_child();
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the request in flight"
    );
    let started = Instant::now();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "second signal did not exit at once"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1));
    assert!(daemon.log().contains("second signal"));
    drop(stalled);
}

#[tokio::test]
async fn sighup_reloads_the_config_and_the_daemon_keeps_serving() {
    let mut daemon = Daemon::start("").await;
    daemon.post_ids(&common::ids("before-hup", 3), "t").await;
    daemon.reconfigure("[sinks.archive]\nkind = \"file\"\ndir = \"archive\"\n[sinks.archive.batch]\nmax_events = 6\n");
    unsafe { libc::kill(daemon.pid(), libc::SIGHUP) };
    common::eventually("SIGHUP applies the new sink", || async {
        daemon
            .sinks()
            .await
            .as_array()
            .is_some_and(|s| s.len() == 1)
    })
    .await;
    assert!(
        daemon.log().contains("configuration reloaded"),
        "{}",
        daemon.log()
    );
    // Still serving; the new sink gets what the outbox held and what follows;
    // a later SIGTERM is still the graceful stop.
    daemon.post_ids(&common::ids("after-hup", 3), "t").await;
    common::eventually("the added sink delivers all six", || async {
        common::json_lines_in(&daemon.data_dir().join("archive")).len() == 6
    })
    .await;
    let status = daemon.terminate();
    assert!(status.success(), "{status}\n{}", daemon.log());
    assert!(daemon.log().contains("stopped"));
}
