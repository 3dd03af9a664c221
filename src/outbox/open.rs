//! Opening the outbox: lock the data dir, check the file, migrate, recover
//! the running totals, start the writer. Every failure names the file and
//! what to do, so a bad database never becomes a crash loop.

use super::bodies::{self, BodyLog};
use super::checkpoint;
use super::integrity::{self, Quarantined};
use super::reserve::DiskReserve;
use super::writer::{Writer, WriterSettings};
use super::{BodyStore, OnCorruption, Settings, SyncMode};
use super::{Outbox, Stats};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(String);

/// An open outbox: the handle, the writer (resolves when it stopped), and
/// the data-dir lock that keeps a second daemon off the same files.
pub struct Opened {
    pub outbox: Outbox,
    pub writer_stopped: oneshot::Receiver<()>,
    _lock: File,
}

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

fn lock_data_dir(dir: &Path) -> Result<File, OpenError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| OpenError(format!("cannot create data_dir {}: {e}", dir.display())))?;
    let path = dir.join("outboxd.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| OpenError(format!("cannot open lock file {}: {e}", path.display())))?;
    file.try_lock().map_err(|_| {
        OpenError(format!(
            "another outboxd is using data_dir {} (lock {} is held); stop it or choose another data_dir",
            dir.display(),
            path.display()
        ))
    })?;
    Ok(file)
}

/// Why an open failed: corruption is handled by `outbox.on_corruption`,
/// anything else (permissions, a newer schema, a full disk) is reported as is.
enum Failure {
    Corrupt(String),
    Other(OpenError),
}

fn sqlx_failure(path: &Path, action: &str, error: sqlx::Error) -> Failure {
    if integrity::sqlx_is_corrupt(&error) {
        Failure::Corrupt(format!("{action}: {error}"))
    } else {
        Failure::Other(OpenError(format!(
            "outbox database {}: {action} failed: {error}",
            path.display()
        )))
    }
}

fn check_header(path: &Path) -> Result<(), Failure> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Failure::Other(OpenError(format!(
                "cannot read outbox database {}: {e}",
                path.display()
            ))))
        }
    };
    let mut header = [0u8; 16];
    let read = file.read(&mut header).map_err(|e| {
        Failure::Other(OpenError(format!(
            "cannot read outbox database {}: {e}",
            path.display()
        )))
    })?;
    if read == 0 {
        return Ok(()); // an empty file: SQLite initialises it
    }
    if read < 16 || &header != SQLITE_HEADER {
        return Err(Failure::Corrupt("its header is not SQLite's".into()));
    }
    Ok(())
}

/// The outbox's totals, read and checked at open.
struct Totals {
    last_seq: i64,
    events: i64,
    bytes: i64,
}

/// Opens, migrates and checks the database. The checks are O(1) unless the
/// last run saw corruption (`suspect`): then SQLite's `quick_check` reads
/// the whole file. `start_after` lifts a fresh outbox's seq past a
/// quarantined one's.
async fn check(
    path: &Path,
    options: &SqliteConnectOptions,
    suspect: Option<&str>,
    start_after: Option<i64>,
) -> Result<(sqlx::SqliteConnection, Totals), Failure> {
    check_header(path)?;
    let mut connection = options
        .connect()
        .await
        .map_err(|e| sqlx_failure(path, "opening", e))?;
    match check_connected(path, &mut connection, suspect, start_after).await {
        Ok(totals) => Ok((connection, totals)),
        Err(failure) => {
            // Closed before the caller may move the file: a connection closing
            // later would checkpoint into it and delete the WAL by name, which
            // by then could be the fresh outbox's.
            close(connection).await;
            Err(failure)
        }
    }
}

