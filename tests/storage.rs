//! Fidelity-aware storage (`ingest.store`, `ingest.ephemeral_types`): what
//! is not kept never reaches the disk, the ack says how many were stored
//! and skipped, and the metrics count them by reason.

mod common;

use common::{sample, Daemon};
use serde_json::json;

fn body() -> String {
    [
        json!({"id": "d1", "type": "message.delta", "fidelity": "observed", "data": "Hel"}),
        json!({"id": "d2", "type": "message.delta", "fidelity": "observed", "data": "lo"}),
        json!({"id": "m1", "type": "message", "data": {"role": "assistant", "content": "Hello"}}),
        json!({"id": "u1", "type": "ui.cursor", "data": {"x": 3}}),
        json!({"id": "r1", "type": "run.finished", "fidelity": "control"}),
        json!({"id": "d3", "type": "message.delta", "fidelity": "observed", "data": "!"}),
        json!({"id": "k1", "type": "record.saved", "fidelity": "domain"}),
    ]
    .iter()
    .map(|e| e.to_string() + "\n")
    .collect()
}

#[tokio::test]
async fn compacted_stores_committed_domain_and_control_but_no_deltas_or_ephemeral_types() {
    let daemon =
        Daemon::start("[ingest]\nstore = \"compacted\"\nephemeral_types = [\"ui.*\"]\n").await;
    let ack = daemon.post_ndjson(body()).await;
    assert_eq!(
        (ack["accepted"].as_u64(), ack["skipped"].as_u64()),
        (Some(3), Some(4)),
        "{ack}"
    );
    assert_eq!(ack["last_seq"], 3);
    let stored: Vec<String> = daemon.stored().await.into_iter().map(|e| e.id).collect();
    assert_eq!(stored, ["m1", "r1", "k1"]);
    common::assert_samples(
        &daemon.metrics().await,
        &[
            (
                "outboxd_ingest_events_skipped_total{reason=\"observed\"}",
                3.0,
            ),
            (
                "outboxd_ingest_events_skipped_total{reason=\"ephemeral_type\"}",
                1.0,
            ),
            ("outboxd_ingest_events_accepted_total", 3.0),
        ],
    );
    // A request of skipped events only commits nothing and says where the outbox is.
    let deltas = "{\"type\":\"message.delta\",\"fidelity\":\"observed\"}\n".repeat(3);
    let ack = daemon.post_ndjson(deltas).await;
    assert_eq!(
        (
            ack["accepted"].as_u64(),
            ack["skipped"].as_u64(),
            ack["last_seq"].as_i64()
        ),
        (Some(0), Some(3), Some(3))
    );
    assert_eq!(daemon.stored().await.len(), 3);
}

#[tokio::test]
async fn full_stores_everything_but_ephemeral_types_and_none_stores_nothing() {
    let full = Daemon::start("[ingest]\nephemeral_types = [\"ui.*\", \"*.heartbeat\"]\n").await;
    let ack = full.post_ndjson(body()).await;
    assert_eq!(
        (ack["accepted"].as_u64(), ack["skipped"].as_u64()),
        (Some(6), Some(1))
    );
    assert!(full.stored().await.iter().all(|e| e.id != "u1"));

    let none = Daemon::start("[ingest]\nstore = \"none\"\n").await;
    let ack = none.post_ndjson(body()).await;
    assert_eq!(
        (
            ack["accepted"].as_u64(),
            ack["skipped"].as_u64(),
            ack["last_seq"].as_i64()
        ),
        (Some(0), Some(7), Some(0))
    );
    assert!(none.stored().await.is_empty());
    assert_eq!(
        sample(
            &none.metrics().await,
            "outboxd_ingest_events_skipped_total{reason=\"store_none\"}"
        ),
        Some(7.0)
    );
    // Bad input is still refused whole, whatever is stored.
    let bad = none
        .post("application/x-ndjson", "{\"type\":\"ok\"}\n{\"id\":1}\n")
        .await;
    assert_eq!(bad.status, hyper::StatusCode::BAD_REQUEST);
}

#[test]
fn storage_keys_are_checked() {
    for (text, expected) in [
        ("[ingest]\nstore = \"some\"\n", "ingest.store"),
        (
            "[ingest]\nephemeral_types = [\"ui.[\"]\n",
            "ingest.ephemeral_types: `ui.[` is not a glob pattern",
        ),
    ] {
        let (ok, _, stderr) = common::check_config(text, &[]);
        assert!(!ok, "{text} was accepted");
        assert!(stderr.contains(expected), "{text}: {stderr}");
    }
}
