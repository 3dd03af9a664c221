//! Background WAL checkpoints on a thread of their own, so that copying the
//! WAL back into the database happens beside the writer, not inside its
//! commits.
//!
//! The writer counts the WAL frames it appends (a WAL hook, which also turns
//! SQLite's inline auto-checkpoint off). This thread checkpoints once 1 MiB
//! has piled up and repeats until what the writer appended meanwhile is
//! small. Once the WAL holds 16 MiB, the writer copies that rest inline
//! after its next commit (a few pages), so the WAL is whole in the database
//! and starts over from its beginning instead of growing.
//!
//! Why 1 MiB at a time: each checkpoint ends with a sync of the database,
//! and every commit's WAL sync that overlaps it waits behind its writes. A
//! 16 MiB sync made the commits during it (about 5% of them) take up to
//! 8 ms, which set single-event p99 (7.5-14 ms at 64 connections); in 1 MiB
//! steps commits stay under about 2 ms and p99 is 2.9-3.4 ms, at the same
//! throughput (BENCHMARKS.md, "Single-event tail latency").
//!
//! A checkpoint that stops short of the WAL's end leaves the pages it copied
//! unsynced (SQLite syncs the database only when a checkpoint reaches the
//! end), so this thread syncs them itself before handing the rest to the
//! writer: otherwise the writer's small final copy paid for flushing
//! everything the rounds before it wrote, 8-15 ms inside a commit twice a
//! second.
//!
//! Why (single-event requests, sync = full): with SQLite's auto-checkpoint
//! at 64 MiB and a checkpoint here once a second, the WAL never started over
//! (the writer appends during every background checkpoint), so every ~1.2 s
//! a commit ran a 64 MiB checkpoint inline and stalled ingest for 30-50 ms.
//! p99 with 4 connections went from 24-26 ms to 12-13 ms, with 16 from 80
//! to 18 ms, at the same throughput (BENCHMARKS.md).

use super::reserve::{self, DiskReserve};
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(10);
/// Checkpoint once the writer appended this many frames (pages) since the
/// last one...
const AFTER_FRAMES: u64 = 256;
/// ...or this long after it, whichever comes first.
const AFTER_TIME: Duration = Duration::from_secs(1);
/// Rounds of catching up per checkpoint: each copies what the writer
/// appended during the one before, so they shrink fast.
const CATCH_UP_ROUNDS: usize = 8;
/// What the writer copies inline at most to finish a checkpoint (1 MiB).
const FINISH_INLINE_FRAMES: u64 = 256;
/// The writer finishes a checkpoint inline (a short stall of one commit)
/// so that the WAL starts over once it holds this many frames (16 MiB), or
/// when a checkpoint was due by time (a quiet writer).
const RESTART_FRAMES: u64 = 4096;
/// Should this thread fall behind, the writer checkpoints inline once the
/// WAL holds this many frames (64 MiB with 4 KiB pages, SQLite's former
/// auto-checkpoint): slow, but the WAL stays bounded as before.
const BACKSTOP_FRAMES: c_int = 16_384;

/// WAL frames appended since the last checkpoint, counted by the writer.
#[derive(Default)]
pub struct WalFrames {
    pending: AtomicU64,
    /// Frames in the WAL after the writer's last commit.
    last: AtomicU64,
    /// A background checkpoint copied the WAL as it was when it started:
    /// the writer copies what it appended since, so that the WAL is whole
    /// in the database and its next commit starts the WAL over.
    finish: AtomicBool,
}

impl WalFrames {
    /// Counts frames as `connection` commits them, in place of SQLite's
    /// auto-checkpoint. The counter lives as long as the process: the hook
    /// may fire until the connection is closed, and one counter per opened
    /// outbox is a few bytes.
    pub fn install(self: &Arc<Self>, connection: &rusqlite::Connection) {
        let context = Arc::into_raw(self.clone()) as *mut c_void;
        // SAFETY: `context` points to a WalFrames that is never freed, and
        // the callback only reads it through shared references.
        unsafe {
            rusqlite::ffi::sqlite3_wal_hook(connection.handle(), Some(on_commit), context);
        }
    }

    /// Records that a commit left `frames` in the WAL; a WAL that shrank
    /// was started over, so all of it is new.
    fn committed(&self, frames: u64) {
        let before = self.last.swap(frames, Ordering::Relaxed);
        let added = if frames >= before {
            frames - before
        } else {
            frames
        };
        self.pending.fetch_add(added, Ordering::Relaxed);
    }
}

unsafe extern "C" fn on_commit(
    context: *mut c_void,
    db: *mut rusqlite::ffi::sqlite3,
    name: *const c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: `context` is the pointer `install` leaked from an Arc.
    let counter = unsafe { &*(context as *const WalFrames) };
    counter.committed(frames.max(0) as u64);
    if counter.finish.swap(false, Ordering::Relaxed) || frames >= BACKSTOP_FRAMES {
        // SAFETY: what SQLite's own auto-checkpoint hook does, with the
        // arguments SQLite passed in.
        unsafe { rusqlite::ffi::sqlite3_wal_checkpoint(db, name) };
    }
    rusqlite::ffi::SQLITE_OK
}

pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    /// Runs PASSIVE checkpoints (they never block the writer). A checkpoint
    /// may need to grow the database file: on a full disk it releases the
    /// reserve, and the next round tries again.
    pub fn start(
        connection: rusqlite::Connection,
        database: std::fs::File,
        frames: Arc<WalFrames>,
        reserve: Arc<DiskReserve>,
    ) -> std::io::Result<Checkpointer> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("outbox-checkpoint".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                    let pending = frames.pending.load(Ordering::Relaxed);
                    if pending == 0 || (pending < AFTER_FRAMES && last.elapsed() < AFTER_TIME) {
                        continue;
                    }
                    frames.pending.fetch_sub(pending, Ordering::Relaxed);
                    last = Instant::now();
                    let result = catch_up(&connection, &database, &frames);
                    let restart = pending < AFTER_FRAMES
                        || frames.last.load(Ordering::Relaxed) >= RESTART_FRAMES;
                    frames
                        .finish
                        .store(matches!(result, Ok(true)) && restart, Ordering::Relaxed);
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "background checkpoint");
                        // Not done: due again next round.
                        frames.pending.fetch_add(pending, Ordering::Relaxed);
                        if reserve::is_disk_full(&e) {
                            reserve.release();
                        }
                    }
                }
            })?;
        Ok(Checkpointer { stop, thread })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// PASSIVE checkpoints until what the writer appended meanwhile is small
/// enough for it to copy inline, or the rounds run out (the next
/// checkpoint goes on from there). True when it is small enough, and what
/// the rounds copied is synced to disk.
fn catch_up(
    connection: &rusqlite::Connection,
    database: &std::fs::File,
    frames: &WalFrames,
) -> rusqlite::Result<bool> {
    for _ in 0..CATCH_UP_ROUNDS {
        let copied: i64 =
            connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(2))?;
        let now = frames.last.load(Ordering::Relaxed);
        if copied < 0 {
            // Another checkpoint is running (the writer finishing the last one).
            return Ok(false);
        }
        if now.saturating_sub(copied as u64) <= FINISH_INLINE_FRAMES {
            database.sync_data().map_err(|e| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
                    Some(format!("syncing the checkpointed database: {e}")),
                )
            })?;
            return Ok(true);
        }
    }
    Ok(false)
}
