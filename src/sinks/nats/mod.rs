//! The NATS JetStream sink: one message per event (subscribers expect
//! events, not batches) on a subject made from the event, with the event's
//! JSON as payload and `Nats-Msg-Id` set to the event id, so JetStream drops
//! a message re-published within its duplicate window (a retried batch, a
//! batch resent after kill -9). Publish acknowledgements are awaited with a
//! bounded number in flight; the batch is delivered only when every message
//! in it is acknowledged.

use crate::format::EncodedBatch;
use crate::secret::{resolve_secret, MaskedUrl, Secret};
use crate::sinks::config::BatchConfig;
use crate::sinks::Outcome;
use crate::units::{ByteSize, HumanDuration};
use async_nats::jetstream::{self, context::PublishErrorKind};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use tokio::sync::Mutex;

/// `kind = "nats"`.
pub const NAME: &str = "nats";

/// Each event is its own message: the body must be NDJSON, uncompressed.
pub const MESSAGE_PER_EVENT: bool = true;

/// Publishes each line of a body it holds whole.
pub const STREAMS_BODY: bool = false;

/// Batch bounds where the config gives none.
pub fn default_batch() -> BatchConfig {
    BatchConfig {
        max_events: 1000,
        max_bytes: ByteSize::mib(4),
        max_age: HumanDuration::millis(200),
        in_flight: 1,
    }
}

pub use {NatsConfig as Config, NatsSink as Sink};

/// One server URL or several (the client fails over between them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Urls {
    One(MaskedUrl),
    Many(Vec<MaskedUrl>),
}

impl Urls {
    fn list(&self) -> Vec<&MaskedUrl> {
        match self {
            Urls::One(url) => vec![url],
            Urls::Many(urls) => urls.iter().collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: Urls,
    /// Fields: `{type}`, `{agent_id}`, `{session_id}`, `{run_id}`,
    /// `{correlation_id}`, `{source}`. See [`subject_for`].
    #[serde(default = "default_subject")]
    pub subject: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub token: Option<Secret>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    pub nkey_seed: Option<Secret>,
    pub nkey_seed_env: Option<String>,
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (JWT plus NKey seed).
    pub creds_file: Option<PathBuf>,
    /// CA certificate(s) for the server's TLS; setting it requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Created (or checked) at the first connection when set.
    pub stream: Option<StreamConfig>,
    /// How long a batch may wait for its acknowledgements.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Messages published but not yet acknowledged, at most.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    pub subjects: Vec<String>,
    /// JetStream drops a repeated `Nats-Msg-Id` within this window.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: HumanDuration,
    pub max_bytes: Option<ByteSize>,
    pub max_age: Option<HumanDuration>,
    #[serde(default)]
    pub storage: Storage,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

fn default_subject() -> String {
    "agents.{agent_id}.{type}".into()
}

fn default_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}

fn default_in_flight() -> usize {
    256
}

fn default_duplicate_window() -> HumanDuration {
    HumanDuration::secs(120)
}

const FIELDS: [&str; 6] = [
    "type",
    "agent_id",
    "session_id",
    "run_id",
    "correlation_id",
    "source",
];

impl NatsConfig {
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let key = |k: &str| format!("sinks.{name}.{k}");
        let urls = self.url.list();
        if urls.is_empty() {
            return Err(format!("{}: give at least one server", key("url")));
        }
        for url in urls {
            let parsed = reqwest::Url::parse(url.expose())
                .map_err(|e| format!("{}: `{url}` is not a URL: {e}", key("url")))?;
            if !matches!(parsed.scheme(), "nats" | "tls" | "ws" | "wss") {
                return Err(format!(
                    "{}: `{url}` must start with nats://, tls://, ws:// or wss://",
                    key("url")
                ));
            }
        }
        let mut rest = self.subject.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{}: an unclosed `{{`", key("subject")))?;
            let field = &rest[open + 1..open + close];
            if !FIELDS.contains(&field) {
                return Err(format!(
                    "{}: unknown field `{{{field}}}`; known: {}",
                    key("subject"),
                    FIELDS.map(|f| format!("{{{f}}}")).join(" ")
                ));
            }
            rest = &rest[open + close + 1..];
        }
        if self.subject.is_empty()
            || self.subject.contains(char::is_whitespace)
            || self.subject.starts_with('.')
            || self.subject.ends_with('.')
        {
            return Err(format!(
                "{}: `{}` is not a subject template",
                key("subject"),
                self.subject
            ));
        }
        if self.user.is_some() != self.has_password() {
            return Err(format!(
                "{}: user and password go together",
                key("user")
            ));
        }
        self.credentials(name)?;
        if self.max_in_flight == 0 {
            return Err(format!("{}: must be at least 1", key("max_in_flight")));
        }
        if let Some(stream) = &self.stream {
            if stream.name.is_empty() || stream.name.contains(['.', ' ', '*', '>', '\t']) {
                return Err(format!(
                    "{}: a stream name has no spaces, dots, `*` or `>`",
                    key("stream.name")
                ));
            }
            if stream.subjects.is_empty() {
                return Err(format!(
                    "{}: list the subjects the stream captures",
                    key("stream.subjects")
                ));
            }
        }
        Ok(())
    }

