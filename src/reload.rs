//! Live reconfiguration: SIGHUP and `POST /v1/admin/reload` re-read the
//! config and apply what can change while running (`[sinks]` through the
//! [`Supervisor`], `[redaction]` by swapping the rules ingest uses).
//!
//! Everything else is read once at start (listeners, the data directory,
//! limits, tokens): a reload that changes any of it is refused with the keys
//! named, and the running configuration stays, as it does for a config that
//! does not load. Reloads run one at a time, in the order asked.

use crate::config::{Config, Source};
use crate::redact::{LiveRules, Redactor};
use crate::service;
use crate::shutdown::Shutdown;
use crate::supervisor::{Changes, Supervisor};
use crate::telemetry::names;
use serde::Serialize;
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// `applied` or `unchanged`.
    pub result: &'static str,
    pub sinks: Changes,
    pub redaction_changed: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    #[error("the new configuration is invalid: {0}")]
    Invalid(String),
    #[error("{} changed; these are read only at start: restart outboxd to apply them (the running configuration stays)", .0.join(", "))]
    RestartRequired(Vec<String>),
    #[error("applying the new configuration failed: {0}")]
    Failed(String),
}

impl ReloadError {
    /// The `result` label of the reload metric.
    pub fn label(&self) -> &'static str {
        match self {
            ReloadError::Invalid(_) => "invalid",
            ReloadError::RestartRequired(_) => "restart_required",
            ReloadError::Failed(_) => "failed",
        }
    }
}

pub type Outcome = Result<Applied, ReloadError>;

/// A request to reload; the API waits for the answer, a signal does not.
pub struct Request {
    pub reply: Option<oneshot::Sender<Outcome>>,
}

/// How the API and the signal handler ask for a reload.
pub type Requests = mpsc::Sender<Request>;

pub struct Reloader {
    /// The file given with `--config`; None for the embedded default.
    source: Option<PathBuf>,
    running: Config,
    supervisor: Supervisor,
    redaction: LiveRules,
}

impl Reloader {
    pub fn new(
        source: Option<PathBuf>,
        running: Config,
        supervisor: Supervisor,
        redaction: LiveRules,
    ) -> Reloader {
        Reloader {
            source,
            running,
            supervisor,
            redaction,
        }
    }

    /// Answers reload requests until shutdown, then stops every sink.
    pub async fn serve(mut self, mut requests: mpsc::Receiver<Request>, mut shutdown: Shutdown) {
        // No reload yet: nothing refused (and the alert's series exists).
        metrics::gauge!(names::CONFIG_RELOAD_OK).set(1.0);
        loop {
            let request = tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                request = requests.recv() => match request {
                    Some(request) => request,
                    None => break,
                },
            };
            service::reloading();
            let outcome = self.reload().await;
            service::reloaded();
            match &outcome {
                Ok(applied) => {
                    tracing::info!(result = applied.result, sinks = ?applied.sinks, redaction_changed = applied.redaction_changed, "configuration reloaded");
                    metrics::counter!(names::CONFIG_RELOADS, "result" => applied.result)
                        .increment(1);
                    metrics::gauge!(names::CONFIG_RELOAD_OK).set(1.0);
                }
                Err(e) => {
                    tracing::error!(error = %e, "configuration not reloaded");
                    metrics::counter!(names::CONFIG_RELOADS, "result" => e.label()).increment(1);
                    metrics::gauge!(names::CONFIG_RELOAD_OK).set(0.0);
                }
            }
            if let Some(reply) = request.reply {
                let _ = reply.send(outcome);
            }
        }
        self.supervisor.signal_stop();
        self.supervisor.stop_all().await;
    }

    async fn reload(&mut self) -> Outcome {
        let source = match &self.source {
            Some(path) => Source::File(path),
            None => Source::Embedded,
        };
        let new = Config::load(source).map_err(|e| ReloadError::Invalid(e.0))?;
        let restart = restart_only_changes(&self.running, &new);
        if !restart.is_empty() {
            return Err(ReloadError::RestartRequired(restart));
        }
        // Compile the rules before any sink changes, so an error changes nothing.
        let redaction_changed = new.redaction != self.running.redaction;
        let rules = Redactor::new(&new.redaction).map_err(ReloadError::Invalid)?;
        let sinks = self
            .supervisor
            .apply(&new.sinks)
            .await
            .map_err(|e| ReloadError::Failed(format!("{e:#}")))?;
        if redaction_changed {
            self.redaction.set(rules);
        }
        let result = if sinks.is_empty() && !redaction_changed {
            "unchanged"
        } else {
            "applied"
        };
        self.running = new;
        Ok(Applied {
            result,
            sinks,
            redaction_changed,
        })
    }
}

