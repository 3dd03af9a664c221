//! Typed configuration: defaults, loading from TOML plus `OUTBOXD_*`
//! environment overrides, validation with key paths.

use crate::ingest::store::StoreMode;
use crate::outbox::OutboxConfig;
use crate::secret::{resolve_secret, Secret};
use crate::sinks::config::SinkConfig;
use crate::telemetry::LogConfig;
use crate::units::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The configuration `outboxd run` uses when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.toml");

/// Prefix of environment overrides; `__` separates nested keys:
/// `OUTBOXD_INGEST__MAX_BODY_BYTES=16MiB` sets `ingest.max_body_bytes`.
pub const ENV_PREFIX: &str = "OUTBOXD";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the outbox database and (by default) the Unix socket live.
    pub data_dir: PathBuf,
    pub ingest: IngestConfig,
    pub outbox: OutboxConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub feed: FeedConfig,
    /// Secrets masked at ingest, before anything is stored.
    pub redaction: crate::redact::RedactionConfig,
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
    /// Where events go: `[sinks.NAME]` with `kind = "s3" | "http" | "file"`.
    pub sinks: BTreeMap<String, SinkConfig>,
}

/// Who may change what the daemon does (replay, purge, pause, resume).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for admin actions on the TCP listener; without it they
    /// are refused there (the Unix socket's file mode decides on the socket).
    pub token: Option<Secret>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// The change feed (`GET /v1/events`, `GET /v1/stream`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// Delivered events stay replayable this long (within the outbox quota,
    /// which wins); 0 keeps only what the sinks have not delivered yet
    /// (unless `retain_bytes` is set).
    pub retain: HumanDuration,
    /// ...and only while the outbox holds less than this; 0 = no cap. Alone
    /// (`retain` 0), delivered events stay until the outbox holds this much.
    pub retain_bytes: ByteSize,
    /// Open `/v1/stream` subscribers at most; more are answered 503.
    pub max_subscribers: usize,
    /// A subscriber this many events behind the newest is cut off (`lagged`).
    pub max_lag: u64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            retain: HumanDuration::secs(0),
            retain_bytes: ByteSize(0),
            max_subscribers: 64,
            max_lag: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight requests and sink attempts may take after SIGTERM.
    pub drain_timeout: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: HumanDuration::secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// TCP address of the HTTP ingest listener; "" disables it.
    pub http_listen: String,
    /// Unix socket path, relative paths resolved against `data_dir`; "" disables it.
    pub unix_socket: String,
    /// File mode of the Unix socket, as an octal string.
    pub unix_socket_mode: String,
    /// Group of the Unix socket (name or gid); "" keeps the daemon's own.
    pub unix_socket_group: String,
    /// When either list is set, only these users, members of these groups,
    /// outboxd's own user and root may use the socket (names or ids,
    /// checked with the peer's kernel credentials), whatever its mode.
    pub unix_socket_allow_users: Vec<String>,
    pub unix_socket_allow_groups: Vec<String>,
    pub max_body_bytes: ByteSize,
    pub max_events_per_request: usize,
    pub max_event_bytes: ByteSize,
    pub max_depth: usize,
    /// Bodies being read or parsed at once, in bytes, counted as they
    /// arrive; further requests wait.
    pub max_inflight_bytes: ByteSize,
    /// Open connections per listener; more wait to be accepted.
    pub max_connections: usize,
    /// A request's headers must arrive within this, or the connection is closed.
    pub header_timeout: HumanDuration,
    /// A request's body must arrive within this (408 otherwise).
    pub body_timeout: HumanDuration,
    pub dedup_window: HumanDuration,
    /// At most this many recent client ids are remembered for dedup, whatever
    /// the window: bounds the dedup table at high rates.
    pub dedup_max_ids: u64,
    /// Bearer token required on the TCP listener (the Unix socket relies on
    /// its file mode). Give it directly, or via `auth_token_env` / `auth_token_file`.
    pub auth_token: Option<Secret>,
    pub auth_token_env: Option<String>,
    pub auth_token_file: Option<PathBuf>,
    /// Allow `http_listen` on a non-loopback address without a token: anyone
    /// who reaches the port may then write events and manage dead letters.
    pub allow_unauthenticated_remote: bool,
    /// Which events are stored: `full`, `compacted` (no `observed` ones) or `none`.
    pub store: StoreMode,
    /// Event types (globs) never stored, whatever `store` says.
    pub ephemeral_types: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// TCP address for /metrics, /healthz and /readyz; "" disables it.
    pub listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./outboxd-data"),
            ingest: IngestConfig::default(),
            outbox: OutboxConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            feed: FeedConfig::default(),
            redaction: crate::redact::RedactionConfig::default(),
            admin: AdminConfig::default(),
            shutdown: ShutdownConfig::default(),
            sinks: BTreeMap::new(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            http_listen: "127.0.0.1:9811".into(),
            unix_socket: "outboxd.sock".into(),
            unix_socket_mode: "0660".into(),
            unix_socket_group: String::new(),
            unix_socket_allow_users: Vec::new(),
            unix_socket_allow_groups: Vec::new(),
            max_body_bytes: ByteSize::mib(8),
            max_events_per_request: 10_000,
            max_event_bytes: ByteSize::mib(1),
            max_depth: 64,
            max_inflight_bytes: ByteSize::mib(32),
            max_connections: 1024,
            header_timeout: HumanDuration::secs(10),
            body_timeout: HumanDuration::secs(30),
            dedup_window: HumanDuration::secs(3600),
            dedup_max_ids: 5_000_000,
            auth_token: None,
            auth_token_env: None,
            auth_token_file: None,
            allow_unauthenticated_remote: false,
            store: StoreMode::Full,
            ephemeral_types: Vec::new(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9812".into(),
        }
    }
}