async fn check_connected(
    path: &Path,
    connection: &mut sqlx::SqliteConnection,
    suspect: Option<&str>,
    start_after: Option<i64>,
) -> Result<Totals, Failure> {
    if let Err(e) = MIGRATOR.run(&mut *connection).await {
        let text = e.to_string();
        return Err(if text.contains("previously applied but is missing") {
            Failure::Other(OpenError(format!(
                "outbox database {} was written by a newer outboxd ({text}); run that version or move the file aside",
                path.display()
            )))
        } else if text.contains("malformed") || text.contains("not a database") {
            Failure::Corrupt(format!("migrating the schema: {text}"))
        } else {
            Failure::Other(OpenError(format!(
                "outbox database {}: migrating the schema failed: {text}",
                path.display()
            )))
        });
    }
    if let Some(after) = start_after {
        sqlx::query("UPDATE outbox_state SET last_seq = MAX(last_seq, ?1) WHERE singleton = 0")
            .bind(after)
            .execute(&mut *connection)
            .await
            .map_err(|e| sqlx_failure(path, "setting the first seq", e))?;
    }
    let (last_seq, events, bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT last_seq, event_count, byte_count FROM outbox_state WHERE singleton = 0",
    )
    .fetch_one(&mut *connection)
    .await
    .map_err(|e| sqlx_failure(path, "reading outbox_state", e))?;
    // A read of the newest row and of each sink's cursor: catches a damaged
    // table b-tree at once rather than at the first delivery.
    let max_seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
        .fetch_one(&mut *connection)
        .await
        .map_err(|e| sqlx_failure(path, "reading events", e))?;
    if max_seq.unwrap_or(0) > last_seq {
        return Err(Failure::Corrupt(
            "outbox_state is behind the events table".into(),
        ));
    }
    sqlx::query("SELECT COUNT(*) FROM sink_cursors")
        .fetch_one(&mut *connection)
        .await
        .map_err(|e| sqlx_failure(path, "reading sink_cursors", e))?;
    check_body_log(path, connection).await?;
    if let Some(reason) = suspect {
        tracing::warn!(earlier = %reason.trim(), "the last run saw corruption; checking the whole outbox database");
        let problems: Vec<String> = sqlx::query_scalar("PRAGMA quick_check(5)")
            .fetch_all(&mut *connection)
            .await
            .map_err(|e| sqlx_failure(path, "quick_check", e))?;
        if problems != ["ok"] {
            return Err(Failure::Corrupt(format!(
                "quick_check: {}",
                problems.join("; ")
            )));
        }
        tracing::warn!("quick_check found the outbox database intact");
    }
    Ok(Totals {
        last_seq,
        events,
        bytes,
    })
}

/// The body log's segments are there and hold what the database says was
/// committed to them; a missing or short one is corruption like a damaged
/// page (`on_corruption` applies).
async fn check_body_log(
    path: &Path,
    connection: &mut sqlx::SqliteConnection,
) -> Result<(), Failure> {
    let log_end: i64 = sqlx::query_scalar("SELECT log_end FROM outbox_state WHERE singleton = 0")
        .fetch_one(&mut *connection)
        .await
        .map_err(|e| sqlx_failure(path, "reading outbox_state", e))?;
    let kept: Vec<i64> = sqlx::query_scalar("SELECT start FROM body_segments ORDER BY start")
        .fetch_all(&mut *connection)
        .await
        .map_err(|e| sqlx_failure(path, "reading body_segments", e))?;
    let kept: Vec<u64> = kept.into_iter().map(|start| start as u64).collect();
    let data_dir = path.parent().unwrap_or(Path::new("."));
    bodies::verify(data_dir, log_end as u64, &kept).map_err(|damage| match damage {
        bodies::Damage::Damaged(why) => Failure::Corrupt(why),
        bodies::Damage::Unreadable(why) => Failure::Other(OpenError(format!(
            "outbox database {}: checking the body log failed: {why}",
            path.display()
        ))),
    })
}

pub fn connect_options(path: &Path, sync: SyncMode) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match sync {
            SyncMode::Full => SqliteSynchronous::Full,
            SyncMode::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(10))
        .pragma("cache_size", "-8192")
        .disable_statement_logging()
}

