//! Background WAL checkpoints on a thread of their own, so that copying the
//! WAL back into the database happens beside the writer, not inside its
//! commits (the writer's `wal_autocheckpoint` is only a backstop).

use super::reserve::{self, DiskReserve};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);
/// Checkpoint once this much was committed since the last one...
const AFTER_BYTES: u64 = 16 << 20;
/// ...or this long after it, whichever comes first. Measured: checkpointing
/// every 100ms regardless made the writer's fsyncs wait behind the
/// checkpoint's; a fixed 1s let a fast writer hit the backstop inline.
const AFTER_TIME: Duration = Duration::from_secs(1);

pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    /// Runs PASSIVE checkpoints (they never block the writer); `written`
    /// counts bytes the writer committed and is reset at each checkpoint.
    /// A checkpoint may need to grow the database file: on a full disk it
    /// releases the reserve, and the next round tries again.
    pub fn start(
        connection: rusqlite::Connection,
        written: Arc<AtomicU64>,
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
                    let pending = written.load(Ordering::Relaxed);
                    if pending == 0 || (pending < AFTER_BYTES && last.elapsed() < AFTER_TIME) {
                        continue;
                    }
                    written.fetch_sub(pending, Ordering::Relaxed);
                    last = Instant::now();
                    if let Err(e) =
                        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(error = %e, "background checkpoint");
                        // Not done: due again next round.
                        written.fetch_add(pending, Ordering::Relaxed);
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
