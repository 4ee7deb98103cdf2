//! Virtual-disk access policy for the NBD server: which export names a peer
//! may open. A node opens only the overlays attached to it, by an export name
//! holding a random secret, and only from the address it is currently observed
//! at ([`NodeAddresses`]; by default its unexpired DHCP lease). The admin opens
//! any overlay or base as `admin:<admin-token>:<name>`. Secrets (the admin token,
//! export names) are compared in constant time and logged only as fingerprints.
//!
//! The NBD crate asks synchronously, so the attachment table is a snapshot
//! refreshed from the store every second (and at once after `refresh`);
//! [`NodeExports::revoke`] forgets a detached overlay at once and cuts its
//! open connections.

use crate::store::{now_ms, parse_mac, Store};
use anyhow::{bail, Result};
use boot_nbd::{fingerprint, AllowAllResolver, DiskStore, ExportResolver, ExportTarget, NbdHandle};
use rand::RngCore;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Where nodes are now. The server's table of observed node addresses plugs in
/// here ([`NodeExports::set_addresses`]); without one, unexpired leases are used.
pub trait NodeAddresses: Send + Sync + 'static {
    /// The address node `node_id` is currently observed at, if known.
    fn current_address(&self, node_id: &str) -> Option<IpAddr>;
}

/// An attached overlay: its secret export name and the node it is attached to.
struct Attachment {
    export: String,
    node: String,
}

#[derive(Default)]
struct Table {
    /// Overlay id -> attachment.
    by_overlay: HashMap<String, Attachment>,
    /// Node id -> address of its unexpired lease (fallback address source).
    lease_ip: HashMap<String, IpAddr>,
    /// Bumped by every revocation, so a refresh that read the store before it
    /// cannot bring a revoked export back.
    revocations: u64,
}

/// The NBD export policy of the boot server (an [`ExportResolver`]).
pub struct NodeExports {
    store: Arc<dyn Store>,
    disks: Arc<DiskStore>,
    admin_prefix: String,
    table: RwLock<Table>,
    addresses: OnceLock<Arc<dyn NodeAddresses>>,
    nbd: OnceLock<NbdHandle>,
}

/// A fresh export name for attaching `overlay`: unguessable.
pub fn new_export_name(overlay: &str) -> String {
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    let secret: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{overlay}.{secret}")
}

/// Constant-time equality of two secrets (the length may leak, not the content).
fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

impl NodeExports {
    /// The policy over `store`'s attachments and `disks`, with the admin token.
    pub fn new(store: Arc<dyn Store>, disks: Arc<DiskStore>, admin_token: &str) -> Arc<Self> {
        Arc::new(NodeExports {
            store,
            disks,
            admin_prefix: format!("admin:{admin_token}:"),
            table: RwLock::new(Table::default()),
            addresses: OnceLock::new(),
            nbd: OnceLock::new(),
        })
    }

    /// Uses `addresses` (the server's observed node addresses) instead of leases.
    /// Only the first call takes effect.
    pub fn set_addresses(&self, addresses: Arc<dyn NodeAddresses>) {
        let _ = self.addresses.set(addresses);
    }

    /// Connects the policy to the running NBD server (`NbdServer::handle()`), so
    /// [`NodeExports::revoke`] can cut connections. Only the first call takes effect.
    pub fn set_nbd(&self, handle: NbdHandle) {
        let _ = self.nbd.set(handle);
    }

    /// Rebuilds the table from attachments, nodes and unexpired leases.
    pub async fn refresh(&self) -> Result<()> {
        let seen = self.read().revocations;
        let now = now_ms();
        let ip_of_mac: HashMap<String, IpAddr> = self
            .store
            .leases()
            .await?
            .into_iter()
            .filter(|l| l.expires_at_ms > now)
            .map(|l| (l.mac, IpAddr::V4(l.ip)))
            .collect();
        let mut by_overlay = HashMap::new();
        let mut lease_ip = HashMap::new();
        for a in self.store.disk_attachments().await? {
            if let Some(n) = self.store.node(&a.node).await? {
                if let Some(ip) = parse_mac(&n.mac).and_then(|_| ip_of_mac.get(&n.mac)) {
                    lease_ip.insert(n.id.clone(), *ip);
                }
            }
            by_overlay.insert(
                a.overlay,
                Attachment {
                    export: a.export,
                    node: a.node,
                },
            );
        }
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        if t.revocations == seen {
            t.by_overlay = by_overlay;
            t.lease_ip = lease_ip;
        }
        // else: a revocation raced this refresh; the next one reads the new state.
        Ok(())
    }

