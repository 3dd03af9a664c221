//! Redaction at ingest: a secret in an agent's tool output never reaches
//! the database file, the feed, a live subscriber or a sink, and the
//! metrics count what each rule masked.

mod common;

use common::sse::{self, Via};
use common::{check_config, sample, Daemon};
use serde_json::json;

const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const GITHUB_TOKEN: &str = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
const PASSWORD: &str = "correct-horse-battery";

fn tool_output() -> String {
    [
        json!({"id": "t1", "type": "tool.result", "session_id": "s1", "data": {
            "tool": "shell", "command": "env",
            "output": format!("HOME=/root\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\nGITHUB_TOKEN={GITHUB_TOKEN}\nLANG=C\n"),
            "env": {"DB_PASSWORD": PASSWORD},
        }}),
        json!({"id": "m1", "type": "message", "session_id": "s1", "data": {"role": "assistant", "content": "Done: 3 variables set."}}),
    ]
    .iter()
    .map(|e| e.to_string() + "\n")
    .collect()
}

fn assert_clean(what: &str, text: &str) {
    for secret in [AWS_SECRET, GITHUB_TOKEN, PASSWORD] {
        assert!(!text.contains(secret), "{what} holds {secret}: {text}");
    }
}

/// Every byte outboxd wrote under its data directory.
fn data_dir_bytes(daemon: &Daemon) -> String {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(daemon.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            all.extend(std::fs::read(&path).unwrap());
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn secrets_are_masked_before_the_outbox_the_feed_and_live_subscribers_see_them() {
    let daemon = Daemon::start(
        "[redaction]\n[[redaction.rules]]\nname = \"env\"\npath = \"/data/env\"\naction = \"drop\"\n",
    )
    .await;
    let (status, mut live) = sse::open(Via::Tcp(daemon.http_port), "/v1/stream", &[]).await;
    assert_eq!(status, 200);
    let ack = daemon.post_ndjson(tool_output()).await;
    assert_eq!(ack["accepted"], 2, "{ack}");

    let stored = daemon.stored().await;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[0].body["data"],
        json!({"tool": "shell", "command": "env",
               "output": "HOME=/root\nAWS_SECRET_ACCESS_KEY=[REDACTED:aws_secret_key]\nGITHUB_TOKEN=[REDACTED:github_token]\nLANG=C\n"}),
    );
    assert_eq!(
        stored[1].body["data"]["content"], "Done: 3 variables set.",
        "an event with nothing to hide is stored as sent"
    );
    let first = sse::next(&mut live).await.expect("a live event");
    assert!(
        first.data.contains("[REDACTED:aws_secret_key]"),
        "{}",
        first.data
    );
    assert_clean("the live stream", &first.data);
    assert_clean("the feed", &daemon.get_json("/v1/events").await.to_string());
    // Nothing unredacted reached the disk: database, WAL, anything else.
    assert_clean("the data directory", &data_dir_bytes(&daemon));

    let metrics = daemon.metrics().await;
    for (rule, count) in [("aws_secret_key", 1.0), ("github_token", 1.0), ("env", 1.0)] {
        assert_eq!(
            sample(
                &metrics,
                &format!("outboxd_ingest_redactions_total{{rule=\"{rule}\"}}")
            ),
            Some(count),
            "{rule}"
        );
    }
}

#[tokio::test]
async fn the_built_in_rules_can_be_switched_off() {
    let daemon = Daemon::start("[redaction]\nbuiltins = false\n").await;
    daemon.post_ndjson(tool_output()).await;
    let stored = daemon.stored().await;
    assert!(stored[0].raw.contains(AWS_SECRET), "{}", stored[0].raw);

    // GITHUB_TOKEN=... is also a secret assignment: one rule backs up the other.
    let daemon = Daemon::start("[redaction]\ndisable = [\"github_token\"]\n").await;
    daemon.post_ndjson(tool_output()).await;
    let output = daemon.stored().await[0].body["data"]["output"].to_string();
    assert!(
        output.contains("GITHUB_TOKEN=[REDACTED:secret_assignment]"),
        "{output}"
    );
    let daemon =
        Daemon::start("[redaction]\ndisable = [\"github_token\", \"secret_assignment\"]\n").await;
    daemon.post_ndjson(tool_output()).await;
    let output = daemon.stored().await[0].body["data"]["output"].to_string();
    assert!(output.contains(GITHUB_TOKEN), "{output}");
    assert!(!output.contains(AWS_SECRET), "{output}");
}

#[test]
fn a_bad_rule_is_refused_at_start_with_the_reason() {
    let (ok, _, stderr) = check_config(
        "[[redaction.rules]]\nname = \"x\"\npattern = \"(unclosed\"\n",
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("redaction") && stderr.contains("rule `x`"),
        "{stderr}"
    );
    let (ok, _, stderr) = check_config("[redaction]\ndisable = [\"jwtt\"]\n", &[]);
    assert!(!ok);
    assert!(stderr.contains("`jwtt` is not a built-in rule"), "{stderr}");
}
