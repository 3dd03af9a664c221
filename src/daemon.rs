//! `outboxd run`: opens the outbox, binds the listeners, starts the sinks,
//! serves (reloading on SIGHUP) until a signal, then shuts down in order
//! (listeners, sinks, then the writer).

use crate::config::Config;
use crate::ingest::peer::CheckedUnixListener;
use crate::ingest::{self, listen, IngestState};
use crate::ops::{self, OpsState};
use crate::outbox::integrity;
use crate::reload::{self, Reloader};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::supervisor::Supervisor;
use crate::{outbox, service, telemetry};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub async fn run(config: Config, source: Option<PathBuf>) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics();
    let drain_timeout = config.shutdown.drain_timeout.0;
    let opened = outbox::open(&config.outbox_settings()).await?;
    let signals = install_signals()?;
    let trigger = ShutdownTrigger::new();
    let mut supervisor = Supervisor::new(
        opened.outbox.clone(),
        config.data_dir.clone(),
        drain_timeout,
    );
    let sinks = supervisor.registry();
    let (reloads, reload_requests) = mpsc::channel(4);
    let ingest_state = IngestState::new(
        &config,
        opened.outbox.clone(),
        sinks.clone(),
        Some(trigger.subscribe()),
        Some(reloads.clone()),
    );
    // Everything binds before anything serves or delivers: a clash fails
    // start-up with nothing running, and the first request answered already
    // sees every sink.
    let metrics_listener = match config.metrics_listen() {
        Some(addr) => Some(listen::bind_tcp("metrics", addr).await?),
        None => None,
    };
    let unix_listener = match config.unix_socket_path() {
        Some(path) => Some((
            listen::bind_unix(
                &path,
                config.unix_socket_mode()?,
                config.unix_socket_group()?,
            )?,
            path,
        )),
        None => None,
    };
    let tcp_listener = match config.http_listen() {
        Some(addr) => Some(listen::bind_tcp("ingest", addr).await?),
        None => None,
    };
    supervisor.apply(&config.sinks).await?;

    let mut servers = JoinSet::new();
    let mut socket_file = None;
    let limits = listen::ConnectionLimits::from_config(&config);
    if let Some(listener) = metrics_listener {
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
    if let Some(((listener, file), path)) = unix_listener {
        tracing::info!(path = %path.display(), "ingest listening (unix socket)");
        let router = ingest::router(ingest_state.clone());
        match config.unix_socket_allow()? {
            Some(allow) => servers.spawn(listen::serve(
                CheckedUnixListener::new(listener, allow),
                router,
                trigger.subscribe(),
                limits,
            )),
            None => servers.spawn(listen::serve(listener, router, trigger.subscribe(), limits)),
        };
        socket_file = Some(file);
    }
    if let Some(listener) = tcp_listener {
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
    let reloader = Reloader::new(source, config.clone(), supervisor, ingest_state.redaction());
    drop(ingest_state);
    let mut sink_tasks = tokio::spawn(reloader.serve(reload_requests, trigger.subscribe()));
    let trigger = Arc::new(trigger);
    tokio::spawn(watch_signals(trigger.clone(), signals, reloads));
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
    // Sinks finish or abandon their attempt within the drain timeout (a
    // reload under way finishes first); an abandoned batch keeps its
    // recorded range and is sent again on start.
    let bound = 2 * (drain_timeout + Duration::from_secs(2));
    if tokio::time::timeout(bound, &mut sink_tasks).await.is_err() {
        tracing::warn!("the sinks did not stop in {bound:?}");
        sink_tasks.abort();
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
/// SIGHUP: reload the config (the outcome is logged).
async fn watch_signals(
    trigger: Arc<ShutdownTrigger>,
    mut signals: Signals,
    reloads: reload::Requests,
) {
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = signals.term.recv() => {}
            _ = signals.int.recv() => {}
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                if reloads.try_send(reload::Request { reply: None }).is_err() {
                    tracing::warn!("SIGHUP: reloads already queued; this one is folded into them");
                }
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
