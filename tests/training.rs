//! Training records: a realistic agent transcript in, OpenAI chat-completions
//! records out, through the file sink and through S3 (a real s3s-fs), each
//! checked against the fine-tuning format's rules.

mod common;

use common::s3::{lines, S3Server, ACCESS_KEY, SECRET_KEY};
use common::Daemon;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Two agents in two interleaved sessions: messages, a turn with two
/// parallel tool calls, a failed tool, reasoning, lifecycle, heartbeats,
/// a long tool output, a message whose role the conventions do not know.
fn transcript() -> (Vec<Value>, String) {
    let long_output = "line of tool output\n".repeat(10_000);
    let events = vec![
        json!({"id": "e01", "type": "session.started", "agent_id": "planner", "session_id": "s1", "data": {"model": "m-large"}}),
        json!({"id": "e02", "type": "message", "agent_id": "planner", "session_id": "s1", "data": {"role": "system", "content": "You plan trips."}}),
        json!({"id": "e03", "type": "message", "agent_id": "planner", "session_id": "s1", "data": {"role": "user", "content": "Weather in Oslo and Rome?"}}),
        json!({"id": "e04", "type": "heartbeat", "agent_id": "planner", "session_id": "s1"}),
        json!({"id": "e05", "type": "reasoning", "agent_id": "planner", "session_id": "s1", "data": {"content": "Two cities: call the tool twice."}}),
        json!({"id": "e06", "type": "tool.call", "agent_id": "planner", "session_id": "s1", "data": {"call_id": "call_a", "name": "weather", "arguments": {"city": "Oslo"}}}),
        json!({"id": "e07", "type": "tool.call", "agent_id": "planner", "session_id": "s1", "data": {"call_id": "call_b", "name": "weather", "arguments": "{\"city\":\"Rome\"}"}}),
        json!({"id": "e08", "type": "message", "agent_id": "coder", "session_id": "s2", "data": {"role": "user", "content": "Run the tests"}}),
        json!({"id": "e09", "type": "tool.result", "agent_id": "planner", "session_id": "s1", "data": {"call_id": "call_b", "name": "weather", "content": "Rome: 24C"}}),
        json!({"id": "e10", "type": "tool.result", "agent_id": "planner", "session_id": "s1", "data": {"call_id": "call_a", "name": "weather", "content": {"error": "upstream timeout"}, "is_error": true}}),
        json!({"id": "e11", "type": "tool.call", "agent_id": "coder", "session_id": "s2", "data": {"call_id": "call_c", "name": "shell", "arguments": {"cmd": "cargo test"}}}),
        json!({"id": "e12", "type": "tool.result", "agent_id": "coder", "session_id": "s2", "data": {"call_id": "call_c", "name": "shell", "content": long_output}}),
        json!({"id": "e13", "type": "agent.heartbeat", "agent_id": "coder", "session_id": "s2"}),
        json!({"id": "e14", "type": "message", "agent_id": "planner", "session_id": "s1", "data": {"role": "assistant", "content": "Rome is 24C; Oslo is unavailable."}}),
        json!({"id": "e15", "type": "message", "agent_id": "coder", "session_id": "s2", "data": {"role": "narrator", "content": "(tests pass)"}}),
        json!({"id": "e16", "type": "run.finished", "agent_id": "planner", "session_id": "s1", "run_id": "r1"}),
    ];
    let body = events.iter().map(|e| e.to_string() + "\n").collect();
    (events, body)
}

