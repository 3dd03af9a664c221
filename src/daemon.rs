//! `outboxd run`: opens the outbox, binds the listeners, serves until a
//! signal, then shuts down in order (listeners, then the writer).

use crate::config::Config;
use crate::delivery::status::SinkStatus;
use crate::delivery::Delivery;
use crate::ingest::{self, admin::SinkRegistry, listen, IngestState};
use crate::ops::{self, OpsState};
use crate::outbox::{integrity, Outbox, SinkOp};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::sinks::Sink;
use crate::{outbox, service, telemetry};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinSet;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics();
    let drain_timeout = config.shutdown.drain_timeout.0;
    let opened = outbox::open(&config.outbox_settings()).await?;
    let signals = install_signals()?;
    let trigger = ShutdownTrigger::new();
    let sinks: SinkRegistry = Arc::new(
        config
            .sinks
            .iter()
            .map(|(name, sink)| Arc::new(SinkStatus::new(name, sink.kind.as_str(), 0)))
            .collect(),
    );
    let ingest_state = IngestState::new(
        &config,
        opened.outbox.clone(),
        sinks.clone(),
        Some(trigger.subscribe()),
    );
    let mut servers = JoinSet::new();
    let mut socket_file = None;
    let limits = listen::ConnectionLimits::from_config(&config);
    // Metrics first: once ingest answers, /readyz and /metrics do too.
    if let Some(addr) = config.metrics_listen() {
        let listener = listen::bind_tcp("metrics", addr).await?;
        let router = ops::router(OpsState {
            outbox: opened.outbox.clone(),
            metrics,
            sinks: sinks.clone(),
        });
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        servers.spawn(listen::serve_tcp(
            listener,
            router,
            trigger.subscribe(),
            limits,
        ));
    }
    // The socket before TCP: whoever sees the HTTP port answer finds the socket too.
    if let Some(path) = config.unix_socket_path() {
        let (listener, file) = listen::bind_unix(
            &path,
            config.unix_socket_mode()?,
            config.unix_socket_group()?,
        )?;
        tracing::info!(path = %path.display(), "ingest listening (unix socket)");
        servers.spawn(listen::serve(
            listener,
            ingest::router(ingest_state.clone()),
            trigger.subscribe(),
            limits,
        ));
        socket_file = Some(file);
    }
    if let Some(addr) = config.http_listen() {
        let listener = listen::bind_tcp("ingest", addr).await?;
        let router =
            ingest::router(ingest_state.for_tcp(config.auth_token(), config.admin_token()));
        tracing::info!(addr = %listener.local_addr()?, "ingest listening (http)");
        servers.spawn(listen::serve_tcp(
            listener,
            router,
            trigger.subscribe(),
            limits,
        ));
    }
    drop(ingest_state);
    // Listeners are bound (a clash fails start-up before anything runs); now the sinks.
    let mut deliveries = start_sinks(&config, &opened.outbox, &trigger, &sinks).await?;
    let trigger = Arc::new(trigger);
    tokio::spawn(watch_signals(trigger.clone(), signals));
    tracing::info!(last_seq = opened.outbox.last_seq(), "outboxd ready");
    service::ready(&opened.outbox);
    tokio::spawn(service::keep_alive(
        opened.outbox.clone(),
        trigger.subscribe(),
    ));

    // Listeners stop only on shutdown; one failing early shuts the rest down too.
    let mut shutdown: Shutdown = trigger.subscribe();
    let mut corruption = opened.outbox.stats().corruption.subscribe();
    tokio::select! {
        biased;
        _ = shutdown.recv() => {}
        Ok(_) = corruption.wait_for(Option::is_some) => {
            tracing::error!("stopping to check the outbox database; outboxd restarts itself");
        }
        Some(result) = servers.join_next() => {
            if !shutdown.is_shutdown() {
                tracing::error!(result = ?result, "a listener stopped unexpectedly; shutting down");
            }
        }
    }
    trigger.fire();
    service::stopping();
    tracing::info!("shutting down: no new requests; finishing those in flight");
    let drained = tokio::time::timeout(drain_timeout, async {
        while let Some(result) = servers.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::error!(error = %e, "listener failed");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "requests still in flight after {drain_timeout:?}; dropping them unacknowledged"
        );
        servers.abort_all();
    }
    // Sinks finish or abandon their attempt within the drain timeout; an
    // abandoned batch keeps its recorded range and is sent again on start.
    let stopped = tokio::time::timeout(drain_timeout + Duration::from_secs(2), async {
        while deliveries.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        deliveries.abort_all();
    }
    // The writer stops once the last outbox handle is gone.
    let outbox::Opened {
        outbox,
        writer_stopped,
        ..
    } = opened;
    outbox.close_readers().await;
    drop(outbox);
    if tokio::time::timeout(drain_timeout, writer_stopped)
        .await
        .is_err()
    {
        tracing::warn!("the outbox writer did not stop in time");
    }
    drop(socket_file);
    let corrupt = corruption.borrow().clone();
    if let Some(reason) = corrupt {
        integrity::mark_suspect(&config.data_dir, &reason).map_err(|e| {
            anyhow::anyhow!(
                "the outbox database is corrupt ({reason}) and recording that failed: {e}"
            )
        })?;
        return Err(RestartToCheck(reason).into());
    }
    tracing::info!("stopped");
    Ok(())
}

