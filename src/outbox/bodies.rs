//! The body log (`outbox.bodies = "segments"`): event bodies appended to
//! plain segment files under `data_dir/bodies/`, so a large group commit
//! writes each body once instead of twice (SQLite's WAL, then the
//! checkpoint's copy into the database).
//!
//! SQLite stays the outbox of record: each event row keeps its seq, id,
//! type and session, and, for a body in the log, the body's offset and
//! length (`body_at`, `body_len`). The log is one byte sequence cut into
//! segment files named by the offset they start at. A group's bodies are
//! appended and synced before its transaction commits, and the transaction
//! stores the new end of the log (`outbox_state.log_end`): whatever lies
//! past it after a crash belonged to a group that never committed, and
//! opening cuts it off. A segment file goes when every event in it is
//! deleted (`body_segments` says which seq it reaches), after the commit
//! that deleted them.

use rusqlite::{params, OptionalExtension, Transaction};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// Where the segments live, under `data_dir`.
pub const BODIES_DIR: &str = "bodies";
/// Groups with fewer body bytes stay inline in SQLite: for a handful of
/// small events one fsync (the WAL's) is cheaper than two.
pub const MIN_GROUP_BYTES: usize = 64 << 10;

/// The segment files, shared by the writer (which appends and deletes) and
/// the readers (which read bodies at the offsets their rows name).
pub struct Segments {
    dir: PathBuf,
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    /// Every event with seq <= this is deleted: a reader whose rows are
    /// older than a segment's removal drops those rows instead of failing.
    gone_upto: AtomicI64,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MissingBody(pub String);

impl Segments {
    fn segment_path(dir: &Path, start: u64) -> PathBuf {
        dir.join(format!("{start:020}.log"))
    }

    /// The body of length `len` at log offset `at`; None when its segment
    /// was removed because its events were deleted (seq <= gone_upto).
    pub fn read(&self, seq: i64, at: u64, len: u64) -> Result<Option<Vec<u8>>, MissingBody> {
        let file = {
            let files = self.files.read().expect("segments lock");
            files
                .range(..=at)
                .next_back()
                .map(|(start, file)| (*start, file.clone()))
        };
        let missing = |why: String| {
            if seq <= self.gone_upto.load(Ordering::Acquire) {
                Ok(None)
            } else {
                Err(MissingBody(format!(
                    "the body of event {seq} ({len} bytes at {at} in {}) {why}",
                    self.dir.display()
                )))
            }
        };
        let Some((start, file)) = file else {
            return missing("is in no segment file".into());
        };
        let mut body = vec![0u8; len as usize];
        match file.read_exact_at(&mut body, at - start) {
            Ok(()) => Ok(Some(body)),
            Err(e) => missing(format!(
                "cannot be read from {}: {e}",
                Self::segment_path(&self.dir, start).display()
            )),
        }
    }
}

/// The writer's side: the active segment and the log's end.
pub struct BodyLog {
    segments: Arc<Segments>,
    /// The segment appends go to, and the log offset it starts at.
    active: Option<(u64, File)>,
    /// The committed end of the log, and the end including an append whose
    /// transaction has not committed yet.
    committed_end: u64,
    end: u64,
    /// A new segment starts once the active one holds this much.
    segment_bytes: u64,
}

impl BodyLog {
    /// Opens the log in `data_dir/bodies`: cuts off what lies past
    /// `log_end` (a group that never committed) and removes segments no
    /// row of `body_segments` names. Errors name the file and what is wrong.
    pub fn open(
        data_dir: &Path,
        log_end: u64,
        kept: &[u64],
        segment_bytes: u64,
    ) -> Result<BodyLog, String> {
        let dir = data_dir.join(BODIES_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut starts = Vec::new();
        for entry in
            std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        {
            let path = entry
                .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
                .path();
            let start = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok());
            match start {
                Some(start) => starts.push(start),
                None => {
                    tracing::warn!(file = %path.display(), "not a segment of the body log; left alone")
                }
            }
        }
        starts.sort_unstable();
        let mut files = BTreeMap::new();
        for start in starts {
            let path = Segments::segment_path(&dir, start);
            if start >= log_end || !kept.contains(&start) {
                // Past the committed end (a group that never committed), or
                // all its events were deleted and the unlink after that
                // commit did not happen.
                std::fs::remove_file(&path)
                    .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
                continue;
            }
            let file = File::options()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            files.insert(start, file);
        }
        if let Some(start) = kept.iter().find(|start| !files.contains_key(start)) {
            return Err(format!(
                "segment {} of the body log is missing",
                Segments::segment_path(&dir, *start).display()
            ));
        }
        // Appends go on in the newest segment, cut back to the committed end.
        if let Some((start, file)) = files.iter().next_back() {
            let path = Segments::segment_path(&dir, *start);
            let committed = log_end - start;
            let len = file
                .metadata()
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .len();
            if len < committed {
                return Err(format!(
                    "segment {} holds {len} bytes, fewer than the {committed} the outbox database says were committed to it",
                    path.display()
                ));
            }
            if len > committed {
                file.set_len(committed)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| {
                        format!(
                            "cannot cut {} back to {committed} bytes: {e}",
                            path.display()
                        )
                    })?;
            }
        }
        let active = match files.iter().next_back() {
            Some((start, file)) => Some((
                *start,
                file.try_clone()
                    .map_err(|e| format!("cannot open a segment in {}: {e}", dir.display()))?,
            )),
            None => None,
        };
        let files = files
            .into_iter()
            .map(|(start, file)| (start, Arc::new(file)))
            .collect();
        sync_dir(&dir)?;
        let log = BodyLog {
            segments: Arc::new(Segments {
                dir,
                files: RwLock::new(files),
                gone_upto: AtomicI64::new(0),
            }),
            active,
            committed_end: log_end,
            end: log_end,
            segment_bytes,
        };
        log.report();
        Ok(log)
    }

