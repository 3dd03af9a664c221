//! outboxd-bench: a load generator for any HTTP endpoint taking JSON or
//! NDJSON events (outboxd or not), over TCP or a Unix socket.
//!
//! Prints events/s, requests/s, latency percentiles and errors by status;
//! `--json` for scripts; `--watch-pid` samples a process's RSS meanwhile.

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use outboxd::client::{Client, Target};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Clone)]
#[command(
    name = "outboxd-bench",
    about = "Drive an HTTP JSON/NDJSON event endpoint and measure it"
)]
struct Args {
    /// Target URL, e.g. http://127.0.0.1:9811 (path defaults to /v1/events).
    #[arg(long, conflicts_with = "unix", required_unless_present_any = ["unix", "receive"])]
    url: Option<String>,
    /// Instead of sending: be a receiver on this address that answers 200 to
    /// every POST and counts the NDJSON lines / JSON array elements (a
    /// stand-in remote ingest endpoint for sink benchmarks).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["url", "unix"])]
    receive: Option<std::net::SocketAddr>,
    /// Unix socket to connect to instead of TCP.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Request path (overrides the URL's).
    #[arg(long)]
    path: Option<String>,
    /// Events per request.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Concurrent connections, each sending one request at a time.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Approximate size of one event in bytes.
    #[arg(long, default_value_t = 1024)]
    event_size: usize,
    /// How long to send, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Pace the load to about this many events/s in total (default: as fast
    /// as the target answers). For soaks: a steady load, not a flood.
    #[arg(long, value_name = "EVENTS_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Stop once this many events were accepted (whichever comes first with --duration).
    #[arg(long)]
    total_events: Option<u64>,
    /// Give every event a unique client id (exercises dedup).
    #[arg(long)]
    unique_ids: bool,
    /// Append the id of every acknowledged event to this file, one per line
    /// (implies --unique-ids). For crash tests: what outboxd promised to keep.
    #[arg(long, value_name = "FILE")]
    acked_log: Option<std::path::PathBuf>,
    /// Body format.
    #[arg(long, value_enum, default_value_t = BodyFormat::Ndjson)]
    format: BodyFormat,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Sample this process's RSS before and during the run.
    #[arg(long, value_name = "PID")]
    watch_pid: Option<u32>,
    /// Runtime worker threads for the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print when slow requests (over this many ms) happened, per 100 ms
    /// window: a periodic stall shows as a regular pattern.
    #[arg(long, value_name = "MS")]
    timeline: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum BodyFormat {
    Ndjson,
    Json,
}

#[derive(Default)]
struct WorkerResult {
    latencies_us: Vec<u32>,
    /// (ms since the run started, µs taken) of requests slower than --timeline.
    slow: Vec<(u64, u32)>,
    events_ok: u64,
    statuses: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Report {
    target: String,
    batch: u32,
    concurrency: u32,
    event_size: usize,
    seconds: f64,
    requests: u64,
    requests_ok: u64,
    events_ok: u64,
    events_per_sec: f64,
    requests_per_sec: f64,
    latency_ms: Latency,
    errors: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss: Option<Rss>,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize, Clone, Copy)]
struct Rss {
    before_mib: f64,
    max_mib: f64,
    after_mib: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    match args.receive {
        Some(addr) => runtime.block_on(receive(addr)),
        None => runtime.block_on(run(args)),
    }
}

/// Answers 200 to every request, counting events; prints a line a second.
async fn receive(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let events = Arc::new(AtomicU64::new(0));
    let counter = events.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let counter = counter.clone();
        async move {
            let n = if body.first() == Some(&b'[') {
                serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body).map_or(0, |v| v.len())
            } else {
                body.iter().filter(|b| **b == b'\n').count()
            };
            counter.fetch_add(n as u64, Ordering::Relaxed);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = events.load(Ordering::Relaxed);
            println!("received {now} events ({} /s)", now - last);
            last = now;
        }
    });
    axum::serve(listener, app).await?;
    Ok(())
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One event of about `size` bytes; `id` is included when given.
fn event(id: Option<&str>, worker: u32, size: usize) -> String {
    let mut text = String::with_capacity(size + 64);
    text.push_str("{\"type\":\"bench.event\",");
    if let Some(id) = id {
        text.push_str("\"id\":\"");
        text.push_str(id);
        text.push_str("\",");
    }
    text.push_str(&format!(
        "\"session_id\":\"bench-{worker}\",\"data\":{{\"text\":\""
    ));
    let padding = size.saturating_sub(text.len() + 3);
    text.extend(std::iter::repeat_n('x', padding));
    text.push_str("\"}}");
    text
}

