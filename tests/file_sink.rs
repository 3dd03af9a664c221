//! The file sink and what every sink shares: filters that skip but still
//! advance the cursor, deletion once every sink has an event, and files
//! named by their fixed range.

mod common;

use common::{ids, Daemon};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn files(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(e.path()).unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn events_in(files: &[(String, String)]) -> Vec<serde_json::Value> {
    files
        .iter()
        .flat_map(|(_, text)| {
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn filters_skip_events_but_advance_and_delivered_events_are_deleted() {
    let config = "
[sinks.tools]
kind = \"file\"
dir = \"tools\"
include_types = [\"tool.*\"]
exclude_types = [\"tool.debug*\"]
[sinks.tools.batch]
max_age = \"50ms\"

[sinks.durable]
kind = \"file\"
dir = \"durable\"
min_fidelity = \"committed\"
[sinks.durable.batch]
max_age = \"50ms\"
";
    let daemon = Daemon::start(config).await;
    let body = "\
{\"type\":\"tool.called\",\"id\":\"a\"}
{\"type\":\"token.delta\",\"id\":\"b\",\"fidelity\":\"observed\"}
{\"type\":\"tool.debug.trace\",\"id\":\"c\"}
{\"type\":\"message.created\",\"id\":\"d\"}
{\"type\":\"tool.result\",\"id\":\"e\",\"fidelity\":\"control\"}
";
    assert!(daemon
        .post("application/x-ndjson", body)
        .await
        .status
        .is_success());
    for sink in ["tools", "durable"] {
        daemon
            .wait_sink(sink, WAIT, |s| s["cursor"] == 5 && s["lag_events"] == 0)
            .await;
    }
    let tools = events_in(&files(&daemon.data_dir().join("tools")));
    let tool_ids: Vec<&str> = tools.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(tool_ids, ["a", "e"]);
    let durable = events_in(&files(&daemon.data_dir().join("durable")));
    let durable_ids: Vec<&str> = durable.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(durable_ids, ["a", "c", "d", "e"]);
    // Every sink is past every event: the outbox is empty, the totals agree.
    let deadline = std::time::Instant::now() + WAIT;
    while !daemon.stored().await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "delivered events were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon
        .wait_samples(&[
            ("outboxd_outbox_events", 0.0),
            ("outboxd_outbox_bytes", 0.0),
            ("outboxd_outbox_deleted_events_total", 5.0),
        ])
        .await;
}

#[tokio::test]
async fn files_are_named_by_range_and_a_slow_sink_keeps_events_for_itself() {
    let config = format!(
        "[sinks.disk]\nkind = \"file\"\ndir = \"out\"\n[sinks.disk.batch]\nmax_age = \"50ms\"\nmax_events = 10\n\
         [sinks.never]\nkind = \"http\"\nurl = \"http://127.0.0.1:{}/\"\n",
        common::free_port()
    );
    let mut daemon = Daemon::start(&config).await;
    daemon.post_ids(&ids("f", 25), "t").await;
    daemon.wait_sink("disk", WAIT, |s| s["cursor"] == 25).await;
    let written = files(&daemon.data_dir().join("out"));
    let names: Vec<&str> = written.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "00000000000000000001-00000000000000000010.jsonl",
            "00000000000000000011-00000000000000000020.jsonl",
            "00000000000000000021-00000000000000000025.jsonl"
        ]
    );
    assert_eq!(events_in(&written).len(), 25);
    // The other sink has delivered nothing, so nothing may be deleted.
    assert_eq!(daemon.stored().await.len(), 25);
    // Cursors survive a restart: nothing is written twice.
    daemon.restart().await;
    daemon.post_ids(&ids("g", 3), "t").await;
    daemon.wait_sink("disk", WAIT, |s| s["cursor"] == 28).await;
    let written = files(&daemon.data_dir().join("out"));
    assert_eq!(written.len(), 4);
    assert_eq!(events_in(&written).len(), 28);
}

#[tokio::test]
async fn a_paused_sink_sends_nothing_until_resumed_and_the_others_go_on() {
    let config = "
[sinks.held]
kind = \"file\"
dir = \"held\"
[sinks.held.batch]
max_events = 10
max_age = \"1h\"

[sinks.free]
kind = \"file\"
dir = \"free\"
[sinks.free.batch]
max_events = 10
max_age = \"1h\"
";
    let daemon = Daemon::start(config).await;
    let socket = daemon.socket();
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(common::binary())
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    // Over TCP an admin action needs admin.token, which is not set here.
    let tcp = std::process::Command::new(common::binary())
        .args(["sink", "pause", "held", "--url"])
        .arg(format!("http://127.0.0.1:{}", daemon.http_port))
        .output()
        .unwrap();
    assert!(!tcp.status.success());
    assert!(
        String::from_utf8_lossy(&tcp.stderr).contains("need admin.token"),
        "{}",
        String::from_utf8_lossy(&tcp.stderr)
    );
    assert_eq!(
        cli(&["sink", "pause", "held"]),
        (true, "sink held paused\n".into())
    );
    assert_eq!(
        cli(&["sink", "pause", "held"]),
        (true, "sink held was already paused\n".into())
    );
    let (ok, text) = cli(&["sink", "pause", "nope"]);
    assert!(!ok && text.contains("no sink named `nope`"), "{text}");
    assert_eq!(daemon.sink("held").await["state"], "paused");

    daemon.post_ids(&ids("p", 10), "t").await;
    // The other sink goes on; the paused one gathers its batch and stops
    // before sending it (its loop says so in the state metric).
    daemon
        .wait_sink("free", WAIT, |s| s["cursor"] == 10 && s["lag_events"] == 0)
        .await;
    daemon
        .wait_samples(&[("outboxd_sink_state{sink=\"held\",state=\"paused\"}", 1.0)])
        .await;
    assert!(events_in(&files(&daemon.data_dir().join("held"))).is_empty());
    let held = daemon.sink("held").await;
    assert_eq!(
        (held["cursor"].as_i64(), held["lag_events"].as_i64()),
        (Some(0), Some(10))
    );
    assert_eq!(
        daemon.stored().await.len(),
        10,
        "its cursor keeps the events"
    );

    assert_eq!(
        cli(&["sink", "resume", "held"]),
        (true, "sink held resumed\n".into())
    );
    daemon
        .wait_sink("held", WAIT, |s| {
            s["cursor"] == 10 && s["state"] == "running"
        })
        .await;
    let delivered: Vec<String> = events_in(&files(&daemon.data_dir().join("held")))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, ids("p", 10), "each event once, in order");
}
