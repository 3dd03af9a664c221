//! Whole agent sessions (`format = "openai_sessions"`): a realistic stream
//! of interleaved sessions in, one fine-tuning line per finished session
//! out (file sink and S3), checked against the format's rules; sessions
//! that never end stay held in the outbox; long sessions come in parts;
//! idle sessions end; and kill -9 at random moments writes every session
//! exactly once.

mod common;

use common::s3::{lines, S3Server, ACCESS_KEY, SECRET_KEY};
use common::Daemon;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The fine-tuning rules every line must meet: valid roles, content a
/// string where required, `arguments` JSON in a string, each tool call
/// answered by exactly one tool message right after its assistant message,
/// no message of a shape the API does not know.
fn check_line(line: &Value) {
    let messages = line["messages"].as_array().expect("messages is an array");
    assert!(
        !messages.is_empty() || line["metadata"]["events"] == 0,
        "{line}"
    );
    let mut expected_results: Vec<String> = Vec::new();
    for message in messages {
        let role = message["role"].as_str().expect("role is a string");
        assert!(
            ["system", "user", "assistant", "tool"].contains(&role),
            "role {role}"
        );
        for key in message.as_object().unwrap().keys() {
            assert!(
                [
                    "role",
                    "name",
                    "content",
                    "reasoning_content",
                    "tool_calls",
                    "tool_call_id"
                ]
                .contains(&key.as_str()),
                "unexpected key {key} in {message}"
            );
        }
        if role == "tool" {
            assert_eq!(
                message["tool_call_id"].as_str(),
                expected_results.first().map(String::as_str),
                "a tool message answers the next call of the assistant message before it"
            );
            expected_results.remove(0);
            assert!(message["content"].is_string());
            continue;
        }
        assert!(
            expected_results.is_empty(),
            "calls {expected_results:?} unanswered before {message}"
        );
        let calls = message.get("tool_calls").and_then(Value::as_array);
        match (role, calls) {
            ("assistant", Some(_)) => {
                assert!(message["content"].is_null() || message["content"].is_string())
            }
            ("user", _) => assert!(message["content"].is_string() || message["content"].is_array()),
            _ => assert!(message["content"].is_string(), "{message}"),
        }
        for call in calls.into_iter().flatten() {
            assert_eq!(call["type"], "function");
            let id = call["id"].as_str().expect("a call has an id");
            assert!(
                !expected_results.iter().any(|e| e == id),
                "call id {id} twice"
            );
            expected_results.push(id.to_string());
            let arguments = call["function"]["arguments"]
                .as_str()
                .expect("arguments is a string");
            serde_json::from_str::<Value>(arguments).expect("arguments parse as JSON");
        }
    }
    assert!(
        expected_results.is_empty(),
        "calls {expected_results:?} unanswered"
    );
    if let Some(tools) = line.get("tools") {
        assert!(tools.as_array().is_some_and(|t| !t.is_empty()));
    }
}

fn event(id: &str, event_type: &str, agent: &str, session: &str, data: Value) -> Value {
    json!({"id": id, "type": event_type, "agent_id": agent, "session_id": session, "data": data})
}

fn message(id: &str, agent: &str, session: &str, role: &str, content: &str) -> Value {
    event(
        id,
        "message",
        agent,
        session,
        json!({"role": role, "content": content}),
    )
}

