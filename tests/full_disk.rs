//! The outbox on a small filesystem filled to the brim: ingest answers 507
//! with a clear message, nothing acknowledged is lost, the database stays
//! intact, the sink keeps draining, and ingest recovers by itself.
//!
//! The three phases run in a loop (`FULL_DISK_ROUNDS`, 3 by default; 20 in
//! the long mode), so a wedge that shows once in twenty rounds shows here.
//! The filesystem is a tmpfs the test mounts, which needs root. Without
//! root the test says so and passes without running, except under CI
//! (`CI` set), where it fails: CI runs as root.

mod common;

use common::receiver::{Receiver, Reply};
use common::Daemon;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount(8) is installed");
        if output.status.success() {
            return Some(Tmpfs(dir.to_path_buf()));
        }
        let why = String::from_utf8_lossy(&output.stderr);
        assert!(
            unsafe { libc::geteuid() } != 0,
            "running as root but cannot mount a tmpfs: {why}"
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root; mounting a tmpfs failed: {why}"
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root ({why})");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Posts 100 events of 1 KiB with ids `{prefix}-{request}-{i}` per request
/// until one is refused; returns the refusal and adds the acked ids.
async fn fill(
    daemon: &Daemon,
    prefix: &str,
    acked: &mut BTreeSet<String>,
) -> outboxd::client::Answer {
    let pad = "f".repeat(1000);
    for request in 0..10_000 {
        let ids: Vec<String> = (0..100)
            .map(|i| format!("{prefix}-{request}-{i}"))
            .collect();
        let body: String = ids
            .iter()
            .map(|id| format!("{{\"type\":\"fill\",\"id\":\"{id}\",\"data\":\"{pad}\"}}\n"))
            .collect();
        let answer = daemon.post("application/x-ndjson", body).await;
        if answer.status != 200 {
            return answer;
        }
        acked.extend(ids);
    }
    panic!("the disk never filled up");
}

fn assert_disk_full(refusal: &outboxd::client::Answer, says: &str) {
    assert_eq!(refusal.status, 507, "{:?}", refusal.body);
    assert_eq!(refusal.headers["retry-after"], "5");
    let error = refusal.json();
    assert_eq!(error["error"], "disk_full", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("the disk holding the outbox is full") && message.contains(says),
        "{error}"
    );
}

async fn wait_until_ingest_accepts(daemon: &Daemon, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = daemon
            .post(
                "application/json",
                format!(r#"{{"type":"after","id":"{id}"}}"#),
            )
            .await;
        if answer.status == 200 {
            return;
        }
        assert_eq!(answer.status, 507, "{:?}", answer.body);
        assert!(
            Instant::now() < deadline,
            "ingest did not recover:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_ingest_keeps_every_ack_and_recovers_by_itself() {
    full_disk("segments").await;
}

/// The same with every body inside the SQLite database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_with_bodies_inline_recovers_the_same_way() {
    full_disk("inline").await;
}

async fn full_disk(bodies: &str) {
    let rounds = common::env_number("FULL_DISK_ROUNDS", 3);
    let receiver = Receiver::start(|_, _| Reply::ok()).await;
    receiver.stop();
    let mut daemon = Daemon::prepare(&format!(
        "[outbox]\nmin_free_disk = \"3MiB\"\nbodies = \"{bodies}\"\n\
         [sinks.remote]\nkind = \"http\"\nurl = \"{}\"\n\
         [sinks.remote.batch]\nmax_age = \"50ms\"\nmax_events = 500\n\
         [sinks.remote.retry]\ninitial = \"50ms\"\nmax = \"300ms\"\n",
        receiver.url()
    ));
    let Some(_tmpfs) = Tmpfs::mount(&daemon.data_dir(), "12m") else {
        return;
    };
    daemon.spawn().await;
    let mut acked = BTreeSet::new();
    for round in 0..rounds {
        let phase = |n: u32| format!("round {round}, phase {n}");

        // Each round starts from the same place: everything delivered and
        // deleted, the disk reserve back in place.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let metrics = daemon.metrics().await;
            let events = common::sample(&metrics, "outboxd_outbox_events");
            let reserve = common::sample(&metrics, "outboxd_outbox_disk_reserve_bytes");
            if events == Some(0.0) && reserve == Some(786432.0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the outbox never emptied ({events:?} events) or the reserve \
                 never came back ({reserve:?} bytes)\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // 1. With the sink down, ingest fills the disk down to min_free_disk.
        receiver.stop();
        let before = acked.len();
        let refusal = fill(&daemon, &format!("a{round}"), &mut acked).await;
        assert_disk_full(&refusal, "below outbox.min_free_disk");
        assert!(
            acked.len() - before >= 2000,
            "{}: only {} events fit; {:?}\n{}",
            phase(1),
            acked.len() - before,
            refusal.body,
            daemon.log()
        );
        assert_eq!(daemon.readyz().await.0, 503, "{}", phase(1));

        // 2. The sink comes back and drains on the headroom; as delivered
        // events are deleted their pages are reused and ingest accepts again
        // by itself.
        receiver.resume().await;
        assert_delivered(&receiver, &acked, &daemon, &phase(2)).await;
        let id = format!("after-drain-{round}");
        wait_until_ingest_accepts(&daemon, &id).await;
        acked.insert(id);
        assert_eq!(daemon.readyz().await.0, 200, "{}", phase(2));

        // 3. Someone else fills the disk to the last byte: SQLite's own full
        // condition. Once that space is freed, ingest recovers by itself.
        receiver.stop();
        let filler = daemon.data_dir().join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .output()
            .unwrap();
        let refusal = fill(&daemon, &format!("b{round}"), &mut acked).await;
        assert_disk_full(&refusal, "");
        std::fs::remove_file(&filler).unwrap();
        let id = format!("after-free-{round}");
        wait_until_ingest_accepts(&daemon, &id).await;
        acked.insert(id);
        receiver.resume().await;
        assert_delivered(&receiver, &acked, &daemon, &phase(3)).await;
    }

    assert!(daemon.terminate().success());
    let db = daemon.data_dir().join("outbox.db");
    assert_eq!(integrity_check(&db), "ok");
}

/// Every acknowledged event reached the sink (none wedged on the disk).
async fn assert_delivered(
    receiver: &Receiver,
    acked: &BTreeSet<String>,
    daemon: &Daemon,
    when: &str,
) {
    assert!(
        receiver.wait_for(acked, Duration::from_secs(60)).await,
        "{when}: acknowledged events missing at the sink (a wedged sink?):\n{}",
        daemon.log()
    );
}

/// `PRAGMA integrity_check` through sqlx (the test's SQLite binding).
fn integrity_check(db: &Path) -> String {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            use sqlx::ConnectOptions;
            let mut c = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(db)
                .connect()
                .await
                .unwrap();
            sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_one(&mut c)
                .await
                .unwrap()
        })
    })
}
