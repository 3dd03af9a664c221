//! `outboxd salvage FILE`: exports every readable event of an outbox
//! database (typically one moved to `quarantine/`) as NDJSON that
//! `outboxd send` re-ingests; event ids make the re-ingest idempotent.
//!
//! It works on a copy (the file and its WAL), so the evidence is never
//! changed, repairs a garbled header in the copy, and steps over damaged
//! b-tree pages instead of stopping at the first one.

use crate::format::push_with_seq;
use crate::outbox::bodies::BODIES_DIR;
use crate::outbox::integrity::{read_seq, sibling, BODIES_SUFFIX};
use anyhow::Context;
use rusqlite::{params, Connection};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a salvage found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SalvageReport {
    pub events: u64,
    /// Dead letters whose event had already left the events table.
    pub dead_letters: u64,
    /// Rows readable but not a JSON object (garbled record content).
    pub invalid: u64,
    /// Seq ranges that could not be read.
    pub unreadable: Vec<(i64, i64)>,
    pub header_repaired: bool,
}

impl std::fmt::Display for SalvageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "salvaged {} events and {} dead letters; {} unreadable seq ranges, {} garbled rows skipped",
            self.events,
            self.dead_letters,
            self.unreadable.len(),
            self.invalid
        )?;
        if self.header_repaired {
            write!(f, "; the file header was repaired (in the copy)")?;
        }
        for (first, last) in &self.unreadable {
            write!(f, "\n  unreadable: seq {first}..={last}")?;
        }
        Ok(())
    }
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
const BATCH: i64 = 1000;

/// A scratch copy of the database, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// A directory of its own: two salvages in one process (the tests run
    /// in parallel) once shared `outboxd-salvage-PID`, and each read or
    /// deleted the other's copy.
    fn create() -> std::io::Result<Scratch> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("outboxd-salvage-{}-{n}", std::process::id()));
        // create_dir, not create_dir_all: a leftover of the same name is an error, never shared.
        std::fs::create_dir(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn salvage(file: &Path, out: &mut dyn Write) -> anyhow::Result<SalvageReport> {
    let meta =
        std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a file", file.display());
    let scratch = Scratch::create().context("creating a scratch directory for the copy")?;
    let copy = scratch.0.join("outbox.db");
    std::fs::copy(file, &copy)
        .with_context(|| format!("copying {} to {}", file.display(), copy.display()))?;
    if sibling(file, "-wal").exists() {
        std::fs::copy(sibling(file, "-wal"), sibling(&copy, "-wal")).context("copying the WAL")?;
    }
    let mut report = SalvageReport {
        header_repaired: repair_header(&copy)?,
        ..SalvageReport::default()
    };
    let connection = Connection::open(&copy)
        .with_context(|| format!("{} cannot be opened as SQLite", file.display()))?;
    let log = BodyLogFiles::beside(file, &connection)?;
    let upper = newest_seq(&connection);
    let mut next = i64::MIN;
    let mut line = Vec::with_capacity(4096);
    loop {
        match read_from(&connection, log.as_ref(), next, out, &mut line, &mut report)? {
            Read::Done => break,
            Read::More(after) => next = after + 1,
            Read::FailedAt(at) => match resume_after_damage(&connection, at, upper) {
                Some(resume) => {
                    report.unreadable.push((at, resume - 1));
                    next = resume;
                }
                None => {
                    report.unreadable.push((at, upper.unwrap_or(at).max(at)));
                    break;
                }
            },
        }
    }
    if report.events == 0 && !report.unreadable.is_empty() && upper.is_none() {
        anyhow::bail!("{}: no events table could be read", file.display());
    }
    salvage_dead_letters(&connection, out, &mut line, &mut report);
    out.flush()?;
    Ok(report)
}

/// Puts SQLite's fixed header fields back when the magic string is damaged.
fn repair_header(copy: &Path) -> anyhow::Result<bool> {
    use std::io::{Read as _, Seek, SeekFrom};
    let mut file = std::fs::File::options().read(true).write(true).open(copy)?;
    let mut header = [0u8; 24];
    if file.read(&mut header)? < header.len() || &header[..16] == SQLITE_MAGIC {
        return Ok(false);
    }
    header[..16].copy_from_slice(SQLITE_MAGIC);
    let page_size = u16::from_be_bytes([header[16], header[17]]);
    if !(page_size == 1 || (page_size >= 512 && page_size.is_power_of_two())) {
        header[16..18].copy_from_slice(&4096u16.to_be_bytes());
    }
    // WAL mode file format, no reserved bytes, fixed payload fractions.
    header[18..24].copy_from_slice(&[2, 2, 0, 64, 32, 32]);
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&header)?;
    Ok(true)
}

/// The highest seq the file handed out, if any part that says so is readable.
fn newest_seq(connection: &Connection) -> Option<i64> {
    [
        "SELECT last_seq FROM outbox_state WHERE singleton = 0",
        "SELECT MAX(seq) FROM events",
    ]
    .iter()
    .filter_map(|sql| read_seq(connection, sql))
    .max()
}

