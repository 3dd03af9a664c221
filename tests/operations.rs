//! Operations: quota, config errors, metrics (checked by promtool), the Unix
//! socket's life cycle, start-up refusals, signals and `outboxd send`.

mod common;

use common::{binary, check_config, sample, Daemon};
use hyper::StatusCode;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn event(id: &str) -> String {
    format!(
        "{{\"type\":\"quota.test\",\"id\":\"{id}\",\"data\":\"{}\"}}",
        "p".repeat(400)
    )
}

#[tokio::test]
async fn a_full_outbox_rejects_with_retry_after_and_stores_nothing() {
    let daemon = Daemon::start("[outbox]\nmax_bytes = \"8KiB\"\n").await;
    let mut accepted = 0;
    let refusal = loop {
        let answer = daemon
            .post("application/json", event(&format!("q{accepted}")))
            .await;
        if answer.status != StatusCode::OK {
            break answer;
        }
        accepted += 1;
        assert!(accepted < 100, "the quota never applied");
    };
    assert_eq!(refusal.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refusal.headers["retry-after"], "1");
    assert_eq!(refusal.json()["error"], "outbox_full");
    assert!(refusal.json()["message"]
        .as_str()
        .unwrap()
        .contains("outbox is full"));
    let stored = daemon.stored().await;
    assert_eq!(stored.len(), accepted);
    assert!(stored.iter().all(|s| s.id != format!("q{accepted}")));
    let ready = daemon.metrics_client().get("/readyz").await.unwrap();
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&ready.body).contains("outbox is full"));
    // A request larger than the whole quota can never fit: 413, not 503.
    let huge: String = (0..30)
        .map(|i| event(&format!("h{i}")))
        .collect::<Vec<_>>()
        .join("\n");
    let answer = daemon.post("application/x-ndjson", huge).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.json()["error"], "larger_than_outbox");
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_counts_evictions() {
    let daemon =
        Daemon::start("[outbox]\nmax_bytes = \"8KiB\"\nwhen_full = \"drop_oldest\"\n").await;
    for i in 0..60 {
        let answer = daemon
            .post("application/json", event(&format!("d{i}")))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let stored = daemon.stored().await;
    assert!(
        stored.len() < 60 && stored.len() > 5,
        "kept {}",
        stored.len()
    );
    let kept: Vec<String> = stored.iter().map(|s| s.id.clone()).collect();
    let newest: Vec<String> = (60 - stored.len()..60).map(|i| format!("d{i}")).collect();
    assert_eq!(kept, newest, "the newest events are kept, in order");
    let metrics = daemon.metrics().await;
    assert_eq!(
        sample(&metrics, "outboxd_outbox_evicted_events_total"),
        Some((60 - stored.len()) as f64)
    );
    assert_eq!(
        sample(&metrics, "outboxd_outbox_events"),
        Some(stored.len() as f64)
    );
    assert!(sample(&metrics, "outboxd_outbox_bytes").unwrap() <= 8192.0);
    // Dedup outlives the event: d0 was evicted, and is still a duplicate.
    let again = daemon.post("application/json", event("d0")).await;
    assert_eq!(again.json()["duplicates"], 1);
    assert!(daemon.stored().await.iter().all(|s| s.id != "d0"));
}

#[tokio::test]
async fn metrics_pass_promtool_and_show_the_counts() {
    let daemon = Daemon::start("").await;
    for i in 0..3 {
        daemon
            .post(
                "application/x-ndjson",
                format!("{{\"type\":\"m\",\"id\":\"m{i}\"}}\n{{\"type\":\"m\"}}\n"),
            )
            .await;
    }
    daemon
        .post("application/json", r#"{"type":"m","id":"m0"}"#)
        .await;
    daemon.post("application/json", r#"{"type":7}"#).await;
    daemon.post("text/csv", "a,b").await;
    let metrics = daemon.metrics().await;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by tests/run.sh (Debian package `prometheus`)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    common::assert_samples(
        &metrics,
        &[
            ("outboxd_ingest_events_accepted_total", 6.0),
            ("outboxd_ingest_duplicates_total", 1.0),
            ("outboxd_ingest_requests_total{status=\"200\"}", 4.0),
            ("outboxd_ingest_requests_total{status=\"400\"}", 1.0),
            ("outboxd_ingest_requests_total{status=\"415\"}", 1.0),
            ("outboxd_outbox_events", 6.0),
            ("outboxd_outbox_last_seq", 6.0),
        ],
    );
    assert!(sample(&metrics, "outboxd_outbox_commit_batch_events_count").unwrap() >= 3.0);
    assert!(sample(&metrics, "outboxd_outbox_commit_duration_seconds_count").unwrap() >= 3.0);
    assert!(sample(&metrics, "outboxd_outbox_oldest_event_age_seconds").unwrap() >= 0.0);
    assert!(metrics.contains("outboxd_ingest_bytes_total"));
    let ready = daemon.metrics_client().get("/readyz").await.unwrap();
    assert_eq!(ready.status, StatusCode::OK);
    let health = daemon.metrics_client().get("/healthz").await.unwrap();
    assert_eq!(health.status, StatusCode::OK);
}

#[test]
fn check_config_names_bad_keys_and_masks_secrets() {
    let (ok, stdout, _) = check_config(
        "[ingest]\nauth_token = \"hunter2\"\nmax_body_bytes = \"4MiB\"\n",
        &[],
    );
    assert!(ok);
    assert!(!stdout.contains("hunter2"));
    assert!(stdout.contains("auth_token = \"****\""));
    assert!(stdout.contains("max_body_bytes = \"4MiB\""));
    for (text, env, key) in [
        (
            "[ingest]\nmax_body_bytes = \"huge\"\n",
            vec![],
            "ingest.max_body_bytes",
        ),
        ("[outbox]\nsync = \"sometimes\"\n", vec![], "outbox.sync"),
        ("[outbox]\ncolour = \"red\"\n", vec![], "colour"),
        ("[ingest]\nmax_depth = \"x\"\n", vec![], "ingest.max_depth"),
        (
            "",
            vec![("OUTBOXD_OUTBOX__MAX_BYTES", "many")],
            "outbox.max_bytes",
        ),
        (
            "[metrics]\nlisten = \"nowhere\"\n",
            vec![],
            "metrics.listen",
        ),
        ("not toml at all [", vec![], "TOML"),
    ] {
        let (ok, _, stderr) = check_config(text, &env);
        assert!(!ok, "{text:?} should be refused");
        assert!(
            stderr.to_lowercase().contains(&key.to_lowercase()),
            "{text:?}: stderr should name {key}: {stderr}"
        );
    }
    // `run` refuses the same way, before touching anything.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[ingest]\nmax_events_per_request = -1\n").unwrap();
    let output = Command::new(binary())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("ingest.max_events_per_request"));
    let missing = Command::new(binary())
        .args(["run", "--config", "/nonexistent/outboxd.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/outboxd.toml"));
}

#[tokio::test]
async fn the_socket_gets_its_mode_replaces_a_stale_file_and_is_removed_on_exit() {
    let mut daemon = Daemon::start("[ingest]\nunix_socket_mode = \"0600\"\n").await;
    let socket = daemon.socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // kill -9 leaves the file behind; the next start replaces it.
    daemon.kill9();
    assert!(socket.exists());
    daemon.spawn().await;
    let answer = daemon
        .unix_client()
        .post("application/json", r#"{"type":"a"}"#.into())
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    // SIGTERM: exit 0, socket gone.
    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    assert!(!socket.exists());
}

#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_or_socket_is_refused() {
    let daemon = Daemon::start("").await;
    let stderr = common::refused_start(&daemon.config_path);
    assert!(
        stderr.contains("another outboxd is using data_dir"),
        "{stderr}"
    );
    // A file that is not a socket is never deleted to make room.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-socket");
    std::fs::write(&blocker, "keep me").unwrap();
    let stderr = run_with_socket_at(dir.path(), &blocker);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "keep me");
    // A socket some other process listens on is left alone.
    let taken = dir.path().join("taken.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&taken).unwrap();
    let stderr = run_with_socket_at(dir.path(), &taken);
    assert!(stderr.contains("another process is listening"), "{stderr}");
    assert!(
        std::os::unix::net::UnixStream::connect(&taken).is_ok(),
        "the other socket still works"
    );
}

/// Runs a daemon whose only listener is a socket at `socket`; it must fail:
/// returns its stderr.
fn run_with_socket_at(dir: &std::path::Path, socket: &std::path::Path) -> String {
    let config = dir.join("c.toml");
    let text = format!(
        "data_dir = {:?}\n[ingest]\nhttp_listen = \"\"\nunix_socket = {:?}\n[metrics]\nlisten = \"\"\n",
        dir.join("data").display().to_string(),
        socket.display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    common::refused_start(&config)
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let mut daemon = Daemon::start("[log]\nformat = \"json\"\n").await;
    assert!(daemon.terminate().success());
    let log = daemon.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["level"].is_string() && value["message"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("\"outboxd ready\""));
}

#[tokio::test]
async fn send_posts_files_in_batches_and_reports_errors_with_the_input_line() {
    let daemon = Daemon::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.ndjson");
    let lines: String = (0..25)
        .map(|i| format!("{{\"type\":\"sent\",\"id\":\"s{i}\"}}\n\n"))
        .collect();
    std::fs::write(&good, lines).unwrap();
    let output = Command::new(binary())
        .args(["send", "--batch", "10", "--url"])
        .arg(format!("http://127.0.0.1:{}", daemon.http_port))
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("accepted 25 events (0 duplicates) in 3 requests; last_seq 25"),
        "{stdout}"
    );
    assert!(
        output.stderr.is_empty(),
        "no progress line when stderr is not a terminal: {:?}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A JSON array over the Unix socket, read from stdin; all duplicates now.
    let array = format!(
        "[{}]",
        (0..5)
            .map(|i| format!("{{\"type\":\"sent\",\"id\":\"s{i}\"}}"))
            .collect::<Vec<_>>()
            .join(",\n")
    );
    let mut child = Command::new(binary())
        .args(["send", "--socket"])
        .arg(daemon.socket())
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(array.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("accepted 0 events (5 duplicates)"));
    // An error names the server's message and the input line.
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, "{\"type\":\"ok\"}\n\n{\"type\":\"not ok\"}\n").unwrap();
    let output = Command::new(binary())
        .args(["send", "--url"])
        .arg(format!("http://127.0.0.1:{}", daemon.http_port))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("400 Bad Request"), "{stderr}");
    assert!(stderr.contains("input line 3"), "{stderr}");
    assert_eq!(daemon.stored().await.len(), 25);
    // Nothing listening: a clear error, non-zero exit.
    let output = Command::new(binary())
        .args([
            "send",
            "--url",
            &format!("http://127.0.0.1:{}", common::free_port()),
        ])
        .arg(&good)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach outboxd"));
}

#[tokio::test]
async fn status_watch_prints_one_snapshot_after_another_when_piped() {
    use std::io::BufRead;
    let daemon = Daemon::start("[sinks.local]\nkind = \"file\"\ndir = \"out\"\n").await;
    let mut child = Command::new(binary())
        .args(["status", "--watch", "0.2", "--socket"])
        .arg(daemon.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Only catches a hang: the child is killed, the read ends, the count fails.
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };
    let mut headers = 0;
    let mut rows = 0;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        assert!(
            !line.contains('\x1b'),
            "no terminal codes when piped: {line:?}"
        );
        headers += line.starts_with("SINK") as usize;
        rows += line.starts_with("local") as usize;
        if headers == 3 {
            break;
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    watchdog.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(headers, 3, "three snapshots");
    assert!(rows >= 2, "each shows the sink");

    let refused = Command::new(binary())
        .args(["status", "--watch", "0", "--socket"])
        .arg(daemon.socket())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("from 0.1 to 3600"));
}
