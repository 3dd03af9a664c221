//! Secrets never leave the process: with every kind of secret configured
//! (ingest token, HTTP token, header values, URL passwords, S3 keys, NATS
//! password and token)
//! and deliveries failing (so errors are logged and shown), none appears in
//! the logs, `check-config`, `status --json` or `/metrics`.

mod common;

use common::receiver::{Receiver, Reply};
use common::Daemon;
use std::process::Command;

const INGEST_TOKEN: &str = "ingest-tok-Q7xKp2";
const ADMIN_TOKEN: &str = "admin-tok-Ny64sB";
const SINK_TOKEN: &str = "sink-tok-Zr81mW";
const HEADER_VALUE: &str = "hdr-key-Lw03nE";
const URL_PASSWORD: &str = "url-pass-Vb55tY";
const S3_ACCESS_KEY: &str = "AKIAQWERTY12345ZZZZ";
const S3_SECRET_KEY: &str = "s3-secret-Hj29aQ";
const NATS_PASSWORD: &str = "nats-pass-Tq48cX";
const NATS_TOKEN: &str = "nats-tok-Mv62dR";

#[tokio::test]
async fn no_secret_appears_in_logs_check_config_status_or_metrics() {
    // A receiver that always fails, so the HTTP sink logs and shows errors;
    // the S3 sink points at a closed port and fails too.
    let receiver = Receiver::start(|_, _| Reply::status(500)).await;
    let with_credentials =
        receiver
            .url()
            .replacen("http://", &format!("http://agent:{URL_PASSWORD}@"), 1);
    let daemon = Daemon::start(&format!(
        "[ingest]\nauth_token = \"{INGEST_TOKEN}\"\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\
         [sinks.remote]\nkind = \"http\"\nurl = \"{with_credentials}\"\ntoken = \"{SINK_TOKEN}\"\n\
         headers = {{ \"X-Api-Key\" = \"{HEADER_VALUE}\" }}\n\
         [sinks.remote.retry]\ninitial = \"50ms\"\nmax = \"200ms\"\n\
         [sinks.dead]\nkind = \"http\"\nurl = \"http://agent:{URL_PASSWORD}@127.0.0.1:{}/\"\n\
         [sinks.dead.retry]\ninitial = \"50ms\"\nmax = \"200ms\"\n\
         [sinks.lake]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:{}\"\nbucket = \"b\"\n\
         access_key = \"{S3_ACCESS_KEY}\"\nsecret_key = \"{S3_SECRET_KEY}\"\n\
         [sinks.lake.batch]\nmax_events = 1\n\
         [sinks.lake.retry]\ninitial = \"50ms\"\nmax = \"200ms\"\n\
         [sinks.bus]\nkind = \"nats\"\nurl = \"nats://agent:{URL_PASSWORD}@127.0.0.1:{}\"\n\
         [sinks.bus.retry]\ninitial = \"50ms\"\nmax = \"200ms\"\n\
         [sinks.bus3]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nuser = \"agent\"\npassword = \"{NATS_PASSWORD}\"\n\
         [sinks.bus3.retry]\ninitial = \"50ms\"\nmax = \"200ms\"\n\
         [sinks.bus2]\nkind = \"nats\"\nurl = [\"nats://127.0.0.1:{}\"]\ntoken = \"{NATS_TOKEN}\"\n\
         [sinks.bus2.retry]\ninitial = \"50ms\"\nmax = \"200ms\"\n",
        common::free_port(),
        common::free_port(),
        common::free_port(),
        common::free_port(),
        common::free_port()
    ))
    .await;
    let answer = daemon
        .post_with(
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {INGEST_TOKEN}")),
            ],
            r#"{"type":"t","id":"one"}"#,
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    // The receiver saw the credentials it was meant to see...
    common::eventually("the HTTP sink tried twice", || async {
        receiver.seen().len() >= 2
    })
    .await;
    let seen = &receiver.seen()[0];
    assert_eq!(seen.authorization, format!("Bearer {SINK_TOKEN}"));
    // ...and both sinks have failed and said so.
    let url = format!("http://127.0.0.1:{}", daemon.http_port);
    let cli = |args: &[&str]| {
        let output = Command::new(common::binary()).args(args).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let status = cli(&["status", "--json", "--url", &url, "--token", INGEST_TOKEN]);
    common::eventually("both sinks report an error", || async {
        let sinks = daemon.sinks_with_token(INGEST_TOKEN).await;
        sinks
            .as_array()
            .is_some_and(|all| all.iter().all(|s| s["last_error"].is_string()))
    })
    .await;
    let status_after = cli(&["status", "--json", "--url", &url, "--token", INGEST_TOKEN]);
    assert!(status_after.contains("last_error"), "{status_after}");
    let check = cli(&["check-config", daemon.config_path.to_str().unwrap()]);
    assert!(check.contains("[sinks.remote]"), "{check}");
    let metrics = daemon.metrics().await;
    let log = daemon.log();
    assert!(log.contains("delivery failed"), "{log}");

    for (place, text) in [
        ("the log", &log),
        ("check-config", &check),
        ("status --json", &status),
        ("status --json after the failures", &status_after),
        ("/metrics", &metrics),
    ] {
        for secret in [
            INGEST_TOKEN,
            ADMIN_TOKEN,
            SINK_TOKEN,
            HEADER_VALUE,
            URL_PASSWORD,
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
            NATS_PASSWORD,
            NATS_TOKEN,
        ] {
            assert!(!text.contains(secret), "{place} shows {secret}:\n{text}");
        }
    }
    // The masked forms say what is there without showing it.
    assert!(check.contains("agent:****@"), "{check}");
    assert!(status_after.contains("agent:****@"), "{status_after}");
}
