//! Damaged outbox files: the daemon never crash-loops or hangs. SQLite
//! recovers what it can (a torn or garbled WAL); a corrupt database is
//! quarantined (or refused) and `outboxd salvage` + `outboxd send` bring its
//! readable events back.

mod common;

use common::{binary, ids, salvage, Daemon};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn db_of(daemon: &Daemon) -> PathBuf {
    daemon.data_dir().join("outbox.db")
}

fn overwrite(file: &Path, at: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::options().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

fn truncate(file: &Path, len: u64) {
    let f = std::fs::File::options().write(true).open(file).unwrap();
    f.set_len(len).unwrap();
}

/// The quarantined files (a body log moved along, `NAME.db-bodies`, aside).
fn quarantined(daemon: &Daemon) -> Vec<PathBuf> {
    let dir = daemon.data_dir().join("quarantine");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|path| !path.to_string_lossy().ends_with("-bodies"));
    files.sort();
    files
}

/// Posts `n` events without client ids (so nearly every page of the file is
/// an events page), `pad` bytes of data each, 500 per request.
async fn post_generated(daemon: &Daemon, n: usize, pad: usize) {
    let data = "p".repeat(pad);
    for chunk in 0..n.div_ceil(500) {
        let body: String = (chunk * 500..((chunk + 1) * 500).min(n))
            .map(|i| format!("{{\"type\":\"gen\",\"data\":{{\"i\":{i},\"pad\":\"{data}\"}}}}\n"))
            .collect();
        let answer = daemon.post("application/x-ndjson", body).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
}

fn run(args: &[&str], file: &Path) -> Output {
    Command::new(binary())
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

fn send(daemon: &Daemon, file: &Path) -> String {
    let url = format!("http://127.0.0.1:{}", daemon.http_port);
    let output = run(&["send", "--url", &url], file);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_garbled_header_is_quarantined_and_salvage_then_send_brings_every_event_back() {
    let mut daemon = Daemon::start("").await;
    let original = ids("q", 200);
    daemon.post_ids(&original, "before").await;
    assert!(daemon.terminate().success());
    overwrite(&db_of(&daemon), 0, b"garbage, not SQLite");

    daemon.spawn().await;
    let files = quarantined(&daemon);
    assert_eq!(files.len(), 2, "the database and a note: {files:?}");
    let (quarantined_db, note) = (&files[0], &files[1]);
    assert!(
        quarantined_db.to_string_lossy().ends_with(".db"),
        "{files:?}"
    );
    let note = std::fs::read_to_string(note).unwrap();
    assert!(note.contains("header is not SQLite's"), "{note}");
    // Loud: readiness detail, a metric, an error in the log.
    let (status, body) = daemon.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("warning: 1 quarantined outbox database"),
        "{body}"
    );
    assert!(body.contains("outboxd salvage"), "{body}");
    let metrics = daemon.metrics().await;
    common::assert_samples(&metrics, &[("outboxd_outbox_quarantined_databases", 1.0)]);
    assert!(daemon.log().contains("OUTBOX DATABASE CORRUPT"));
    // The fresh outbox hands out seqs above the old file's, so new batch
    // keys never repeat old ones.
    let answer = daemon
        .post("application/json", r#"{"type":"after","id":"new-1"}"#)
        .await;
    assert_eq!(answer.status, 200);
    // The old totals are unreadable behind the garbled header, so the floor
    // comes from the clock: far above anything the old file handed out.
    assert!(
        answer.json()["last_seq"].as_i64().unwrap() > 1_000_000_000,
        "{:?}",
        answer.body
    );

    let out = daemon.dir.path().join("salvaged.ndjson");
    let (events, report) = salvage(quarantined_db, &out);
    assert!(report.contains("salvaged 200 events"), "{report}");
    assert!(report.contains("header was repaired"), "{report}");
    let salvaged: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(salvaged, original);
    assert!(send(&daemon, &out).contains("accepted 200 events (0 duplicates)"));
    assert!(send(&daemon, &out).contains("accepted 0 events (200 duplicates)"));
    let stored = daemon.stored().await;
    assert_eq!(stored.len(), 201);
    assert!(stored[1..].iter().zip(&original).all(|(s, id)| &s.id == id
        && s.event_type == "before"
        && s.body["data"]["n"] == id.as_str()));
}

#[tokio::test]
async fn on_corruption_refuse_exits_with_a_clear_message_and_touches_nothing() {
    let mut daemon = Daemon::start("[outbox]\non_corruption = \"refuse\"\n").await;
    daemon.post_ids(&ids("r", 10), "t").await;
    assert!(daemon.terminate().success());
    let db = db_of(&daemon);
    overwrite(&db, 0, b"garbage, not SQLite");
    let before = std::fs::read(&db).unwrap();
    let stderr = common::refused_start(&daemon.config_path);
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("is corrupt (its header is not SQLite's)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"refuse\"") && stderr.contains("outboxd salvage"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
    assert!(quarantined(&daemon).is_empty());
}

/// Damage that the O(1) start-up checks cannot see is found when a read
/// touches it: the daemon restarts itself in place (same pid), the full
/// check finds the damage, the file is quarantined, and salvage recovers
/// every event outside the damaged pages.
#[tokio::test]
async fn damage_found_at_run_time_restarts_in_place_and_quarantines() {
    let mut daemon = Daemon::start("").await;
    post_generated(&daemon, 3000, 300).await;
    assert!(daemon.terminate().success());
    let db = db_of(&daemon);
    let pages = std::fs::metadata(&db).unwrap().len() / 4096;
    overwrite(&db, pages / 2 * 4096, &[0xA5; 4096]);
    daemon.rewrite_config(
        "[ingest]",
        "[sinks.disk]\nkind = \"file\"\ndir = \"out\"\n\n[ingest]",
    );

    daemon.spawn().await;
    let pid = daemon.pid();
    let deadline = Instant::now() + Duration::from_secs(30);
    while quarantined(&daemon).is_empty() {
        assert!(
            Instant::now() < deadline,
            "not quarantined:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Wait for the restarted daemon to answer, on the same pid.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = daemon.metrics_client().get("/readyz").await {
            if answer.status == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "did not come back:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(daemon.pid(), pid);
    assert!(unsafe { libc::kill(pid, 0) } == 0, "still running");
    let log = daemon.log();
    assert!(log.contains("restarts itself"), "{log}");
    assert!(log.contains("quick_check"), "{log}");
    let (_, body) = daemon.readyz().await;
    assert!(
        body.contains("moved aside at this start: quick_check"),
        "{body}"
    );

    let out = daemon.dir.path().join("salvaged.ndjson");
    let (events, report) = salvage(&quarantined(&daemon)[0], &out);
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    // One damaged page holds about a dozen events (more if it was an
    // interior page); every missing seq is inside a reported range.
    assert!(seqs.len() >= 2900 && seqs.len() < 3000, "{report}");
    let ranges: Vec<(i64, i64)> = report
        .lines()
        .filter_map(|l| l.trim().strip_prefix("unreadable: seq "))
        .map(|r| {
            let (a, b) = r.split_once("..=").unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert!(!ranges.is_empty(), "{report}");
    for seq in 1..=3000i64 {
        let missing = seqs.binary_search(&seq).is_err();
        let reported = ranges.iter().any(|(a, b)| (*a..=*b).contains(&seq));
        assert!(
            !missing || reported,
            "seq {seq} missing but not reported: {report}"
        );
    }
    // Re-ingested, the salvaged events reach the sink, once each.
    let sent = send(&daemon, &out);
    assert!(
        sent.contains(&format!("accepted {} events (0 duplicates)", seqs.len())),
        "{sent}"
    );
    let last_seq: i64 = sent.trim().rsplit(' ').next().unwrap().parse().unwrap();
    daemon
        .wait_sink("disk", Duration::from_secs(20), |s| s["cursor"] == last_seq)
        .await;
    let mut delivered: Vec<i64> = Vec::new();
    for file in std::fs::read_dir(daemon.data_dir().join("out")).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            delivered.push(event["data"]["i"].as_i64().unwrap() + 1);
        }
    }
    delivered.sort();
    assert_eq!(delivered, seqs, "the old seq of each event is data.i + 1");
}

/// What SQLite recovers on its own: a WAL torn mid-frame, or garbled in its
/// tail or header, is replayed up to the last intact commit. The daemon
/// starts without a quarantine and everything it then holds is readable.
#[tokio::test]
async fn a_torn_or_garbled_wal_is_recovered_by_sqlite_without_quarantine() {
    type Damage = fn(&Path, u64);
    let cases: [(&str, Damage); 4] = [
        ("truncated mid-frame", |wal, len| {
            truncate(wal, len * 2 / 3 + 100)
        }),
        ("garbled tail", |wal, len| {
            overwrite(wal, len - 3000, &[0x5A; 2000])
        }),
        ("garbled middle", |wal, len| {
            overwrite(wal, len / 2, &[0x00; 512])
        }),
        ("garbled header", |wal, _| overwrite(wal, 0, &[0xFF; 32])),
    ];
    for (name, damage) in cases {
        let mut daemon = Daemon::start("").await;
        post_generated(&daemon, 2000, 200).await;
        daemon.kill9();
        let wal = daemon.data_dir().join("outbox.db-wal");
        let len = std::fs::metadata(&wal).unwrap().len();
        assert!(
            len > 100_000,
            "{name}: the WAL holds the events ({len} bytes)"
        );
        damage(&wal, len);

        daemon.spawn().await;
        let (status, body) = daemon.readyz().await;
        assert_eq!((status, body.as_str()), (200, "ready\n"), "{name}");
        assert!(quarantined(&daemon).is_empty(), "{name}");
        let answer = daemon.post("application/json", r#"{"type":"after"}"#).await;
        assert_eq!(answer.status, 200, "{name}");
        let stored = daemon.stored().await;
        let last = stored.last().unwrap();
        assert_eq!(last.event_type, "after", "{name}");
        assert_eq!(answer.json()["last_seq"], last.seq, "{name}");
        // What survived is a prefix of what was acknowledged, in order.
        for (i, event) in stored[..stored.len() - 1].iter().enumerate() {
            assert_eq!(event.body["data"]["i"], i, "{name}");
        }
    }
}

/// Damage to the main file in places the start-up checks read: quarantined
/// at open, and the daemon serves at once on a fresh outbox.
#[tokio::test]
async fn a_truncated_or_garbled_database_is_quarantined_at_start() {
    type Damage = fn(&Path, u64);
    let cases: [(&str, Damage); 3] = [
        ("truncated to half", |db, len| truncate(db, len / 2)),
        ("schema page zeroed", |db, _| overwrite(db, 100, &[0; 3996])),
        ("last page garbled", |db, len| {
            overwrite(db, len - 4096, &[0x77; 4096])
        }),
    ];
    for (name, damage) in cases {
        let mut daemon = Daemon::start("").await;
        post_generated(&daemon, 3000, 300).await;
        assert!(daemon.terminate().success());
        let db = db_of(&daemon);
        damage(&db, std::fs::metadata(&db).unwrap().len());

        daemon.spawn().await;
        let files = quarantined(&daemon);
        let dbs = files
            .iter()
            .filter(|f| f.extension().is_some_and(|x| x == "db"));
        assert_eq!(dbs.count(), 1, "{name}: {files:?}\n{}", daemon.log());
        let (status, body) = daemon.readyz().await;
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.contains("moved aside at this start"), "{name}: {body}");
        let answer = daemon.post("application/json", r#"{"type":"after"}"#).await;
        assert_eq!(answer.status, 200, "{name}");
        assert!(answer.json()["last_seq"].as_i64().unwrap() > 3000, "{name}");
    }
}