    /// Refreshes the table every second, forever.
    pub async fn run_refresher(self: Arc<Self>) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %format!("{e:#}"), "NBD export table not refreshed");
            }
        }
    }

    /// Cuts off a detached overlay: forgets its export name at once (no waiting for
    /// the next refresh) and closes every open NBD connection serving it. Call it
    /// after the attachment is removed from the store. Returns how many connections
    /// were closed (0 until [`NodeExports::set_nbd`] was called).
    pub fn revoke(&self, overlay: &str) -> usize {
        {
            let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
            t.by_overlay.remove(overlay);
            t.revocations += 1;
        }
        self.nbd.get().map_or(0, |h| h.revoke(overlay))
    }

    /// [`NodeExports::revoke`], then waits until the cut connections' in-flight
    /// requests have finished, so nothing the node sent can still reach the disk
    /// (fencing). Errors if they did not end within `timeout`.
    pub async fn revoke_and_wait(&self, overlay: &str, timeout: Duration) -> Result<usize> {
        let n = self.revoke(overlay);
        if let Some(h) = self.nbd.get() {
            if !h.wait_closed(overlay, timeout).await {
                bail!("NBD connections to {overlay} still running after {timeout:?}");
            }
        }
        Ok(n)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The name after a valid `admin:<token>:` prefix, compared in constant time.
    fn admin_target<'a>(&self, name: &'a str) -> Option<&'a str> {
        let p = self.admin_prefix.as_bytes();
        let head = name.as_bytes().get(..p.len())?;
        if !secret_eq(head, p) {
            return None;
        }
        name.get(p.len()..)
    }
}

impl ExportResolver for NodeExports {
    fn resolve(&self, name: &str, peer: SocketAddr) -> Option<ExportTarget> {
        if name.starts_with("admin:") {
            let Some(target) = self.admin_target(name) else {
                tracing::warn!(%peer, export = self.display_name(name), "NBD admin export refused: wrong token");
                return None;
            };
            return AllowAllResolver(self.disks.clone()).resolve(target, peer);
        }
        // `<overlay>.<secret>`: find the attachment by overlay id, then compare
        // the whole name in constant time.
        let (overlay, _) = name.rsplit_once('.')?;
        let t = self.read();
        let a = t.by_overlay.get(overlay)?;
        if !secret_eq(name.as_bytes(), a.export.as_bytes()) {
            return None;
        }
        let current = match self.addresses.get() {
            Some(book) => book.current_address(&a.node),
            None => t.lease_ip.get(&a.node).copied(),
        };
        if current == Some(peer.ip()) {
            return Some(ExportTarget::Overlay(overlay.to_string()));
        }
        tracing::warn!(
            export = self.display_name(name),
            node = a.node,
            %peer,
            ?current,
            "NBD export refused: not the node's current address"
        );
        None
    }

    /// Admin names show the target with a fingerprint of the token; node export
    /// names show the overlay id with a fingerprint of the whole name.
    fn display_name(&self, name: &str) -> String {
        if let Some(rest) = name.strip_prefix("admin:") {
            let (token, target) = rest.rsplit_once(':').unwrap_or((rest, ""));
            return format!("admin:sha256:{}:{target}", fingerprint(token));
        }
        match name.rsplit_once('.') {
            Some((overlay, _)) => format!("{overlay}.sha256:{}", fingerprint(name)),
            None => format!("sha256:{}", fingerprint(name)),
        }
    }
}
