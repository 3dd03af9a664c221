//! The NATS JetStream sink against a real nats-server: subjects and headers
//! per event, a token refused halts the sink and keeps the events, a subject
//! no stream captures is retried with a message saying so until a stream
//! appears, a stream the server refuses halts it with the server's reason,
//! and a config that cannot work is refused before start.
//! (Exactly once, kill -9, outages and filters: tests/conformance.rs.)

mod common;

use common::nats::NatsServer;
use common::Daemon;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn nats_sink(url: &str, extra: &str) -> String {
    format!(
        "[sinks.bus]\nkind = \"nats\"\nurl = \"{url}\"\ntimeout = \"2s\"\n{extra}\n\
         [sinks.bus.batch]\nmax_events = 3\nmax_age = \"1h\"\n\
         [sinks.bus.retry]\ninitial = \"50ms\"\nmax = \"300ms\"\nhalted_probe = \"200ms\"\n"
    )
}

const STREAM: &str = "stream = { name = \"AGENTS\", subjects = [\"agents.>\"] }";

const EVENTS: &str = "\
{\"id\":\"e1\",\"type\":\"tool.call\",\"agent_id\":\"planner\",\"session_id\":\"s1\",\"data\":{\"name\":\"search\"}}
{\"id\":\"e2\",\"type\":\"message\",\"agent_id\":\"coder.v2\"}
{\"id\":\"e3\",\"type\":\"run.finished\"}
";

/// Posts the events and waits for the sink to reach `state` with `reason`
/// in its error.
async fn stops_with(daemon: &Daemon, state: &str, reason: &str) {
    daemon.post("application/x-ndjson", EVENTS).await;
    let status = daemon
        .wait_sink("bus", WAIT, |s| {
            s["state"] == state
                && s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.to_lowercase().contains(&reason.to_lowercase()))
        })
        .await;
    let error = status["last_error"].as_str().unwrap().to_lowercase();
    assert!(error.contains(&reason.to_lowercase()), "{status}");
}

#[tokio::test]
async fn each_event_is_a_message_with_its_subject_and_headers() {
    let server = NatsServer::start(None).await;
    let daemon = Daemon::start(&nats_sink(&server.url(), STREAM)).await;
    assert!(daemon
        .post("application/x-ndjson", EVENTS)
        .await
        .status
        .is_success());
    daemon.wait_sink("bus", WAIT, |s| s["cursor"] == 3).await;
    let messages = server.messages("AGENTS").await;
    let subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "agents.planner.tool.call",
            "agents.coder_v2.message",
            "agents._.run.finished"
        ]
    );
    let first = &messages[0];
    assert_eq!(first.header("Nats-Msg-Id"), Some("e1"));
    assert_eq!(first.header("Outboxd-Seq"), Some("1"));
    assert_eq!(first.header("Outboxd-Type"), Some("tool.call"));
    assert_eq!(first.header("Outboxd-Session-Id"), Some("s1"));
    assert_eq!(first.header("Outboxd-Agent-Id"), Some("planner"));
    assert_eq!(messages[2].header("Outboxd-Agent-Id"), None);
    // The payload is the event as every sink sends it: seq first.
    assert_eq!(first.payload["seq"], 1);
    assert_eq!(first.payload["data"]["name"], "search");
}

#[tokio::test]
async fn a_server_restart_mid_stream_loses_and_repeats_nothing() {
    let mut server = NatsServer::start(None).await;
    let daemon = Daemon::start(&nats_sink(&server.url(), STREAM)).await;
    let first = common::ids("before", 30);
    daemon.post_ids(&first, "agent.step").await;
    daemon.wait_sink("bus", WAIT, |s| s["cursor"] == 30).await;
    // The established connection breaks; events keep coming meanwhile.
    server.stop();
    let second = common::ids("during", 30);
    daemon.post_ids(&second, "agent.step").await;
    daemon
        .wait_sink("bus", WAIT, |s| s["state"] == "backoff")
        .await;
    server.resume().await;
    daemon
        .wait_sink("bus", WAIT, |s| {
            s["cursor"] == 60 && s["state"] == "running"
        })
        .await;
    let ids: Vec<String> = server
        .messages("AGENTS")
        .await
        .iter()
        .map(|m| m.payload["id"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = first.into_iter().chain(second).collect();
    assert_eq!(
        ids, expected,
        "every event once, in order, across the restart"
    );
}

#[tokio::test]
async fn a_refused_token_halts_the_sink_and_keeps_the_events_until_fixed() {
    let server = NatsServer::start(Some("right-token")).await;
    let mut daemon = Daemon::start(&nats_sink(
        &server.url(),
        &format!("token = \"wrong-token\"\n{STREAM}"),
    ))
    .await;
    stops_with(&daemon, "halted", "authoriz").await;
    assert!(
        !daemon.log().contains("wrong-token"),
        "the token is never logged"
    );
    assert_eq!(daemon.stored().await.len(), 3);
    daemon
        .wait_samples(&[("outboxd_sink_state{sink=\"bus\",state=\"halted\"}", 1.0)])
        .await;
    // Fixed config, restart: everything arrives.
    assert!(daemon.terminate().success());
    daemon.rewrite_config("wrong-token", "right-token");
    daemon.spawn().await;
    daemon
        .wait_sink("bus", WAIT, |s| s["cursor"] == 3 && s["state"] == "running")
        .await;
    assert_eq!(server.messages("AGENTS").await.len(), 3);
}

#[tokio::test]
async fn a_subject_no_stream_captures_is_retried_until_a_stream_appears() {
    let server = NatsServer::start(None).await;
    let daemon = Daemon::start(&nats_sink(&server.url(), "")).await;
    stops_with(
        &daemon,
        "backoff",
        "no JetStream stream captures `agents.planner.tool.call`",
    )
    .await;
    // An operator creates the stream; the next probe delivers.
    server.create_stream("LATE", "agents.>").await;
    daemon
        .wait_sink("bus", WAIT, |s| s["cursor"] == 3 && s["state"] == "running")
        .await;
    assert_eq!(server.messages("LATE").await.len(), 3);
}

#[tokio::test]
async fn a_stream_the_server_refuses_halts_with_the_servers_reason() {
    let server = NatsServer::start(None).await;
    // Another stream already captures the subjects: the server refuses ours.
    server.create_stream("OTHER", "agents.>").await;
    let daemon = Daemon::start(&nats_sink(&server.url(), STREAM)).await;
    stops_with(&daemon, "halted", "overlap").await;
    assert_eq!(daemon.stored().await.len(), 3, "the events are kept");
}

#[test]
fn configs_that_cannot_work_are_refused_naming_the_key() {
    let cases = [
        ("format = \"json_array\"\n", "format must be \"ndjson\""),
        ("compression = \"gzip\"\n", "compression \"none\""),
        (
            "subject = \"agents.{agent}\"\n",
            "sinks.bus.subject: unknown field `{agent}`",
        ),
        ("token = \"t\"\nnkey_seed = \"SUA\"\n", "set one of"),
    ];
    for (extra, needle) in cases {
        let text = nats_sink("nats://127.0.0.1:4222", extra);
        let (ok, _, stderr) = common::check_config(&text, &[]);
        assert!(!ok && stderr.contains(needle), "{extra}: {stderr}");
    }
    let text = nats_sink("nats://user:hunter2@127.0.0.1:4222", "");
    let (ok, stdout, stderr) = common::check_config(&text, &[]);
    assert!(ok, "{stderr}");
    assert!(!stdout.contains("hunter2"), "URL passwords are masked");
}
