//! Telling the service manager how outboxd is doing (systemd `Type=notify`):
//! `READY=1` once the outbox is open and every listener is bound, a `STATUS=`
//! line kept current, `WATCHDOG=1` pings while the writer answers,
//! `RELOADING=1` then `READY=1` around a reload, and `STOPPING=1` when
//! shutdown begins. Without `NOTIFY_SOCKET` every call is
//! a no-op, so the same binary runs anywhere.

use crate::outbox::Outbox;
use crate::shutdown::Shutdown;
use sd_notify::NotifyState;
use std::time::Duration;

/// How often the status line is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(10);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The one-line summary `systemctl status` shows.
fn summary(outbox: &Outbox) -> String {
    let stats = outbox.stats();
    let events = stats.events.load(std::sync::atomic::Ordering::Relaxed);
    format!(
        "{events} events in the outbox, last seq {}",
        outbox.last_seq()
    )
}

/// Start-up is complete: the outbox is open and the listeners are bound.
pub fn ready(outbox: &Outbox) {
    if enabled() {
        send(&[NotifyState::Ready, NotifyState::Status(&summary(outbox))]);
    }
}

/// A reload began (`RELOADING=1`, with the monotonic time systemd wants).
pub fn reloading() {
    if enabled() {
        let mut states = vec![
            NotifyState::Reloading,
            NotifyState::Status("reloading the configuration"),
        ];
        match NotifyState::monotonic_usec_now() {
            Ok(now) => states.push(now),
            Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock"),
        }
        send(&states);
    }
}

/// The reload finished, applied or refused: running again.
pub fn reloaded() {
    if enabled() {
        send(&[NotifyState::Ready, NotifyState::Status("running")]);
    }
}

pub fn stopping() {
    if enabled() {
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: finishing requests in flight"),
        ]);
    }
}

/// Keeps the status line current and, when systemd set `WatchdogSec=`,
/// pings it at half that period, but only while the outbox writer answers:
/// a wedged writer stops the pings and systemd restarts outboxd.
pub async fn keep_alive(outbox: Outbox, mut shutdown: Shutdown) {
    if !enabled() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(STATUS_EVERY, |period| period / 2);
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticks.tick() => {}
        }
        // A full disk or a failing write is reported, but only a writer
        // that no longer answers stops the pings: restarting cures a wedge,
        // not a full disk.
        let (alive, status) = match outbox.probe_writer().await {
            Ok(None) => (true, summary(&outbox)),
            Ok(Some(last_error)) => (true, format!("degraded: {last_error}")),
            Err(e) => {
                tracing::error!(error = %e, "no watchdog ping");
                (false, format!("stalled: {e}"))
            }
        };
        if alive && watchdog.is_some() {
            send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
        } else {
            send(&[NotifyState::Status(&status)]);
        }
    }
}