/// A config error, always naming the key path it is about.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn error_at(key: &str, message: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {message}"))
}

/// Where the configuration comes from.
pub enum Source<'a> {
    Embedded,
    File(&'a Path),
}

impl Config {
    /// Loads defaults, then the source, then `OUTBOXD_*` environment overrides,
    /// and validates the result.
    pub fn load(source: Source<'_>) -> Result<Config, ConfigError> {
        Self::load_with_env(source, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        source: Source<'_>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        use config::{Environment, File, FileFormat};
        let mut builder = config::Config::builder();
        builder = match source {
            Source::Embedded => {
                builder.add_source(File::from_str(EMBEDDED_DEFAULT, FileFormat::Toml))
            }
            Source::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", path.display()))
                })?;
                builder.add_source(File::from_str(&text, FileFormat::Toml))
            }
        };
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(key, _)| key.starts_with(&format!("{ENV_PREFIX}_")))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let merged = builder
            .build()
            .map_err(|e| ConfigError(describe_config_error(e)))?;
        let config: Config = serde_path_to_error::deserialize(merged).map_err(|e| {
            let path = e.path().to_string();
            let inner = describe_config_error(e.into_inner());
            if path == "." || path.is_empty() {
                ConfigError(inner)
            } else {
                error_at(&path, inner)
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let ingest = &self.ingest;
        if ingest.http_listen.is_empty() && ingest.unix_socket.is_empty() {
            return Err(ConfigError(
                "ingest: both http_listen and unix_socket are disabled; enable at least one".into(),
            ));
        }
        if self.feed.max_subscribers == 0 {
            return Err(error_at("feed.max_subscribers", "must be at least 1"));
        }
        if self.feed.max_lag == 0 {
            return Err(error_at("feed.max_lag", "must be at least 1"));
        }
        crate::redact::Redactor::new(&self.redaction)
            .map_err(|e| ConfigError(format!("redaction: {e}")))?;
        for pattern in &ingest.ephemeral_types {
            glob::Pattern::new(pattern).map_err(|e| {
                error_at(
                    "ingest.ephemeral_types",
                    format!("`{pattern}` is not a glob pattern: {e}"),
                )
            })?;
        }
        if !ingest.http_listen.is_empty() {
            parse_listen("ingest.http_listen", &ingest.http_listen)?;
        }
        self.resolve_admin_token()?;
        let token = self.resolve_auth_token()?;
        if let Some(addr) = self.http_listen() {
            if !addr.ip().is_loopback() && token.is_none() && !ingest.allow_unauthenticated_remote {
                return Err(error_at(
                    "ingest.http_listen",
                    format!(
                        "`{addr}` is reachable from other hosts and no ingest.auth_token is set; \
                         set ingest.auth_token (or _env / _file), listen on loopback, or accept \
                         the risk with ingest.allow_unauthenticated_remote = true"
                    ),
                ));
            }
        }
        if !self.metrics.listen.is_empty() {
            parse_listen("metrics.listen", &self.metrics.listen)?;
        }
        self.unix_socket_mode()?;
        self.unix_socket_group()?;
        self.unix_socket_allow()?;
        positive("ingest.max_body_bytes", ingest.max_body_bytes.0)?;
        positive(
            "ingest.max_events_per_request",
            ingest.max_events_per_request as u64,
        )?;
        positive("ingest.max_event_bytes", ingest.max_event_bytes.0)?;
        positive("outbox.max_bytes", self.outbox.max_bytes.0)?;
        positive("ingest.max_connections", ingest.max_connections as u64)?;
        positive(
            "ingest.header_timeout",
            ingest.header_timeout.0.as_millis() as u64,
        )?;
        positive(
            "ingest.body_timeout",
            ingest.body_timeout.0.as_millis() as u64,
        )?;
        if !(1..=1024).contains(&ingest.max_depth) {
            return Err(error_at(
                "ingest.max_depth",
                format!("must be between 1 and 1024, got {}", ingest.max_depth),
            ));
        }
        if ingest.max_event_bytes > ingest.max_body_bytes {
            return Err(error_at(
                "ingest.max_event_bytes",
                "must not exceed ingest.max_body_bytes",
            ));
        }
        if ingest.max_inflight_bytes < ingest.max_body_bytes {
            return Err(error_at(
                "ingest.max_inflight_bytes",
                "must be at least ingest.max_body_bytes",
            ));
        }
        if !(1..=1_000_000).contains(&self.outbox.commit_max_events) {
            return Err(error_at(
                "outbox.commit_max_events",
                "must be between 1 and 1000000",
            ));
        }
        if !(ByteSize::mib(1).0..=ByteSize::gib(4).0).contains(&self.outbox.segment_bytes.0) {
            return Err(error_at(
                "outbox.segment_bytes",
                "must be between 1MiB and 4GiB",
            ));
        }
        for (name, sink) in &self.sinks {
            sink.validate(name).map_err(ConfigError)?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            error_at(
                "log.level",
                format!("`{}` is not a log filter: {e}", self.log.level),
            )
        })?;
        Ok(())
    }

    pub fn http_listen(&self) -> Option<SocketAddr> {
        parse_listen("", &self.ingest.http_listen).ok()
    }

    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        parse_listen("", &self.metrics.listen).ok()
    }

    pub fn unix_socket_path(&self) -> Option<PathBuf> {
        (!self.ingest.unix_socket.is_empty()).then(|| self.data_dir.join(&self.ingest.unix_socket))
    }

    pub fn unix_socket_mode(&self) -> Result<u32, ConfigError> {
        let mode = &self.ingest.unix_socket_mode;
        u32::from_str_radix(mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                error_at(
                    "ingest.unix_socket_mode",
                    format!("`{mode}` is not an octal file mode such as \"0660\""),
                )
            })
    }

    /// The gid `ingest.unix_socket_group` names, if set.
    pub fn unix_socket_group(&self) -> Result<Option<u32>, ConfigError> {
        let group = &self.ingest.unix_socket_group;
        if group.is_empty() {
            return Ok(None);
        }
        crate::ingest::listen::group_id(group)
            .map(Some)
            .map_err(|e| error_at("ingest.unix_socket_group", e))
    }

    /// The Unix socket's peer allow-list, if either list is set.
    pub fn unix_socket_allow(&self) -> Result<Option<crate::ingest::peer::PeerAllow>, ConfigError> {
        use crate::ingest::listen::{group_id, user_id};
        let ingest = &self.ingest;
        if ingest.unix_socket_allow_users.is_empty() && ingest.unix_socket_allow_groups.is_empty() {
            return Ok(None);
        }
        let resolve = |key: &str, names: &[String], lookup: fn(&str) -> Result<u32, String>| {
            names
                .iter()
                .map(|name| lookup(name).map_err(|e| error_at(key, e)))
                .collect::<Result<Vec<u32>, ConfigError>>()
        };
        Ok(Some(crate::ingest::peer::PeerAllow {
            uids: resolve(
                "ingest.unix_socket_allow_users",
                &ingest.unix_socket_allow_users,
                user_id,
            )?,
            gids: resolve(
                "ingest.unix_socket_allow_groups",
                &ingest.unix_socket_allow_groups,
                group_id,
            )?,
        }))
    }

    /// What the outbox needs to know: its own table plus where it lives and
    /// how long client ids are remembered.
    pub fn outbox_settings(&self) -> crate::outbox::Settings {
        crate::outbox::Settings {
            data_dir: self.data_dir.clone(),
            outbox: self.outbox.clone(),
            dedup_window: self.ingest.dedup_window.0,
            dedup_max_ids: self.ingest.dedup_max_ids,
            feed_retain: self.feed.retain.0,
            feed_retain_bytes: self.feed.retain_bytes.0,
            index_sessions: self
                .sinks
                .values()
                .any(|sink| sink.format.assembles_sessions()),
        }
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("outbox.db")
    }

    /// `admin.token` from whichever form is set (checked by `validate`).
    pub fn admin_token(&self) -> Option<String> {
        self.resolve_admin_token().ok().flatten()
    }

    /// `ingest.auth_token` from whichever form is set (checked by `validate`).
    pub fn auth_token(&self) -> Option<String> {
        self.resolve_auth_token().ok().flatten()
    }

    fn resolve_admin_token(&self) -> Result<Option<String>, ConfigError> {
        let admin = &self.admin;
        resolve_secret(
            "admin.token",
            admin.token.as_ref(),
            admin.token_env.as_deref(),
            admin.token_file.as_deref(),
        )
        .map_err(ConfigError)
    }

    fn resolve_auth_token(&self) -> Result<Option<String>, ConfigError> {
        let ingest = &self.ingest;
        resolve_secret(
            "ingest.auth_token",
            ingest.auth_token.as_ref(),
            ingest.auth_token_env.as_deref(),
            ingest.auth_token_file.as_deref(),
        )
        .map_err(ConfigError)
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn describe_config_error(error: config::ConfigError) -> String {
    error.to_string()
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(error_at(key, "must be greater than 0"));
    }
    Ok(())
}

