//! Virtual-disk access policy for the NBD server: which export names a peer
//! may open. A node opens only the overlays attached to it, by an export name
//! holding a random secret, and only from the address its DHCP lease gives it.
//! The admin opens any overlay or base as `admin:<admin-token>:<name>`.
//!
//! The NBD crate asks synchronously, so the table is a snapshot refreshed
//! from the store every second (and at once after `refresh`).

use crate::store::{parse_mac, Store};
use anyhow::Result;
use boot_nbd::{AllowAllResolver, DiskStore, ExportResolver, ExportTarget};
use rand::RngCore;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Export name → (overlay id, the address allowed to open it).
type Table = HashMap<String, (String, Option<IpAddr>)>;

pub struct NodeExports {
    store: Arc<dyn Store>,
    disks: Arc<DiskStore>,
    admin_prefix: String,
    table: RwLock<Table>,
}

/// A fresh export name for attaching `overlay`: unguessable.
pub fn new_export_name(overlay: &str) -> String {
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    let secret: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{overlay}.{secret}")
}

impl NodeExports {
    pub fn new(store: Arc<dyn Store>, disks: Arc<DiskStore>, admin_token: &str) -> Arc<Self> {
        Arc::new(NodeExports {
            store,
            disks,
            admin_prefix: format!("admin:{admin_token}:"),
            table: RwLock::new(HashMap::new()),
        })
    }

    /// Rebuilds the table from attachments, nodes and leases.
    pub async fn refresh(&self) -> Result<()> {
        let leases = self.store.leases().await?;
        let ip_of_mac: HashMap<String, IpAddr> = leases
            .into_iter()
            .map(|l| (l.mac, IpAddr::V4(l.ip)))
            .collect();
        let mut table = Table::new();
        for a in self.store.disk_attachments().await? {
            let ip = match self.store.node(&a.node).await? {
                Some(n) => parse_mac(&n.mac).and_then(|_| ip_of_mac.get(&n.mac).copied()),
                None => None,
            };
            table.insert(a.export, (a.overlay, ip));
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
        Ok(())
    }

    pub async fn run_refresher(self: Arc<Self>) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %format!("{e:#}"), "NBD export table not refreshed");
            }
        }
    }
}

impl ExportResolver for NodeExports {
    fn resolve(&self, name: &str, peer: SocketAddr) -> Option<ExportTarget> {
        if let Some(target) = name.strip_prefix(&self.admin_prefix) {
            return AllowAllResolver(self.disks.clone()).resolve(target, peer);
        }
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        match table.get(name) {
            Some((overlay, Some(ip))) if *ip == peer.ip() => {
                Some(ExportTarget::Overlay(overlay.clone()))
            }
            Some((_, allowed)) => {
                tracing::warn!(export = name, %peer, ?allowed, "NBD export refused: not the node's leased address");
                None
            }
            None => None,
        }
    }
}