    /// Publishes how many bytes the segment files hold: from the oldest
    /// segment's start to the end of the log.
    fn report(&self) {
        let oldest = self
            .segments
            .files
            .read()
            .expect("segments lock")
            .keys()
            .next()
            .copied();
        let bytes = oldest.map_or(0, |start| self.end.saturating_sub(start));
        metrics::gauge!(crate::telemetry::names::OUTBOX_BODY_LOG_BYTES).set(bytes as f64);
    }

    pub fn segments(&self) -> Arc<Segments> {
        self.segments.clone()
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// Appends `bodies` (one group's, in seq order) and syncs them; returns
    /// the log offset of the first. On failure the log is as before.
    /// `last_seq` is the group's last: [`BodyLog::record`] stores it.
    ///
    /// Written from where the bodies are (`writev`), not gathered first: a
    /// group can be 20,000 events, and a copy of it was megabytes of RSS
    /// and a memcpy of every body on the writer thread.
    pub fn append(&mut self, bodies: &mut [IoSlice<'_>]) -> std::io::Result<u64> {
        let at = self.end;
        if self
            .active
            .as_ref()
            .is_none_or(|(start, _)| at - start >= self.segment_bytes)
        {
            self.start_segment(at)?;
        }
        let (start, file) = self.active.as_mut().expect("an active segment");
        // Synced whatever `outbox.sync` says: only large groups come here,
        // so it is a few fsyncs a second, and a segment is then never behind
        // the commit that names it (with `sync = "normal"` a power cut may
        // lose that commit, never the bytes under one that survived).
        let length: u64 = bodies.iter().map(|body| body.len() as u64).sum();
        let written = write_all_vectored(file, bodies).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Cut back what may have been written; the file was at `at`.
            let _ = file.set_len(at - *start);
            return Err(e);
        }
        self.end = at + length;
        self.report();
        Ok(at)
    }

    fn start_segment(&mut self, at: u64) -> std::io::Result<()> {
        let path = Segments::segment_path(&self.segments.dir, at);
        let file = File::options()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)?;
        let shared = Arc::new(file.try_clone()?);
        sync_dir(&self.segments.dir).map_err(std::io::Error::other)?;
        self.segments
            .files
            .write()
            .expect("segments lock")
            .insert(at, shared);
        self.active = Some((at, file));
        Ok(())
    }

    /// In the group's transaction: the new end of the log, and that the
    /// active segment now reaches `last_seq`.
    pub fn record(&self, tx: &Transaction, last_seq: i64) -> rusqlite::Result<()> {
        let (start, _) = self.active.as_ref().expect("an active segment");
        tx.prepare_cached(
            "INSERT INTO body_segments (start, last_seq) VALUES (?1, ?2) \
             ON CONFLICT(start) DO UPDATE SET last_seq = excluded.last_seq",
        )?
        .execute(params![*start as i64, last_seq])?;
        tx.prepare_cached("UPDATE outbox_state SET log_end = ?1 WHERE singleton = 0")?
            .execute([self.end as i64])?;
        Ok(())
    }

    /// The group's transaction committed.
    pub fn committed(&mut self) {
        self.committed_end = self.end;
    }

    /// The group's transaction did not commit: cut the log back to where it
    /// was. `stored_end` is what the database says after the failure (a
    /// failed COMMIT may still have reached the disk).
    pub fn rolled_back(&mut self, stored_end: Option<u64>) {
        let end = stored_end.unwrap_or(self.committed_end);
        if end >= self.end {
            self.committed_end = self.end;
            return;
        }
        if let Some((start, file)) = &self.active {
            // A segment started for this append starts at the committed end,
            // so the end never falls before the active segment's start.
            debug_assert!(end >= *start, "log end {end} before segment {start}");
            if let Err(e) = file.set_len(end.saturating_sub(*start)) {
                tracing::warn!(error = %e, "cutting back the body log after a failed commit");
            }
        }
        self.end = end;
        self.committed_end = end;
        self.report();
    }

