//! Opening the outbox: lock the data dir, check the file, migrate, recover
//! the running totals, start the writer. Every failure names the file and
//! what to do, so a bad database never becomes a crash loop.

use super::checkpoint;
use super::writer::{Writer, WriterSettings};
use super::{Outbox, Stats};
use crate::config::{Config, SyncMode};
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

fn check_header(path: &Path) -> Result<(), OpenError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(OpenError(format!(
                "cannot read outbox database {}: {e}",
                path.display()
            )))
        }
    };
    let mut header = [0u8; 16];
    let read = file.read(&mut header).map_err(|e| {
        OpenError(format!(
            "cannot read outbox database {}: {e}",
            path.display()
        ))
    })?;
    if read == 0 {
        return Ok(()); // an empty file: SQLite initialises it
    }
    if read < 16 || &header != SQLITE_HEADER {
        return Err(not_a_database(path, "its header is not SQLite's"));
    }
    Ok(())
}

fn not_a_database(path: &Path, why: &str) -> OpenError {
    OpenError(format!(
        "outbox database {} is unreadable ({why}); move it aside (e.g. `mv {0} {0}.broken`) to start on a fresh outbox, or restore it from a backup",
        path.display()
    ))
}

fn describe(path: &Path, action: &str, error: sqlx::Error) -> OpenError {
    let text = error.to_string();
    if text.contains("file is not a database") || text.contains("malformed") {
        return not_a_database(path, &text);
    }
    OpenError(format!(
        "outbox database {}: {action} failed: {text}",
        path.display()
    ))
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
pub async fn open(config: &Config) -> Result<Opened, OpenError> {
    let lock = lock_data_dir(&config.data_dir)?;
    let path: PathBuf = config.database_path();
    check_header(&path)?;
    let options = connect_options(&path, config.outbox.sync);
    let mut connection = options
        .connect()
        .await
        .map_err(|e| describe(&path, "opening", e))?;
    MIGRATOR.run(&mut connection).await.map_err(|e| {
        let text = e.to_string();
        if text.contains("previously applied but is missing") {
            OpenError(format!(
                "outbox database {} was written by a newer outboxd ({text}); run that version or move the file aside",
                path.display()
            ))
        } else {
            OpenError(format!("outbox database {}: migrating the schema failed: {text}", path.display()))
        }
    })?;
    let (last_seq, events, bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT last_seq, event_count, byte_count FROM outbox_state WHERE singleton = 0",
    )
    .fetch_one(&mut connection)
    .await
    .map_err(|e| describe(&path, "reading outbox_state", e))?;
    // A sanity read of the newest row: catches a damaged table b-tree at once
    // rather than at the first delivery.
    let max_seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
        .fetch_one(&mut connection)
        .await
        .map_err(|e| describe(&path, "reading events", e))?;
    if max_seq.unwrap_or(0) > last_seq {
        return Err(not_a_database(
            &path,
            "outbox_state is behind the events table",
        ));
    }
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
        .map_err(|e| describe(&path, "opening readers", e))?;

    let stats = Arc::new(Stats::new(last_seq, events as u64, bytes as u64));
    let (commands, inbox) = tokio::sync::mpsc::channel(1024);
    let settings = WriterSettings::from_config(config);
    let max_bytes = settings.max_bytes;
    close(connection).await;
    let connection = writer_connection(&path, config.outbox.sync)?;
    let writer = Writer::new(connection, settings, stats.clone(), last_seq, events, bytes);
    let checkpointer = checkpoint::Checkpointer::start(
        writer_connection(&path, config.outbox.sync)?,
        stats.written_since_checkpoint.clone(),
    )
    .map_err(|e| OpenError(format!("cannot start the checkpoint thread: {e}")))?;
    let (stopped, writer_stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name("outbox-writer".into())
        .spawn(move || {
            writer.run(inbox);
            checkpointer.stop();
            let _ = stopped.send(());
        })
        .map_err(|e| OpenError(format!("cannot start the outbox writer thread: {e}")))?;
    tokio::spawn(tick(commands.downgrade()));
    tracing::info!(path = %path.display(), last_seq, events, bytes, "outbox open");
    Ok(Opened {
        outbox: Outbox {
            commands,
            readers,
            stats,
            max_bytes,
        },
        writer_stopped,
        _lock: lock,
    })
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

/// A synchronous connection for the writer or the checkpointer. The WAL
/// backstop and size limit keep the WAL near 64 MiB even under full load.
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
    connection
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 10000; \
             PRAGMA cache_size = -8192; PRAGMA wal_autocheckpoint = 16384; \
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
