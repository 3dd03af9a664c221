//! Live reload (SIGHUP, `POST /v1/admin/reload`, `outboxd reload`): sinks
//! added, removed and changed under load with nothing lost or duplicated,
//! refused reloads that change nothing, redaction rules swapped live.

mod common;

use common::receiver::{Receiver, Reply};
use common::{count_once, Daemon};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Blocks until a reload-driving condition or catches a hang.
const DRAIN: Duration = Duration::from_secs(300);

fn sinks_config(http_url: &str, token: &str, old_url: Option<&str>, fresh: bool) -> String {
    let mut config = format!(
        "[shutdown]\ndrain_timeout = \"300ms\"\n\
         [sinks.http]\nkind = \"http\"\nurl = \"{http_url}\"\ntoken = \"{token}\"\n\
         [sinks.http.batch]\nmax_age = \"50ms\"\nmax_events = 300\n\
         [sinks.http.retry]\ninitial = \"50ms\"\nmax = \"500ms\"\n\
         [sinks.archive]\nkind = \"file\"\ndir = \"archive\"\n\
         [sinks.archive.batch]\nmax_age = \"50ms\"\nmax_events = 500\n"
    );
    if let Some(url) = old_url {
        config.push_str(&format!(
            "[sinks.old]\nkind = \"http\"\nurl = \"{url}\"\n\
             [sinks.old.retry]\ninitial = \"50ms\"\nmax = \"200ms\"\n"
        ));
    }
    if fresh {
        config.push_str(
            "[sinks.fresh]\nkind = \"file\"\ndir = \"fresh\"\n\
             [sinks.fresh.batch]\nmax_age = \"50ms\"\nmax_events = 500\n",
        );
    }
    config
}

