//! The `outboxd` command line: thin wrappers around the library.

use clap::{Args, Parser, Subcommand};
use outboxd::client::{Client, Target};
use outboxd::config::{Config, Source};
use outboxd::send::{send, SendOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "outboxd",
    version,
    about = "A durable outbox sidecar for AI-agent event streams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (on the embedded default config without --config).
    Run {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective config, secrets masked.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Post NDJSON (or a JSON array) events from FILE or stdin.
    Send {
        #[command(flatten)]
        connect: Connect,
        /// Events per request.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch: u32,
        /// Input file; "-" or nothing reads stdin.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Show each sink's state, cursor, lag, errors and dead letters.
    ///
    /// Example: outboxd status --watch
    Status {
        #[command(flatten)]
        connect: Connect,
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS (default 2): in place on a terminal, one
        /// snapshot after another when piped. Ctrl-C stops.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2",
              value_parser = parse_interval)]
        watch: Option<std::time::Duration>,
    },
    /// Export every readable event of an outbox database (e.g. one in
    /// data_dir/quarantine/) as NDJSON for `outboxd send`.
    Salvage {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Write the NDJSON here instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Exit 0 when the daemon is ready (its `/readyz` answers 200), 1 with
    /// the reason otherwise: a health check for images without curl.
    ///
    /// Example: outboxd health --url http://127.0.0.1:9812
    Health {
        /// The operations listener (`metrics.listen`).
        #[arg(long, default_value = "http://127.0.0.1:9812")]
        url: String,
    },
    /// Re-read the daemon's config file and apply it: sinks added, removed
    /// or changed, redaction rules. Changes to anything else (listeners,
    /// data_dir, limits, tokens) are refused, naming them; so is an invalid
    /// file. The running configuration then stays. Same as SIGHUP, but
    /// answers, and exits 1 when nothing was applied.
    ///
    /// Example: outboxd reload
    Reload {
        #[command(flatten)]
        connect: Connect,
    },
    /// Pause or resume a sink.
    Sink {
        #[command(subcommand)]
        command: SinkCommand,
    },
    /// List or replay dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum SinkCommand {
    /// Stop sending after the attempt in flight; events wait in the outbox.
    /// Not kept across a restart.
    ///
    /// Example: outboxd sink pause lake
    Pause {
        #[command(flatten)]
        connect: Connect,
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Send again from where the sink stopped.
    ///
    /// Example: outboxd sink resume lake
    Resume {
        #[command(flatten)]
        connect: Connect,
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters (all sinks, or one).
    List {
        #[command(flatten)]
        connect: Connect,
        #[arg(long)]
        sink: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: why it failed, and the event as stored.
    ///
    /// Example: outboxd dlq show --sink lake 1042
    Show {
        #[command(flatten)]
        connect: Connect,
        #[arg(long)]
        sink: String,
        /// The dead letter's seq (`dlq list` shows it).
        #[arg(value_name = "SEQ")]
        seq: i64,
    },
    /// Delete a sink's dead letters for good: --ids, or --all.
    ///
    /// Example: outboxd dlq purge --sink lake --ids ev-1,ev-2
    Purge {
        #[command(flatten)]
        connect: Connect,
        #[arg(long)]
        sink: String,
        /// Comma-separated event ids.
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ids: Option<Vec<String>>,
        /// Every dead letter of the sink.
        #[arg(long)]
        all: bool,
    },
    /// Requeue a sink's dead letters (all, or --ids) once the cause is fixed.
    Replay {
        #[command(flatten)]
        connect: Connect,
        #[arg(long)]
        sink: String,
        /// Comma-separated event ids; all of the sink's when absent.
        #[arg(long, value_delimiter = ',')]
        ids: Option<Vec<String>>,
    },
}

/// How to reach a running daemon. Without --url or --socket: the Unix
/// socket at $OUTBOXD_SOCKET, /run/outboxd/outboxd.sock or
/// ./outboxd-data/outboxd.sock, the first that exists, else
/// http://127.0.0.1:9811.
#[derive(Args)]
struct Connect {
    /// outboxd's HTTP address (admin actions over TCP need admin.token).
    #[arg(long, conflicts_with = "socket")]
    url: Option<String>,
    /// outboxd's Unix socket.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Bearer token: ingest.auth_token, or admin.token for replay, purge,
    /// pause and resume over TCP.
    #[arg(long)]
    token: Option<String>,
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.1..=3600.0).contains(&secs) => {
            Ok(std::time::Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "`{text}` is not a number of seconds from 0.1 to 3600"
        )),
    }
}

/// The Unix socket the CLI uses when told nothing: where the systemd unit
/// and the default config put it.
fn default_socket() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("OUTBOXD_SOCKET") {
        return Some(PathBuf::from(path));
    }
    ["/run/outboxd/outboxd.sock", "outboxd-data/outboxd.sock"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

impl Connect {
    fn client(&self) -> anyhow::Result<Client> {
        let target = match (&self.url, &self.socket) {
            (_, Some(socket)) => Target::unix(socket, "/v1/events"),
            (Some(url), None) => Target::from_url(url, "/v1/events")?,
            (None, None) => match default_socket() {
                Some(socket) => Target::unix(socket, "/v1/events"),
                None => Target::from_url("http://127.0.0.1:9811", "/v1/events")?,
            },
        };
        Ok(Client::new(target))
    }
}

/// Runs one client-side command on a small runtime.
fn remote<F, Fut>(connect: &Connect, work: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let client = match connect.client() {
        Ok(client) => client,
        Err(e) => return fail(e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e.to_string()),
    };
    match runtime.block_on(work(client)) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

/// Keeps freed batch buffers from staying resident. Measured with
/// bench/drain.sh: glibc's defaults (an arena per thread, an mmap threshold
/// that grows after large frees) kept 8 MiB batch buffers in the heap: peak
/// RSS while draining 103 -> 76 MiB, after draining 77 -> 45 MiB.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let config_path = config.clone();
            let source = match &config {
                Some(path) => Source::File(path),
                None => Source::Embedded,
            };
            let config = match Config::load(source) {
                Ok(config) => config,
                Err(e) => return fail(format!("invalid configuration: {e}")),
            };
            outboxd::telemetry::init_logging(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            match runtime
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(outboxd::daemon::run(config, config_path)))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is::<outboxd::daemon::RestartToCheck>() => restart_in_place(),
                Err(e) => {
                    tracing::error!("{e:#}");
                    fail(format!("{e:#}"))
                }
            }
        }
        Command::CheckConfig { file } => match Config::load(Source::File(&file)) {
            Ok(config) => {
                print!("{}", config.to_toml());
                eprintln!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("{}: {e}", file.display())),
        },
        Command::Send {
            connect,
            batch,
            file,
        } => {
            let input: Box<dyn std::io::BufRead> = match file.as_deref() {
                None => Box::new(std::io::stdin().lock()),
                Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
                Some(p) => match std::fs::File::open(p) {
                    Ok(f) => Box::new(std::io::BufReader::new(f)),
                    Err(e) => return fail(format!("cannot open {}: {e}", p.display())),
                },
            };
            let options = SendOptions {
                batch_events: batch as usize,
                batch_bytes: 4 << 20,
                token: connect.token.clone(),
                retries: 5,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            remote(&connect, |mut client| async move {
                let report = send(&mut client, input, &options).await?;
                Ok(format!(
                    "accepted {} events ({} duplicates) in {} requests; last_seq {}\n",
                    report.accepted, report.duplicates, report.requests, report.last_seq
                ))
            })
        }
        Command::Salvage { file, output } => salvage(&file, output.as_deref()),
        Command::Status {
            connect,
            json,
            watch,
        } => {
            let token = connect.token.clone();
            remote(&connect, |mut client| async move {
                match watch {
                    None => outboxd::remote::status(&mut client, token.as_deref(), json).await,
                    Some(every) => {
                        outboxd::remote::status_watch(&mut client, token.as_deref(), json, every)
                            .await
                    }
                }
            })
        }
        Command::Health { url } => {
            let connect = Connect {
                url: Some(url),
                socket: None,
                token: None,
            };
            remote(&connect, |mut client| async move {
                outboxd::remote::health(&mut client).await
            })
        }
        Command::Reload { connect } => {
            let token = connect.token.clone();
            remote(&connect, |mut client| async move {
                outboxd::remote::reload(&mut client, token.as_deref()).await
            })
        }
        Command::Sink { command } => {
            let (connect, name, action) = match command {
                SinkCommand::Pause { connect, name } => (connect, name, "pause"),
                SinkCommand::Resume { connect, name } => (connect, name, "resume"),
            };
            let token = connect.token.clone();
            remote(&connect, |mut client| async move {
                outboxd::remote::sink_pause_or_resume(&mut client, token.as_deref(), &name, action)
                    .await
            })
        }
        Command::Dlq { command } => match command {
            DlqCommand::List {
                connect,
                sink,
                json,
            } => {
                let token = connect.token.clone();
                remote(&connect, |mut client| async move {
                    outboxd::remote::dlq_list(&mut client, token.as_deref(), sink.as_deref(), json)
                        .await
                })
            }
            DlqCommand::Show { connect, sink, seq } => {
                let token = connect.token.clone();
                remote(&connect, |mut client| async move {
                    outboxd::remote::dlq_show(&mut client, token.as_deref(), &sink, seq).await
                })
            }
            DlqCommand::Purge {
                connect,
                sink,
                ids,
                all: _,
            } => {
                let token = connect.token.clone();
                remote(&connect, |mut client| async move {
                    outboxd::remote::dlq_purge(&mut client, token.as_deref(), &sink, ids).await
                })
            }
            DlqCommand::Replay { connect, sink, ids } => {
                let token = connect.token.clone();
                remote(&connect, |mut client| async move {
                    outboxd::remote::dlq_replay(&mut client, token.as_deref(), &sink, ids).await
                })
            }
        },
    }
}

fn salvage(file: &std::path::Path, output: Option<&std::path::Path>) -> ExitCode {
    let mut out: Box<dyn std::io::Write> = match output {
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return fail(format!("cannot create {}: {e}", path.display())),
        },
    };
    match outboxd::salvage::salvage(file, &mut out) {
        Ok(report) => {
            eprintln!("outboxd salvage {}: {report}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("salvage: {e:#}")),
    }
}

/// Replaces this process with a fresh `outboxd` with the same arguments
/// (same pid, so supervisors and tests see one daemon). Only reached after
/// an orderly shutdown: the database is closed and the lock released.
fn restart_in_place() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let error = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec(),
        Err(e) => e,
    };
    fail(format!(
        "the outbox database is corrupt and restarting outboxd failed ({error}); start it again to check the database"
    ))
}

fn fail(message: String) -> ExitCode {
    eprintln!("outboxd: {message}");
    ExitCode::FAILURE
}
