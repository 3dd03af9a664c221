//! The owner of the sink tasks: one delivery loop per configured sink, each
//! with its own stop handle, and the status registry the API reads.
//!
//! Start-up and reload are the same operation: [`Supervisor::apply`] takes
//! the wanted `[sinks]`, stops what was removed or changed, registers the
//! new set of cursors with the outbox (which is what retention holds to),
//! and starts what was added or changed. A sink whose config is unchanged
//! keeps running untouched.

use crate::delivery::status::{SinkRegistry, SinkStatus};
use crate::delivery::Delivery;
use crate::outbox::{Outbox, SinkOp};
use crate::shutdown::ShutdownTrigger;
use crate::sinks::config::SinkConfig;
use crate::sinks::Sink;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Grace on top of the drain timeout before a sink task is aborted: the
/// loop itself gives up its attempt after the drain timeout.
const STOP_GRACE: Duration = Duration::from_secs(2);

struct Running {
    config: SinkConfig,
    stop: ShutdownTrigger,
    task: JoinHandle<()>,
    status: Arc<SinkStatus>,
}

/// What an [`Supervisor::apply`] did, sink names by kind of change.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

pub struct Supervisor {
    outbox: Outbox,
    data_dir: PathBuf,
    drain_timeout: Duration,
    registry: SinkRegistry,
    running: BTreeMap<String, Running>,
}

impl Supervisor {
    pub fn new(outbox: Outbox, data_dir: PathBuf, drain_timeout: Duration) -> Supervisor {
        Supervisor {
            outbox,
            data_dir,
            drain_timeout,
            registry: SinkRegistry::default(),
            running: BTreeMap::new(),
        }
    }

    /// The statuses of the running sinks, kept current across reloads.
    pub fn registry(&self) -> SinkRegistry {
        self.registry.clone()
    }

    /// Makes the running sinks those of `wanted`. Every new sink is built
    /// before anything stops, so a sink that cannot be built (a secret file
    /// missing, say) fails the whole change and leaves the running ones be.
    pub async fn apply(
        &mut self,
        wanted: &BTreeMap<String, SinkConfig>,
    ) -> anyhow::Result<Changes> {
        let mut changes = Changes::default();
        let mut to_start = Vec::new();
        for (name, config) in wanted {
            match self.running.get(name) {
                Some(running) if running.config == *config => changes.unchanged.push(name.clone()),
                found => {
                    let sink = Sink::build(name, config, &self.data_dir)
                        .map_err(|e| anyhow::anyhow!("sinks.{name}: {e}"))?;
                    if found.is_some() {
                        changes.changed.push(name.clone());
                    } else {
                        changes.added.push(name.clone());
                    }
                    to_start.push((name.clone(), config.clone(), sink));
                }
            }
        }
        changes.removed = self
            .running
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();

        // A changed sink keeps its operator's pause across the restart.
        let mut paused = BTreeMap::new();
        let stopping: Vec<Running> = changes
            .removed
            .iter()
            .chain(&changes.changed)
            .filter_map(|name| self.running.remove(name))
            .collect();
        for running in &stopping {
            paused.insert(running.status.name.clone(), running.status.is_paused());
        }
        self.stop(stopping).await;
        for name in &changes.removed {
            tracing::info!(sink = %name, "sink removed; its cursor no longer holds events back");
        }

        // Through the writer, after any progress the stopped tasks sent: the
        // new tasks read cursors and recorded batches that are final.
        self.outbox
            .sink_op(SinkOp::Register {
                sinks: wanted.keys().cloned().collect(),
            })
            .await
            .map_err(anyhow::Error::msg)?;

        for (name, config, sink) in to_start {
            let status = Arc::new(SinkStatus::new(&name, config.kind.as_str(), 0));
            if paused.get(&name) == Some(&true) {
                status.set_paused(true);
            }
            let cursor = self
                .outbox
                .sink_cursor(&name)
                .await?
                .map_or(0, |c| c.delivered_seq);
            status.advanced(cursor);
            let stop = ShutdownTrigger::new();
            let delivery = Delivery::new(
                &name,
                config.clone(),
                sink,
                self.outbox.clone(),
                status.clone(),
                stop.subscribe(),
                self.drain_timeout,
            );
            tracing::info!(sink = %name, kind = config.kind.as_str(), cursor, "sink started");
            let task = tokio::spawn(delivery.run());
            self.running.insert(
                name,
                Running {
                    config,
                    stop,
                    task,
                    status,
                },
            );
        }
        self.registry
            .replace(self.running.values().map(|r| r.status.clone()).collect());
        Ok(changes)
    }

    /// Tells every sink to stop; [`Supervisor::stop_all`] waits for them.
    pub fn signal_stop(&self) {
        for running in self.running.values() {
            running.stop.fire();
        }
    }

    /// Stops every sink: each finishes or abandons its attempt (the range
    /// stays recorded and is sent again on start).
    pub async fn stop_all(&mut self) {
        let all = std::mem::take(&mut self.running);
        self.stop(all.into_values().collect()).await;
    }

    async fn stop(&self, sinks: Vec<Running>) {
        for running in &sinks {
            running.stop.fire();
        }
        // All were told at once, so one deadline bounds the whole stop.
        let limit = self.drain_timeout + STOP_GRACE;
        let deadline = tokio::time::Instant::now() + limit;
        for Running {
            mut task, status, ..
        } in sinks
        {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(sink = %status.name, "sink did not stop in {limit:?}; aborting it");
                task.abort();
                let _ = task.await;
            }
            status.retire();
        }
    }
}