fn names(answer: &serde_json::Value, key: &str) -> Vec<String> {
    answer["sinks"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no sinks.{key} in {answer}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn started_lines(log: &str, sink: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("sink started") && l.contains(&format!("sink={sink} ")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_with_a_batch_in_flight_loses_and_duplicates_nothing() {
    // The receiver never answers the sink's old settings: the batch it
    // holds can only end by being abandoned, which is what the reload must
    // do; under the new token every request is answered.
    let receiver = Receiver::start(|seen, _| {
        if seen.authorization == "Bearer before" {
            Reply::ok().after(Duration::from_secs(3600))
        } else {
            Reply::ok()
        }
    })
    .await;
    // A sink that never delivers: while configured, it holds every event.
    let old = Receiver::start(|_, _| Reply::status(503)).await;
    let daemon = Daemon::start(&sinks_config(
        &receiver.url(),
        "before",
        Some(&old.url()),
        false,
    ))
    .await;
    let acked_log = daemon.dir.path().join("acked.txt");
    let load = common::start_load(
        &daemon,
        &acked_log,
        Duration::from_millis(2500),
        &["--batch", "20", "--concurrency", "2", "--event-size", "200"],
    );

    common::eventually("the http sink has a batch in flight", || async {
        !receiver.seen().is_empty() && !daemon.sink("http").await["batch"].is_null()
    })
    .await;
    let in_flight_key = receiver.seen()[0].key.clone();

    daemon.reconfigure(&sinks_config(&receiver.url(), "after", None, true));
    let (status, answer) = daemon.reload().await;
    assert_eq!(status, 200, "{answer}\n{}", daemon.log());
    assert_eq!(answer["result"], "applied");
    assert_eq!(names(&answer, "changed"), ["http"]);
    assert_eq!(names(&answer, "added"), ["fresh"]);
    assert_eq!(names(&answer, "removed"), ["old"]);
    assert_eq!(names(&answer, "unchanged"), ["archive"]);

    // Known events after the reload: the new sink must have every one.
    let after: Vec<String> = common::ids("after-reload-", 50);
    daemon.post_ids(&after, "t").await;
    let status = common::finish(load).await;
    assert!(status.success(), "the load generator failed");
    common::wait_drained(&daemon, DRAIN).await;

    let sinks = daemon.sinks().await;
    let listed: Vec<&str> = sinks
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["archive", "fresh", "http"]);

    let mut acked = common::acked_ids(&acked_log);
    assert!(acked.len() >= 200, "too little load: {}", acked.len());
    acked.extend(after.iter().cloned());

    // The http sink: every acknowledged event, one request per key, each
    // key always carrying the same events; the batch in flight at the
    // reload was sent again, with the same key, by the changed sink.
    let seen = receiver.seen();
    let mut by_key: HashMap<&str, &Vec<String>> = HashMap::new();
    for request in &seen {
        let first = by_key.entry(&request.key).or_insert(&request.ids);
        assert_eq!(*first, &request.ids, "key {} reused", request.key);
    }
    let resent: Vec<&str> = seen
        .iter()
        .filter(|r| r.key == in_flight_key)
        .map(|r| r.authorization.as_str())
        .collect();
    assert_eq!(
        resent,
        ["Bearer before", "Bearer after"],
        "the abandoned batch is sent again by the new sink"
    );
    assert_eq!(seen.last().unwrap().authorization, "Bearer after");
    let at_receiver = count_once("the http receiver", receiver.accepted_ids());
    let missing: Vec<&String> = acked.difference(&at_receiver).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not received: {missing:?}"
    );

    // The unchanged sink ran through the reload undisturbed, once per event.
    let log = daemon.log();
    assert_eq!(started_lines(&log, "archive"), 1, "{log}");
    assert_eq!(started_lines(&log, "http"), 2, "{log}");
    let archive = count_once(
        "the archive sink",
        common::json_lines_in(&daemon.data_dir().join("archive"))
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string()),
    );
    let missing: Vec<&String> = acked.difference(&archive).take(5).collect();
    assert!(missing.is_empty(), "not archived: {missing:?}");
    assert_eq!(archive, at_receiver, "both sinks got the same events");

    // The added sink: what the outbox still held at the reload and all after.
    let fresh: BTreeSet<String> = count_once(
        "the fresh sink",
        common::json_lines_in(&daemon.data_dir().join("fresh"))
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string()),
    );
    let missing: Vec<&String> = after.iter().filter(|id| !fresh.contains(*id)).collect();
    assert!(missing.is_empty(), "added sink missed: {missing:?}");

    // The removed sink no longer holds anything back.
    common::eventually("delivered events are deleted", || async {
        daemon.stored().await.is_empty()
    })
    .await;
    let metrics = daemon.metrics().await;
    common::assert_samples(
        &metrics,
        &[
            ("outboxd_config_reload_total{result=\"applied\"}", 1.0),
            ("outboxd_config_last_reload_successful", 1.0),
            ("outboxd_sink_state{sink=\"old\",state=\"backoff\"}", 0.0),
            ("outboxd_sink_state{sink=\"old\",state=\"halted\"}", 0.0),
        ],
    );
}

