//! systemd integration: the notify protocol under a fake `NOTIFY_SOCKET`
//! (READY once listening, STATUS, WATCHDOG pings, RELOADING then READY
//! around a reload, STOPPING on SIGTERM), and
//! the shipped unit passes `systemd-analyze verify`.

mod common;

use common::Daemon;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// Every datagram until `done` holds for what was received, or the bound
/// (which only catches a hang).
fn receive_until(socket: &UnixDatagram, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while !done(&messages) {
        assert!(Instant::now() < deadline, "messages so far: {messages:?}");
        if let Ok(n) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    }
    messages
}

fn count(messages: &[String], line: &str) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == line))
        .count()
}

#[tokio::test]
async fn notify_says_ready_once_listening_pings_the_watchdog_and_says_stopping() {
    let mut daemon = Daemon::prepare("");
    let path = daemon.data_dir().with_file_name("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    // 200 ms: pings every 100 ms.
    daemon
        .spawn_with_env(&[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ])
        .await;
    daemon
        .post("application/json", r#"{"type":"t","id":"a"}"#)
        .await;
    let socket = tokio::task::spawn_blocking(move || {
        let messages = receive_until(&socket, |m| count(m, "WATCHDOG=1") >= 3);
        (socket, messages)
    });
    let (socket, messages) = socket.await.unwrap();
    let ready = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"))
        .expect("READY=1 was sent");
    assert_eq!(count(&messages, "READY=1"), 1);
    assert!(
        messages[ready].contains("STATUS=") && messages[ready].contains("events in the outbox"),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .position(|m| m.contains("WATCHDOG=1"))
            .unwrap()
            > ready,
        "pings start after READY"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("STATUS=1 events in the outbox, last seq 1")),
        "the status follows the outbox: {messages:?}"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = daemon.terminate();
        (status, daemon)
    });
    let (status, daemon) = status.await.unwrap();
    assert!(status.success(), "{}", daemon.log());
    let after = receive_until(&socket, |m| count(m, "STOPPING=1") == 1);
    assert_eq!(count(&after, "READY=1"), 0);
}

#[tokio::test]
async fn a_reload_says_reloading_with_the_clock_then_ready() {
    let mut daemon = Daemon::prepare("");
    let path = daemon.data_dir().with_file_name("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    daemon
        .spawn_with_env(&[("NOTIFY_SOCKET", path.to_str().unwrap())])
        .await;
    let (socket, _) = tokio::task::spawn_blocking(move || {
        let messages = receive_until(&socket, |m| count(m, "READY=1") == 1);
        (socket, messages)
    })
    .await
    .unwrap();
    let (status, answer) = daemon.reload().await;
    assert_eq!(status, 200, "{answer}");
    let messages = receive_until(&socket, |m| count(m, "READY=1") == 1);
    let reloading = messages
        .iter()
        .find(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("RELOADING=1 was sent: {messages:?}"));
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("systemd 253+ needs MONOTONIC_USEC with it: {reloading:?}"))
        .parse()
        .expect("microseconds");
    assert!(usec > 0);
    let ready = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"));
    let began = messages.iter().position(|m| m.contains("RELOADING=1"));
    assert!(ready > began, "READY=1 after RELOADING=1: {messages:?}");
}

#[tokio::test]
async fn without_notify_socket_nothing_is_sent_and_nothing_fails() {
    let daemon = Daemon::start("").await;
    let answer = daemon
        .post("application/json", r#"{"type":"t","id":"a"}"#)
        .await;
    assert!(answer.status.is_success());
    assert!(!daemon.log().contains("cannot notify"));
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing (tests/run.sh installs it)"
        );
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    assert!(version.status.success());
    let root = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(format!("{root}/systemd/outboxd.service")).unwrap();
    for needed in [
        "\nType=notify\n",
        "\nWatchdogSec=",
        "\nSystemCallFilter=@system-service\n",
        "\nCapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed:?}");
    }
    // Verify the unit as installed, with the built binary and example config
    // standing in for the installed ones.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outboxd.service");
    let unit = unit
        .replace("/usr/local/bin/outboxd", common::binary())
        .replace(
            "/etc/outboxd/outboxd.toml",
            &format!("{root}/config/outboxd.toml"),
        );
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{stderr}"
    );
}
