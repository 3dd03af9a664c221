//! Upgrading an outbox written by an older outboxd: what it recorded must
//! carry over. Before migration 0004 a sink's batch in flight lived in
//! `sink_cursors.batch_first/batch_last`; after the upgrade that exact range
//! goes out first, with the same idempotency key, whatever the new batch
//! bounds would gather.

mod common;

use common::receiver::{Receiver, Reply};
use common::{ids, Daemon};
use std::collections::BTreeSet;
use std::time::Duration;

fn sink(url: &str, max_events: usize) -> String {
    format!(
        "[sinks.remote]\nkind = \"http\"\nurl = \"{url}\"\n[sinks.remote.batch]\nmax_events = {max_events}\n\
         [sinks.remote.retry]\ninitial = \"50ms\"\nmax = \"200ms\"\n"
    )
}

#[tokio::test]
async fn a_batch_in_flight_recorded_before_0004_is_resent_as_it_was() {
    let receiver = Receiver::start(|_, _| Reply::status(503)).await;
    let mut daemon = Daemon::start(&sink(&receiver.url(), 10)).await;
    let sent = ids("upgrade", 30);
    daemon.post_ids(&sent, "upgrade.test").await;
    common::eventually("the first batch attempted", || async {
        !receiver.seen().is_empty()
    })
    .await;
    let key = receiver.seen()[0].key.clone();
    assert_eq!(receiver.seen()[0].seqs, (1..=10).collect::<Vec<i64>>());
    assert!(daemon.terminate().success());

    // Put the database back in the shape an outboxd before 0004 left it.
    let db = rusqlite::Connection::open(daemon.data_dir().join("outbox.db")).unwrap();
    db.execute_batch(
        "UPDATE sink_cursors SET batch_first = 1, batch_last = 10 WHERE sink = 'remote';
         DROP TABLE sink_batches;
         DELETE FROM _sqlx_migrations WHERE version = 4;",
    )
    .unwrap();
    drop(db);

    // Batches of 30 now: a lost range would go out as 1-30 under a new key.
    receiver.set_script(|_, _| Reply::ok());
    let before = receiver.seen().len();
    daemon.reconfigure(&sink(&receiver.url(), 30));
    daemon.spawn().await;
    let wanted: BTreeSet<String> = sent.iter().cloned().collect();
    assert!(
        receiver.wait_for(&wanted, Duration::from_secs(60)).await,
        "{}",
        daemon.log()
    );
    let after: Vec<_> = receiver.seen().into_iter().skip(before).collect();
    assert_eq!(after[0].seqs, (1..=10).collect::<Vec<i64>>(), "{after:?}");
    assert_eq!(after[0].key, key, "the same range, the same key");
    assert_eq!(after[1].seqs, (11..=30).collect::<Vec<i64>>(), "{after:?}");
    let mut accepted = receiver.accepted_ids();
    accepted.sort();
    assert_eq!(accepted, sent, "every event exactly once");
    daemon
        .wait_sink("remote", Duration::from_secs(60), |s| s["cursor"] == 30)
        .await;
    assert!(daemon.terminate().success());
    let db = rusqlite::Connection::open(daemon.data_dir().join("outbox.db")).unwrap();
    let left: (i64, Option<i64>) = db
        .query_row(
            "SELECT (SELECT COUNT(*) FROM sink_batches), (SELECT batch_first FROM sink_cursors WHERE sink = 'remote')",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        left,
        (0, None),
        "nothing left in flight, old columns cleared"
    );
}
