//! What every sink's config has in common (filters, batching, retries,
//! format), and the two-step parse that hands the rest to the sink's kind.
//!
//! `[sinks.NAME]` tables are flat: `kind` picks the protocol, the common keys
//! below apply to every kind, and the remaining keys must all be known to
//! that kind's own config (unknown ones are errors).

use super::{Protocol, SinkKind};
use crate::event::Fidelity;
use crate::format::{BodyFormat, Compression};
use crate::units::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};

/// Batch bounds: a batch is sent when any is reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_events: usize,
    /// Measured on the encoded (and compressed) body that is sent.
    pub max_bytes: ByteSize,
    /// A partial batch is sent once its oldest event is this old.
    pub max_age: HumanDuration,
    /// Batches delivered at once. Each holds its encoded body in memory
    /// until delivered; the cursor still advances in seq order. With more
    /// than one, a receiver may see batches out of order.
    pub in_flight: usize,
}

/// The most batches one sink may have in flight.
pub const MAX_IN_FLIGHT: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub initial: HumanDuration,
    pub max: HumanDuration,
    /// Attempts of one batch before it goes to the dead letters; unset = forever.
    pub max_attempts: Option<u32>,
    /// How often a halted sink (credentials, permissions) tries again.
    pub halted_probe: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: HumanDuration::millis(500),
            max: HumanDuration::secs(60),
            max_attempts: None,
            halted_probe: HumanDuration::secs(60),
        }
    }
}

/// How a session-assembling sink (`format = "openai_sessions"`) decides a
/// session is finished, and how large one line may grow.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionsConfig {
    /// Event types that end their session (the event is part of it).
    #[serde(rename = "session_end_types")]
    pub end_types: Vec<String>,
    /// A session with no event for this long is finished.
    #[serde(rename = "session_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// A session whose events' bodies exceed this is written as numbered
    /// parts, each a valid conversation.
    #[serde(rename = "session_max_bytes")]
    pub max_bytes: ByteSize,
}

impl SessionsConfig {
    pub fn default_end_types() -> Vec<String> {
        [
            "session.ended",
            "run.finished",
            "run.failed",
            "run.cancelled",
        ]
        .map(String::from)
        .to_vec()
    }
}

/// A configured sink: common settings plus its protocol.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SinkConfig {
    pub kind: SinkKind,
    pub include_types: Vec<String>,
    pub exclude_types: Vec<String>,
    pub min_fidelity: Fidelity,
    pub format: BodyFormat,
    pub compression: Compression,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    /// Set for session-assembling formats only (printed as the flat
    /// `session_*` keys it was read from).
    #[serde(flatten)]
    pub sessions: Option<SessionsConfig>,
    #[serde(flatten)]
    pub protocol: Protocol,
}

/// Batch bounds given in the config; unset ones take the kind's default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchOverrides {
    max_events: Option<usize>,
    max_bytes: Option<ByteSize>,
    max_age: Option<HumanDuration>,
    in_flight: Option<usize>,
}

