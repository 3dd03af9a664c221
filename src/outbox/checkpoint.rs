//! Background WAL checkpoints on a thread of their own, so that copying the
//! WAL back into the database happens beside the writer, not inside its
//! commits (the writer's `wal_autocheckpoint` is only a backstop).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Measured: every 100ms made the writer's fsyncs wait behind the
/// checkpoint's; every second keeps the WAL bounded without that.
const INTERVAL: Duration = Duration::from_secs(1);

pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    /// Runs PASSIVE checkpoints (they never block the writer) every second.
    pub fn start(connection: rusqlite::Connection) -> std::io::Result<Checkpointer> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("outbox-checkpoint".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(INTERVAL);
                    if let Err(e) =
                        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(error = %e, "background checkpoint");
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