/// Four interleaved sessions: a two-agent trip planner with tool
/// definitions, parallel calls, a failed tool and reasoning (ends with
/// run.finished); a coder with a merged text-and-call turn, a call never
/// answered, a result of no call and an unknown role (session.ended); a
/// session that never ends; and one long session over `session_max_bytes`.
fn stream() -> Vec<Value> {
    let tools = json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]);
    let mut events = vec![
        event(
            "p01",
            "session.started",
            "planner",
            "trip",
            json!({"tools": tools}),
        ),
        message("p02", "planner", "trip", "system", "You plan trips."),
        message("c01", "coder", "code", "user", "Run the tests"),
        message(
            "p03",
            "planner",
            "trip",
            "user",
            "Weather in Oslo and Rome?",
        ),
        json!({"id": "x01", "type": "message", "data": {"role": "user", "content": "no session"}}),
        event("p04", "heartbeat", "planner", "trip", json!({})),
        event(
            "p05",
            "reasoning",
            "planner",
            "trip",
            json!({"content": "Two cities: call twice."}),
        ),
        event(
            "p06",
            "tool.call",
            "planner",
            "trip",
            json!({"call_id": "a", "name": "weather", "arguments": {"city": "Oslo"}}),
        ),
        event(
            "p07",
            "tool.call",
            "planner",
            "trip",
            json!({"call_id": "b", "name": "weather", "arguments": "{\"city\":\"Rome\"}"}),
        ),
        message("n01", "lurker", "never", "user", "hello?"),
        message("c02", "coder", "code", "assistant", "Running them now."),
        event(
            "c03",
            "tool.call",
            "coder",
            "code",
            json!({"call_id": "c", "name": "shell", "arguments": {"cmd": "cargo test"}}),
        ),
        event(
            "p08",
            "tool.result",
            "planner",
            "trip",
            json!({"call_id": "b", "content": "Rome: 24C"}),
        ),
        event(
            "c04",
            "tool.result",
            "coder",
            "code",
            json!({"call_id": "c", "content": "ok: 160 passed"}),
        ),
        event(
            "p09",
            "tool.result",
            "planner",
            "trip",
            json!({"call_id": "a", "content": {"error": "timeout"}, "is_error": true}),
        ),
        event(
            "c05",
            "tool.call",
            "coder",
            "code",
            json!({"call_id": "d", "name": "deploy", "arguments": {}}),
        ),
        event(
            "c06",
            "tool.result",
            "coder",
            "code",
            json!({"call_id": "zz", "content": "stray"}),
        ),
        message(
            "p10",
            "planner",
            "trip",
            "assistant",
            "Rome is 24C; Oslo is unavailable.",
        ),
        message(
            "p11",
            "critic",
            "trip",
            "assistant",
            "Suggest a retry for Oslo.",
        ),
        message("c07", "coder", "code", "narrator", "(tests pass)"),
        event("c08", "session.ended", "coder", "code", json!({})),
        event(
            "p12",
            "run.finished",
            "planner",
            "trip",
            json!({"status": "ok"}),
        ),
    ];
    // The long session: 60 turns of ~600 bytes, tool calls among them.
    for turn in 0..60 {
        let text = format!("turn {turn}: {}", "words ".repeat(80));
        events.push(message(
            &format!("l{turn:02}u"),
            "writer",
            "long",
            "user",
            &text,
        ));
        if turn % 7 == 3 {
            let call = format!("lc{turn}");
            events.push(event(
                &format!("l{turn:02}c"),
                "tool.call",
                "writer",
                "long",
                json!({"call_id": call, "name": "lookup", "arguments": {"q": turn}}),
            ));
            events.push(event(
                &format!("l{turn:02}r"),
                "tool.result",
                "writer",
                "long",
                json!({"call_id": call, "content": text}),
            ));
        }
        events.push(message(
            &format!("l{turn:02}a"),
            "writer",
            "long",
            "assistant",
            &text,
        ));
    }
    events.push(event("l99", "session.ended", "writer", "long", json!({})));
    events
}

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| e.to_string() + "\n").collect()
}

fn s3_lines(server: &S3Server, bucket: &str) -> Vec<Value> {
    server
        .objects(bucket)
        .iter()
        .flat_map(|(key, bytes)| lines(key, bytes))
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

fn session_of(line: &Value) -> &str {
    line["metadata"]["session_id"].as_str().unwrap()
}

/// All lines of one session, in part order.
fn lines_of<'a>(lines: &'a [Value], session: &str) -> Vec<&'a Value> {
    let mut own: Vec<&Value> = lines.iter().filter(|l| session_of(l) == session).collect();
    own.sort_by_key(|l| l["metadata"]["part"].as_i64().unwrap_or(0));
    own
}