#[tokio::test]
async fn a_refused_reload_changes_nothing_and_says_why() {
    let config = "[sinks.archive]\nkind = \"file\"\ndir = \"archive\"\n[sinks.archive.batch]\nmax_events = 2\n";
    let daemon = Daemon::start(config).await;
    daemon.post_ids(&common::ids("a-", 2), "t").await;

    // Not TOML at all.
    std::fs::write(&daemon.config_path, "[sinks.archive\nkind = ").unwrap();
    let (status, answer) = daemon.reload().await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"], "config_invalid");

    // Valid TOML, invalid config: the message names the key.
    daemon.reconfigure(&format!(
        "{config}[sinks.bad]\nkind = \"http\"\nurl = \"not a url\"\n"
    ));
    let (status, answer) = daemon.reload().await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("sinks.bad"),
        "{answer}"
    );

    // A listener and a limit change: refused, naming both.
    daemon.reconfigure(&format!(
        "{config}[sinks.more]\nkind = \"file\"\ndir = \"more\"\n\
         [ingest]\nmax_body_bytes = \"1MiB\"\n[metrics]\nlisten = \"\"\n"
    ));
    let (status, answer) = daemon.reload().await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], "restart_required");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("ingest.max_body_bytes") && message.contains("metrics.listen"),
        "{message}"
    );

    // The CLI says the same and exits 1.
    let cli = std::process::Command::new(common::binary())
        .args(["reload", "--socket"])
        .arg(daemon.socket())
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("ingest.max_body_bytes"),
        "{cli:?}"
    );

    // Nothing changed: the same single sink, still delivering.
    let sinks = daemon.sinks().await;
    assert_eq!(sinks.as_array().unwrap().len(), 1, "{sinks}");
    daemon.post_ids(&common::ids("b-", 2), "t").await;
    common::eventually("the running sink still delivers", || async {
        common::json_lines_in(&daemon.data_dir().join("archive")).len() == 4
    })
    .await;
    assert!(!daemon.data_dir().join("more").exists());
    assert!(daemon.log().contains("configuration not reloaded"));
    common::assert_samples(
        &daemon.metrics().await,
        &[
            ("outboxd_config_reload_total{result=\"invalid\"}", 2.0),
            // The API's and the CLI's.
            (
                "outboxd_config_reload_total{result=\"restart_required\"}",
                2.0,
            ),
            ("outboxd_config_last_reload_successful", 0.0),
        ],
    );

    // Put back as it was: an unchanged reload succeeds, through the CLI.
    daemon.reconfigure(config);
    let cli = std::process::Command::new(common::binary())
        .args(["reload", "--socket"])
        .arg(daemon.socket())
        .output()
        .unwrap();
    assert!(cli.status.success(), "{cli:?}");
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(
        out.starts_with("unchanged\n") && out.contains("sinks unchanged: archive"),
        "{out}"
    );
}

#[tokio::test]
async fn over_tcp_reload_is_an_admin_action() {
    let daemon = Daemon::start("[admin]\ntoken = \"root-token\"\n").await;
    let post = |authorization: Option<&'static str>| {
        let client = daemon.client();
        async move {
            let mut client = client;
            let headers: Vec<(&str, &str)> = authorization
                .map(|a| ("authorization", a))
                .into_iter()
                .collect();
            client
                .request(
                    hyper::Method::POST,
                    Some("/v1/admin/reload"),
                    &headers,
                    bytes::Bytes::new(),
                )
                .await
                .unwrap()
                .status
                .as_u16()
        }
    };
    assert_eq!(post(None).await, 401);
    assert_eq!(post(Some("Bearer wrong")).await, 401);
    assert_eq!(post(Some("Bearer root-token")).await, 200);
}

#[tokio::test]
async fn redaction_rules_change_on_reload() {
    let daemon = Daemon::start("").await;
    let body = |id: &str| {
        format!("{{\"type\":\"t\",\"id\":\"{id}\",\"data\":{{\"note\":\"ticket TKT-12345\"}}}}\n")
    };
    daemon.post_ndjson(body("before")).await;
    daemon.reconfigure("[[redaction.rules]]\nname = \"ticket\"\npattern = \"TKT-[0-9]+\"\n");
    let (status, answer) = daemon.reload().await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["redaction_changed"], true);
    daemon.post_ndjson(body("after")).await;
    let stored = daemon.stored().await;
    let data = |id: &str| {
        stored
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.raw.clone())
            .unwrap_or_else(|| panic!("{id} not stored"))
    };
    assert!(
        data("before").contains("TKT-12345"),
        "rules apply from the reload on"
    );
    assert!(
        !data("after").contains("TKT-12345") && data("after").contains("[REDACTED:ticket]"),
        "{}",
        data("after")
    );
}
