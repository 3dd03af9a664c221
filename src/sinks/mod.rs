//! Sinks: one folder per protocol, each knowing only its protocol. A sink
//! takes an [`EncodedBatch`] and returns a classified [`Outcome`]; cursors,
//! retries, splitting and dead letters belong to the delivery loop.

pub mod config;
pub mod file;
pub mod http;
pub mod s3;

use crate::format::EncodedBatch;
use config::{Protocol, SinkConfig};
use std::path::Path;
use std::time::Duration;

/// What became of one attempt to deliver a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Transient (5xx, timeout, connection refused, 429): try the same batch again.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The receiver refuses the size: split the range in two.
    TooLarge {
        reason: String,
    },
    /// Permanent for this content: isolate by splitting, then dead-letter.
    Rejected {
        reason: String,
    },
    /// Credentials or permissions refused: stop, keep the data, probe later.
    Halted {
        reason: String,
    },
}

impl Outcome {
    /// The label used in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::TooLarge { .. } => "too_large",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Halted { .. } => "halted",
        }
    }
}

/// A ready-to-use sink of any kind.
pub enum Sink {
    File(file::FileSink),
    Http(http::HttpSink),
    S3(Box<s3::S3Sink>),
}

impl Sink {
    /// Builds the sink; fails only on configuration that cannot work at all
    /// (never because a remote end is down).
    pub fn build(name: &str, config: &SinkConfig, data_dir: &Path) -> Result<Sink, String> {
        Ok(match &config.protocol {
            Protocol::File(file) => Sink::File(file::FileSink::new(name, file, data_dir)?),
            Protocol::Http(http) => Sink::Http(http::HttpSink::new(name, http)?),
            Protocol::S3(s3) => Sink::S3(Box::new(s3::S3Sink::new(name, s3)?)),
        })
    }

    pub async fn deliver(&self, batch: &EncodedBatch) -> Outcome {
        match self {
            Sink::File(sink) => sink.deliver(batch).await,
            Sink::Http(sink) => sink.deliver(batch).await,
            Sink::S3(sink) => sink.deliver(batch).await,
        }
    }
}
