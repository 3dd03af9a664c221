//! The file sink: each batch becomes one file, written atomically (temp
//! file, fsync, rename, fsync of the directory) as
//! `{dir}/{first_seq:020}-{last_seq:020}.jsonl[.gz|.zst]`. A retried batch
//! rewrites the same name, so a range never appears twice.

use crate::format::EncodedBatch;
use crate::sinks::config::BatchConfig;
use crate::sinks::Outcome;
use crate::units::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `kind = "file"`.
pub const NAME: &str = "file";

/// A batch is one body (file, request, object), whatever its format.
pub const MESSAGE_PER_EVENT: bool = false;

/// Writes a body it holds whole.
pub const STREAMS_BODY: bool = false;

/// Batch bounds where the config gives none.
pub fn default_batch() -> BatchConfig {
    BatchConfig {
        max_events: 10_000,
        max_bytes: ByteSize::mib(8),
        max_age: HumanDuration::secs(1),
        in_flight: 1,
    }
}

pub use {FileConfig as Config, FileSink as Sink};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Target directory; relative paths are under data_dir. Created if missing.
    pub dir: PathBuf,
}

impl FileConfig {
    pub fn validate(&self, _name: &str) -> Result<(), String> {
        Ok(())
    }
}

pub struct FileSink {
    dir: PathBuf,
}

impl FileSink {
    pub fn new(_name: &str, config: &FileConfig, data_dir: &Path) -> Result<FileSink, String> {
        Ok(FileSink {
            dir: data_dir.join(&config.dir),
        })
    }

    pub async fn deliver(&self, batch: &EncodedBatch) -> Outcome {
        let dir = self.dir.clone();
        let name = format!("{}{}", batch.range_key(), batch.extension);
        let body = match crate::sinks::whole_body(batch).await {
            Ok(body) => body,
            Err(outcome) => return outcome,
        };
        let result =
            tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &body)).await;
        match result {
            Ok(Ok(())) => Outcome::Delivered,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => Outcome::Halted {
                reason: format!("cannot write in {}: {e}", self.dir.display()),
            },
            Ok(Err(e)) => Outcome::Retry {
                after: None,
                reason: format!("writing in {}: {e}", self.dir.display()),
            },
            Err(e) => Outcome::Retry {
                after: None,
                reason: format!("file writer task failed: {e}"),
            },
        }
    }
}

fn write_atomically(dir: &Path, name: &str, body: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(body)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}