/// The keys (dotted paths) whose change needs a restart: everything but
/// `[sinks]` and `[redaction]`, and adding the first session-assembling
/// sink (the session index is built when the outbox opens).
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<String> {
    // Naming every field makes a new section a compile error here until
    // someone decides whether it can change live.
    let Config {
        data_dir,
        ingest,
        outbox,
        metrics,
        log,
        feed,
        redaction: _,
        admin,
        shutdown,
        sinks: _,
    } = running;
    let sections: [(&str, bool); 8] = [
        ("data_dir", *data_dir != new.data_dir),
        ("ingest", *ingest != new.ingest),
        ("outbox", *outbox != new.outbox),
        ("metrics", *metrics != new.metrics),
        ("log", *log != new.log),
        ("feed", *feed != new.feed),
        ("admin", *admin != new.admin),
        ("shutdown", *shutdown != new.shutdown),
    ];
    let before = serde_json::to_value(running).unwrap_or_default();
    let after = serde_json::to_value(new).unwrap_or_default();
    let mut keys = Vec::new();
    for (section, differs) in sections {
        if !differs {
            continue;
        }
        let found = keys.len();
        diff_paths(section, &before[section], &after[section], &mut keys);
        if keys.len() == found {
            // Only a secret differs (secrets serialize masked).
            keys.push(section.to_string());
        }
    }
    let indexes_sessions = |config: &Config| config.outbox_settings().index_sessions;
    if !indexes_sessions(running) && indexes_sessions(new) {
        keys.push(
            "sinks (the first session-assembling sink needs the session index, built at start)"
                .to_string(),
        );
    }
    keys
}

fn diff_paths(
    path: &str,
    before: &serde_json::Value,
    after: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let (x, y) = (
                    &a.get(key).cloned().unwrap_or(Value::Null),
                    &b.get(key).cloned().unwrap_or(Value::Null),
                );
                diff_paths(&format!("{path}.{key}"), x, y, out);
            }
        }
        (a, b) if a != b => out.push(path.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    fn load(extra: &str) -> Config {
        let dir = std::env::temp_dir().join(format!("outboxd-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.toml", fastrand::u64(..)));
        std::fs::write(
            &path,
            format!("data_dir = \"/tmp/outboxd-reload\"\n{extra}"),
        )
        .unwrap();
        let config = Config::load_with_env(Source::File(&path), Vec::new()).unwrap();
        std::fs::remove_file(&path).unwrap();
        config
    }

    const FILE_SINK: &str = "[sinks.archive]\nkind = \"file\"\ndir = \"archive\"\n";

    #[test]
    fn sinks_and_redaction_change_live() {
        let running = load(FILE_SINK);
        let new = load(&format!(
            "{FILE_SINK}[sinks.more]\nkind = \"file\"\ndir = \"more\"\n\
             [redaction]\ndisable = [\"jwt\"]\n"
        ));
        assert_eq!(restart_only_changes(&running, &new), Vec::<String>::new());
    }

    #[test]
    fn listeners_and_limits_are_named() {
        let running = load("");
        let new = load(
            "[ingest]\nhttp_listen = \"127.0.0.1:1\"\nmax_body_bytes = \"1MiB\"\n\
             [metrics]\nlisten = \"\"\n",
        );
        assert_eq!(
            restart_only_changes(&running, &new),
            [
                "ingest.http_listen",
                "ingest.max_body_bytes",
                "metrics.listen"
            ]
        );
    }

    #[test]
    fn a_changed_secret_names_its_section() {
        let running = load("[admin]\ntoken = \"one\"\n");
        let new = load("[admin]\ntoken = \"two\"\n");
        assert_eq!(restart_only_changes(&running, &new), ["admin"]);
    }

    #[test]
    fn the_first_sessions_sink_needs_a_restart() {
        let running = load(FILE_SINK);
        let new = load(&format!(
            "{FILE_SINK}[sinks.sessions]\nkind = \"file\"\ndir = \"sessions\"\nformat = \"openai_sessions\"\n"
        ));
        let keys = restart_only_changes(&running, &new);
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].starts_with("sinks (the first session-assembling sink"));
    }
}
