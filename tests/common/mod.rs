//! Test support: runs the real `outboxd` binary on loopback ports in a
//! temporary directory, and reads its outbox database directly.
#![allow(dead_code)]

pub mod nats;
pub mod receiver;
pub mod s3;
pub mod sse;

use bytes::Bytes;
use outboxd::client::{Answer, Client, Target};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A port for a daemon to bind later. Taken below the kernel's ephemeral
/// range (from 32768): a port from that range can be taken in the meantime
/// as the source port of any outgoing connection (a sink's, a client's), and
/// the daemon then fails to start. Never the same port twice in a process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    // Processes start at different offsets, so test binaries running side
    // by side rarely try the same ports.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        1 + ((std::process::id() as u64 * 7919) % SPAN as u64) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_outboxd")
}

/// A running daemon with its own data dir and ports.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub http_port: u16,
    pub metrics_port: u16,
    child: Option<Child>,
}

/// Merges `extra` (TOML) over the base config for this daemon.
fn write_config(dir: &Path, http_port: u16, metrics_port: u16, extra: &str) -> PathBuf {
    let mut config: toml::Table = toml::from_str(&format!(
        "data_dir = {:?}\n[ingest]\nhttp_listen = \"127.0.0.1:{http_port}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[log]\nlevel = \"debug\"\n",
        dir.join("data").display().to_string()
    ))
    .unwrap();
    let extra: toml::Table = toml::from_str(extra).expect("test config is TOML");
    for (key, value) in extra {
        match (config.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(more)) => base.extend(more),
            (_, value) => {
                config.insert(key, value);
            }
        }
    }
    let path = dir.join("outboxd.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

impl Daemon {
    pub async fn start(extra: &str) -> Daemon {
        let mut daemon = Daemon::prepare(extra);
        daemon.spawn().await;
        daemon
    }

    /// Writes the config but does not start the daemon (see `spawn`).
    pub fn prepare(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let (http_port, metrics_port) = (free_port(), free_port());
        let config_path = write_config(dir.path(), http_port, metrics_port, extra);
        Daemon {
            dir,
            config_path,
            http_port,
            metrics_port,
            child: None,
        }
    }

    /// The test directory, kept after the daemon (stopped) is dropped.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        assert!(self.child.is_none(), "stop the daemon first");
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket(&self) -> PathBuf {
        self.data_dir().join("outboxd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("outboxd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Starts the binary and waits until it answers.
    pub async fn spawn(&mut self) {
        self.spawn_with_env(&[]).await
    }

    /// `spawn` with extra environment variables.
    pub async fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("outboxd.log"))
            .unwrap();
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("outboxd exited early ({status}):\n{}", self.log());
            }
            if let Ok(answer) = self.client().get("/healthz").await {
                if answer.status.is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "outboxd did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Hands the process over to the test (it is no longer killed on drop).
    pub fn take_child(&mut self) -> Child {
        self.child.take().expect("running")
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("outboxd did not stop after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn restart(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "clean exit expected, got {status}");
        self.spawn().await;
    }

    pub fn client(&self) -> Client {
        Client::new(
            Target::from_url(
                &format!("http://127.0.0.1:{}", self.http_port),
                "/v1/events",
            )
            .unwrap(),
        )
    }

    pub fn unix_client(&self) -> Client {
        Client::new(Target::unix(self.socket(), "/v1/events"))
    }

    pub fn metrics_client(&self) -> Client {
        Client::new(
            Target::from_url(
                &format!("http://127.0.0.1:{}", self.metrics_port),
                "/metrics",
            )
            .unwrap(),
        )
    }

    pub async fn post(&self, content_type: &str, body: impl Into<Bytes>) -> Answer {
        self.client().post(content_type, body.into()).await.unwrap()
    }

    pub async fn post_with(&self, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
        self.client()
            .request(hyper::Method::POST, None, headers, body.into())
            .await
            .unwrap()
    }

    /// Posts an NDJSON body, checks it was accepted, returns the ack.
    pub async fn post_ndjson(&self, body: impl Into<Bytes>) -> serde_json::Value {
        let answer = self.post("application/x-ndjson", body).await;
        assert!(
            answer.status.is_success(),
            "{}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        answer.json()
    }

    /// Posts events with these ids (NDJSON, one request) and checks the answer.
    pub async fn post_ids(&self, ids: &[String], event_type: &str) {
        let body: String = ids
            .iter()
            .map(|id| {
                format!(
                    "{{\"type\":\"{event_type}\",\"id\":\"{id}\",\"data\":{{\"n\":\"{id}\"}}}}\n"
                )
            })
            .collect();
        let answer = self.post("application/x-ndjson", body).await;
        assert_eq!(answer.status, hyper::StatusCode::OK, "{:?}", answer.body);
    }

    /// `GET path` on the ingest listener; the answer's JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let answer = self.client().get(path).await.unwrap();
        assert!(answer.status.is_success(), "GET {path}: {:?}", answer.body);
        answer.json()
    }

    /// `GET /v1/sinks`, as JSON.
    pub async fn sinks(&self) -> serde_json::Value {
        self.client().get("/v1/sinks").await.unwrap().json()
    }

    /// `GET /v1/dead-letters` (of one sink, or all), as a JSON array.
    pub async fn dead_letters(&self, sink: Option<&str>) -> Vec<serde_json::Value> {
        let path = match sink {
            Some(sink) => format!("/v1/dead-letters?sink={sink}"),
            None => "/v1/dead-letters".to_string(),
        };
        let letters = self.client().get(&path).await.unwrap().json();
        letters.as_array().expect("a JSON array").clone()
    }

    /// `GET /v1/sinks` with a bearer token.
    pub async fn sinks_with_token(&self, token: &str) -> serde_json::Value {
        let authorization = format!("Bearer {token}");
        self.client()
            .request(
                hyper::Method::GET,
                Some("/v1/sinks"),
                &[("authorization", &authorization)],
                Bytes::new(),
            )
            .await
            .unwrap()
            .json()
    }

    /// The status of one sink.
    pub async fn sink(&self, name: &str) -> serde_json::Value {
        let all = self.sinks().await;
        all.as_array()
            .and_then(|sinks| sinks.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no sink {name} in {all}"))
    }

    /// Waits until `check` holds for the sink's status.
    pub async fn wait_sink(
        &self,
        name: &str,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.sink(name).await;
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sink {name} never reached the state; last: {status}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes the config anew: the base (same ports and data dir) plus
    /// `extra`, for a reload or a restart to pick up.
    pub fn reconfigure(&self, extra: &str) {
        write_config(self.dir.path(), self.http_port, self.metrics_port, extra);
    }

    /// `POST /v1/admin/reload` over the Unix socket: status and answer.
    pub async fn reload(&self) -> (u16, serde_json::Value) {
        let answer = self
            .unix_client()
            .request(
                hyper::Method::POST,
                Some("/v1/admin/reload"),
                &[],
                Bytes::new(),
            )
            .await
            .unwrap();
        (answer.status.as_u16(), answer.json())
    }

    /// Rewrites the config file (for a restart with a fix).
    pub fn rewrite_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        assert!(text.contains(from), "{from} not in the config:\n{text}");
        std::fs::write(&self.config_path, text.replace(from, to)).unwrap();
    }

    /// `GET /readyz`: status and body.
    pub async fn readyz(&self) -> (u16, String) {
        let answer = self.metrics_client().get("/readyz").await.unwrap();
        (
            answer.status.as_u16(),
            String::from_utf8_lossy(&answer.body).into_owned(),
        )
    }

    pub async fn metrics(&self) -> String {
        let answer = self.metrics_client().get("/metrics").await.unwrap();
        assert!(answer.status.is_success());
        String::from_utf8(answer.body.to_vec()).unwrap()
    }

    /// Waits until every series has its value. Counters and gauges move just
    /// after the write they count (a receiver or the database can show a
    /// delivery first), so a test waits for them rather than reading once.
    pub async fn wait_samples(&self, expected: &[(&str, f64)]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let metrics = self.metrics().await;
            if expected
                .iter()
                .all(|(series, value)| sample(&metrics, series) == Some(*value))
            {
                return;
            }
            if Instant::now() > deadline {
                assert_samples(&metrics, expected);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every event in the outbox, in seq order, read straight from SQLite.
    pub async fn stored(&self) -> Vec<Stored> {
        stored_in(&self.data_dir().join("outbox.db")).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: i64,
    pub id: String,
    pub event_type: String,
    pub body: serde_json::Value,
    /// The body exactly as stored.
    pub raw: String,
}

pub async fn stored_in(db: &Path) -> Vec<Stored> {
    let mut connection = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    type Row = (i64, String, String, Vec<u8>, Option<i64>, Option<i64>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT seq, id, type, body, body_at, body_len FROM events ORDER BY seq")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    let log = db.parent().unwrap().join("bodies");
    rows.into_iter()
        .map(|(seq, id, event_type, body, at, len)| {
            let body = match (at, len) {
                (Some(at), Some(len)) => read_body_log(&log, at as u64, len as usize),
                _ => body,
            };
            Stored {
                seq,
                id,
                event_type,
                body: serde_json::from_slice(&body).expect("stored bodies are JSON"),
                raw: String::from_utf8(body).expect("stored bodies are UTF-8"),
            }
        })
        .collect()
}

/// The segment files of the body log in `dir`, by the log offset each starts at.
pub fn body_log_segments(dir: &Path) -> Vec<u64> {
    let mut starts: Vec<u64> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    starts.sort_unstable();
    starts
}

/// `len` bytes at log offset `at` of the body log in `dir`.
pub fn read_body_log(dir: &Path, at: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let start = *body_log_segments(dir)
        .iter()
        .rev()
        .find(|start| **start <= at)
        .expect("a segment holds the body");
    let file = std::fs::File::open(dir.join(format!("{start:020}.log"))).unwrap();
    let mut body = vec![0u8; len];
    file.read_exact_at(&mut body, at - start).unwrap();
    body
}

/// The value of one sample line (`name{labels} value`) in Prometheus text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Asserts each (series, value) pair against Prometheus text.
pub fn assert_samples(metrics: &str, expected: &[(&str, f64)]) {
    for (series, value) in expected {
        assert_eq!(sample(metrics, series), Some(*value), "{series}");
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

pub fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// Clients posting NDJSON requests of `per_request` events with unique ids
/// (`{prefix}{worker}-{request}-{i}`) until the daemon stops answering 200;
/// each task returns the ids that were acknowledged.
pub fn load_until_gone(
    port: u16,
    workers: usize,
    per_request: usize,
    prefix: &'static str,
    padding: usize,
) -> tokio::task::JoinSet<Vec<String>> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        tasks.spawn(async move {
            let mut client = Client::new(
                Target::from_url(&format!("http://127.0.0.1:{port}"), "/v1/events").unwrap(),
            );
            let data = "x".repeat(padding);
            let mut acked = Vec::new();
            for request in 0.. {
                let ids: Vec<String> = (0..per_request)
                    .map(|i| format!("{prefix}{worker}-{request}-{i}"))
                    .collect();
                let body: String = ids
                    .iter()
                    .map(|id| {
                        format!("{{\"type\":\"load\",\"id\":\"{id}\",\"data\":\"{data}\"}}\n")
                    })
                    .collect();
                match client.post("application/x-ndjson", Bytes::from(body)).await {
                    Ok(answer) if answer.status == hyper::StatusCode::OK => acked.extend(ids),
                    // Gone: this last request may or may not have committed.
                    _ => break,
                }
            }
            acked
        });
    }
    tasks
}

/// A number from the environment (test modes such as CRASH_CYCLES), or the default.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// The distinct ids; panics naming the first id that occurs more than once.
pub fn count_once(
    place: &str,
    ids: impl IntoIterator<Item = String>,
) -> std::collections::BTreeSet<String> {
    let mut counts: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    if let Some((id, n)) = counts.iter().find(|(_, n)| **n > 1) {
        panic!("{place}: id {id} delivered {n} times");
    }
    counts.into_keys().collect()
}

/// Resident memory of a process in MiB.
pub fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1024.0
}

/// Runs the load generator against the daemon in the background, recording
/// acknowledged ids in `acked_log`.
pub fn start_load(daemon: &Daemon, acked_log: &Path, duration: Duration, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_outboxd-bench"))
        .args(["--url", &format!("http://127.0.0.1:{}", daemon.http_port)])
        .arg("--duration")
        .arg(format!("{}ms", duration.as_millis()))
        .args(extra)
        .arg("--acked-log")
        .arg(acked_log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// The ids in an acked log (each must be there once).
pub fn acked_ids(acked_log: &Path) -> std::collections::BTreeSet<String> {
    count_once(
        "the acked log",
        std::fs::read_to_string(acked_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string),
    )
}

/// Waits until every sink has delivered everything (no lag, no batch out).
pub async fn wait_drained(daemon: &Daemon, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let sinks = daemon.sinks().await;
        let drained = sinks
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["lag_events"] == 0 && s["batch"].is_null() && s["state"] == "running");
        if drained {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sinks did not drain: {sinks}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a child process without blocking the runtime.
pub async fn finish(mut child: Child) -> ExitStatus {
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

/// Polls `check` until it holds. The bound only catches a hang: no test
/// relies on anything happening within a given time.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a server process (output discarded) and waits until it accepts
/// connections on `port`; `missing` says how tests/run.sh installs it.
/// Starts a server process and waits until `port` takes connections; its
/// output goes to the end of `log`, for a test's failure message.
pub async fn spawn_listening(mut command: Command, port: u16, missing: &str, log: &Path) -> Child {
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = command
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .expect(missing);
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{command:?} did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// Runs `outboxd check-config` on `text`: (success, stdout, stderr).
pub fn check_config(text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every line of the `.jsonl` files in `dir` (in file-name order), as JSON.
pub fn json_lines_in(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    files.sort_by_key(|f| f.file_name());
    files
        .iter()
        .filter(|f| f.file_name().to_string_lossy().ends_with(".jsonl"))
        .flat_map(|f| {
            std::fs::read_to_string(f.path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).expect("each line is JSON"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Runs `outboxd salvage FILE -o OUT`; returns the events and the report.
pub fn salvage(file: &Path, out: &Path) -> (Vec<serde_json::Value>, String) {
    let output = Command::new(binary())
        .arg("salvage")
        .arg(file)
        .arg("--output")
        .arg(out)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{report}");
    let events = std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (events, report)
}

/// Runs `outboxd run --config CONFIG` in the foreground where start-up must
/// fail; returns what it said on stderr.
pub fn refused_start(config: &Path) -> String {
    let output = Command::new(binary())
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "outboxd started on {}",
        config.display()
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}
