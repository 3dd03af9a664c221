//! Sinks: one folder per protocol, each knowing only its protocol. A sink
//! takes an [`EncodedBatch`] and returns a classified [`Outcome`]; cursors,
//! retries, splitting and dead letters belong to the delivery loop.

pub mod config;

use crate::format::EncodedBatch;
use config::SinkConfig;
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

/// The batch's whole body in memory, for a sink that sends it at once
/// (it is already, unless the sink streams bodies: `STREAMS_BODY`).
pub async fn whole_body(batch: &EncodedBatch) -> Result<bytes::Bytes, Outcome> {
    batch.body.collect().await.map_err(|e| Outcome::Retry {
        after: None,
        reason: format!("reading the batch {} again: {e}", batch.range_key()),
    })
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

/// Every sink kind. Each is a folder that provides the same items: `NAME`
/// (its `kind = "..."`), `MESSAGE_PER_EVENT`, `STREAMS_BODY`, `default_batch()`, `Config` (its own keys, with
/// `validate`) and `Sink` (`new`, `deliver`). Adding a kind is its folder
/// plus one line here; the delivery loop and the common config never change.
macro_rules! sink_kinds {
    ($($variant:ident => $module:ident),+ $(,)?) => {
        $(pub mod $module;)+

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum SinkKind {
            $($variant),+
        }

        impl SinkKind {
            pub const ALL: &'static [SinkKind] = &[$(SinkKind::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(SinkKind::$variant => $module::NAME),+
                }
            }

            /// Whether the kind sends each event as its own message (so its
            /// body must be NDJSON, uncompressed) rather than a batch as one body.
            pub fn message_per_event(self) -> bool {
                match self {
                    $(SinkKind::$variant => $module::MESSAGE_PER_EVENT),+
                }
            }

            /// Whether the kind sends a body as it reads it from the outbox
            /// (its batches in flight then hold no copy of their events).
            pub fn streams_body(self) -> bool {
                match self {
                    $(SinkKind::$variant => $module::STREAMS_BODY),+
                }
            }

            /// Batch bounds where the config gives none.
            pub fn default_batch(self) -> config::BatchConfig {
                match self {
                    $(SinkKind::$variant => $module::default_batch()),+
                }
            }
        }

        /// A sink's own keys, by kind.
        #[derive(Debug, Clone, serde::Serialize, PartialEq)]
        #[serde(untagged)]
        pub enum Protocol {
            $($variant($module::Config)),+
        }

        impl Protocol {
            /// The keys left after the common ones, strictly into the kind's config.
            pub fn parse(kind: SinkKind, keys: serde_json::Value) -> Result<Protocol, serde_json::Error> {
                match kind {
                    $(SinkKind::$variant => serde_json::from_value(keys).map(Protocol::$variant)),+
                }
            }

            pub fn validate(&self, name: &str) -> Result<(), String> {
                match self {
                    $(Protocol::$variant(config) => config.validate(name)),+
                }
            }
        }

        /// A ready-to-use sink of any kind.
        pub enum Sink {
            $($variant(Box<$module::Sink>)),+
        }

        impl Sink {
            /// Builds the sink; fails only on configuration that cannot work at all
            /// (never because a remote end is down).
            pub fn build(name: &str, config: &SinkConfig, data_dir: &Path) -> Result<Sink, String> {
                Ok(match &config.protocol {
                    $(Protocol::$variant(protocol) => {
                        Sink::$variant(Box::new($module::Sink::new(name, protocol, data_dir)?))
                    }),+
                })
            }

            pub async fn deliver(&self, batch: &EncodedBatch) -> Outcome {
                match self {
                    $(Sink::$variant(sink) => sink.deliver(batch).await),+
                }
            }
        }
    };
}

sink_kinds! {
    S3 => s3,
    Http => http,
    File => file,
    Nats => nats,
}

impl serde::Serialize for SinkKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for SinkKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        SinkKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<String> = SinkKind::ALL
                    .iter()
                    .map(|kind| format!("`{}`", kind.as_str()))
                    .collect();
                serde::de::Error::custom(format!(
                    "unknown sink kind `{name}`, expected one of {}",
                    known.join(", ")
                ))
            })
    }
}

/// An error and its causes on one line (reqwest's own message stops at the
/// outermost one, "error sending request").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
