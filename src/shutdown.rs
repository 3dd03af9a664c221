//! The shutdown signal every long-running task listens to.
//!
//! One [`ShutdownTrigger`] is held by the daemon; every task gets a cloned
//! [`Shutdown`] and selects on [`Shutdown::recv`] next to its real work.

use tokio::sync::watch;

/// Fires once; every [`Shutdown`] made from it then resolves.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// A task's view of the shutdown signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

impl ShutdownTrigger {
    pub fn new() -> Self {
        let (sender, _) = watch::channel(false);
        ShutdownTrigger { sender }
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
        }
    }

    pub fn fire(&self) {
        self.sender.send_replace(true);
    }
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn is_shutdown(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once shutdown has been signalled (at once if it already was).
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which also means: stop.
        let _ = self.receiver.wait_for(|fired| *fired).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recv_resolves_after_fire_and_for_late_subscribers() {
        let trigger = ShutdownTrigger::new();
        let mut early = trigger.subscribe();
        assert!(!early.is_shutdown());
        trigger.fire();
        early.recv().await;
        let mut late = trigger.subscribe();
        assert!(late.is_shutdown());
        late.recv().await;
    }
}