    fn has_password(&self) -> bool {
        self.password.is_some() || self.password_env.is_some() || self.password_file.is_some()
    }

    /// The one way this sink authenticates, resolved.
    fn credentials(&self, name: &str) -> Result<Credentials, String> {
        let secret = |field: &str, direct: &Option<Secret>, env: &Option<String>, file: &Option<PathBuf>| {
            resolve_secret(
                &format!("sinks.{name}.{field}"),
                direct.as_ref(),
                env.as_deref(),
                file.as_deref(),
            )
        };
        let password = secret("password", &self.password, &self.password_env, &self.password_file)?;
        let token = secret("token", &self.token, &self.token_env, &self.token_file)?;
        let seed = secret("nkey_seed", &self.nkey_seed, &self.nkey_seed_env, &self.nkey_seed_file)?;
        let mut ways = Vec::new();
        if let Some(from_url) = self.url.list().iter().find_map(|u| url_credentials(u.expose())) {
            ways.push(from_url);
        }
        if let (Some(user), Some(password)) = (&self.user, password) {
            ways.push(Credentials::UserPassword(user.clone(), password));
        }
        if let Some(token) = token {
            ways.push(Credentials::Token(token));
        }
        if let Some(seed) = seed {
            ways.push(Credentials::NKey(seed));
        }
        if let Some(path) = &self.creds_file {
            ways.push(Credentials::CredsFile(path.clone()));
        }
        match ways.len() {
            0 => Ok(Credentials::None),
            1 => Ok(ways.pop().expect("one")),
            _ => Err(format!(
                "sinks.{name}: set one of user/password, token, nkey_seed, creds_file (credentials in the url count as one)"
            )),
        }
    }
}

/// `user:password@` in a URL is user and password; `token@` alone a token.
fn url_credentials(url: &str) -> Option<Credentials> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let user = percent_decoded(parsed.username());
    match (user.is_empty(), parsed.password()) {
        (true, _) => None,
        (false, Some(password)) => Some(Credentials::UserPassword(user, percent_decoded(password))),
        (false, None) => Some(Credentials::Token(user)),
    }
}

fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn without_userinfo(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

enum Credentials {
    None,
    UserPassword(String, String),
    Token(String),
    NKey(String),
    CredsFile(PathBuf),
}

/// The subject for one event. `{type}` keeps its dots (event types are
/// hierarchies, so `agents.*.tool.>` works); in every other field `.`, `*`,
/// `>` and whitespace or control characters become `_`. A missing field is
/// `_`.
pub fn subject_for(template: &str, head: &Head) -> String {
    let mut subject = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        subject.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').expect("validated");
        let field = &rest[open + 1..close];
        let value = head.field(field).filter(|v| !v.is_empty());
        match value {
            None => subject.push('_'),
            Some(value) => {
                for c in value.chars() {
                    let keep_dot = field == "type" && c == '.';
                    let bad = c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control();
                    subject.push(if bad && !keep_dot { '_' } else { c });
                }
            }
        }
        rest = &rest[close + 1..];
    }
    subject.push_str(rest);
    // An empty token (from a type such as "a..b") is not a valid subject.
    subject
        .split('.')
        .map(|token| if token.is_empty() { "_" } else { token })
        .collect::<Vec<_>>()
        .join(".")
}

/// The fields of an event line a message needs for its subject and headers.
#[derive(Debug, Default, Deserialize)]
pub struct Head<'a> {
    #[serde(default)]
    seq: i64,
    #[serde(borrow, default)]
    id: Cow<'a, str>,
    #[serde(borrow, default, rename = "type")]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    agent_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    run_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
}

impl Head<'_> {
    fn field(&self, name: &str) -> Option<&str> {
        match name {
            "type" => Some(&self.event_type),
            "agent_id" => self.agent_id.as_deref(),
            "session_id" => self.session_id.as_deref(),
            "run_id" => self.run_id.as_deref(),
            "correlation_id" => self.correlation_id.as_deref(),
            "source" => self.source.as_deref(),
            _ => None,
        }
    }
}