/// `run` stopped because SQLite reported corruption; the caller starts the
/// daemon again in place, and open then checks the whole file (and applies
/// `outbox.on_corruption`).
#[derive(Debug, thiserror::Error)]
#[error("the outbox database is corrupt ({0}); restarting to check it")]
pub struct RestartToCheck(pub String);

/// Registers the configured sinks' cursors and starts one delivery task each.
async fn start_sinks(
    config: &Config,
    outbox: &Outbox,
    trigger: &ShutdownTrigger,
    statuses: &SinkRegistry,
) -> anyhow::Result<JoinSet<()>> {
    let names: Vec<String> = config.sinks.keys().cloned().collect();
    outbox
        .sink_op(SinkOp::Register { sinks: names })
        .await
        .map_err(anyhow::Error::msg)?;
    let mut deliveries = JoinSet::new();
    for ((name, sink_config), status) in config.sinks.iter().zip(statuses.iter()) {
        let sink = Sink::build(name, sink_config, &config.data_dir).map_err(anyhow::Error::msg)?;
        let cursor = outbox
            .sink_cursor(name)
            .await?
            .map_or(0, |c| c.delivered_seq);
        status.advanced(cursor);
        let delivery = Delivery::new(
            name,
            sink_config.clone(),
            sink,
            outbox.clone(),
            status.clone(),
            trigger.subscribe(),
            config.shutdown.drain_timeout.0,
        );
        tracing::info!(sink = %name, kind = sink_config.kind.as_str(), cursor, "sink started");
        deliveries.spawn(delivery.run());
    }
    Ok(deliveries)
}

/// The signals outboxd handles, installed before anything listens, so a
/// SIGTERM that arrives as soon as `/healthz` answers is already a graceful
/// one, and a SIGHUP (`systemctl reload`) never kills the daemon.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

fn install_signals() -> anyhow::Result<Signals> {
    let install =
        |kind| signal(kind).map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"));
    Ok(Signals {
        term: install(SignalKind::terminate())?,
        int: install(SignalKind::interrupt())?,
        hup: install(SignalKind::hangup())?,
    })
}

/// First SIGTERM/SIGINT: graceful shutdown. A second one: exit at once.
/// SIGHUP: logged; the config is read only at start.
async fn watch_signals(trigger: Arc<ShutdownTrigger>, mut signals: Signals) {
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = signals.term.recv() => {}
            _ = signals.int.recv() => {}
            _ = signals.hup.recv() => {
                tracing::warn!("SIGHUP: live reload is not supported yet; the running configuration stays. Restart outboxd to apply config changes");
                continue;
            }
        }
        if stopping {
            tracing::warn!(
                "second signal: exiting at once (acknowledged events are already durable)"
            );
            std::process::exit(1);
        }
        stopping = true;
        trigger.fire();
    }
}
