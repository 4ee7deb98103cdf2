//! Several servers on one shared store: what another server changed reaches
//! this one's waiters. [`follow_wakeups`] turns the store's notifications
//! into local wake-ups (a node's command long poll, the event hub's live
//! feed, the engine); [`PeerLink`] is how this server's own changes reach
//! the others beyond what the store notifies by itself.

use super::Control;
use crate::store::postgres::notify::Wake;
use std::sync::Arc;

/// This server's way to wake the other servers (a shared store).
pub trait PeerLink: Send + Sync {
    /// Wakes the engine of whichever server is the controller.
    fn wake_engine(&self);
}

impl Control {
    /// Registers the link to the other servers (shared store only).
    pub fn set_peers(&self, link: Arc<dyn PeerLink>) {
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
    }

    pub(super) fn peers(&self) -> Option<Arc<dyn PeerLink>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Acts on one notification from the store.
    pub fn peer_wake(&self, wake: Wake) {
        match wake {
            Wake::Command(node) => self.wakeups.wake(&node),
            Wake::Events => self.events.poke(),
            Wake::Engine => self.engine_wake.notify_one(),
            Wake::Disks(server) => {
                if server == self.me {
                    self.disk_wake.notify_one();
                }
            }
            Wake::Resync => {
                self.wakeups.wake_all();
                self.events.poke();
                self.engine_wake.notify_one();
                self.disk_wake.notify_one();
            }
        }
    }
}

/// Feeds the store's notifications to [`Control::peer_wake`] until the
/// stream ends.
pub async fn follow_wakeups(
    control: Arc<Control>,
    mut rx: tokio::sync::mpsc::Receiver<Wake>,
) -> anyhow::Result<()> {
    while let Some(w) = rx.recv().await {
        control.peer_wake(w);
    }
    anyhow::bail!("cross-server wake-ups ended")
}

/// [`PeerLink`] over a shared PostgreSQL store: engine wake-ups are
/// coalesced by one task, and skipped while this server is the controller
/// (its own engine was woken already).
pub struct PgPeers {
    engine: Arc<tokio::sync::Notify>,
}

impl PgPeers {
    /// Starts the sending task; `controller` says whether this server holds
    /// the controller lease (absent: it never runs the engine).
    pub fn start(
        store: Arc<crate::store::PgStore>,
        controller: Option<tokio::sync::watch::Receiver<Option<crate::store::Fence>>>,
    ) -> PgPeers {
        let engine = Arc::new(tokio::sync::Notify::new());
        let wake = engine.clone();
        tokio::spawn(async move {
            loop {
                wake.notified().await;
                if controller.as_ref().is_some_and(|c| c.borrow().is_some()) {
                    continue;
                }
                if let Err(e) = store.notify_engine().await {
                    tracing::warn!(error = %format!("{e:#}"), "the controller's engine not woken; it runs on its tick");
                }
            }
        });
        PgPeers { engine }
    }
}

impl PeerLink for PgPeers {
    fn wake_engine(&self) {
        self.engine.notify_one();
    }
}