/// The rules a chat-completions fine-tuning line must meet, per message.
fn check_message(record: &Value) {
    let role = record["role"].as_str().expect("role is a string");
    assert!(
        ["system", "user", "assistant", "tool"].contains(&role),
        "role {role}"
    );
    let calls = record.get("tool_calls").and_then(Value::as_array);
    match role {
        "assistant" if calls.is_some() => {
            assert!(record["content"].is_null() || record["content"].is_string())
        }
        "user" => assert!(record["content"].is_string() || record["content"].is_array()),
        _ => assert!(record["content"].is_string(), "{record}"),
    }
    for call in calls.into_iter().flatten() {
        assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert_eq!(call["type"], "function");
        assert!(call["function"]["name"].is_string());
        let arguments = call["function"]["arguments"]
            .as_str()
            .expect("arguments is a string");
        serde_json::from_str::<Value>(arguments).expect("arguments parse as JSON");
    }
    if role == "tool" {
        assert!(record["tool_call_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()));
    }
    let allowed = [
        "role",
        "name",
        "content",
        "reasoning_content",
        "tool_calls",
        "tool_call_id",
        "metadata",
    ];
    for key in record.as_object().unwrap().keys() {
        assert!(allowed.contains(&key.as_str()), "unexpected key {key}");
    }
}

/// Checks the records against the transcript: every event but the
/// heartbeats exactly once, in seq order, each mapped as documented.
fn check_records(records: &[Value], events: &[Value]) {
    for record in records {
        check_message(record);
    }
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r["metadata"]["event_id"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = events
        .iter()
        .filter(|e| !e["type"].as_str().unwrap().ends_with("heartbeat"))
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, expected, "every event but heartbeats, once, in order");
    let seqs: Vec<i64> = records
        .iter()
        .map(|r| r["metadata"]["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let by_id: BTreeMap<&str, &Value> = ids.iter().copied().zip(records).collect();
    assert_eq!(
        by_id["e01"]["content"],
        "session.started: {\"model\":\"m-large\"}"
    );
    assert_eq!(
        by_id["e05"]["reasoning_content"],
        "Two cities: call the tool twice."
    );
    assert_eq!(
        by_id["e06"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Oslo\"}"
    );
    assert_eq!(
        by_id["e07"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Rome\"}"
    );
    assert_eq!(by_id["e10"]["tool_call_id"], "call_a");
    assert_eq!(by_id["e10"]["metadata"]["is_error"], true);
    assert_eq!(
        by_id["e12"]["content"].as_str().unwrap().len(),
        "line of tool output\n".len() * 10_000,
        "content is never truncated"
    );
    assert_eq!(by_id["e15"]["role"], "system");
    assert!(by_id["e15"]["metadata"]["note"].is_string());
    let provenance = &by_id["e16"]["metadata"];
    assert_eq!(
        (
            provenance["agent_id"].as_str(),
            provenance["session_id"].as_str(),
            provenance["run_id"].as_str()
        ),
        (Some("planner"), Some("s1"), Some("r1"))
    );
    assert!(provenance["time"].is_string());
}

#[tokio::test]
async fn a_transcript_becomes_chat_training_records_in_files_and_in_s3() {
    std::env::set_var("TEST_TRAINING_SECRET_KEY", SECRET_KEY);
    let server = S3Server::start().await;
    // Batches close by count, not by age: the 14 events that are not
    // heartbeats make one batch in each sink.
    let config = format!(
        "[sinks.records]\nkind = \"file\"\ndir = \"records\"\nformat = \"openai_chat\"\n\
         [sinks.records.batch]\nmax_events = 14\nmax_age = \"1h\"\n\
         [sinks.lake]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"training\"\naccess_key = \"{ACCESS_KEY}\"\n\
         secret_key_env = \"TEST_TRAINING_SECRET_KEY\"\ncreate_bucket = true\nformat = \"openai_chat\"\ncompression = \"zstd\"\n\
         [sinks.lake.batch]\nmax_events = 14\nmax_age = \"1h\"\n",
        server.endpoint()
    );
    let daemon = Daemon::start(&config).await;
    let (events, body) = transcript();
    let answer = daemon.post("application/x-ndjson", body).await;
    assert!(
        answer.status.is_success(),
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    for sink in ["records", "lake"] {
        daemon
            .wait_sink(sink, WAIT, |s| s["cursor"] == 16 && s["lag_events"] == 0)
            .await;
    }

    let dir = daemon.data_dir().join("records");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    files.sort_by_key(|f| f.file_name());
    assert!(files
        .iter()
        .all(|f| f.file_name().to_string_lossy().ends_with(".jsonl")));
    let from_files = common::json_lines_in(&dir);
    check_records(&from_files, &events);

    let objects = server.objects("training");
    assert!(objects.iter().all(|(key, _)| key.ends_with(".jsonl.zst")));
    let from_s3: Vec<Value> = objects
        .iter()
        .flat_map(|(key, bytes)| lines(key, bytes))
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    check_records(&from_s3, &events);
    assert_eq!(from_files, from_s3, "one encoding, whatever the sink");
}

#[test]
fn check_config_shows_the_heartbeats_a_training_sink_leaves_out() {
    let (ok, stdout, stderr) = common::check_config(
        "[sinks.records]\nkind = \"file\"\ndir = \"records\"\nformat = \"openai_chat\"\n\
         [sinks.raw]\nkind = \"file\"\ndir = \"raw\"\n\
         [sinks.all]\nkind = \"file\"\ndir = \"all\"\nformat = \"openai_chat\"\nexclude_types = []\n",
        &[],
    );
    assert!(ok, "{stderr}");
    let printed: toml::Value = toml::from_str(&stdout).unwrap();
    let excluded = |sink: &str| printed["sinks"][sink]["exclude_types"].clone();
    assert_eq!(
        excluded("records"),
        toml::Value::Array(vec!["heartbeat".into(), "*.heartbeat".into()])
    );
    assert_eq!(excluded("raw"), toml::Value::Array(vec![]));
    assert_eq!(excluded("all"), toml::Value::Array(vec![]));
}