fn parse_listen(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        error_at(
            key,
            format!("`{text}` is not an address such as \"127.0.0.1:9811\" (\"\" disables)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_with_env(Source::File(file.path()), env)
    }

    #[test]
    fn embedded_default_loads() {
        let config = Config::load_with_env(Source::Embedded, []).unwrap();
        assert_eq!(config.http_listen().unwrap().to_string(), "127.0.0.1:9811");
        assert_eq!(
            config.metrics_listen().unwrap().to_string(),
            "127.0.0.1:9812"
        );
        assert_eq!(
            config.unix_socket_path().unwrap(),
            PathBuf::from("./outboxd-data/outboxd.sock")
        );
        assert_eq!(config.outbox.sync, crate::outbox::SyncMode::Full);
    }

    #[test]
    fn the_example_file_spells_out_every_default() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/outboxd.toml");
        let loaded = Config::load_with_env(Source::File(&example), []).unwrap();
        assert_eq!(loaded, Config::default());
        // Every key of the effective config appears, uncommented, in the example.
        let text = std::fs::read_to_string(&example).unwrap();
        let rendered: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        for (section, value) in rendered {
            if section == "sinks" {
                continue; // user-named entries: checked by the next test
            }
            match value {
                toml::Value::Table(keys) => {
                    assert!(
                        text.contains(&format!("[{section}]")),
                        "example lacks [{section}]"
                    );
                    for key in keys.keys() {
                        assert!(
                            text.contains(&format!("\n{key} =")),
                            "example lacks {section}.{key}"
                        );
                    }
                }
                _ => assert!(
                    text.contains(&format!("\n{section} =")),
                    "example lacks {section}"
                ),
            }
        }
        for optional in ["auth_token =", "auth_token_env =", "auth_token_file ="] {
            assert!(
                text.contains(optional),
                "example does not document {optional}"
            );
        }
    }

    #[test]
    fn the_example_sinks_parse_when_uncommented() {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/outboxd.toml"),
        )
        .unwrap();
        let block = example
            .split("# --- sinks example begin\n")
            .nth(1)
            .and_then(|rest| rest.split("# --- sinks example end").next())
            .expect("the example has a sinks block");
        let text: String = block
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or("").to_string() + "\n")
            .collect();
        std::env::set_var("LAKE_ACCESS_KEY", "k");
        std::env::set_var("INGEST_TOKEN", "t");
        std::env::set_var("NATS_TOKEN", "t");
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s\n").unwrap();
        let text = text.replace(
            "/run/secrets/lake-secret-key",
            &secret.display().to_string(),
        );
        let config = load_text(&text, &[]).unwrap();
        assert_eq!(config.sinks.len(), 6);
        assert_eq!(
            config.sinks["training"].format,
            crate::format::BodyFormat::OpenaiChat
        );
        let sessions = config.sinks["conversations"].sessions.as_ref().unwrap();
        assert_eq!(sessions.max_bytes, crate::units::ByteSize::mib(4));
        assert_eq!(sessions.idle_timeout, HumanDuration::secs(30 * 60));
        let lake = &config.sinks["lake"];
        assert_eq!(lake.batch.max_age, HumanDuration::secs(60));
        assert_eq!(lake.batch.in_flight, 4);
        assert_eq!(config.sinks["ingest"].batch.in_flight, 1);
        assert_eq!(
            config.sinks["conversations"].batch.in_flight, 1,
            "a session-assembling S3 sink writes one object at a time"
        );
        assert_eq!(config.sinks["ingest"].retry.max_attempts, Some(20));
        let printed = config.to_toml();
        assert!(!printed.contains("secret_key = \"s\""));
    }

    #[test]
    fn sink_errors_name_the_sink_and_key() {
        let cases = [
            ("[sinks.a]\nkind = \"ftp\"\n", "sinks.a"),
            ("[sinks.a]\nkind = \"ftp\"\n", "unknown sink kind `ftp`, expected one of `s3`, `http`, `file`"),
            ("[sinks.a]\nkind = \"file\"\ndirr = \"x\"\n", "dirr"),
            ("[sinks.a]\nkind = \"http\"\nurl = \"not a url\"\n", "sinks.a.url"),
            ("[sinks.a]\nkind = \"http\"\nurl = \"http://x\"\n[sinks.a.batch]\nmax_events = 0\n", "sinks.a.batch.max_events"),
            ("[sinks.a]\nkind = \"s3\"\nendpoint = \"http://x\"\nbucket = \"b\"\n", "access_key"),
            ("[sinks.a]\nkind = \"s3\"\nendpoint = \"http://x\"\nbucket = \"b\"\naccess_key = \"k\"\nsecret_key = \"s\"\nkey_template = \"{yyyy}.jsonl\"\n", "key_template"),
            ("[sinks.a]\nkind = \"file\"\ndir = \"x\"\ninclude_types = [\"[\"]\n", "glob"),
            ("[sinks.\"bad name\"]\nkind = \"file\"\ndir = \"x\"\n", "sink name"),
            ("[sinks.a]\nkind = \"file\"\ndir = \"x\"\n[sinks.a.retry]\nmax_attempts = 0\n", "retry.max_attempts"),
            ("[sinks.a]\nkind = \"file\"\ndir = \"x\"\n[sinks.a.batch]\nin_flight = 0\n", "sinks.a.batch.in_flight: must be 1 to 16"),
            ("[sinks.a]\nkind = \"file\"\ndir = \"x\"\n[sinks.a.batch]\nin_flight = 17\n", "sinks.a.batch.in_flight: must be 1 to 16"),
            ("[sinks.a]\nkind = \"file\"\ndir = \"x\"\nformat = \"openai_sessions\"\n[sinks.a.batch]\nin_flight = 2\n", "writes one object at a time"),
        ];
        for (text, needle) in cases {
            let error = load_text(text, &[]).expect_err(text).to_string();
            assert!(
                error.contains(needle),
                "{text}: {error} should mention {needle}"
            );
        }
    }

    #[test]
    fn human_units_and_env_overrides() {
        let config = load_text(
            "[ingest]\nmax_body_bytes = \"16MiB\"\ndedup_window = \"10m\"\n",
            &[
                ("OUTBOXD_OUTBOX__MAX_BYTES", "2GiB"),
                ("OUTBOXD_INGEST__MAX_DEPTH", "32"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.ingest.max_body_bytes, ByteSize::mib(16));
        assert_eq!(config.ingest.dedup_window, HumanDuration::secs(600));
        assert_eq!(config.outbox.max_bytes, ByteSize::gib(2));
        assert_eq!(config.ingest.max_depth, 32);
    }

    #[test]
    fn errors_name_the_key_path() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("[ingest]\nmax_bodybytes = 5\n", &[], "max_bodybytes"),
            ("[ingest]\nmax_depth = \"deep\"\n", &[], "ingest.max_depth"),
            ("[outbox]\nmax_bytes = \"lots\"\n", &[], "outbox.max_bytes"),
            ("[outbox]\nwhen_full = \"panic\"\n", &[], "outbox.when_full"),
            ("[outbox]\nmax_bytes = 0\n", &[], "outbox.max_bytes"),
            (
                "[ingest]\ndedup_window = \"forever\"\n",
                &[],
                "ingest.dedup_window",
            ),
            (
                "[ingest]\nhttp_listen = \"localhost\"\n",
                &[],
                "ingest.http_listen",
            ),
            (
                "[ingest]\nunix_socket_mode = \"rw\"\n",
                &[],
                "ingest.unix_socket_mode",
            ),
            ("[ingest]\nmax_depth = 0\n", &[], "ingest.max_depth"),
            ("bogus = 1\n", &[], "bogus"),
            ("", &[("OUTBOXD_INGEST__NOPE", "1")], "nope"),
            (
                "",
                &[("OUTBOXD_INGEST__AUTH_TOKEN_ENV", "OUTBOXD_TEST_UNSET_VAR")],
                "ingest.auth_token_env",
            ),
            (
                "[ingest]\nauth_token = \"a\"\nauth_token_env = \"B\"\n",
                &[],
                "ingest.auth_token",
            ),
        ];
        for (text, env, key) in cases {
            let error = load_text(text, env).expect_err(text).to_string();
            assert!(
                error.contains(key),
                "error for {text:?} should name {key}: {error}"
            );
        }
    }

    #[test]
    fn a_remote_listener_needs_a_token_or_an_explicit_choice() {
        let error = load_text("[ingest]\nhttp_listen = \"0.0.0.0:9811\"\n", &[])
            .unwrap_err()
            .to_string();
        for key in [
            "ingest.http_listen",
            "ingest.auth_token",
            "ingest.allow_unauthenticated_remote",
        ] {
            assert!(error.contains(key), "{error} should name {key}");
        }
        for ok in [
            "[ingest]\nhttp_listen = \"0.0.0.0:9811\"\nauth_token = \"t\"\n",
            "[ingest]\nhttp_listen = \"[::]:9811\"\nallow_unauthenticated_remote = true\n",
            "[ingest]\nhttp_listen = \"127.0.0.2:9811\"\n",
            "[ingest]\nhttp_listen = \"[::1]:9811\"\n",
        ] {
            load_text(ok, &[]).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert!(load_text("[ingest]\nhttp_listen = \"[::]:9811\"\n", &[]).is_err());
    }

    /// The example config under the `OUTBOXD_*` settings found in the
    /// words of a deploy file (a Dockerfile's ENV, a unit's Environment=).
    fn load_example_as_deployed(deploy_file: &str) -> (Config, String) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join(deploy_file)).unwrap();
        let env: Vec<(String, String)> = text
            .split_whitespace()
            .map(|word| word.trim_start_matches("Environment="))
            .filter_map(|word| word.split_once('='))
            .filter(|(key, _)| key.starts_with("OUTBOXD_"))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        assert!(env.len() >= 3, "{deploy_file}: {env:?}");
        let config = Config::load_with_env(Source::File(&root.join("config/outboxd.toml")), env)
            .unwrap_or_else(|e| panic!("{deploy_file} with the example config: {e}"));
        (config, text)
    }

    #[test]
    fn the_container_image_defaults_load_and_keep_ingest_on_loopback() {
        let (config, _) = load_example_as_deployed("Dockerfile");
        assert!(config.http_listen().unwrap().ip().is_loopback());
        assert!(!config.metrics_listen().unwrap().ip().is_loopback());
        assert!(config.auth_token().is_none());
        assert_eq!(
            config.unix_socket_path().unwrap(),
            PathBuf::from("/run/outboxd/outboxd.sock")
        );
    }

    #[test]
    fn the_systemd_unit_puts_the_socket_where_agents_can_reach_it() {
        let (config, unit) = load_example_as_deployed("systemd/outboxd.service");
        let socket = config.unix_socket_path().unwrap();
        // Under RuntimeDirectory=, never under the DynamicUser state dir.
        assert!(socket.starts_with("/run/outboxd"), "{}", socket.display());
        assert!(unit.contains("\nRuntimeDirectory=outboxd\n"));
        assert!(unit.contains("\nGroup=outboxd\n"));
        assert_eq!(config.unix_socket_mode().unwrap(), 0o660);
    }

    #[test]
    fn printing_masks_secrets() {
        let config = load_text("[ingest]\nauth_token = \"hunter2\"\n", &[]).unwrap();
        let printed = config.to_toml();
        assert!(!printed.contains("hunter2"));
        assert!(printed.contains("auth_token = \"****\""));
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(config.auth_token().as_deref(), Some("hunter2"));
    }
}
