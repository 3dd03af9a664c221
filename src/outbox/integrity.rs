//! Corruption: recognising it, remembering it across a restart, and moving a
//! broken database aside so the daemon starts on a fresh outbox instead of
//! crash-looping or hanging.
//!
//! Start-up checks stay O(1) (header, totals, newest row). Damage deeper in
//! the file shows up when a read or write touches it; the daemon then leaves
//! a marker and restarts itself, and the next open runs SQLite's full
//! `quick_check` because of the marker. See `outbox.on_corruption`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A quarantined database's body log sits beside it, named with this suffix.
pub const BODIES_SUFFIX: &str = "-bodies";

/// Sub-directory of `data_dir` that holds quarantined databases.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Left in `data_dir` when corruption was seen at run time: the next open
/// checks the whole file.
const MARKER: &str = "outbox.db.check";

/// SQLITE_CORRUPT and SQLITE_NOTADB (primary result codes).
fn corrupt_code(code: i32) -> bool {
    matches!(code & 0xff, 11 | 26)
}

fn corrupt_text(text: &str) -> bool {
    text.contains("malformed") || text.contains("not a database")
}

pub fn rusqlite_is_corrupt(error: &rusqlite::Error) -> bool {
    match error {
        rusqlite::Error::SqliteFailure(e, _) => corrupt_code(e.extended_code),
        other => corrupt_text(&other.to_string()),
    }
}

pub fn sqlx_is_corrupt(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code()
                .and_then(|code| code.parse::<i32>().ok())
                .is_some_and(corrupt_code)
                || corrupt_text(db.message())
        }
        other => corrupt_text(&other.to_string()),
    }
}

/// Records (durably) that the database was seen corrupt and why.
pub fn mark_suspect(data_dir: &Path, reason: &str) -> std::io::Result<()> {
    let mut file = std::fs::File::create(data_dir.join(MARKER))?;
    file.write_all(reason.as_bytes())?;
    file.sync_all()
}

/// Why the last run suspected corruption, if it did.
pub fn suspect_reason(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(MARKER)).ok()
}

pub fn clear_suspect(data_dir: &Path) {
    let _ = std::fs::remove_file(data_dir.join(MARKER));
}

/// A database moved aside.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub file: PathBuf,
    pub reason: String,
}

/// Moves `db` (and its WAL and body log) into `data_dir/quarantine/` under a UTC
/// timestamp, with a `.txt` saying why. The shared-memory index is derived
/// data and is deleted.
pub fn quarantine(db: &Path, reason: &str) -> std::io::Result<Quarantined> {
    let data_dir = db.parent().unwrap_or(Path::new("."));
    let dir = data_dir.join(QUARANTINE_DIR);
    std::fs::create_dir_all(&dir)?;
    let stamp = utc_stamp();
    let mut name = format!("outbox-{stamp}");
    let mut n = 1;
    while dir.join(format!("{name}.db")).exists() {
        n += 1;
        name = format!("outbox-{stamp}-{n}");
    }
    let target = dir.join(format!("{name}.db"));
    let mut note = std::fs::File::create(dir.join(format!("{name}.txt")))?;
    writeln!(
        note,
        "quarantined by outboxd {} from {}\nreason: {reason}\nrecover its events with: outboxd salvage {}",
        env!("CARGO_PKG_VERSION"),
        db.display(),
        target.display()
    )?;
    note.sync_all()?;
    let wal = sibling(db, "-wal");
    if wal.exists() {
        std::fs::rename(&wal, sibling(&target, "-wal"))?;
    }
    // The body log belongs to this database: its rows name offsets in it.
    let bodies = data_dir.join(super::bodies::BODIES_DIR);
    if bodies.exists() {
        std::fs::rename(&bodies, sibling(&target, BODIES_SUFFIX))?;
    }
    std::fs::rename(db, &target)?;
    let _ = std::fs::remove_file(sibling(db, "-shm"));
    std::fs::File::open(&dir)?.sync_all()?;
    std::fs::File::open(data_dir)?.sync_all()?;
    clear_suspect(data_dir);
    Ok(Quarantined {
        file: target,
        reason: reason.to_string(),
    })
}

