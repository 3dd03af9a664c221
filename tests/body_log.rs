//! The body log (`outbox.bodies = "segments"`): large groups' bodies are
//! stored once in segment files, small ones stay inline, and every reader
//! (delivery, dead letters, salvage) gets the bodies as they were sent.
//! What a crash leaves past the committed end is cut off; a segment goes
//! once all its events did; the log stays readable after switching back.

mod common;

use common::{body_log_segments, ids, salvage, Daemon};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

const SEGMENTS: &str = "
[outbox]
bodies = \"segments\"
segment_bytes = \"1MiB\"
";

/// About 1 KiB of varied text for event `i`.
fn text(i: usize) -> String {
    let words = [
        "agent", "tool", "result", "read", "file", "error", "retry", "session", "token", "value",
    ];
    let mut state = i as u64 * 2654435761 + 1;
    let mut out = String::new();
    while out.len() < 1000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(words[(state >> 59) as usize % words.len()]);
        out.push_str(&format!("{} ", state >> 54));
    }
    out
}

fn request(ids: &[String], first: usize, event_type: &str) -> String {
    ids.iter()
        .enumerate()
        .map(|(k, id)| {
            format!(
                "{{\"type\":\"{event_type}\",\"id\":\"{id}\",\"data\":{{\"text\":\"{}\"}}}}\n",
                text(first + k)
            )
        })
        .collect()
}