    /// In the transaction that deleted every event with seq <= `upto`:
    /// forgets the segments that held only those (the active one too, so
    /// a drained outbox keeps no dead bytes on disk); returns them, to
    /// remove with [`BodyLog::remove`] once the transaction committed.
    pub fn release(&self, tx: &Transaction, upto: i64) -> rusqlite::Result<Vec<u64>> {
        let released: Vec<u64> = tx
            .prepare_cached("DELETE FROM body_segments WHERE last_seq <= ?1 RETURNING start")?
            .query_map([upto], |row| row.get::<_, i64>(0))?
            .map(|start| start.map(|s| s as u64))
            .collect::<rusqlite::Result<_>>()?;
        Ok(released)
    }

    /// Removes released segments; readers still holding one keep reading it.
    /// When the active one goes, the next append starts a new segment at
    /// the log's end.
    pub fn remove(&mut self, released: &[u64], upto: i64) {
        self.segments.gone_upto.fetch_max(upto, Ordering::AcqRel);
        if released.is_empty() {
            return;
        }
        if self
            .active
            .as_ref()
            .is_some_and(|(start, _)| released.contains(start))
        {
            self.active = None;
        }
        let mut files = self.segments.files.write().expect("segments lock");
        for start in released {
            files.remove(start);
            let path = Segments::segment_path(&self.segments.dir, *start);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "removing a segment of the body log");
            }
        }
        drop(files);
        self.report();
    }
}

/// Checks that every segment `body_segments` names (`kept`, in order) is
/// there and holds what was committed to it: each reaches the next one's
/// start, the newest `log_end`. Segments are contiguous because they are
/// removed oldest first. O(segments): one `stat` each.
pub fn verify(data_dir: &Path, log_end: u64, kept: &[u64]) -> Result<(), Damage> {
    let dir = data_dir.join(BODIES_DIR);
    for (i, start) in kept.iter().enumerate() {
        let path = Segments::segment_path(&dir, *start);
        let end = kept.get(i + 1).copied().unwrap_or(log_end);
        let committed = end.saturating_sub(*start);
        let len = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Damage::Damaged(format!(
                    "segment {} of the body log is missing",
                    path.display()
                )))
            }
            Err(e) => {
                return Err(Damage::Unreadable(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        if len < committed {
            return Err(Damage::Damaged(format!(
                "segment {} of the body log holds {len} bytes, fewer than the {committed} committed to it",
                path.display()
            )));
        }
    }
    Ok(())
}

/// What [`verify`] found wrong.
pub enum Damage {
    /// Bytes the database names are gone: the outbox is corrupt.
    Damaged(String),
    /// The check itself failed (permissions, I/O).
    Unreadable(String),
}

/// The segments `body_segments` names, and the log's committed end.
pub fn stored_state(connection: &rusqlite::Connection) -> rusqlite::Result<(u64, Vec<u64>)> {
    let end: Option<i64> = connection
        .query_row(
            "SELECT log_end FROM outbox_state WHERE singleton = 0",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let kept = connection
        .prepare("SELECT start FROM body_segments ORDER BY start")?
        .query_map([], |row| row.get::<_, i64>(0))?
        .map(|start| start.map(|s| s as u64))
        .collect::<rusqlite::Result<_>>()?;
    Ok((end.unwrap_or(0) as u64, kept))
}

/// `write_all` over several buffers: at most `IOV_MAX` (1024) per call,
/// going on after a short write.
fn write_all_vectored(file: &mut File, mut bodies: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    const IOV_MAX: usize = 1024;
    // Drops empty buffers up front, as each advance does after a write: a
    // call with only empty ones left would read as a zero-length write.
    IoSlice::advance_slices(&mut bodies, 0);
    while !bodies.is_empty() {
        match file.write_vectored(&bodies[..bodies.len().min(IOV_MAX)]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bodies, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    #[test]
    fn vectored_writes_keep_every_byte_in_order_past_iov_max() {
        // More buffers than one writev takes, of varied lengths, some empty.
        let bodies: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| {
                let len = if i % 7 == 0 {
                    0
                } else {
                    (i * 37 % 1500) as usize
                };
                (0..len).map(|j| (i as usize + j) as u8).collect()
            })
            .collect();
        let mut slices: Vec<IoSlice<'_>> = bodies.iter().map(|b| IoSlice::new(b)).collect();
        let mut file = tempfile::tempfile().unwrap();
        write_all_vectored(&mut file, &mut slices).unwrap();
        let mut written = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut written).unwrap();
        assert_eq!(written, bodies.concat());
    }

    #[test]
    fn only_empty_buffers_write_nothing_and_succeed() {
        let mut slices = [IoSlice::new(b""), IoSlice::new(b"")];
        let mut file = tempfile::tempfile().unwrap();
        write_all_vectored(&mut file, &mut slices).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 0);
    }
}