fn contents(line: &Value) -> Vec<String> {
    line["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str().map(str::to_string))
        .collect()
}

fn check_stream(lines: &[Value]) {
    for line in lines {
        check_line(line);
    }
    let sessions: BTreeSet<&str> = lines.iter().map(session_of).collect();
    assert_eq!(
        sessions,
        BTreeSet::from(["code", "long", "trip"]),
        "finished sessions only; events without a session are in none"
    );

    let trip = lines_of(lines, "trip");
    assert_eq!(trip.len(), 1, "one line per session");
    let trip = trip[0];
    let roles: Vec<&str> = trip["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "system",
            "user",
            "assistant",
            "tool",
            "tool",
            "assistant",
            "assistant"
        ]
    );
    let turn = &trip["messages"][2];
    assert_eq!(
        turn["reasoning_content"], "Two cities: call twice.",
        "reasoning joins its turn"
    );
    let ids: Vec<&str> = turn["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"], "parallel calls are one assistant message");
    assert_eq!(
        trip["messages"][3]["content"], "{\"error\":\"timeout\"}",
        "results follow in call order"
    );
    assert_eq!(trip["messages"][4]["content"], "Rome: 24C");
    assert_eq!(
        (
            trip["messages"][5]["name"].as_str(),
            trip["messages"][6]["name"].as_str()
        ),
        (Some("planner"), Some("critic"))
    );
    assert_eq!(trip["tools"][0]["function"]["name"], "weather");
    let meta = &trip["metadata"];
    assert_eq!(meta["agents"], json!(["planner", "critic"]));
    assert_eq!(meta["ended_by"], "run.finished");
    assert_eq!(
        meta["unmapped"],
        json!([{"seq": 1, "type": "session.started"}, {"seq": 22, "type": "run.finished"}]),
        "heartbeats are excluded; lifecycle is reported"
    );
    assert!(meta.get("part").is_none());

    let code = lines_of(lines, "code");
    assert_eq!(code.len(), 1);
    let code = code[0];
    assert_eq!(code["messages"][1]["content"], "Running them now.");
    assert_eq!(
        code["messages"][1]["tool_calls"][0]["id"], "c",
        "a text and its call are one turn"
    );
    assert!(
        code["messages"][1].get("name").is_none(),
        "one agent: no names"
    );
    let meta = &code["metadata"];
    assert_eq!(
        meta["unpaired_tool_calls"],
        json!([{"seq": 16, "id": "d", "name": "deploy"}])
    );
    assert_eq!(
        meta["unpaired_tool_results"],
        json!([{"seq": 17, "tool_call_id": "zz"}])
    );
    assert!(meta["notes"][0]["note"]
        .as_str()
        .unwrap()
        .contains("narrator"));
    assert_eq!(meta["ended_by"], "session.ended");
    assert_eq!(meta["events"], 8);

    let long = lines_of(lines, "long");
    assert!(
        long.len() >= 3,
        "a long session comes in parts ({})",
        long.len()
    );
    let mut seen = Vec::new();
    for (index, part) in long.iter().enumerate() {
        assert_eq!(part["metadata"]["part"], index as i64 + 1);
        assert_eq!(part["metadata"]["last_part"], index + 1 == long.len());
        seen.extend(contents(part));
    }
    let expected: Vec<String> = stream()
        .iter()
        .filter(|e| {
            e["session_id"] == "long" && e["type"] != "tool.call" && e["type"] != "session.ended"
        })
        .map(|e| e["data"]["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, expected, "the parts hold every event once, in order");
}

#[tokio::test]
async fn interleaved_sessions_become_one_valid_line_each_in_files_and_in_s3() {
    let server = S3Server::start().await;
    let sessions_keys = "format = \"openai_sessions\"\nsession_max_bytes = \"16KiB\"\nsession_idle_timeout = \"1h\"\n";
    let config = format!(
        "[sinks.sessions]\nkind = \"file\"\ndir = \"sessions\"\n{sessions_keys}\
         [sinks.sessions.batch]\nmax_bytes = \"64KiB\"\n\
         [sinks.lake]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"sessions\"\naccess_key = \"{ACCESS_KEY}\"\n\
         secret_key = \"{SECRET_KEY}\"\ncreate_bucket = true\ncompression = \"gzip\"\n{sessions_keys}\
         [sinks.lake.batch]\nmax_bytes = \"64KiB\"\n",
        server.endpoint()
    );
    let daemon = Daemon::start(&config).await;
    let events = stream();
    daemon.post_ndjson(ndjson(&events)).await;

    let dir = daemon.data_dir().join("sessions");
    let finished = |lines: &[Value]| {
        lines_of(lines, "long")
            .last()
            .is_some_and(|l| l["metadata"]["last_part"] == true)
            && ["trip", "code"]
                .iter()
                .all(|s| !lines_of(lines, s).is_empty())
    };
    common::eventually("the finished sessions are in files and in S3", || async {
        finished(&common::json_lines_in(&dir)) && finished(&s3_lines(&server, "sessions"))
    })
    .await;
    let from_files = common::json_lines_in(&dir);
    check_stream(&from_files);
    let from_s3 = s3_lines(&server, "sessions");
    check_stream(&from_s3);
    assert_eq!(from_files, from_s3, "one encoding, whatever the sink");

    // The session that never ended is held in the outbox, past both cursors;
    // everything before its first event is gone.
    let never_first = 10;
    common::eventually("what no open session needs is deleted", || async {
        daemon.stored().await.first().map(|e| e.seq) == Some(never_first)
    })
    .await;
    assert!(daemon.stored().await.iter().any(|e| e.id == "n01"));
    for sink in ["sessions", "lake"] {
        let status = daemon.sink(sink).await;
        assert_eq!(status["cursor"], events.len() as i64, "{status}");
    }
}

#[tokio::test]
async fn a_session_without_an_end_is_written_once_idle_and_its_id_may_start_again() {
    let daemon = Daemon::start(
        "[sinks.sessions]\nkind = \"file\"\ndir = \"sessions\"\nformat = \"openai_sessions\"\n\
         session_idle_timeout = \"1s\"\n",
    )
    .await;
    let dir = daemon.data_dir().join("sessions");
    let first = [
        message("i1", "bot", "chat", "user", "hi"),
        message("i2", "bot", "chat", "assistant", "hello"),
    ];
    daemon.post_ndjson(ndjson(&first)).await;
    common::eventually("the idle session is written", || async {
        common::json_lines_in(&dir).len() == 1
    })
    .await;
    let again = [message("i3", "bot", "chat", "user", "still there?")];
    daemon.post_ndjson(ndjson(&again)).await;
    common::eventually("the session id's second session is written", || async {
        common::json_lines_in(&dir).len() == 2
    })
    .await;
    let lines = common::json_lines_in(&dir);
    for line in &lines {
        check_line(line);
        assert_eq!(line["metadata"]["ended_by"], "idle");
        assert_eq!(session_of(line), "chat");
    }
    assert_eq!(contents(&lines[0]), ["hi", "hello"]);
    assert_eq!(contents(&lines[1]), ["still there?"]);
    assert_eq!(
        (
            lines[1]["metadata"]["first_seq"].as_i64(),
            lines[1]["metadata"]["events"].as_i64()
        ),
        (Some(3), Some(1))
    );
    common::eventually("written sessions leave the outbox", || async {
        daemon.stored().await.is_empty()
    })
    .await;
}

/// Sessions for the crash harness: each request carries several whole
/// sessions, interleaved (so a session is acknowledged whole or not at
/// all); every fifth session is long enough to be written in parts.
fn crash_request(rng: &mut fastrand::Rng, next: &mut u64) -> (Vec<(String, usize)>, String) {
    let mut sessions = Vec::new();
    let mut queues: Vec<Vec<Value>> = Vec::new();
    for _ in 0..rng.usize(2..6) {
        *next += 1;
        let id = format!("k{next}");
        let turns = if next.is_multiple_of(5) {
            120
        } else {
            rng.usize(1..12)
        };
        let mut events = Vec::new();
        for turn in 0..turns {
            let role = if turn % 2 == 0 { "user" } else { "assistant" };
            let content = format!("{id}:{turn} {}", "pad ".repeat(rng.usize(5..60)));
            events.push(message(&format!("{id}-{turn}"), "bot", &id, role, &content));
        }
        events.push(event(
            &format!("{id}-end"),
            "session.ended",
            "bot",
            &id,
            json!({}),
        ));
        sessions.push((id, turns));
        queues.push(events);
    }
    let mut body = String::new();
    while queues.iter().any(|q| !q.is_empty()) {
        let open: Vec<usize> = (0..queues.len())
            .filter(|&i| !queues[i].is_empty())
            .collect();
        let pick = open[rng.usize(..open.len())];
        body.push_str(&(queues[pick].remove(0).to_string() + "\n"));
    }
    (sessions, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_moments_writes_every_session_exactly_once() {
    let cycles = common::env_number("CRASH_CYCLES", 5);
    let seed = common::env_number("CRASH_SEED", fastrand::u64(..));
    println!("sessions crash harness: {cycles} cycles, CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = S3Server::start().await;
    let mut daemon = Daemon::start(&format!(
        "[sinks.sessions]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"crash\"\naccess_key = \"{ACCESS_KEY}\"\n\
         secret_key = \"{SECRET_KEY}\"\ncreate_bucket = true\nformat = \"openai_sessions\"\n\
         session_max_bytes = \"8KiB\"\nsession_idle_timeout = \"1h\"\n\
         [sinks.sessions.batch]\nmax_bytes = \"32KiB\"\n\
         [sinks.sessions.retry]\ninitial = \"50ms\"\nmax = \"500ms\"\nhalted_probe = \"300ms\"\n",
        server.endpoint()
    ))
    .await;
    let mut acked: BTreeMap<String, usize> = BTreeMap::new();
    let mut next = 0u64;
    for cycle in 0..cycles {
        let mut client = daemon.client();
        let mut load_rng = fastrand::Rng::with_seed(rng.u64(..));
        let mut from = next;
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let answers = answered.clone();
        let load = tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let (sessions, body) = crash_request(&mut load_rng, &mut from);
                match client.post("application/x-ndjson", body.into()).await {
                    Ok(answer) if answer.status.is_success() => {
                        acked.extend(sessions);
                        answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(answer) => panic!("refused: {:?}", answer.body),
                    Err(_) => return (acked, from), // the daemon is gone
                }
            }
        });
        // Each cycle kills with acknowledged sessions in the outbox.
        common::eventually("the load is acknowledged", || async {
            answered.load(std::sync::atomic::Ordering::SeqCst) > 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.u64(50..1200))).await;
        daemon.kill9();
        let (sessions, last) = load.await.unwrap();
        println!("cycle {cycle}: {} sessions acknowledged", sessions.len());
        acked.extend(sessions);
        next = last;
        daemon.spawn().await;
    }
    assert!(!acked.is_empty(), "the load got nothing acknowledged");
    // Every request carried whole sessions, so once all are written the
    // outbox is empty (written sessions leave it); then read S3 once.
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while common::sample(&daemon.metrics().await, "outboxd_outbox_events") != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "acknowledged sessions never all written:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = s3_lines(&server, "crash");
    let mut by_session: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for line in &lines {
        check_line(line);
        by_session.entry(session_of(line)).or_default().push(line);
    }
    for (id, parts) in &mut by_session {
        parts.sort_by_key(|l| l["metadata"]["part"].as_i64().unwrap_or(0));
        let numbers: Vec<i64> = parts
            .iter()
            .map(|l| l["metadata"]["part"].as_i64().unwrap_or(1))
            .collect();
        assert_eq!(
            numbers,
            (1..=parts.len() as i64).collect::<Vec<_>>(),
            "session {id}: each part once"
        );
        let turns: Vec<String> = parts
            .iter()
            .flat_map(|l| contents(l))
            .map(|c| c.split(' ').next().unwrap().to_string())
            .collect();
        let expected = acked.get(*id).copied().unwrap_or(turns.len());
        assert_eq!(
            turns,
            (0..expected)
                .map(|t| format!("{id}:{t}"))
                .collect::<Vec<_>>(),
            "session {id}: every event once, in order"
        );
    }
    assert!(acked.keys().all(|id| by_session.contains_key(id.as_str())));
    println!(
        "{} sessions, {} lines, exactly once",
        by_session.len(),
        lines.len()
    );
}

#[tokio::test]
async fn a_session_partly_evicted_by_drop_oldest_is_written_with_what_remains() {
    let daemon = Daemon::start(
        "[outbox]\nmax_bytes = \"16KiB\"\nwhen_full = \"drop_oldest\"\n\
         [sinks.sessions]\nkind = \"file\"\ndir = \"sessions\"\nformat = \"openai_sessions\"\n\
         session_idle_timeout = \"1h\"\n",
    )
    .await;
    let turns: Vec<Value> = (0..10)
        .map(|i| {
            message(
                &format!("t{i}"),
                "bot",
                "kept",
                "user",
                &format!("turn {i}"),
            )
        })
        .collect();
    daemon.post_ndjson(ndjson(&turns)).await;
    // The sink counts the session's events before any is evicted.
    daemon
        .wait_sink("sessions", Duration::from_secs(60), |s| s["cursor"] == 10)
        .await;
    // Fill the quota one event at a time until it evicted the first turns.
    let filler = "f".repeat(300);
    for i in 0.. {
        if daemon.stored().await.iter().all(|e| e.id != "t1") {
            break;
        }
        assert!(i < 1000, "the quota never evicted anything");
        let other = json!({"id": format!("o{i}"), "type": "note", "data": filler});
        assert!(daemon
            .post("application/json", other.to_string())
            .await
            .status
            .is_success());
    }
    let end = [event("t-end", "session.ended", "bot", "kept", json!({}))];
    daemon.post_ndjson(ndjson(&end)).await;
    let dir = daemon.data_dir().join("sessions");
    common::eventually("the session is written", || async {
        !common::json_lines_in(&dir).is_empty()
    })
    .await;
    let line = &common::json_lines_in(&dir)[0];
    check_line(line);
    let meta = &line["metadata"];
    let (events, lost) = (
        meta["events"].as_i64().unwrap(),
        meta["lost_events"].as_i64().unwrap(),
    );
    assert!(lost > 0, "{meta}");
    assert_eq!(events + lost, 11, "{meta}");
    let kept: Vec<String> = contents(line);
    let expected: Vec<String> = (11 - events..10).map(|i| format!("turn {i}")).collect();
    assert_eq!(kept, expected, "the newest turns remain");
}

#[test]
fn session_keys_are_checked_and_named_in_errors() {
    let sink = "[sinks.s]\nkind = \"file\"\ndir = \"s\"\n";
    for (extra, expected) in [
        (
            "session_idle_timeout = \"5m\"\n",
            "`session_idle_timeout` applies only to format = \"openai_sessions\"",
        ),
        (
            "format = \"openai_sessions\"\nsession_max_bytes = \"1GiB\"\n",
            "sinks.s.session_max_bytes: must be at least 1KiB and at most batch.max_bytes",
        ),
        (
            "format = \"openai_sessions\"\nsession_idle_timeout = \"0s\"\n",
            "sinks.s.session_idle_timeout: must be greater than 0",
        ),
        (
            "format = \"openai_sessions\"\nsession_end_types = \"run.finished\"\n",
            "session_end_types",
        ),
    ] {
        let (ok, _, stderr) = common::check_config(&format!("{sink}{extra}"), &[]);
        assert!(!ok, "{extra} was accepted");
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
    let (ok, stdout, stderr) =
        common::check_config(&format!("{sink}format = \"openai_sessions\"\n"), &[]);
    assert!(ok, "{stderr}");
    let printed: toml::Value = toml::from_str(&stdout).unwrap();
    let sink = &printed["sinks"]["s"];
    assert_eq!(
        sink["session_idle_timeout"].as_str(),
        Some("30m"),
        "{stdout}"
    );
    assert_eq!(sink["session_max_bytes"].as_str(), Some("4MiB"), "{stdout}");
    assert_eq!(sink["session_end_types"].as_array().map(Vec::len), Some(4));
    // What check-config prints is a config it accepts.
    let (ok, again, stderr) = common::check_config(&stdout, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(again, stdout);
    assert_eq!(
        printed["sinks"]["s"]["exclude_types"],
        toml::Value::Array(vec!["heartbeat".into(), "*.heartbeat".into()])
    );
}
