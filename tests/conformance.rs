//! What every sink kind must do, written once and run for each kind against
//! its real destination (a directory, an HTTP server in the test, s3s-fs):
//! every acknowledged event delivered exactly once and in seq order, kill -9
//! during delivery with nothing lost or repeated, an outage that backlogs
//! and drains without holding other sinks back, and type and fidelity
//! filters. Batches close by count (the kill -9 load is timed; only its
//! final drain waits for an age, with no deadline that matters).
//!
//! Kinds whose destination checks credentials (all but the directory) also
//! run: refused credentials halt the sink, keep its events and show in the
//! status and metrics, and fixed credentials deliver everything once.
//!
//! A new kind adds its arm to `Destination` and one line to the lists at the
//! bottom. (The poison-event scenario, which only a destination that judges
//! content can meet, lives in http_sink.rs.)

mod common;

use common::nats::NatsServer;
use common::receiver::{Receiver, Reply};
use common::s3::{lines, S3Server, ACCESS_KEY, SECRET_KEY};
use common::Daemon;
use serde_json::Value;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NATS_TOKEN: &str = "conformance-token";

#[derive(Clone, Copy, Debug)]
enum Kind {
    File,
    Http,
    S3,
    Nats,
}

/// The far end of a sink under test.
enum Destination {
    /// The directory, relative to the daemon's data_dir.
    File(PathBuf),
    Http(Receiver),
    S3(S3Server),
    Nats(NatsServer),
}

impl Destination {
    async fn start(kind: Kind) -> Destination {
        match kind {
            Kind::File => Destination::File(PathBuf::from("delivered")),
            Kind::Http => Destination::Http(Receiver::start(|_, _| Reply::ok()).await),
            Kind::S3 => {
                std::env::set_var("TEST_CONFORMANCE_SECRET_KEY", SECRET_KEY);
                Destination::S3(S3Server::start().await)
            }
            Kind::Nats => {
                std::env::set_var("TEST_CONFORMANCE_NATS_TOKEN", NATS_TOKEN);
                Destination::Nats(NatsServer::start(Some(NATS_TOKEN)).await)
            }
        }
    }

    /// `[sinks.NAME]` for this destination, batches closed at `max_events`.
    fn sink(&self, name: &str, max_events: usize, extra: &str) -> String {
        self.sink_with_batch(
            name,
            &format!("max_events = {max_events}\nmax_age = \"1h\"\n"),
            extra,
        )
    }

    fn sink_with_batch(&self, name: &str, batch: &str, extra: &str) -> String {
        let protocol = match self {
            Destination::File(dir) => format!("kind = \"file\"\ndir = {:?}\n", dir),
            Destination::Http(receiver) => {
                format!("kind = \"http\"\nurl = \"{}\"\n", receiver.url())
            }
            Destination::S3(server) => format!(
                "kind = \"s3\"\nendpoint = \"{}\"\nbucket = \"conformance\"\naccess_key = \"{ACCESS_KEY}\"\n\
                 secret_key_env = \"TEST_CONFORMANCE_SECRET_KEY\"\ncreate_bucket = true\n",
                server.endpoint()
            ),
            Destination::Nats(server) => format!(
                "kind = \"nats\"\nurl = \"{}\"\ntimeout = \"2s\"\ntoken_env = \"TEST_CONFORMANCE_NATS_TOKEN\"\n\
                 stream = {{ name = \"CONFORMANCE\", subjects = [\"agents.>\"] }}\n",
                server.url()
            ),
        };
        format!(
            "[sinks.{name}]\n{protocol}{extra}\n[sinks.{name}.batch]\n{batch}\
             [sinks.{name}.retry]\ninitial = \"50ms\"\nmax = \"300ms\"\nhalted_probe = \"300ms\"\n"
        )
    }