pub struct NatsSink {
    name: String,
    config: NatsConfig,
    shown_urls: String,
    /// Connected at the first delivery (and again after a failed connect);
    /// the client reconnects by itself afterwards.
    context: Mutex<Option<jetstream::Context>>,
}

impl NatsSink {
    pub fn new(name: &str, config: &NatsConfig, _data_dir: &Path) -> Result<NatsSink, String> {
        config.credentials(name)?;
        Ok(NatsSink {
            name: name.to_string(),
            shown_urls: config
                .url
                .list()
                .iter()
                .map(|u| u.masked())
                .collect::<Vec<_>>()
                .join(", "),
            config: config.clone(),
            context: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<jetstream::Context, Outcome> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("outboxd {}", self.name))
            .connection_timeout(self.config.timeout.0)
            .request_timeout(Some(self.config.timeout.0));
        options = match self.config.credentials(&self.name).map_err(halted)? {
            Credentials::None => options,
            Credentials::UserPassword(user, password) => options.user_and_password(user, password),
            Credentials::Token(token) => options.token(token),
            Credentials::NKey(seed) => options.nkey(seed),
            Credentials::CredsFile(path) => options
                .credentials_file(&path)
                .await
                .map_err(|e| halted(format!("reading {}: {e}", path.display())))?,
        };
        if let Some(ca) = &self.config.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        // Credentials in a URL travel as options, never inside the address:
        // the client logs addresses (at debug) whole.
        let addrs: Vec<async_nats::ServerAddr> = self
            .config
            .url
            .list()
            .iter()
            .filter_map(|url| without_userinfo(url.expose()).parse().ok())
            .collect();
        let client = options.connect(addrs).await.map_err(|e| {
            use async_nats::ConnectErrorKind as Kind;
            let reason = format!("connecting to {}: {e}", self.shown_urls);
            match e.kind() {
                Kind::Authentication | Kind::AuthorizationViolation | Kind::Tls => halted(reason),
                _ => retry(reason),
            }
        })?;
        let context = jetstream::new(client);
        if let Some(stream) = &self.config.stream {
            let config = jetstream::stream::Config {
                name: stream.name.clone(),
                subjects: stream.subjects.clone(),
                duplicate_window: stream.duplicate_window.0,
                max_bytes: stream.max_bytes.map_or(-1, |b| b.0 as i64),
                max_age: stream.max_age.map_or(std::time::Duration::ZERO, |a| a.0),
                storage: match stream.storage {
                    Storage::File => jetstream::stream::StorageType::File,
                    Storage::Memory => jetstream::stream::StorageType::Memory,
                },
                ..Default::default()
            };
            context.get_or_create_stream(config).await.map_err(|e| {
                use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
                let reason = format!("creating stream {}: {e}", stream.name);
                match e.kind() {
                    // The server refused the stream (its reason is in `e`):
                    // retrying the same request cannot help.
                    Kind::JetStream(_) | Kind::InvalidStreamName | Kind::EmptyStreamName => {
                        halted(reason)
                    }
                    _ => retry(reason),
                }
            })?;
        }
        Ok(context)
    }

    pub async fn deliver(&self, batch: &EncodedBatch) -> Outcome {
        let context = {
            let mut guard = self.context.lock().await;
            match guard.as_ref() {
                Some(context) => context.clone(),
                None => match self.connect().await {
                    Ok(context) => guard.insert(context).clone(),
                    Err(outcome) => return outcome,
                },
            }
        };
        match tokio::time::timeout(self.config.timeout.0, self.publish_all(&context, batch)).await
        {
            Ok(outcome) => outcome,
            Err(_) => retry(format!(
                "acknowledgements for {} messages not all in within {}",
                batch.events, self.config.timeout
            )),
        }
    }

    /// Publishes every event of the batch, at most `max_in_flight` awaiting
    /// their acknowledgement; the first failure decides the outcome.
    async fn publish_all(&self, context: &jetstream::Context, batch: &EncodedBatch) -> Outcome {
        let body = match crate::sinks::whole_body(batch).await {
            Ok(body) => body,
            Err(outcome) => return outcome,
        };
        let mut in_flight = VecDeque::new();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let head: Head = match serde_json::from_slice(line) {
                Ok(head) => head,
                Err(e) => return rejected(format!("an event line is not JSON: {e}")),
            };
            let subject = subject_for(&self.config.subject, &head);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", head.id.as_ref());
            headers.insert("Outboxd-Seq", head.seq.to_string().as_str());
            headers.insert("Outboxd-Type", head.event_type.as_ref());
            if let Some(session) = &head.session_id {
                headers.insert("Outboxd-Session-Id", session.as_ref());
            }
            if let Some(agent) = &head.agent_id {
                headers.insert("Outboxd-Agent-Id", agent.as_ref());
            }
            // The line as sent, without copying.
            let payload = body.slice_ref(line);
            match context
                .publish_with_headers(subject.clone(), headers, payload)
                .await
            {
                Ok(ack) => in_flight.push_back((subject, ack)),
                Err(e) => return classify(&subject, e.kind(), &e.to_string()),
            }
            if in_flight.len() >= self.config.max_in_flight {
                let (subject, ack) = in_flight.pop_front().expect("non-empty");
                if let Err(e) = ack.await {
                    return classify(&subject, e.kind(), &e.to_string());
                }
            }
        }
        while let Some((subject, ack)) = in_flight.pop_front() {
            if let Err(e) = ack.await {
                return classify(&subject, e.kind(), &e.to_string());
            }
        }
        Outcome::Delivered
    }
}