/// Posts `requests` requests of 100 ~1 KiB events (each over the log's
/// threshold); returns the ids in order.
async fn post_large(daemon: &Daemon, prefix: &str, requests: usize) -> Vec<String> {
    let all = ids(prefix, requests * 100);
    for (r, chunk) in all.chunks(100).enumerate() {
        let answer = daemon
            .post(
                "application/x-ndjson",
                request(chunk, r * 100, "tool.result"),
            )
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    all
}

/// The quarantined database, after checking its body log moved beside it.
fn quarantined_db(daemon: &Daemon) -> PathBuf {
    let mut moved: Vec<_> = std::fs::read_dir(daemon.data_dir().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    moved.sort();
    let file = moved
        .iter()
        .find(|p| p.extension().is_some_and(|x| x == "db"))
        .expect("the database is quarantined")
        .clone();
    let bodies = PathBuf::from(format!("{}-bodies", file.display()));
    assert!(bodies.is_dir(), "{moved:?}");
    file
}

fn query(db: &Path, sql: &str) -> i64 {
    let connection =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    connection.query_row(sql, [], |row| row.get(0)).unwrap()
}

#[tokio::test]
async fn large_groups_go_to_the_log_a_torn_tail_is_cut_and_delivery_empties_it() {
    let mut daemon = Daemon::start(SEGMENTS).await;
    let large = post_large(&daemon, "large", 12).await;
    let small = ids("small", 5);
    for (i, id) in small.iter().enumerate() {
        let answer = daemon
            .post(
                "application/json",
                request(std::slice::from_ref(id), 5000 + i, "note"),
            )
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    let db = daemon.data_dir().join("outbox.db");
    let log = daemon.data_dir().join("bodies");
    assert_eq!(
        query(&db, "SELECT COUNT(*) FROM events WHERE body_at IS NOT NULL"),
        1200
    );
    assert_eq!(
        query(&db, "SELECT COUNT(*) FROM events WHERE body_at IS NULL"),
        5
    );
    assert_eq!(
        query(
            &db,
            "SELECT COUNT(*) FROM events WHERE body_at IS NOT NULL AND length(body) > 0"
        ),
        0,
        "a body in the log is not also in the database"
    );
    // 12 x ~110 KiB in 1 MiB segments.
    assert_eq!(
        body_log_segments(&log).len(),
        2,
        "{:?}",
        body_log_segments(&log)
    );
    let held = query(&db, "SELECT log_end FROM outbox_state") as u64 - body_log_segments(&log)[0];
    assert!(held > 1 << 20, "{held}");
    daemon
        .wait_samples(&[("outboxd_outbox_body_log_bytes", held as f64)])
        .await;
    let stored = daemon.stored().await;
    let stored_ids: Vec<&str> = stored.iter().map(|s| s.id.as_str()).collect();
    let mut expected: Vec<String> = large.clone();
    expected.extend(small.clone());
    assert_eq!(stored_ids, expected);
    for (k, event) in stored.iter().enumerate() {
        let i = if k < 1200 { k } else { 5000 + k - 1200 };
        assert_eq!(event.body["data"]["text"], text(i), "event {k}");
    }

    // A group that never committed: bytes past the end the database names.
    daemon.terminate();
    let newest = *body_log_segments(&log).last().unwrap();
    let segment = log.join(format!("{newest:020}.log"));
    let committed = std::fs::metadata(&segment).unwrap().len();
    {
        use std::io::Write;
        let mut file = std::fs::File::options()
            .append(true)
            .open(&segment)
            .unwrap();
        file.write_all(&vec![b'#'; 70_000]).unwrap();
    }
    // Back to inline: the log stays readable, new groups stay in SQLite.
    daemon.rewrite_config("bodies = \"segments\"", "bodies = \"inline\"");
    daemon.spawn().await;
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), committed);
    let after = post_large(&daemon, "after", 1).await;
    assert_eq!(
        query(&db, "SELECT COUNT(*) FROM events WHERE body_at IS NULL"),
        105
    );

    // A sink delivers everything as sent; then every segment, the one
    // appends went to included, is removed with its events.
    daemon.terminate();
    daemon.reconfigure(
        "
[outbox]
bodies = \"inline\"
[sinks.files]
kind = \"file\"
dir = \"out\"
[sinks.files.batch]
max_events = 300
",
    );
    daemon.spawn().await;
    daemon
        .wait_sink("files", WAIT, |s| {
            s["lag_events"] == 0 && s["cursor"] == 1305
        })
        .await;
    let mut delivered = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(daemon.data_dir().join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for name in names {
        for line in std::fs::read_to_string(name).unwrap().lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            delivered.push(event);
        }
    }
    expected.extend(after);
    let delivered_ids: Vec<&str> = delivered
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(delivered_ids, expected);
    assert_eq!(delivered[1199]["data"]["text"], text(1199));
    let deadline = std::time::Instant::now() + WAIT;
    while query(&db, "SELECT COUNT(*) FROM events") > 0 || !body_log_segments(&log).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "events {} segments {:?}",
            query(&db, "SELECT COUNT(*) FROM events"),
            body_log_segments(&log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log_end = query(&db, "SELECT log_end FROM outbox_state") as u64;
    assert!(log_end > newest, "{log_end}");
    daemon
        .wait_samples(&[("outboxd_outbox_body_log_bytes", 0.0)])
        .await;

    // After a restart on the emptied log, appends start a new segment at
    // its end.
    daemon.terminate();
    daemon.rewrite_config("bodies = \"inline\"", "bodies = \"segments\"");
    daemon.spawn().await;
    let again = post_large(&daemon, "again", 1).await;
    assert_eq!(body_log_segments(&log), [log_end]);
    let stored = daemon.stored().await;
    let stored_ids: Vec<&str> = stored.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(stored_ids, again);
    assert_eq!(stored[99].body["data"]["text"], text(99));
}

#[tokio::test]
async fn a_dead_lettered_event_keeps_its_body_from_the_log() {
    let receiver = common::receiver::Receiver::start(|seen, _| {
        if seen.types.iter().any(|t| t == "poison") {
            common::receiver::Reply::status(400)
        } else {
            common::receiver::Reply::ok()
        }
    })
    .await;
    let config = format!(
        "{SEGMENTS}
[sinks.remote]
kind = \"http\"
url = \"{}\"
[sinks.remote.batch]
max_events = 10
",
        receiver.url()
    );
    let daemon = Daemon::start(&config).await;
    let good = ids("good", 99);
    let mut body = request(&good, 0, "fine");
    body.push_str(&request(&["the-poison".to_string()], 99, "poison"));
    assert_eq!(daemon.post("application/x-ndjson", body).await.status, 200);
    daemon
        .wait_sink("remote", WAIT, |s| {
            s["dead_letters"] == 1 && s["lag_events"] == 0
        })
        .await;
    let db = daemon.data_dir().join("outbox.db");
    let connection =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let letter: Vec<u8> = connection
        .query_row(
            "SELECT body FROM dead_letters WHERE id = 'the-poison'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let letter: serde_json::Value = serde_json::from_slice(&letter).unwrap();
    assert_eq!(letter["data"]["text"], text(99));
    assert_eq!(letter["id"], "the-poison");
}

#[tokio::test]
async fn quarantine_takes_the_log_along_and_salvage_reads_it() {
    let mut daemon = Daemon::start(SEGMENTS).await;
    let sent = post_large(&daemon, "q", 3).await;
    daemon.terminate();
    let db = daemon.data_dir().join("outbox.db");
    {
        use std::io::Write;
        let mut file = std::fs::File::options().write(true).open(&db).unwrap();
        file.write_all(b"not a database!!").unwrap();
    }
    daemon.spawn().await;
    let file = quarantined_db(&daemon);
    assert!(body_log_segments(&daemon.data_dir().join("bodies")).is_empty());
    let out = tempfile::tempdir().unwrap();
    let (events, _) = salvage(&file, &out.path().join("salvaged.ndjson"));
    let salvaged: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(salvaged, sent);
    assert_eq!(events[250]["data"]["text"], text(250));
}

#[tokio::test]
async fn a_missing_segment_is_corruption_refused_or_quarantined_as_configured() {
    let mut daemon = Daemon::start(&format!("{SEGMENTS}on_corruption = \"refuse\"\n")).await;
    let sent = post_large(&daemon, "m", 12).await;
    daemon.terminate();
    let log = daemon.data_dir().join("bodies");
    let db = daemon.data_dir().join("outbox.db");
    let segments = body_log_segments(&log);
    assert_eq!(segments.len(), 2, "{segments:?}");
    let newest = log.join(format!("{:020}.log", segments[1]));
    let before_it = query(
        &db,
        &format!(
            "SELECT COUNT(*) FROM events WHERE body_at < {}",
            segments[1]
        ),
    ) as usize;
    assert!(before_it > 0 && before_it < sent.len(), "{before_it}");
    std::fs::remove_file(&newest).unwrap();

    let stderr = common::refused_start(&daemon.config_path);
    assert!(
        stderr.contains(&format!(
            "segment {} of the body log is missing",
            newest.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("\"refuse\""), "{stderr}");
    assert!(!daemon.data_dir().join("quarantine").exists());

    // Quarantined with its log; salvage brings back what the log still holds.
    daemon.rewrite_config(
        "on_corruption = \"refuse\"",
        "on_corruption = \"quarantine\"",
    );
    daemon.spawn().await;
    let file = quarantined_db(&daemon);
    let out = tempfile::tempdir().unwrap();
    let (events, _) = salvage(&file, &out.path().join("salvaged.ndjson"));
    let salvaged: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(salvaged, sent[..before_it]);
    // The fresh outbox takes large groups into a new log.
    post_large(&daemon, "fresh", 1).await;
    assert_eq!(body_log_segments(&log).len(), 1);
}
