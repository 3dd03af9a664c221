//! Disk space as the writer sees it: the low-disk refusal, the WAL
//! truncation while space is tight, and the reserve file.

use super::Writer;
use crate::outbox::reserve;
use rusqlite::Connection;

/// Space on the outbox's disk, as ingest sees it.
struct Space {
    /// Free on the filesystem.
    available: u64,
    /// Pages free inside the database.
    reusable: u64,
    /// Pages only in the WAL beyond the database file's end: the next
    /// checkpoint grows the file by this much while the WAL still holds them.
    growth: u64,
}

impl Space {
    pub(super) fn left(&self) -> u64 {
        (self.available + self.reusable).saturating_sub(self.growth)
    }
}

impl Writer {
    /// Ingest stops while less than `min_free_disk` is left, counting pages
    /// the database already has free. What is left is headroom for the writes
    /// that bring space back: sink progress, deleting delivered events,
    /// checkpoints. Without it a full disk wedged the sinks too (found by
    /// tests/full_disk.rs).
    ///
    /// Pages that so far live only in the WAL and lie beyond the end of the
    /// database file are counted as used: the next checkpoint grows the file
    /// by that much while the WAL still holds them.
    pub(super) fn low_on_disk(&self, available: u64) -> Option<String> {
        let min = self.settings.min_free_disk;
        // The common case in one cheap call: what the next checkpoint adds
        // to the file is in the WAL, so it is at most the WAL's size.
        let wal =
            std::fs::metadata(self.settings.data_dir.join("outbox.db-wal")).map_or(0, |m| m.len());
        if available >= min.saturating_add(wal) {
            return None;
        }
        let space = self.space(available);
        (space.left() < min).then(|| {
            format!(
                "the disk holding the outbox is full: {} bytes left ({} free on the filesystem, \
                 {} reusable inside the database, {} needed by the next checkpoint), \
                 below outbox.min_free_disk ({min}); ingest resumes as sinks deliver or when space is freed",
                space.left(),
                space.available,
                space.reusable,
                space.growth
            )
        })
    }

    /// Free bytes on the outbox's filesystem; None when `min_free_disk` is
    /// 0 (the check is off) or statvfs fails.
    pub(super) fn available(&self) -> Option<u64> {
        if self.settings.min_free_disk == 0 {
            return None;
        }
        reserve::available_bytes(&self.settings.data_dir)
    }

    /// The space ingest may use, given what is free on the filesystem.
    fn space(&self, available: u64) -> Space {
        let (reusable, logical): (u64, u64) = self
            .connection
            .query_row(
                "SELECT f.freelist_count * p.page_size, c.page_count * p.page_size \
                 FROM pragma_freelist_count() f, pragma_page_size() p, pragma_page_count() c",
                [],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
            )
            .map_or((0, 0), |(r, l)| (r.max(0) as u64, l.max(0) as u64));
        let on_disk =
            std::fs::metadata(self.settings.data_dir.join("outbox.db")).map_or(0, |m| m.len());
        Space {
            available,
            reusable,
            growth: logical.saturating_sub(on_disk),
        }
    }

    /// Puts the disk reserve back when that leaves ingest at least
    /// `min_free_disk`: restoring it never stops ingest by itself.
    pub(super) fn restore_reserve(&self) {
        if self.reserve.is_present() {
            return;
        }
        let Some(available) = self.available() else {
            return;
        };
        let space = self.space(available);
        let size = self.reserve.size();
        if space.available >= size && space.left() >= self.settings.min_free_disk + size {
            self.reserve.restore();
        }
    }

    /// Low on disk: copies the WAL into the database and truncates it, so
    /// the space it holds (a second copy of recent writes) goes back to the
    /// filesystem. True when it did that (a WAL was there to reclaim).
    pub(super) fn reclaim_wal(&mut self) -> bool {
        let wal = self.settings.data_dir.join("outbox.db-wal");
        if std::fs::metadata(&wal).map_or(true, |m| m.len() == 0) {
            return false;
        }
        let done = self.with_reserve(|connection| {
            connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
        });
        match done {
            Ok(0) => true,
            Ok(busy) => {
                tracing::debug!(
                    busy,
                    "low on disk: a reader kept the WAL from being truncated"
                );
                false // the next write tries again
            }
            Err(e) => {
                self.watch_for_corruption(&e);
                tracing::warn!(error = %e, "low on disk: truncating the WAL failed");
                false
            }
        }
    }

    /// Less than `min_free_disk` is free on the filesystem itself. Every
    /// write then goes through the WAL first, which only a checkpoint gives
    /// back: so while tight, each write is followed by truncating the WAL,
    /// or deleting delivered events would eat the headroom (the pages they
    /// free inside the database are written to the WAL first).
    pub(super) fn tight(&self) -> bool {
        self.is_tight(self.available())
    }

    pub(super) fn is_tight(&self, available: Option<u64>) -> bool {
        available.is_some_and(|a| a < self.settings.min_free_disk)
    }

    /// Runs `write`; when the disk is full, releases the reserve and tries
    /// once more.
    pub(super) fn with_reserve<T>(
        &mut self,
        mut write: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let result = write(&mut self.connection);
        if matches!(&result, Err(e) if reserve::is_disk_full(e)) && self.reserve.release() {
            return write(&mut self.connection);
        }
        result
    }
}
