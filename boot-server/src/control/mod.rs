//! The control layer: every admin operation is one function here, whoever
//! asks (REST handlers, and through them the CLI and the web UI). It owns the
//! command wake-ups of the agents' long polls and emits every change as an
//! event on the [`EventHub`] (store + live broadcast). Errors carry a kind
//! that the API maps to an HTTP status and the CLI to an exit code.

mod bundles;
mod clone;
pub mod cluster;
pub mod disks;
mod envs;
mod freeze;
mod hosts;
mod images;
mod network;
mod nodes;
mod power;
pub mod servers;
mod tokens;

pub use bundles::{ExportStream, ImportOptions, ImportPlan, PlanItem, PlanSlot, TokenToCreate};
pub use clone::CloneReport;
pub use disks::DiskView;
pub use envs::{new_slot, EnvHistory, EnvView};
pub use hosts::{is_virtual, HostView, NewHost, VmRequest};
pub use nodes::NodeCommand;
pub use power::Fence;
pub use tokens::NewToken;

use crate::config::Config;
use crate::events::EventHub;
use crate::images::ImageFiles;
use crate::model::{MacAddr, Node, Reservation};
use crate::plan::BootPlan;
use crate::store::{Refused, Store};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What went wrong with an admin operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or names something invalid (HTTP 400).
    BadRequest,
    /// No credentials, or wrong ones (401).
    Unauthorized,
    /// The credentials do not allow this (403).
    Forbidden,
    /// The named thing does not exist (404).
    NotFound,
    /// The change conflicts with the current state (409).
    Conflict,
    /// A dependency (the store, a disk) failed; retry later (503).
    Unavailable,
    /// A bug or an unexpected failure (500).
    Internal,
}

/// An admin operation's error: a kind and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Which kind of failure (maps to an HTTP status and exit code).
    pub kind: ErrorKind,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }
    /// A [`ErrorKind::BadRequest`] error.
    pub fn bad_request(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::BadRequest, m)
    }
    /// A [`ErrorKind::NotFound`] error.
    pub fn not_found(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, m)
    }
    /// A [`ErrorKind::Conflict`] error.
    pub fn conflict(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conflict, m)
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        if let Some(r) = e.downcast_ref::<Refused>() {
            let kind = match r {
                Refused::NotFound(_) => ErrorKind::NotFound,
                Refused::AddressHeld { .. } | Refused::Conflict(_) | Refused::Fenced { .. } => {
                    ErrorKind::Conflict
                }
            };
            return Error::new(kind, r.to_string());
        }
        tracing::error!(error = %format!("{e:#}"), "admin operation failed");
        Error::new(ErrorKind::Unavailable, format!("{e:#}"))
    }
}

/// Result of an admin operation.
pub type Result<T> = std::result::Result<T, Error>;

/// Wakes a node's long poll when a command is queued for it.
#[derive(Default)]
pub struct CommandWakeups(Mutex<HashMap<String, Arc<Notify>>>);

impl CommandWakeups {
    /// The node's notifier (created on first use).
    pub fn for_node(&self, node: &str) -> Arc<Notify> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(node.to_string()).or_default().clone()
    }
    /// Wakes every poll of the node waiting now.
    pub fn wake(&self, node: &str) {
        self.for_node(node).notify_waiters();
    }
    /// Wakes every poll waiting now (they look at the store again).
    pub fn wake_all(&self) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for n in map.values() {
            n.notify_waiters();
        }
    }
}

/// The running DHCP server, as the control layer drives it.
#[async_trait::async_trait]
pub trait DhcpLink: Send + Sync {
    /// Replaces the server's live reservation table.
    fn set_reservations(&self, table: &[Reservation]);
    /// Releases whatever lease holds `ip` (store first, then memory).
    async fn free_address(&self, ip: std::net::Ipv4Addr) -> anyhow::Result<()>;
}
/// The NBD and iSCSI side of disk attachments: rebuild the export table (and
/// the iSCSI targets) after a change, and cut the open connections of a
/// detached overlay, whichever protocol they use.
#[async_trait::async_trait]
pub trait ExportControl: Send + Sync {
    /// Rebuilds the export table from the store.
    async fn refresh(&self) -> anyhow::Result<()>;
    /// Closes every open connection serving `overlay`; how many were closed.
    fn revoke(&self, overlay: &str) -> usize;
    /// [`ExportControl::revoke`], then waits until the cut connections'
    /// requests in flight have ended (fencing), at most `timeout`.
    async fn revoke_and_wait(
        &self,
        overlay: &str,
        timeout: std::time::Duration,
    ) -> anyhow::Result<usize>;
}