    /// Every event the destination holds, in the order the destination
    /// orders batches (file names and object keys sort by range; HTTP by
    /// arrival), a repeated Idempotency-Key counted once as HTTP promises.
    async fn delivered(&self, daemon: &Daemon) -> Vec<Value> {
        let parse = |line: &str| serde_json::from_str::<Value>(line).unwrap();
        match self {
            Destination::File(dir) => {
                let mut files: Vec<_> = std::fs::read_dir(daemon.data_dir().join(dir))
                    .map(|entries| entries.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default();
                files.retain(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'));
                files.sort();
                files
                    .iter()
                    .flat_map(|p| {
                        std::fs::read_to_string(p)
                            .unwrap()
                            .lines()
                            .map(parse)
                            .collect::<Vec<_>>()
                    })
                    .collect()
            }
            Destination::Http(receiver) => accepted_once(receiver)
                .into_iter()
                .flat_map(|s| {
                    s.ids
                        .into_iter()
                        .zip(s.seqs)
                        .map(|(id, seq)| serde_json::json!({"id": id, "seq": seq}))
                })
                .collect(),
            Destination::S3(server) => server
                .objects("conformance")
                .iter()
                .flat_map(|(key, bytes)| lines(key, bytes))
                .map(|l| parse(&l))
                .collect(),
            Destination::Nats(server) => server
                .messages("CONFORMANCE")
                .await
                .into_iter()
                .map(|m| m.payload)
                .collect(),
        }
    }

    /// Makes the destination unreachable (or unwritable).
    fn take_down(&mut self, daemon: &Daemon) {
        match self {
            // A file where the directory should be: every write fails.
            Destination::File(dir) => std::fs::write(daemon.data_dir().join(dir), b"").unwrap(),
            Destination::Http(receiver) => receiver.stop(),
            Destination::S3(server) => server.stop(),
            Destination::Nats(server) => server.stop(),
        }
    }

    async fn bring_back(&mut self, daemon: &Daemon) {
        match self {
            Destination::File(dir) => std::fs::remove_file(daemon.data_dir().join(dir)).unwrap(),
            Destination::Http(receiver) => receiver.resume().await,
            Destination::S3(server) => server.resume().await,
            Destination::Nats(server) => server.resume().await,
        }
    }

    /// Makes the destination refuse (`right = false`) or accept the
    /// sink's credentials; returns the environment to start the daemon with
    /// (the sinks read their secrets through `*_env`).
    fn credentials(&self, right: bool) -> Vec<(&'static str, &'static str)> {
        match self {
            Destination::File(_) => unreachable!("a directory has no credentials"),
            Destination::Http(receiver) => {
                if right {
                    receiver.set_script(|_, _| Reply::ok());
                } else {
                    receiver.set_script(|_, _| Reply::status(401));
                }
                Vec::new()
            }
            Destination::S3(_) => vec![(
                "TEST_CONFORMANCE_SECRET_KEY",
                if right { SECRET_KEY } else { "not-the-secret" },
            )],
            Destination::Nats(_) => vec![(
                "TEST_CONFORMANCE_NATS_TOKEN",
                if right { NATS_TOKEN } else { "not-the-token" },
            )],
        }
    }

    /// How many batches (files, objects, accepted requests) arrived; None
    /// where a batch is not visible downstream (a message per event).
    fn batches(&self, daemon: &Daemon) -> Option<usize> {
        Some(match self {
            Destination::File(dir) => std::fs::read_dir(daemon.data_dir().join(dir))
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                        .count()
                })
                .unwrap_or(0),
            Destination::Http(receiver) => accepted_once(receiver).len(),
            Destination::S3(server) => server.objects("conformance").len(),
            Destination::Nats(_) => return None,
        })
    }
}

/// Accepted requests in arrival order, each Idempotency-Key once: what a
/// receiver that honours the key keeps.
fn accepted_once(receiver: &Receiver) -> Vec<common::receiver::Seen> {
    let mut keys = HashSet::new();
    receiver
        .seen()
        .into_iter()
        .filter(|s| (200..300).contains(&s.status) && keys.insert(s.key.clone()))
        .collect()
}

