//! Virtual-disk access policy for the NBD server: which export names a peer
//! may open. A node opens only the overlays attached to it, by an export name
//! holding a random secret, and only from the node's current address (its
//! live lease or observed address, as [`BootPlan::node_address`] decides). The admin opens
//! any overlay or base as `admin:<admin-token>:<name>` (over iSCSI: every target, with
//! CHAP user `admin` and the token as the secret, from any address). Secrets (the admin token,
//! export names) are compared in constant time and logged only as fingerprints.
//!
//! The NBD crate asks synchronously, so the attachment table is a snapshot
//! refreshed from the store every second (and at once after `refresh`);
//! [`NodeExports::revoke`] forgets a detached overlay at once and cuts its
//! open connections. When iSCSI runs, the same snapshot and address rule drive
//! its target table (`crate::iscsi`): every refresh syncs it, every revocation
//! cuts iSCSI sessions too (one path for both protocols).
//!
//! With several servers on one store, a server exports only the overlays it
//! serves (the overlay table names each overlay's serving server; an
//! unrecorded one is served by whoever holds its file). A valid export name
//! of an overlay another server serves is refused here with a log line naming
//! that server; the node's boot plan points it there.

use crate::iscsi::{IscsiTargets, Reachable};
use crate::plan::BootPlan;
use crate::secret::{constant_time_eq, fingerprint};
use crate::store::Store;
use anyhow::{bail, Result};
use boot_nbd::{AllowAllResolver, DiskStore, ExportResolver, ExportTarget, NbdHandle};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// An attached overlay: its secret export name and the node it is attached to.
struct Attachment {
    export: String,
    node: String,
}

#[derive(Default)]
struct Table {
    /// Overlay id -> attachment.
    by_overlay: HashMap<String, Attachment>,
    /// Node id -> the node's current address.
    node_ip: HashMap<String, IpAddr>,
    /// Bumped by every revocation, so a refresh that read the store before it
    /// cannot bring a revoked export back.
    revocations: u64,
    /// Attached overlays other servers serve: overlay id -> that server.
    elsewhere: HashMap<String, String>,
}

impl Table {
    /// The address rule: an attachment is reachable only from its node's current
    /// address (None: from nowhere).
    fn address_of(&self, a: &Attachment) -> Option<IpAddr> {
        self.node_ip.get(&a.node).copied()
    }

    /// Every attachment reachable now, with the address it is reachable from.
    fn reachable(&self) -> impl Iterator<Item = Reachable<'_>> {
        self.by_overlay.iter().filter_map(|(overlay, a)| {
            Some(Reachable {
                overlay,
                node: &a.node,
                export: &a.export,
                address: self.address_of(a)?,
            })
        })
    }
}

/// The NBD export policy of the boot server (an [`ExportResolver`]).
pub struct NodeExports {
    store: Arc<dyn Store>,
    plan: Arc<BootPlan>,
    disks: Arc<DiskStore>,
    admin_token: String,
    admin_prefix: String,
    /// This server's registry name: it exports the overlays recorded with it.
    me: String,
    table: RwLock<Table>,
    nbd: OnceLock<NbdHandle>,
    iscsi: OnceLock<IscsiTargets>,
}

impl NodeExports {
    /// The policy over `store`'s attachments and `disks`, with the admin token.
    pub fn new(
        store: Arc<dyn Store>,
        plan: Arc<BootPlan>,
        disks: Arc<DiskStore>,
        admin_token: &str,
    ) -> Arc<Self> {
        let me = plan.server_name().to_string();
        Arc::new(NodeExports {
            store,
            plan,
            disks,
            admin_token: admin_token.to_string(),
            admin_prefix: format!("admin:{admin_token}:"),
            me,
            table: RwLock::new(Table::default()),
            nbd: OnceLock::new(),
            iscsi: OnceLock::new(),
        })
    }

    /// Connects the policy to the running NBD server (`NbdServer::handle()`), so
    /// [`NodeExports::revoke`] can cut connections. Only the first call takes effect.
    pub fn set_nbd(&self, handle: NbdHandle) {
        let _ = self.nbd.set(handle);
    }

    /// Connects the running iSCSI server (`IscsiServer::handle()`): its target table
    /// follows this one from now on, and [`NodeExports::revoke`] cuts its sessions
    /// too. Only the first call takes effect.
    pub fn set_iscsi(&self, handle: boot_iscsi::IscsiHandle) {
        // Under the table lock, so that no refresh or revocation interleaves.
        let t = self.table.write().unwrap_or_else(|p| p.into_inner());
        if self
            .iscsi
            .set(IscsiTargets::new(handle, &self.admin_token))
            .is_ok()
        {
            if let Some(i) = self.iscsi.get() {
                i.sync(t.reachable());
            }
        }
    }

    /// Rebuilds the table from attachments and node addresses (and the iSCSI
    /// targets from the table).
    pub async fn refresh(&self) -> Result<()> {
        let seen = self.read().revocations;
        let mut by_overlay = HashMap::new();
        let mut node_ip = HashMap::new();
        let mut elsewhere = HashMap::new();
        for a in self.store.disk_attachments().await? {
            if !a.server.is_empty() && a.server != self.me {
                elsewhere.insert(a.overlay, a.server);
                continue;
            }
            if let Some(n) = self.store.node(&a.node).await? {
                if let Some(ip) = self.plan.node_address(&n).await? {
                    node_ip.insert(n.id.clone(), IpAddr::V4(ip));
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
            t.node_ip = node_ip;
            t.elsewhere = elsewhere;
            if let Some(i) = self.iscsi.get() {
                i.sync(t.reachable());
            }
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
                tracing::warn!(error = %format!("{e:#}"), "NBD/iSCSI export table not refreshed");
            }
        }
    }

    /// Cuts off a detached overlay: forgets its export name and iSCSI target at
    /// once (no waiting for the next refresh) and closes every open NBD connection
    /// and iSCSI session serving it. Call it after the attachment is removed from
    /// the store. Returns how many connections were closed (NBD and iSCSI; 0 for a
    /// protocol whose server is not connected).
    pub fn revoke(&self, overlay: &str) -> usize {
        let iscsi = {
            let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
            t.by_overlay.remove(overlay);
            t.revocations += 1;
            self.iscsi.get().map_or(0, |i| i.revoke(overlay))
        };
        iscsi + self.nbd.get().map_or(0, |h| h.revoke(overlay))
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
        if let Some(i) = self.iscsi.get() {
            if !i.wait_closed(overlay, timeout).await {
                bail!("iSCSI sessions to {overlay} still running after {timeout:?}");
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
        if !constant_time_eq(head, p) {
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
        let Some(a) = t.by_overlay.get(overlay) else {
            if let Some(server) = t.elsewhere.get(overlay) {
                tracing::warn!(
                    export = self.display_name(name),
                    %peer,
                    %server,
                    "NBD export refused: another server serves this overlay"
                );
            }
            return None;
        };
        if !constant_time_eq(name.as_bytes(), a.export.as_bytes()) {
            return None;
        }
        let current = t.address_of(a);
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

#[async_trait::async_trait]
impl crate::control::ExportControl for NodeExports {
    async fn refresh(&self) -> Result<()> {
        NodeExports::refresh(self).await
    }

    fn revoke(&self, overlay: &str) -> usize {
        NodeExports::revoke(self, overlay)
    }

    async fn revoke_and_wait(&self, overlay: &str, timeout: Duration) -> Result<usize> {
        NodeExports::revoke_and_wait(self, overlay, timeout).await
    }
}