fn body(args: &Args, run: &str, worker: u32, request: u64, fixed: &Option<Bytes>) -> Bytes {
    if let Some(fixed) = fixed {
        return fixed.clone();
    }
    let mut body = String::with_capacity(args.batch as usize * (args.event_size + 64) + 2);
    if let BodyFormat::Json = args.format {
        body.push('[');
    }
    for i in 0..args.batch {
        let id = event_id(run, worker, request, i);
        if i > 0 {
            body.push(if let BodyFormat::Json = args.format {
                ','
            } else {
                '\n'
            });
        }
        body.push_str(&event(Some(&id), worker, args.event_size));
    }
    match args.format {
        BodyFormat::Json => body.push(']'),
        BodyFormat::Ndjson => body.push('\n'),
    }
    Bytes::from(body)
}

async fn worker(
    args: Arc<Args>,
    target: Target,
    run: Arc<str>,
    worker: u32,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    acked: Option<AckedLog>,
    run_started: Instant,
) -> WorkerResult {
    let mut client = Client::new(target);
    let content_type = match args.format {
        BodyFormat::Ndjson => "application/x-ndjson",
        BodyFormat::Json => "application/json",
    };
    let extra: Vec<(String, String)> = args
        .headers
        .iter()
        .filter_map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut headers: Vec<(&str, &str)> = vec![("content-type", content_type)];
    headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    // Without unique ids every request can reuse one body.
    let fixed = (!args.unique_ids && args.acked_log.is_none()).then(|| {
        let one = event(None, worker, args.event_size);
        let lines = vec![one; args.batch as usize];
        Bytes::from(match args.format {
            BodyFormat::Ndjson => lines.join("\n") + "\n",
            BodyFormat::Json => format!("[{}]", lines.join(",")),
        })
    });
    let mut result = WorkerResult::default();
    let mut request = 0u64;
    // Each worker sends one request per tick: batch × concurrency / rate seconds.
    let mut pace = args.rate.map(|rate| {
        let every = f64::from(args.batch) * f64::from(args.concurrency) / rate as f64;
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(every));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    while !stop.load(Ordering::Relaxed) {
        if let Some(ticks) = pace.as_mut() {
            ticks.tick().await;
        }
        if args
            .total_events
            .is_some_and(|total| sent.fetch_add(u64::from(args.batch), Ordering::Relaxed) >= total)
        {
            break;
        }
        let payload = body(&args, &run, worker, request, &fixed);
        request += 1;
        let started = Instant::now();
        let answer = client
            .request(hyper::Method::POST, None, &headers, payload)
            .await;
        let micros = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        if args
            .timeline
            .is_some_and(|ms| u64::from(micros) > ms * 1000)
        {
            let at = started.duration_since(run_started).as_millis() as u64;
            result.slow.push((at, micros));
        }
        match answer {
            Ok(answer) if answer.status.is_success() => {
                result.latencies_us.push(micros);
                result.events_ok += u64::from(args.batch);
                if let Some(log) = &acked {
                    log.record(&run, worker, request - 1, args.batch);
                }
            }
            Ok(answer) => {
                result.latencies_us.push(micros);
                *result
                    .statuses
                    .entry(answer.status.as_u16().to_string())
                    .or_default() += 1;
                if answer.status.as_u16() == 503 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Err(e) => {
                *result.statuses.entry(format!("io: {e}")).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    result
}

/// The acknowledged ids, written as they are acknowledged (one `write`
/// per request, so a killed generator loses at most what it had not written).
#[derive(Clone)]
struct AckedLog(Arc<std::sync::Mutex<std::fs::File>>);

impl AckedLog {
    fn create(path: &std::path::Path) -> anyhow::Result<AckedLog> {
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AckedLog(Arc::new(std::sync::Mutex::new(file))))
    }

    fn record(&self, run: &str, worker: u32, request: u64, batch: u32) {
        use std::io::Write;
        let lines: String = (0..batch)
            .map(|i| format!("{}\n", event_id(run, worker, request, i)))
            .collect();
        let mut file = self.0.lock().expect("acked log lock");
        file.write_all(lines.as_bytes())
            .expect("writing the acked log");
    }
}

fn event_id(run: &str, worker: u32, request: u64, i: u32) -> String {
    format!("{run}-{worker}-{request}-{i}")
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

async fn run(args: Args) -> anyhow::Result<()> {
    let default_path = args.path.clone().unwrap_or_else(|| "/v1/events".into());
    let mut target = match (&args.url, &args.unix) {
        (_, Some(socket)) => Target::unix(socket, &default_path),
        (Some(url), None) => Target::from_url(url, &default_path)?,
        (None, None) => anyhow::bail!("give --url, --unix or --receive"),
    };
    if let Some(path) = &args.path {
        target = match target {
            Target::Tcp { authority, .. } => Target::Tcp {
                authority,
                path: path.clone(),
            },
            Target::Unix { socket, .. } => Target::Unix {
                socket,
                path: path.clone(),
            },
        };
    }
    let described = format!("{target:?}");
    let args = Arc::new(args);
    let run_id: Arc<str> = Arc::from(format!(
        "{:x}.{}",
        outboxd::clock::now_ms(),
        std::process::id()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let rss_before = args.watch_pid.and_then(rss_mib);
    let started = Instant::now();
    let acked = args
        .acked_log
        .as_deref()
        .map(AckedLog::create)
        .transpose()?;
    let mut workers = tokio::task::JoinSet::new();
    for n in 0..args.concurrency {
        workers.spawn(worker(
            args.clone(),
            target.clone(),
            run_id.clone(),
            n,
            stop.clone(),
            sent.clone(),
            acked.clone(),
            started,
        ));
    }
    let mut rss_max = rss_before.unwrap_or(0.0);
    let reached = |sent: &AtomicU64| {
        args.total_events
            .is_some_and(|total| sent.load(Ordering::Relaxed) >= total)
    };
    while started.elapsed() < args.duration && !reached(&sent) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(rss) = args.watch_pid.and_then(rss_mib) {
            rss_max = rss_max.max(rss);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut slow = Vec::new();
    let mut events_ok = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(result) = workers.join_next().await {
        let result = result?;
        latencies.extend(result.latencies_us);
        slow.extend(result.slow);
        events_ok += result.events_ok;
        for (status, n) in result.statuses {
            *errors.entry(status).or_default() += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let requests_ok = events_ok / u64::from(args.batch);
    let requests = requests_ok + errors.values().sum::<u64>();
    let report = Report {
        target: described,
        batch: args.batch,
        concurrency: args.concurrency,
        event_size: args.event_size,
        seconds,
        requests,
        requests_ok,
        events_ok,
        events_per_sec: events_ok as f64 / seconds,
        requests_per_sec: requests_ok as f64 / seconds,
        latency_ms: Latency {
            p50: percentile(&latencies, 0.50),
            p90: percentile(&latencies, 0.90),
            p99: percentile(&latencies, 0.99),
            max: percentile(&latencies, 1.0),
        },
        errors,
        rss: args.watch_pid.map(|pid| Rss {
            before_mib: rss_before.unwrap_or(0.0),
            max_mib: rss_max,
            after_mib: rss_mib(pid).unwrap_or(0.0),
        }),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("target        {}", report.target);
    println!(
        "load          {} connections, {} events/request, ~{} B/event, {:.1}s",
        report.concurrency, report.batch, report.event_size, report.seconds
    );
    println!("events/s      {:.0}", report.events_per_sec);
    println!("requests/s    {:.0}", report.requests_per_sec);
    println!(
        "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        report.latency_ms.p50, report.latency_ms.p90, report.latency_ms.p99, report.latency_ms.max
    );
    if report.errors.is_empty() {
        println!("errors        none");
    } else {
        for (status, n) in &report.errors {
            println!("errors        {status}: {n}");
        }
    }
    if let Some(threshold) = args.timeline {
        print_timeline(&mut slow, threshold);
    }
    if let Some(rss) = report.rss {
        println!(
            "rss MiB       before {:.1}  max {:.1}  after {:.1}",
            rss.before_mib, rss.max_mib, rss.after_mib
        );
    }
    Ok(())
}

/// One line per 100 ms window holding requests slower than `threshold` ms:
/// when, how many, the slowest.
fn print_timeline(slow: &mut [(u64, u32)], threshold: u64) {
    slow.sort_unstable();
    println!("slow (> {threshold} ms) requests per 100 ms window:");
    let mut windows: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    for (at, micros) in slow.iter() {
        let window = windows.entry(at / 100).or_default();
        window.0 += 1;
        window.1 = window.1.max(*micros);
    }
    for (window, (count, max)) in windows {
        println!(
            "  t={:>7.1}s  {count:>5} slow  max {:.1} ms",
            window as f64 / 10.0,
            f64::from(max) / 1000.0
        );
    }
}