enum Read {
    Done,
    More(i64),
    /// Reading the first row at or after this seq failed.
    FailedAt(i64),
}

/// The segment files of a salvaged database's body log (see
/// `outbox::bodies`): beside a quarantined file as `NAME.db-bodies`, or
/// `bodies/` beside a live `outbox.db`.
struct BodyLogFiles {
    files: std::collections::BTreeMap<u64, std::fs::File>,
}

impl BodyLogFiles {
    /// None when the database keeps every body inline (an older schema, or
    /// no body in the log).
    fn beside(file: &Path, connection: &Connection) -> anyhow::Result<Option<BodyLogFiles>> {
        let in_log = read_seq(
            connection,
            "SELECT COUNT(*) FROM events WHERE body_at IS NOT NULL",
        )
        .unwrap_or(0);
        let has_columns = connection
            .prepare("SELECT body_at, body_len FROM events LIMIT 0")
            .is_ok();
        if !has_columns {
            return Ok(None);
        }
        let quarantined = sibling(file, BODIES_SUFFIX);
        let dir = if quarantined.is_dir() {
            quarantined
        } else {
            file.parent().unwrap_or(Path::new(".")).join(BODIES_DIR)
        };
        let mut files = std::collections::BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                let start = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".log"))
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(start) = start {
                    let opened = std::fs::File::open(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    files.insert(start, opened);
                }
            }
        }
        if files.is_empty() && in_log > 0 {
            eprintln!(
                "outboxd salvage: {in_log} events keep their body in a body log, and {} holds none: they are skipped",
                dir.display()
            );
        }
        Ok(Some(BodyLogFiles { files }))
    }

    fn read(&self, at: u64, len: u64) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let (start, file) = self.files.range(..=at).next_back()?;
        let mut body = vec![0u8; len as usize];
        file.read_exact_at(&mut body, at - start).ok()?;
        Some(body)
    }
}

fn read_from(
    connection: &Connection,
    log: Option<&BodyLogFiles>,
    from: i64,
    out: &mut dyn Write,
    line: &mut Vec<u8>,
    report: &mut SalvageReport,
) -> anyhow::Result<Read> {
    let sql = match log {
        Some(_) => {
            "SELECT seq, body, body_at, body_len FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2"
        }
        None => "SELECT seq, body, NULL, NULL FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
    };
    let Ok(mut statement) = connection.prepare_cached(sql) else {
        return Ok(Read::FailedAt(from));
    };
    let Ok(mut rows) = statement.query(params![from, BATCH]) else {
        return Ok(Read::FailedAt(from));
    };
    let (mut last, mut count) = (None, 0);
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                let (Ok(seq), Ok(body)) = (row.get::<_, i64>(0), row.get::<_, Vec<u8>>(1)) else {
                    report.invalid += 1;
                    continue;
                };
                let place = (row.get::<_, Option<i64>>(2), row.get::<_, Option<i64>>(3));
                let body = match (place, log) {
                    ((Ok(None), _), _) => Some(body),
                    ((Ok(Some(at)), Ok(Some(len))), Some(log)) => log.read(at as u64, len as u64),
                    _ => None,
                };
                match body {
                    Some(body) => emit(seq, &body, out, line, report, |r| r.events += 1)?,
                    None => report.invalid += 1,
                }
                last = Some(seq);
                count += 1;
            }
            Ok(None) if count < BATCH => return Ok(Read::Done),
            Ok(None) => return Ok(Read::More(last.unwrap_or(from))),
            Err(_) => return Ok(Read::FailedAt(last.map_or(from, |s| s + 1))),
        }
    }
}

fn emit(
    seq: i64,
    body: &[u8],
    out: &mut dyn Write,
    line: &mut Vec<u8>,
    report: &mut SalvageReport,
    count: impl FnOnce(&mut SalvageReport),
) -> anyhow::Result<()> {
    let object = body.first() == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    if !object {
        report.invalid += 1;
        return Ok(());
    }
    line.clear();
    push_with_seq(line, seq, body);
    line.push(b'\n');
    out.write_all(line).context("writing the output")?;
    count(report);
    Ok(())
}

/// Whether the first row at or after `from` can be read (Some(false): there is none).
fn probe(connection: &Connection, from: i64) -> Result<bool, ()> {
    connection
        .query_row(
            "SELECT seq FROM events WHERE seq >= ?1 ORDER BY seq LIMIT 1",
            [from],
            |r| r.get::<_, i64>(0),
        )
        .map(|_| true)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(false),
            _ => Err(()),
        })
}

