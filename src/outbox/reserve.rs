//! Free space on the outbox's disk: what ingest may still use, and a reserve
//! file that only the writes which bring space back may use.
//!
//! Ingest stops at `outbox.min_free_disk` (see the writer). That headroom
//! is for sink progress, deletions and checkpoints; the reserve is for the
//! case the headroom cannot cover, such as another process filling the disk
//! to the last byte. When SQLite reports the disk full during one of those
//! writes, the reserve file is deleted and the write tried again, so a full
//! disk never wedges the sinks. The reserve is put back once the disk has
//! room for it again.

use crate::telemetry::names;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The reserve is this fraction of `min_free_disk`...
const RESERVE_SHARE: u64 = 4;
/// ...at most this much.
const RESERVE_MAX: u64 = 16 << 20;
pub const RESERVE_FILE: &str = "outbox.reserve";

pub struct DiskReserve {
    path: PathBuf,
    size: u64,
    present: AtomicBool,
    /// Serialises create and release (writer and checkpointer threads).
    busy: Mutex<()>,
}

impl DiskReserve {
    /// The reserve for an outbox in `data_dir` with this `min_free_disk`;
    /// created now when there is room. No reserve when the check is off.
    pub fn new(data_dir: &Path, min_free_disk: u64) -> DiskReserve {
        let reserve = DiskReserve {
            path: data_dir.join(RESERVE_FILE),
            size: (min_free_disk / RESERVE_SHARE).min(RESERVE_MAX),
            present: AtomicBool::new(false),
            busy: Mutex::new(()),
        };
        if reserve.size > 0 {
            let present = std::fs::metadata(&reserve.path).is_ok_and(|m| m.len() >= reserve.size);
            reserve.present.store(present, Ordering::Relaxed);
            if present {
                metrics::gauge!(names::OUTBOX_DISK_RESERVE).set(reserve.size as f64);
            } else {
                if available_bytes(data_dir)
                    .is_some_and(|free| free >= reserve.size + min_free_disk)
                {
                    reserve.restore();
                }
            }
        } else {
            let _ = std::fs::remove_file(&reserve.path);
        }
        reserve
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_present(&self) -> bool {
        self.present.load(Ordering::Relaxed)
    }

    /// Deletes the reserve file; true when that freed space (it was there).
    pub fn release(&self) -> bool {
        let _busy = self.busy.lock().expect("reserve lock");
        if !self.present.swap(false, Ordering::Relaxed) {
            return false;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                metrics::gauge!(names::OUTBOX_DISK_RESERVE).set(0.0);
                tracing::warn!(
                    bytes = self.size,
                    file = %self.path.display(),
                    "the disk is full: released the disk reserve so that sink progress and deletions can be stored"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, file = %self.path.display(), "cannot release the disk reserve");
                false
            }
        }
    }

    /// Puts the reserve back (the caller checked there is room for it).
    pub fn restore(&self) {
        if self.size == 0 || self.is_present() {
            return;
        }
        let _busy = self.busy.lock().expect("reserve lock");
        // Allocated under a temporary name, so a reserve cut short by a full
        // disk or a crash is never taken for a whole one.
        let staging = self.path.with_extension("reserve.tmp");
        match allocate(&staging, self.size).and_then(|()| std::fs::rename(&staging, &self.path)) {
            Ok(()) => {
                self.present.store(true, Ordering::Relaxed);
                metrics::gauge!(names::OUTBOX_DISK_RESERVE).set(self.size as f64);
                tracing::info!(bytes = self.size, file = %self.path.display(), "disk reserve in place");
            }
            Err(e) => {
                let _ = std::fs::remove_file(&staging);
                tracing::debug!(error = %e, "cannot put the disk reserve in place yet");
            }
        }
    }
}

/// A file of `size` bytes whose blocks are really allocated.
fn allocate(path: &Path, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::create(path)?;
    // SAFETY: a valid open file descriptor; posix_fallocate writes nothing else.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    file.sync_all()
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
pub fn available_bytes(dir: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid out-pointer.
    let ok = unsafe { libc::statvfs(path.as_ptr(), &mut stat) } == 0;
    ok.then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// A file write failed for lack of space (or of filesystem quota).
pub fn is_no_space(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    )
}

/// True when SQLite says the disk (or a quota) is full.
pub fn is_disk_full(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::DiskFull)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_created_released_once_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = DiskReserve::new(dir.path(), 4 << 20);
        assert_eq!(reserve.size(), 1 << 20);
        assert!(reserve.is_present());
        let file = dir.path().join(RESERVE_FILE);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);
        assert!(reserve.release());
        assert!(!file.exists());
        assert!(!reserve.release(), "a second release frees nothing");
        reserve.restore();
        assert!(reserve.is_present() && file.exists());
        // Off with min_free_disk = 0: no file, nothing to release.
        let off = DiskReserve::new(dir.path(), 0);
        assert!(!off.is_present() && !file.exists());
        assert!(!off.release());
    }
}