/// Waits until the destination holds `count` events (the bound only
/// catches a hang), then returns their ids in delivery order.
async fn wait_delivered(destination: &Destination, daemon: &Daemon, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = destination.delivered(daemon).await;
        if events.len() >= count {
            return events
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} events delivered:\n{}",
            events.len(),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` events `{prefix}-0000`..., posted in requests of `per_request`.
async fn post(daemon: &Daemon, prefix: &str, n: usize, per_request: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:04}")).collect();
    for chunk in ids.chunks(per_request) {
        daemon.post_ids(chunk, "message").await;
    }
    ids
}

async fn every_event_once_in_seq_order(kind: Kind) {
    let destination = Destination::start(kind).await;
    let daemon = Daemon::start(&destination.sink("out", 25, "")).await;
    // Requests of 10 against batches of 25: batches cut across requests.
    let sent = post(&daemon, "once", 100, 10).await;
    let delivered = wait_delivered(&destination, &daemon, 100).await;
    assert_eq!(delivered, sent, "each event once, in seq order");
    daemon
        .wait_sink("out", Duration::from_secs(60), |s| s["cursor"] == 100)
        .await;
    if let Some(batches) = destination.batches(&daemon) {
        assert_eq!(batches, 4, "batches closed by count");
    }
    let seqs: Vec<i64> = destination
        .delivered(&daemon)
        .await
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
}

async fn an_outage_backlogs_then_drains_and_holds_no_other_sink_back(kind: Kind) {
    let mut destination = Destination::start(kind).await;
    let config = format!(
        "{}[sinks.witness]\nkind = \"file\"\ndir = \"witness\"\n[sinks.witness.batch]\nmax_events = 20\nmax_age = \"1h\"\n",
        destination.sink("out", 20, "")
    );
    let daemon = Daemon::start(&config).await;
    destination.take_down(&daemon);
    let sent = post(&daemon, "outage", 60, 20).await;
    // The other sink delivers everything while this one cannot.
    let witness = Destination::File(PathBuf::from("witness"));
    assert_eq!(wait_delivered(&witness, &daemon, 60).await, sent);
    let status = daemon
        .wait_sink("out", Duration::from_secs(60), |s| {
            s["state"] == "backoff" && s["last_error"].is_string()
        })
        .await;
    assert_eq!(status["cursor"], 0, "{status}");
    assert_eq!(
        daemon.stored().await.len(),
        60,
        "kept for the sink that is down"
    );
    destination.bring_back(&daemon).await;
    assert_eq!(wait_delivered(&destination, &daemon, 60).await, sent);
    daemon
        .wait_sink("out", Duration::from_secs(60), |s| {
            s["cursor"] == 60 && s["state"] == "running"
        })
        .await;
    assert_eq!(
        destination.delivered(&daemon).await.len(),
        60,
        "nothing twice"
    );
}

async fn filters_select_by_type_and_fidelity(kind: Kind) {
    let destination = Destination::start(kind).await;
    let filters = "include_types = [\"tool.*\", \"message\"]\nexclude_types = [\"tool.debug*\"]\nmin_fidelity = \"committed\"\n";
    // Three of the seven match: batches of three close by count.
    let daemon = Daemon::start(&destination.sink("out", 3, filters)).await;
    let body = [
        r#"{"id":"f1","type":"tool.call"}"#,
        r#"{"id":"f2","type":"tool.debug.trace"}"#,
        r#"{"id":"f3","type":"message","fidelity":"observed"}"#,
        r#"{"id":"f4","type":"run.started","fidelity":"control"}"#,
        r#"{"id":"f5","type":"message"}"#,
        r#"{"id":"f6","type":"token.delta","fidelity":"observed"}"#,
        r#"{"id":"f7","type":"tool.result","fidelity":"control"}"#,
    ]
    .join("\n");
    let answer = daemon.post("application/x-ndjson", body).await;
    assert!(answer.status.is_success());
    assert_eq!(
        wait_delivered(&destination, &daemon, 3).await,
        ["f1", "f5", "f7"]
    );
    // Skipped events still move the cursor, so they can be deleted.
    daemon
        .wait_sink("out", Duration::from_secs(60), |s| s["cursor"] == 7)
        .await;
    common::eventually("skipped events are deleted", || async {
        daemon.stored().await.is_empty()
    })
    .await;
}

/// kill -9 at moments spread over commits and deliveries, restart each
/// time, with three batches in flight at a time: every acknowledged event
/// arrives, none twice.
async fn kill9_loses_and_duplicates_nothing(kind: Kind) {
    let destination = Destination::start(kind).await;
    // The load is timed, so its last batch closes by age; only the final
    // wait depends on that happening, and it waits without a deadline
    // that matters.
    let mut daemon = Daemon::start(&destination.sink_with_batch(
        "out",
        // Several batches in flight: kills land between their verdicts.
        "max_events = 300\nmax_age = \"100ms\"\nin_flight = 3\n",
        "",
    ))
    .await;
    let acked_log = daemon.dir.path().join("acked.txt");
    for cycle in 0..3u64 {
        let load = common::start_load(
            &daemon,
            &acked_log,
            Duration::from_millis(1200),
            &["--batch", "20", "--concurrency", "4", "--event-size", "200"],
        );
        tokio::time::sleep(Duration::from_millis(300 + 250 * cycle)).await;
        daemon.kill9();
        assert!(common::finish(load).await.success());
        daemon.spawn().await;
    }
    common::wait_drained(&daemon, Duration::from_secs(120)).await;
    let acked = common::acked_ids(&acked_log);
    assert!(!acked.is_empty());
    let delivered: Vec<String> = destination
        .delivered(&daemon)
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let unique: std::collections::BTreeSet<String> = delivered.iter().cloned().collect();
    assert_eq!(delivered.len(), unique.len(), "an event arrived twice");
    let missing: Vec<&String> = acked.difference(&unique).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?}"
    );
    // A request cut off by the kill may still have been stored: more than
    // the acknowledged events may arrive, never fewer and never twice.
}

/// Refused credentials halt the sink: events kept, the state in the status
/// and the metrics; fixed credentials and a restart deliver everything once.
async fn refused_credentials_halt_and_keep_the_events_until_fixed(kind: Kind) {
    let destination = Destination::start(kind).await;
    let mut daemon = Daemon::prepare(&destination.sink("out", 10, ""));
    daemon.spawn_with_env(&destination.credentials(false)).await;
    let sent = post(&daemon, "creds", 20, 20).await;
    let status = daemon
        .wait_sink("out", Duration::from_secs(60), |s| s["state"] == "halted")
        .await;
    assert_eq!(status["cursor"], 0, "{status}");
    assert!(status["last_error"].is_string());
    daemon
        .wait_samples(&[("outboxd_sink_state{sink=\"out\",state=\"halted\"}", 1.0)])
        .await;
    assert_eq!(daemon.stored().await.len(), 20, "the events are kept");
    assert!(daemon.terminate().success());
    daemon.spawn_with_env(&destination.credentials(true)).await;
    assert_eq!(wait_delivered(&destination, &daemon, 20).await, sent);
    daemon
        .wait_sink("out", Duration::from_secs(60), |s| {
            s["cursor"] == 20 && s["state"] == "running"
        })
        .await;
}

/// Scenarios for kinds whose destination checks credentials (a directory
/// does not).
macro_rules! with_credentials {
    ($($kind:ident => $module:ident),+ $(,)?) => {
        $(
            mod $module {
                use super::*;

                #[tokio::test]
                async fn refused_credentials_halt_and_keep_the_events_until_fixed() {
                    super::refused_credentials_halt_and_keep_the_events_until_fixed(Kind::$kind).await
                }
            }
        )+
    };
}

with_credentials! {
    Http => credentials_http,
    S3 => credentials_s3,
    Nats => credentials_nats,
}

macro_rules! conformance {
    ($($kind:ident => $module:ident),+ $(,)?) => {
        $(
            mod $module {
                use super::*;

                #[tokio::test]
                async fn every_event_once_in_seq_order() {
                    super::every_event_once_in_seq_order(Kind::$kind).await
                }

                #[tokio::test]
                async fn an_outage_backlogs_then_drains_and_holds_no_other_sink_back() {
                    super::an_outage_backlogs_then_drains_and_holds_no_other_sink_back(Kind::$kind).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn kill9_loses_and_duplicates_nothing() {
                    super::kill9_loses_and_duplicates_nothing(Kind::$kind).await
                }

                #[tokio::test]
                async fn filters_select_by_type_and_fidelity() {
                    super::filters_select_by_type_and_fidelity(Kind::$kind).await
                }
            }
        )+
    };
}

conformance! {
    File => file,
    Http => http,
    S3 => s3,
    Nats => nats,
}