/// Quarantined databases still in `data_dir` (an operator removes them once salvaged).
pub fn quarantined_files(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(QUARANTINE_DIR)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "db"))
        .collect();
    files.sort();
    files
}

/// The first seq a fresh outbox replacing `db` may use: above every seq the
/// broken file could have handed out, so S3 keys and idempotency keys of
/// new batches never repeat old ones. The totals row is authoritative when
/// readable; otherwise the newest readable seqs and a clock-derived floor
/// (1000 per millisecond since the epoch, far above any real rate) bound it.
pub fn next_seq_after(db: &Path) -> i64 {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = rusqlite::Connection::open_with_flags(db, flags).ok();
    let read = |sql: &str| connection.as_ref().and_then(|c| read_seq(c, sql));
    if let Some(last) = read("SELECT last_seq FROM outbox_state WHERE singleton = 0") {
        return last.saturating_add(1);
    }
    let clock = crate::clock::now_ms().saturating_mul(1000);
    [
        "SELECT MAX(seq) FROM events",
        "SELECT MAX(seq) FROM dedup",
        "SELECT MAX(batch_last) FROM sink_cursors",
        "SELECT MAX(last_seq) FROM sink_batches",
    ]
    .iter()
    .filter_map(|sql| read(sql))
    .fold(clock, |floor, seq| floor.max(seq.saturating_add(1)))
}

/// One seq from a possibly damaged database; None when unreadable or NULL.
pub fn read_seq(connection: &rusqlite::Connection, sql: &str) -> Option<i64> {
    connection
        .query_row(sql, [], |row| row.get::<_, Option<i64>>(0))
        .ok()
        .flatten()
}

pub fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn utc_stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_codes_are_recognised_and_others_are_not() {
        let corrupt = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(11), None);
        let not_a_db = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(26), None);
        let corrupt_index = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(779), None);
        let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(13), None);
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(5), None);
        assert!(rusqlite_is_corrupt(&corrupt));
        assert!(rusqlite_is_corrupt(&not_a_db));
        assert!(rusqlite_is_corrupt(&corrupt_index));
        assert!(!rusqlite_is_corrupt(&full));
        assert!(!rusqlite_is_corrupt(&busy));
    }

    #[test]
    fn quarantine_moves_the_files_and_a_fresh_outbox_starts_above_the_old_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("outbox.db");
        {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE outbox_state (singleton INTEGER PRIMARY KEY, last_seq INTEGER); \
                 INSERT INTO outbox_state VALUES (0, 41);",
            )
            .unwrap();
            assert_eq!(next_seq_after(&db), 42);
        }
        mark_suspect(dir.path(), "seen at run time").unwrap();
        assert_eq!(
            suspect_reason(dir.path()).as_deref(),
            Some("seen at run time")
        );
        let moved = quarantine(&db, "test").unwrap();
        assert!(!db.exists() && moved.file.exists());
        assert_eq!(quarantined_files(dir.path()), vec![moved.file.clone()]);
        assert_eq!(
            suspect_reason(dir.path()),
            None,
            "the marker goes with the file"
        );
        let note = std::fs::read_to_string(moved.file.with_extension("txt")).unwrap();
        assert!(
            note.contains("reason: test") && note.contains("outboxd salvage"),
            "{note}"
        );
        // A second quarantine in the same second gets its own name.
        std::fs::write(&db, b"garbage").unwrap();
        let again = quarantine(&db, "again").unwrap();
        assert_ne!(again.file, moved.file);
        // Unreadable: the floor comes from the clock.
        std::fs::write(&db, b"garbage").unwrap();
        assert!(next_seq_after(&db) > crate::clock::now_ms());
    }
}
