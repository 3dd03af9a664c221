//! `outboxd run`: opens the outbox, binds the listeners, serves until a
//! signal, then shuts down in order (listeners, then the writer).

use crate::config::Config;
use crate::ingest::{self, listen, IngestState};
use crate::ops::{self, OpsState};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::{outbox, telemetry};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// How long in-flight requests may take to finish after a signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics();
    let opened = outbox::open(&config).await?;
    let trigger = ShutdownTrigger::new();

    let ingest_state = IngestState::new(&config, opened.outbox.clone());
    let mut servers = JoinSet::new();
    let mut socket_file = None;
    if let Some(addr) = config.http_listen() {
        let listener = listen::bind_tcp("ingest", addr).await?;
        let router = ingest::router(ingest_state.with_token(config.auth_token()));
        tracing::info!(addr = %listener.local_addr()?, "ingest listening (http)");
        servers.spawn(listen::serve_tcp(listener, router, trigger.subscribe()));
    }
    if let Some(path) = config.unix_socket_path() {
        let (listener, file) = listen::bind_unix(&path, config.unix_socket_mode()?)?;
        tracing::info!(path = %path.display(), "ingest listening (unix socket)");
        servers.spawn(listen::serve_unix(
            listener,
            ingest::router(ingest_state.clone()),
            trigger.subscribe(),
        ));
        socket_file = Some(file);
    }
    if let Some(addr) = config.metrics_listen() {
        let listener = listen::bind_tcp("metrics", addr).await?;
        let router = ops::router(OpsState {
            outbox: opened.outbox.clone(),
            metrics,
        });
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        servers.spawn(listen::serve_tcp(listener, router, trigger.subscribe()));
    }
    drop(ingest_state);
    let trigger = Arc::new(trigger);
    tokio::spawn(watch_signals(trigger.clone()));
    tracing::info!(last_seq = opened.outbox.last_seq(), "outboxd ready");

    // Listeners stop only on shutdown; one failing early shuts the rest down too.
    let mut shutdown: Shutdown = trigger.subscribe();
    tokio::select! {
        _ = shutdown.recv() => {}
        Some(result) = servers.join_next() => {
            tracing::error!(result = ?result, "a listener stopped unexpectedly");
        }
    }
    trigger.fire();
    tracing::info!("shutting down: no new requests; finishing those in flight");
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(result) = servers.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::error!(error = %e, "listener failed");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "requests still in flight after {DRAIN_TIMEOUT:?}; dropping them unacknowledged"
        );
        servers.abort_all();
    }
    // The writer stops once the last outbox handle is gone.
    let outbox::Opened {
        outbox,
        writer_stopped,
        ..
    } = opened;
    drop(outbox);
    if tokio::time::timeout(DRAIN_TIMEOUT, writer_stopped)
        .await
        .is_err()
    {
        tracing::warn!("the outbox writer did not stop in time");
    }
    drop(socket_file);
    tracing::info!("stopped");
    Ok(())
}

/// First SIGTERM/SIGINT: graceful shutdown. A second one: exit at once.
async fn watch_signals(trigger: Arc<ShutdownTrigger>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    trigger.fire();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting at once (acknowledged events are already durable)");
    std::process::exit(1);
}