#[derive(Deserialize)]
struct RawSink {
    kind: SinkKind,
    #[serde(default)]
    include_types: Vec<String>,
    /// Unset: the format's default (see `BodyFormat::default_exclude_types`).
    exclude_types: Option<Vec<String>>,
    #[serde(default = "default_fidelity")]
    min_fidelity: Fidelity,
    format: Option<BodyFormat>,
    #[serde(default = "default_compression")]
    compression: Compression,
    #[serde(default)]
    batch: BatchOverrides,
    #[serde(default)]
    retry: RetryConfig,
    session_end_types: Option<Vec<String>>,
    session_idle_timeout: Option<HumanDuration>,
    session_max_bytes: Option<ByteSize>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

fn default_fidelity() -> Fidelity {
    Fidelity::Observed
}

fn default_compression() -> Compression {
    Compression::None
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = RawSink::deserialize(deserializer)?;
        let rest = serde_json::Value::Object(raw.rest);
        let protocol = Protocol::parse(raw.kind, rest)
            .map_err(|e| D::Error::custom(format!("{} sink: {e}", raw.kind.as_str())))?;
        let defaults = raw.kind.default_batch();
        let format = raw.format.unwrap_or(BodyFormat::Ndjson);
        let exclude_types = raw
            .exclude_types
            .unwrap_or_else(|| format.default_exclude_types());
        let batch = BatchConfig {
            max_events: raw.batch.max_events.unwrap_or(defaults.max_events),
            max_bytes: raw.batch.max_bytes.unwrap_or(defaults.max_bytes),
            max_age: raw.batch.max_age.unwrap_or(defaults.max_age),
            // A session-assembling sink writes one object at a time.
            in_flight: raw
                .batch
                .in_flight
                .unwrap_or(if format.assembles_sessions() {
                    1
                } else {
                    defaults.in_flight
                }),
        };
        let sessions = if format.assembles_sessions() {
            Some(SessionsConfig {
                end_types: raw
                    .session_end_types
                    .unwrap_or_else(SessionsConfig::default_end_types),
                idle_timeout: raw
                    .session_idle_timeout
                    .unwrap_or(HumanDuration::secs(30 * 60)),
                max_bytes: raw
                    .session_max_bytes
                    .unwrap_or(ByteSize(batch.max_bytes.0 / 2)),
            })
        } else {
            let given = [
                ("session_end_types", raw.session_end_types.is_some()),
                ("session_idle_timeout", raw.session_idle_timeout.is_some()),
                ("session_max_bytes", raw.session_max_bytes.is_some()),
            ];
            if let Some((key, _)) = given.iter().find(|(_, set)| *set) {
                return Err(D::Error::custom(format!(
                    "`{key}` applies only to format = \"openai_sessions\""
                )));
            }
            None
        };
        for pattern in raw.include_types.iter().chain(&exclude_types) {
            glob::Pattern::new(pattern)
                .map_err(|e| D::Error::custom(format!("`{pattern}` is not a glob pattern: {e}")))?;
        }
        Ok(SinkConfig {
            kind: raw.kind,
            include_types: raw.include_types,
            exclude_types,
            min_fidelity: raw.min_fidelity,
            format,
            compression: raw.compression,
            batch,
            retry: raw.retry,
            sessions,
            protocol,
        })
    }
}

impl SinkConfig {
    /// Checks that need the sink's name for their message.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let key = |k: &str| format!("sinks.{name}.{k}");
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "sinks.{name}: a sink name is 1-64 characters of A-Z a-z 0-9 _ -"
            ));
        }
        if self.batch.max_events == 0 {
            return Err(format!(
                "{}: must be greater than 0",
                key("batch.max_events")
            ));
        }
        if self.batch.max_bytes.0 < 1024 {
            return Err(format!("{}: must be at least 1KiB", key("batch.max_bytes")));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.batch.in_flight) {
            return Err(format!(
                "{}: must be 1 to {MAX_IN_FLIGHT}",
                key("batch.in_flight")
            ));
        }
        if self.sessions.is_some() && self.batch.in_flight > 1 {
            return Err(format!(
                "{}: a session-assembling sink (format = \"openai_sessions\") writes one object at a time",
                key("batch.in_flight")
            ));
        }
        if self.retry.initial.0.is_zero() || self.retry.max < self.retry.initial {
            return Err(format!(
                "{}: must be > 0 and <= retry.max",
                key("retry.initial")
            ));
        }
        if self.retry.max_attempts == Some(0) {
            return Err(format!(
                "{}: must be at least 1 (or unset for unlimited)",
                key("retry.max_attempts")
            ));
        }
        if let Some(sessions) = &self.sessions {
            if sessions.idle_timeout.0.is_zero() {
                return Err(format!(
                    "{}: must be greater than 0",
                    key("session_idle_timeout")
                ));
            }
            if sessions.max_bytes.0 < 1024 || sessions.max_bytes > self.batch.max_bytes {
                return Err(format!(
                    "{}: must be at least 1KiB and at most batch.max_bytes ({})",
                    key("session_max_bytes"),
                    self.batch.max_bytes
                ));
            }
        }
        if self.kind.message_per_event()
            && (self.format != BodyFormat::Ndjson || self.compression != Compression::None)
        {
            return Err(format!(
                "sinks.{name}: a {} sink sends each event as its own message: format must be \"ndjson\" and compression \"none\"",
                self.kind.as_str()
            ));
        }
        self.protocol.validate(name)
    }
}