/// Opens (creating if needed) the outbox under `config.data_dir` and starts its writer.
pub async fn open(config: &Settings) -> Result<Opened, OpenError> {
    let lock = lock_data_dir(&config.data_dir)?;
    let path: PathBuf = config.database_path();
    let options = connect_options(&path, config.outbox.sync);
    let suspect = integrity::suspect_reason(&config.data_dir);
    let mut quarantined = None;
    let (connection, totals) = match check(&path, &options, suspect.as_deref(), None).await {
        Ok(opened) => opened,
        Err(Failure::Other(e)) => return Err(e),
        Err(Failure::Corrupt(reason)) => match config.outbox.on_corruption {
            OnCorruption::Refuse => {
                return Err(OpenError(format!(
                    "outbox database {} is corrupt ({reason}); outbox.on_corruption = \"refuse\": \
                     move it aside (or set on_corruption = \"quarantine\") to start on a fresh outbox, \
                     and recover its events with `outboxd salvage {0}`",
                    path.display()
                )))
            }
            OnCorruption::Quarantine => {
                let next_seq = integrity::next_seq_after(&path);
                let moved = integrity::quarantine(&path, &reason).map_err(|e| {
                    OpenError(format!(
                        "outbox database {} is corrupt ({reason}) and moving it aside failed: {e}",
                        path.display()
                    ))
                })?;
                tracing::error!(
                    file = %moved.file.display(),
                    %reason,
                    next_seq,
                    "OUTBOX DATABASE CORRUPT: moved it to quarantine and started on a fresh outbox; \
                     recover its events with `outboxd salvage FILE | outboxd send`"
                );
                let fresh = check(&path, &options, None, Some(next_seq - 1))
                    .await
                    .map_err(|failure| match failure {
                        Failure::Other(e) => e,
                        Failure::Corrupt(why) => OpenError(format!(
                            "the fresh outbox database {} is corrupt too ({why}); check the disk",
                            path.display()
                        )),
                    })?;
                quarantined = Some(moved);
                fresh
            }
        },
    };
    if suspect.is_some() {
        integrity::clear_suspect(&config.data_dir);
    }
    let mut connection = connection;
    if let Err(e) = super::sessions::ensure_index(&mut connection, config.index_sessions).await {
        close(connection).await;
        return Err(OpenError(format!(
            "outbox database {}: building the session index failed: {e}",
            path.display()
        )));
    }
    let Totals {
        last_seq,
        events,
        bytes,
    } = totals;
    let readers = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(0)
        .connect_with(
            options
                .clone()
                .read_only(true)
                .create_if_missing(false)
                // Readers stream through the backlog once; a big cache buys nothing.
                .pragma("cache_size", "-1024"),
        )
        .await
        .map_err(|e| {
            OpenError(format!(
                "outbox database {}: opening readers failed: {e}",
                path.display()
            ))
        })?;

    let mut stats = Stats::new(last_seq, events as u64, bytes as u64);
    stats.quarantine = quarantine_notice(&config.data_dir, quarantined.as_ref());
    let stats = Arc::new(stats);
    let (commands, inbox) = tokio::sync::mpsc::channel(1024);
    let settings = WriterSettings::new(config);
    let max_bytes = settings.max_bytes;
    close(connection).await;
    let connection = writer_connection(&path, config.outbox.sync)?;
    let wal_frames = Arc::new(checkpoint::WalFrames::default());
    wal_frames.install(&connection);
    let reserve = Arc::new(DiskReserve::new(
        &config.data_dir,
        config.outbox.min_free_disk.0,
    ));
    let log = open_body_log(&connection, config, &path)?;
    let segments = log.as_ref().map(BodyLog::segments);
    let writer = Writer::new(
        connection,
        settings,
        stats.clone(),
        (last_seq, events, bytes),
        reserve.clone(),
        log,
    );
    let database = std::fs::File::open(&path).map_err(|e| {
        OpenError(format!(
            "outbox database {}: opening it for the checkpoint thread failed: {e}",
            path.display()
        ))
    })?;
    let checkpointer = checkpoint::Checkpointer::start(
        writer_connection(&path, config.outbox.sync)?,
        database,
        wal_frames,
        reserve,
    )
    .map_err(|e| OpenError(format!("cannot start the checkpoint thread: {e}")))?;
    let (stopped, writer_stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name("outbox-writer".into())
        .spawn(move || {
            let mut writer = writer;
            writer.run(inbox);
            checkpointer.stop();
            writer.close();
            let _ = stopped.send(());
        })
        .map_err(|e| OpenError(format!("cannot start the outbox writer thread: {e}")))?;
    tokio::spawn(tick(commands.downgrade()));
    tracing::info!(path = %path.display(), last_seq, events, bytes, "outbox open");
    Ok(Opened {
        outbox: Outbox {
            commands,
            readers,
            scanner: Arc::new(super::scan::Scanner::new(&path, segments)),
            stats,
            max_bytes,
        },
        writer_stopped,
        _lock: lock,
    })
}

/// The body log, when it is on or still holds bodies (it stays readable
/// after `outbox.bodies` goes back to `"inline"`).
fn open_body_log(
    connection: &rusqlite::Connection,
    config: &Settings,
    path: &Path,
) -> Result<Option<BodyLog>, OpenError> {
    let (log_end, kept) = bodies::stored_state(connection).map_err(|e| {
        OpenError(format!(
            "outbox database {}: reading the body log's state failed: {e}",
            path.display()
        ))
    })?;
    if config.outbox.bodies == BodyStore::Inline && kept.is_empty() {
        return Ok(None);
    }
    BodyLog::open(
        &config.data_dir,
        log_end,
        &kept,
        config.outbox.segment_bytes.0.max(1),
    )
    .map(Some)
    .map_err(|e| OpenError(format!("the outbox's body log: {e}")))
}

/// What `/readyz` and the metric say about quarantined databases still in
/// `data_dir`: they stay loud until an operator salvaged and removed them.
fn quarantine_notice(data_dir: &Path, now: Option<&Quarantined>) -> Option<String> {
    let files = integrity::quarantined_files(data_dir);
    metrics::gauge!(crate::telemetry::names::OUTBOX_QUARANTINED).set(files.len() as f64);
    let newest = files.last()?;
    let mut notice = format!(
        "{} quarantined outbox database(s) in {}; newest {}",
        files.len(),
        data_dir.join(integrity::QUARANTINE_DIR).display(),
        newest.display()
    );
    if let Some(now) = now {
        notice.push_str(&format!(" (moved aside at this start: {})", now.reason));
    }
    notice.push_str("; recover with `outboxd salvage FILE | outboxd send`, then delete it");
    Some(notice)
}

/// Wakes an idle writer once a second (for dedup pruning); ends with the outbox.
async fn tick(commands: tokio::sync::mpsc::WeakSender<super::Command>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let Some(commands) = commands.upgrade() else {
            return;
        };
        let _ = commands.try_send(super::Command::Tick);
    }
}