/// The smallest seq after the damage at `at` from which reading works again:
/// probe at doubling distances, then narrow down by bisection. None when no
/// readable row follows.
fn resume_after_damage(connection: &Connection, at: i64, upper: Option<i64>) -> Option<i64> {
    let limit = upper.unwrap_or(at.saturating_add(1 << 40));
    let (mut bad, mut step) = (at, 1i64);
    let good = loop {
        let candidate = at.saturating_add(step);
        if candidate > limit {
            return None;
        }
        match probe(connection, candidate) {
            Ok(true) => break candidate,
            Ok(false) => return None,
            Err(()) => {
                bad = candidate;
                step = step.saturating_mul(2);
            }
        }
    };
    let mut good = good;
    while good - bad > 1 {
        let mid = bad + (good - bad) / 2;
        match probe(connection, mid) {
            Ok(true) => good = mid,
            Ok(false) => return None,
            Err(()) => bad = mid,
        }
    }
    Some(good)
}

/// Dead letters are acknowledged events too; export those whose event is
/// no longer (readably) in the events table. Best effort: a damaged
/// dead-letter table is reported, not fatal.
fn salvage_dead_letters(
    connection: &Connection,
    out: &mut dyn Write,
    line: &mut Vec<u8>,
    report: &mut SalvageReport,
) {
    let result = (|| -> anyhow::Result<()> {
        let mut statement = connection.prepare(
            "SELECT DISTINCT seq, body FROM dead_letters d \
             WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.seq = d.seq) ORDER BY seq",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let (seq, body): (i64, Vec<u8>) = (row.get(0)?, row.get(1)?);
            emit(seq, &body, out, line, report, |r| r.dead_letters += 1)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("outboxd salvage: dead letters only partly readable: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox_with(rows: i64, body_len: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("outbox.db");
        let mut c = Connection::open(&db).unwrap();
        let tx = c.transaction().unwrap();
        tx.execute_batch(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY, body BLOB NOT NULL); \
             CREATE TABLE outbox_state (singleton INTEGER PRIMARY KEY, last_seq INTEGER); \
             CREATE TABLE dead_letters (sink TEXT, seq INTEGER, body BLOB);",
        )
        .unwrap();
        let pad = "x".repeat(body_len);
        for seq in 1..=rows {
            let body = format!("{{\"id\":\"e{seq}\",\"pad\":\"{pad}\"}}");
            tx.execute(
                "INSERT INTO events VALUES (?1, ?2)",
                params![seq, body.into_bytes()],
            )
            .unwrap();
        }
        tx.execute("INSERT INTO outbox_state VALUES (0, ?1)", [rows])
            .unwrap();
        tx.commit().unwrap();
        (dir, db)
    }

    fn lines(out: &[u8]) -> Vec<serde_json::Value> {
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn an_intact_file_is_exported_whole_with_seq_first() {
        let (_dir, db) = outbox_with(2500, 100);
        let mut out = Vec::new();
        let report = salvage(&db, &mut out).unwrap();
        assert_eq!(report.events, 2500);
        assert!(report.unreadable.is_empty() && !report.header_repaired);
        let lines = lines(&out);
        assert_eq!(lines.len(), 2500);
        assert_eq!(lines[0]["seq"], 1);
        assert_eq!(lines[2499]["id"], "e2500");
        assert!(std::str::from_utf8(&out)
            .unwrap()
            .starts_with("{\"seq\":1,\"id\":\"e1\""));
    }

    #[test]
    fn damaged_pages_are_stepped_over_and_the_rest_is_kept() {
        let (_dir, db) = outbox_with(5000, 300);
        let pages = std::fs::metadata(&db).unwrap().len() / 4096;
        let mut bytes = std::fs::read(&db).unwrap();
        // Garble two leaf pages in the middle of the events table.
        for page in [pages / 3, pages / 2] {
            let start = (page * 4096) as usize;
            bytes[start..start + 4096].fill(0xA5);
        }
        // And the magic string.
        bytes[..6].copy_from_slice(b"BROKEN");
        std::fs::write(&db, &bytes).unwrap();
        let mut out = Vec::new();
        let report = salvage(&db, &mut out).unwrap();
        assert!(report.header_repaired);
        assert!(!report.unreadable.is_empty(), "{report}");
        let seqs: Vec<i64> = lines(&out)
            .iter()
            .map(|l| l["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs.len() as u64, report.events);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
        // About 12 events per page: two damaged pages cost a few dozen, not thousands.
        assert!(report.events >= 4900, "{report}");
        assert!(report.events < 5000, "{report}");
        assert_eq!(
            *seqs.last().unwrap(),
            5000,
            "the tail after the damage is read"
        );
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "the file itself is not changed"
        );
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.db");
        std::fs::write(&file, vec![0x42u8; 64 * 1024]).unwrap();
        let error = salvage(&file, &mut Vec::new()).unwrap_err();
        assert!(format!("{error:#}").contains("x.db"), "{error:#}");
        let error = salvage(&dir.path().join("missing.db"), &mut Vec::new()).unwrap_err();
        assert!(format!("{error:#}").contains("missing.db"), "{error:#}");
    }
}