fn classify(subject: &str, kind: PublishErrorKind, text: &str) -> Outcome {
    let reason = format!("publishing to {subject}: {text}");
    match kind {
        PublishErrorKind::MaxPayloadExceeded => Outcome::TooLarge { reason },
        // "No responders": no stream captures the subject, or JetStream is
        // not up yet (just after a server restart). Retried with backoff;
        // the status says which subject lacks a stream.
        PublishErrorKind::StreamNotFound => retry(format!(
            "{reason}: no JetStream stream captures `{subject}` (or JetStream is not ready); create one or set stream.name and stream.subjects"
        )),
        _ if text.contains("Permissions Violation") || text.contains("Authorization Violation") => {
            halted(reason)
        }
        _ => retry(reason),
    }
}

fn retry(reason: String) -> Outcome {
    Outcome::Retry {
        after: None,
        reason,
    }
}

fn halted(reason: String) -> Outcome {
    Outcome::Halted { reason }
}

fn rejected(reason: String) -> Outcome {
    Outcome::Rejected { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(json: &str) -> Head<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn subjects_keep_type_dots_and_replace_what_subjects_cannot_hold() {
        let event = head(r#"{"seq":1,"id":"e","type":"tool.call","agent_id":"planner.v2 *x>","session_id":"s1"}"#);
        assert_eq!(subject_for("agents.{agent_id}.{type}", &event), "agents.planner_v2__x_.tool.call");
        assert_eq!(subject_for("s.{session_id}.{run_id}", &event), "s.s1._");
        let odd = head(r#"{"type":"a..b"}"#);
        assert_eq!(subject_for("x.{type}", &odd), "x.a._.b");
    }

    #[test]
    fn credentials_in_a_url_become_options_and_leave_the_address() {
        assert!(matches!(
            url_credentials("nats://agent:p%40ss@h:4222"),
            Some(Credentials::UserPassword(user, password)) if user == "agent" && password == "p@ss"
        ));
        assert!(matches!(url_credentials("nats://tok@h:4222"), Some(Credentials::Token(t)) if t == "tok"));
        assert!(url_credentials("nats://h:4222").is_none());
        assert_eq!(without_userinfo("nats://agent:secret@h:4222"), "nats://h:4222");
        let both: NatsConfig =
            toml::from_str("url = \"nats://a:b@h:4222\"\ntoken = \"t\"").unwrap();
        assert!(both.validate("n").unwrap_err().contains("set one of"));
    }

    #[test]
    fn config_errors_name_the_key() {
        let base = |extra: &str| -> NatsConfig {
            let text = format!("url = \"nats://127.0.0.1:4222\"\n{extra}");
            toml::from_str(&text).unwrap()
        };
        assert!(base("").validate("n").is_ok());
        for (extra, needle) in [
            ("subject = \"a.{nope}\"", "sinks.n.subject: unknown field `{nope}`"),
            ("subject = \"a b\"", "sinks.n.subject"),
            ("user = \"u\"", "sinks.n.user"),
            ("token = \"t\"\ncreds_file = \"/x\"", "set one of"),
            ("max_in_flight = 0", "sinks.n.max_in_flight"),
            ("[stream]\nname = \"a.b\"\nsubjects = [\"x\"]", "sinks.n.stream.name"),
        ] {
            let error = base(extra).validate("n").unwrap_err();
            assert!(error.contains(needle), "{extra}: {error}");
        }
        let http: NatsConfig = toml::from_str("url = \"http://x\"").unwrap();
        assert!(http.validate("n").unwrap_err().contains("nats://"));
    }
}