/// A synchronous connection for the writer or the checkpointer. The
/// checkpointer keeps the WAL small; once it starts over, the size limit
/// gives back what a burst made it grow beyond 64 MiB.
fn writer_connection(path: &Path, sync: SyncMode) -> Result<rusqlite::Connection, OpenError> {
    let connection = rusqlite::Connection::open(path).map_err(|e| {
        OpenError(format!(
            "outbox database {}: opening the writer failed: {e}",
            path.display()
        ))
    })?;
    let synchronous = match sync {
        SyncMode::Full => "FULL",
        SyncMode::Normal => "NORMAL",
    };
    // 2 MiB of page cache: the writer mostly appends, so what it caches is
    // the pages it just wrote; 8 MiB measured no faster, dedup included,
    // and held 5-8 MiB more RSS under load.
    connection
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 10000; \
             PRAGMA cache_size = -2048; \
             PRAGMA journal_size_limit = 67108864;"
        ))
        .map_err(|e| OpenError(format!("outbox database {}: setting up the writer failed: {e}", path.display())))?;
    connection.set_prepared_statement_cache_capacity(32);
    Ok(connection)
}

/// Closes a connection cleanly.
async fn close(connection: sqlx::SqliteConnection) {
    if let Err(e) = connection.close().await {
        tracing::warn!(error = %e, "closing the outbox database");
    }
}
