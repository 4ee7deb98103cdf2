//! Virtual-disk access policy for the NBD server: which export names a peer
//! may open. A node opens only the overlays attached to it, by an export name
//! holding a random secret, and only from its current address (live lease or
//! observed address, as the boot plan decides). The admin opens any overlay
//! or base as `admin:<admin-token>:<name>` (compared in constant time).
//! Refusals are logged with fingerprints, never with the secret.
//!
//! The NBD crate asks synchronously, so the table is a snapshot rebuilt from
//! the store every second and at once after an attachment changes.

use crate::plan::BootPlan;
use crate::secret::{constant_time_eq, fingerprint};
use crate::store::Store;
use anyhow::Result;
use boot_nbd::{AllowAllResolver, DiskStore, ExportResolver, ExportTarget};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Export name → (overlay id, the address allowed to open it).
type Table = HashMap<String, (String, Option<IpAddr>)>;

/// The export table and its admin name.
pub struct NodeExports {
    store: Arc<dyn Store>,
    plan: Arc<BootPlan>,
    disks: Arc<DiskStore>,
    admin_token: String,
    table: RwLock<Table>,
}

impl NodeExports {
    /// An empty table (call [`NodeExports::rebuild`]).
    pub fn new(
        store: Arc<dyn Store>,
        plan: Arc<BootPlan>,
        disks: Arc<DiskStore>,
        admin_token: &str,
    ) -> Arc<Self> {
        Arc::new(NodeExports {
            store,
            plan,
            disks,
            admin_token: admin_token.to_string(),
            table: RwLock::new(HashMap::new()),
        })
    }

    /// Rebuilds the table from attachments and node addresses.
    pub async fn rebuild(&self) -> Result<()> {
        let mut table = Table::new();
        for a in self.store.disk_attachments().await? {
            let ip = match self.store.node(&a.node).await? {
                Some(n) => self.plan.node_address(&n).await?.map(IpAddr::V4),
                None => None,
            };
            table.insert(a.export, (a.overlay, ip));
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
        Ok(())
    }

    /// Rebuilds the table every second (addresses follow leases).
    pub async fn run_refresher(self: Arc<Self>) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Err(e) = self.rebuild().await {
                tracing::warn!(error = %format!("{e:#}"), "NBD export table not refreshed");
            }
        }
    }
}

#[async_trait::async_trait]
impl crate::control::ExportControl for NodeExports {
    async fn refresh(&self) -> Result<()> {
        self.rebuild().await
    }

    fn revoke(&self, overlay: &str) -> usize {
        // The table no longer names it; open connections are cut by the
        // NBD server's revocation once it offers one.
        tracing::info!(overlay, "export revoked");
        0
    }
}

impl ExportResolver for NodeExports {
    fn resolve(&self, name: &str, peer: SocketAddr) -> Option<ExportTarget> {
        if let Some(rest) = name.strip_prefix("admin:") {
            let (token, target) = rest.split_once(':')?;
            if constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
                return AllowAllResolver(self.disks.clone()).resolve(target, peer);
            }
            tracing::warn!(%peer, token = %fingerprint(token), "NBD admin export refused: wrong admin token");
            return None;
        }
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        match table.get(name) {
            Some((overlay, Some(ip))) if *ip == peer.ip() => {
                Some(ExportTarget::Overlay(overlay.clone()))
            }
            Some((overlay, allowed)) => {
                tracing::warn!(%overlay, export = %fingerprint(name), %peer, ?allowed, "NBD export refused: not the node's address");
                None
            }
            None => {
                tracing::info!(export = %fingerprint(name), %peer, "NBD export refused: unknown name");
                None
            }
        }
    }
}