/// Every admin operation, over the store and the running services.
pub struct Control {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// The server's configuration.
    pub config: Arc<Config>,
    /// Boot decisions (scripts, DHCP answers).
    pub plan: Arc<BootPlan>,
    /// Event log and its live subscribers.
    pub events: EventHub,
    /// Wakes agents waiting on a command poll.
    pub wakeups: CommandWakeups,
    /// Wakes the engine when something it decides on changed.
    pub engine_wake: Notify,
    /// Digests of image files, checked before serving.
    pub image_files: Arc<ImageFiles>,
    disks: Option<Arc<boot_nbd::DiskStore>>,
    exports: Option<Arc<dyn ExportControl>>,
    dhcp: Mutex<Option<Arc<dyn DhcpLink>>>,
    peers: Mutex<Option<Arc<dyn cluster::PeerLink>>>,
    sqlite: Mutex<Option<Arc<crate::store::SqliteStore>>>,
    /// This server's registry name: the serving server recorded for the
    /// overlays it creates.
    me: String,
    /// Wakes this server's disk-request worker (a request was queued for it).
    pub disk_wake: Notify,
}

impl Control {
    /// The control layer; `disks`/`exports` are absent when NBD and iSCSI are off.
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        plan: Arc<BootPlan>,
        events: EventHub,
        image_files: Arc<ImageFiles>,
        disks: Option<Arc<boot_nbd::DiskStore>>,
        exports: Option<Arc<dyn ExportControl>>,
    ) -> Control {
        let me = config.store.server_name();
        Control {
            store,
            config,
            plan,
            events,
            wakeups: CommandWakeups::default(),
            engine_wake: Notify::new(),
            image_files,
            disks,
            exports,
            dhcp: Mutex::new(None),
            peers: Mutex::new(None),
            sqlite: Mutex::new(None),
            me,
            disk_wake: Notify::new(),
        }
    }

    /// Registers the SQLite store for backups (the embedded default).
    pub fn set_sqlite(&self, store: Arc<crate::store::SqliteStore>) {
        *self.sqlite.lock().unwrap_or_else(|p| p.into_inner()) = Some(store);
    }

    /// A consistent copy of the state database.
    pub async fn backup(&self) -> Result<Vec<u8>> {
        let Some(db) = self
            .sqlite
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Err(Error::conflict(
                "this store has no file backup; use the database's own tools",
            ));
        };
        let dir =
            tempfile::tempdir().map_err(|e| Error::new(ErrorKind::Unavailable, e.to_string()))?;
        let path = dir.path().join("backup.db");
        db.backup(&path).await?;
        tokio::fs::read(&path)
            .await
            .map_err(|e| Error::new(ErrorKind::Unavailable, e.to_string()))
    }

    /// Registers the running DHCP server (reservations go live there).
    pub fn set_dhcp(&self, link: Arc<dyn DhcpLink>) {
        *self.dhcp.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
    }

    fn dhcp_link(&self) -> Option<Arc<dyn DhcpLink>> {
        self.dhcp.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A node by id or MAC.
    pub async fn find_node(&self, id_or_mac: &str) -> Result<Node> {
        if let Some(n) = self.store.node(id_or_mac).await? {
            return Ok(n);
        }
        if let Ok(mac) = id_or_mac.parse::<MacAddr>() {
            if let Some(n) = self.store.node_by_mac(mac).await? {
                return Ok(n);
            }
        }
        Err(Error::not_found(format!(
            "no node {id_or_mac} (give a node id as listed by `node list`, or a MAC)"
        )))
    }
}

#[cfg(test)]
mod bundle_tests;
#[cfg(test)]
mod tests;
