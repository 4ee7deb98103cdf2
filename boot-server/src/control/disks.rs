//! Virtual-disk operations (bases, overlays, snapshots, attachments), done
//! inside the server so its in-use checks, locks and NBD revocation apply.
//!
//! **One serving server per overlay.** Every overlay is recorded in the
//! store's overlay table with the server that holds its file and exports it
//! over NBD/iSCSI (its registry name). An overlay is created on the server
//! that carries out the creation — an admin's `disk create` on the server it
//! was sent to, a slot disk on the controller that runs the engine at the time
//! — and that server records itself. Operations that touch the overlay's file
//! or its open connections (snapshot, delete, cutting connections, fencing)
//! run on its serving server: from any other server they are queued for it in
//! the store ([`Control::remote_disk_op`], woken at once over LISTEN/NOTIFY)
//! and carried out by its [`run_disk_requests`] worker; a serving server that is
//! down makes them fail with a message naming it. Attaching and detaching are
//! rows in the store and work from every server; the serving server's export
//! table follows them.

use super::{Control, Error, ErrorKind, Result};
use crate::model::{
    now_ms, DiskOp, DiskRequestStatus, EventKind, OverlayRecord, SERVER_DOWN_AFTER_MS,
};
use boot_proto::CommandKind;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long a remote disk operation may take (snapshots copy data).
const REMOTE_TIMEOUT: Duration = Duration::from_secs(120);

/// One disk as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DiskView {
    /// `base`, `overlay` or `snapshot`.
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// Base name or overlay id.
    pub name: String,
    /// The base an overlay is built on.
    pub base: Option<String>,
    /// Virtual size in bytes.
    pub size: u64,
    /// Bytes the disk actually uses on the host.
    pub allocated_bytes: u64,
    /// Node the overlay is attached to.
    pub node: Option<String>,
    /// For snapshots: the overlay they were taken from.
    pub origin: Option<String>,
    /// Overlays and snapshots: the server that holds and serves it (bases:
    /// none, every server has its own). Sizes of an overlay another server
    /// holds are not known here (0).
    #[serde(default)]
    pub server: Option<String>,
}

/// A disk store error as an admin error of the right kind.
fn disk_error(m: String) -> Error {
    let kind = if m.contains("not found") || m.contains("no such") || m.contains("no overlay") {
        ErrorKind::NotFound
    } else if m.contains("in use")
        || m.contains("exists")
        || m.contains("used by")
        || m.contains("being exported")
        || m.contains("attached")
    {
        ErrorKind::Conflict
    } else if m.contains("invalid") {
        ErrorKind::BadRequest
    } else {
        ErrorKind::Unavailable
    };
    Error::new(kind, m)
}

/// A [`DiskView`] of a snapshot as the serving server answers it.
#[derive(Deserialize)]
struct SnapshotAnswer {
    name: String,
    base: Option<String>,
    size: u64,
    allocated_bytes: u64,
    origin: Option<String>,
    server: Option<String>,
}

fn blocking_err(e: tokio::task::JoinError) -> Error {
    Error::new(ErrorKind::Internal, format!("disk task: {e}"))
}

impl Control {
    pub(super) fn disks(&self) -> Result<Arc<boot_nbd::DiskStore>> {
        self.disks
            .clone()
            .ok_or_else(|| Error::conflict("virtual disks are off ([nbd] enabled = false)"))
    }

    pub(super) async fn on_disks<T: Send + 'static>(
        &self,
        f: impl FnOnce(&boot_nbd::DiskStore) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T> {
        let disks = self.disks()?;
        tokio::task::spawn_blocking(move || f(&disks))
            .await
            .map_err(blocking_err)?
            .map_err(|e| disk_error(format!("{e:#}")))
    }

    /// Whether this server holds virtual disks (NBD or iSCSI on).
    pub fn has_disks(&self) -> bool {
        self.disks.is_some()
    }

    /// This server's registry name (the serving server it records for the
    /// overlays it creates).
    pub fn server_name(&self) -> &str {
        &self.me
    }

    /// Whether an overlay recorded with `server` is this server's (an
    /// unrecorded overlay, `""`, is whoever holds its file: here, this one).
    pub fn serves(&self, server: &str) -> bool {
        server.is_empty() || server == self.me
    }

    /// The serving server recorded for an overlay (None: not recorded).
    pub async fn overlay_server(&self, overlay: &str) -> Result<Option<String>> {
        Ok(self
            .store
            .overlays()
            .await?
            .into_iter()
            .find(|o| o.overlay == overlay)
            .map(|o| o.server))
    }

    /// The server an operation on `overlay` must run on, when it is not
    /// this one.
    async fn elsewhere(&self, overlay: &str) -> Result<Option<String>> {
        Ok(self
            .overlay_server(overlay)
            .await?
            .filter(|s| !self.serves(s)))
    }

    /// Records every overlay in this server's `disks_dir` that the overlay
    /// table does not know yet as served by this server (a store from before
    /// the table, a bundle import, an overlay copied in by hand); how many.
    /// With `single` (the embedded store: one server holds every overlay)
    /// also those recorded under another name (the server's name changed, a
    /// state restored on another host). Run at start.
    pub async fn adopt_local_overlays(&self, single: bool) -> Result<usize> {
        if self.disks.is_none() {
            return Ok(0);
        }
        let overlays = self.on_disks(|d| d.list_overlays()).await?;
        let mut n = 0;
        for o in overlays {
            let rec = OverlayRecord {
                overlay: o.id,
                server: self.me.clone(),
                base: o.base,
                created_ms: now_ms(),
            };
            if self.store.record_overlay_if_new(&rec).await? {
                n += 1;
            } else if single && self.overlay_server(&rec.overlay).await?.as_ref() != Some(&self.me)
            {
                self.store.record_overlay(&rec).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Queues `op` for `server` (the serving server of the overlay it names)
    /// and waits for its answer, at most `timeout`. Refused at once when that
    /// server is not registered or is down.
    pub async fn remote_disk_op(
        &self,
        server: &str,
        op: DiskOp,
        timeout: Duration,
    ) -> Result<String> {
        let what = match &op {
            DiskOp::Snapshot { overlay, .. }
            | DiskOp::Delete { overlay }
            | DiskOp::Revoke { overlay, .. } => format!("overlay {overlay}"),
            DiskOp::Refresh => "the export table".to_string(),
        };
        match self
            .store
            .servers()
            .await?
            .into_iter()
            .find(|r| r.info.name == server)
        {
            None => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("{what} is served by server {server}, which is not registered (see `server list`)"),
                ))
            }
            Some(r) if r.age_ms >= SERVER_DOWN_AFTER_MS => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{what} is served by server {server}, which is down (last heartbeat {} s ago)",
                        r.age_ms / 1000
                    ),
                ))
            }
            Some(_) => {}
        }
        let id = self.store.queue_disk_request(server, &op).await?;
        let until = tokio::time::Instant::now() + timeout;
        let mut wait = Duration::from_millis(5);
        loop {
            match self.store.disk_request(id).await? {
                Some(r) if r.status == DiskRequestStatus::Done => return Ok(r.result),
                Some(r) if r.status == DiskRequestStatus::Failed => {
                    return Err(disk_error(format!("on server {server}: {}", r.result)))
                }
                Some(_) => {}
                None => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!("disk request {id} for {server} vanished"),
                    ))
                }
            }
            if tokio::time::Instant::now() >= until {
                let _ = self
                    .store
                    .finish_disk_request(id, false, "the requester gave up waiting")
                    .await;
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("server {server} did not carry out the request on {what} within {timeout:?}"),
                ));
            }
            // Requests are carried out within milliseconds; back off to 100 ms.
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(100));
        }
    }

    /// Carries out a disk operation queued for this server; its answer.
    pub async fn carry_out_disk_op(&self, op: DiskOp) -> Result<String> {
        match op {
            DiskOp::Snapshot { overlay, snapshot } => {
                let v = self.snapshot_here(overlay, snapshot).await?;
                Ok(serde_json::to_string(&v).unwrap_or_default())
            }
            DiskOp::Delete { overlay } => {
                self.delete_overlay_here(overlay).await?;
                Ok(String::new())
            }
            DiskOp::Refresh => {
                self.refresh_exports().await;
                Ok(String::new())
            }
            DiskOp::Revoke { overlay, wait_ms } => {
                self.refresh_exports().await;
                let n = match (&self.exports, wait_ms) {
                    (None, _) => 0,
                    (Some(x), None) => x.revoke(&overlay),
                    (Some(x), Some(ms)) => x
                        .revoke_and_wait(&overlay, Duration::from_millis(ms))
                        .await
                        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("{e:#}")))?,
                };
                Ok(n.to_string())
            }
        }
    }

    /// Bases, overlays and snapshots with their attachments and serving
    /// servers: this server's files, and the overlays other servers hold (from
    /// the overlay table; their sizes are not known here).
    pub async fn list_disks(&self) -> Result<Vec<DiskView>> {
        let attached: std::collections::HashMap<String, String> = self
            .store
            .disk_attachments()
            .await?
            .into_iter()
            .map(|a| (a.overlay, a.node))
            .collect();
        let mut recorded: std::collections::BTreeMap<String, OverlayRecord> = self
            .store
            .overlays()
            .await?
            .into_iter()
            .map(|o| (o.overlay.clone(), o))
            .collect();
        let (bases, overlays) = match self.disks {
            Some(_) => {
                self.on_disks(|d| Ok((d.list_bases()?, d.list_overlays()?)))
                    .await?
            }
            None => Default::default(),
        };
        let mut out: Vec<DiskView> = bases
            .into_iter()
            .map(|b| DiskView {
                kind: "base",
                name: b.name,
                base: None,
                size: b.size,
                allocated_bytes: b.size,
                node: None,
                origin: None,
                server: None,
            })
            .collect();
        for o in overlays {
            let server = match recorded.remove(&o.id) {
                Some(r) => r.server,
                None => self.me.clone(),
            };
            out.push(DiskView {
                kind: if o.origin.is_some() {
                    "snapshot"
                } else {
                    "overlay"
                },
                node: attached.get(&o.id).cloned(),
                name: o.id,
                base: Some(o.base),
                size: o.size,
                allocated_bytes: o.allocated_bytes,
                origin: o.origin,
                server: Some(server),
            });
        }
        // Overlays held by other servers (or recorded here but missing).
        out.extend(recorded.into_values().map(|r| DiskView {
            kind: "overlay",
            node: attached.get(&r.overlay).cloned(),
            name: r.overlay,
            base: Some(r.base),
            size: 0,
            allocated_bytes: 0,
            origin: None,
            server: Some(r.server),
        }));
        Ok(out)
    }

    /// Creates a read-only base from a file on the server (raw copied,
    /// qcow2 and friends converted). Bases are per server: every server that
    /// creates overlays of a base needs its own copy.
    pub async fn add_base(&self, name: String, file: PathBuf) -> Result<DiskView> {
        if !file.exists() {
            return Err(Error::not_found(format!(
                "no file {:?} on the server (give the path of a raw or qcow2 image)",
                file.display().to_string()
            )));
        }
        let n = name.clone();
        let b = self
            .on_disks(move |d| d.create_base_from_file(&n, &file))
            .await?;
        self.events.emit(
            None,
            EventKind::DiskCreated,
            json!({ "kind": "base", "name": name, "bytes": b.size }),
        );
        Ok(DiskView {
            kind: "base",
            name: b.name,
            base: None,
            size: b.size,
            allocated_bytes: b.size,
            node: None,
            origin: None,
            server: None,
        })
    }

    /// Creates a copy-on-write overlay of a base on this server, which
    /// records itself as the overlay's serving server. Refused when another
    /// server already holds an overlay of that id.
    pub async fn create_overlay(&self, id: String, base: String) -> Result<DiskView> {
        if let Some(other) = self.elsewhere(&id).await? {
            return Err(Error::conflict(format!(
                "overlay {id} exists on server {other}"
            )));
        }
        let (i, b) = (id.clone(), base.clone());
        let o = self.on_disks(move |d| d.create_overlay(&i, &b)).await?;
        self.record_here(&o.id, &o.base).await?;
        self.events.emit(
            None,
            EventKind::DiskCreated,
            json!({ "kind": "overlay", "name": id, "base": base, "server": self.me }),
        );
        Ok(DiskView {
            kind: "overlay",
            name: o.id,
            base: Some(o.base),
            size: o.size,
            allocated_bytes: o.allocated_bytes,
            node: None,
            origin: None,
            server: Some(self.me.clone()),
        })
    }

    /// Records this server as the serving server of an overlay it now holds.
    async fn record_here(&self, overlay: &str, base: &str) -> Result<()> {
        self.store
            .record_overlay(&OverlayRecord {
                overlay: overlay.to_string(),
                server: self.me.clone(),
                base: base.to_string(),
                created_ms: now_ms(),
            })
            .await?;
        Ok(())
    }

    /// Snapshots an overlay (reflink or copy of its allocated chunks) on the
    /// server that holds it, which then serves the snapshot too.
    pub async fn snapshot(&self, id: String, snapshot: String) -> Result<DiskView> {
        if let Some(other) = self.elsewhere(&id).await? {
            let answer = self
                .remote_disk_op(
                    &other,
                    DiskOp::Snapshot {
                        overlay: id,
                        snapshot,
                    },
                    REMOTE_TIMEOUT,
                )
                .await?;
            let v: SnapshotAnswer = serde_json::from_str(&answer).map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("server {other}'s snapshot answer: {e}"),
                )
            })?;
            return Ok(DiskView {
                kind: "snapshot",
                name: v.name,
                base: v.base,
                size: v.size,
                allocated_bytes: v.allocated_bytes,
                node: None,
                origin: v.origin,
                server: v.server,
            });
        }
        self.snapshot_here(id, snapshot).await
    }

    async fn snapshot_here(&self, id: String, snapshot: String) -> Result<DiskView> {
        if let Some(other) = self.elsewhere(&snapshot).await? {
            return Err(Error::conflict(format!(
                "overlay {snapshot} exists on server {other}"
            )));
        }
        let (i, s) = (id.clone(), snapshot.clone());
        let o = self.on_disks(move |d| d.snapshot_overlay(&i, &s)).await?;
        self.record_here(&o.id, &o.base).await?;
        self.events.emit(
            None,
            EventKind::DiskCreated,
            json!({ "kind": "snapshot", "name": snapshot, "origin": id, "reflinked": o.reflinked, "server": self.me }),
        );
        Ok(DiskView {
            kind: "snapshot",
            name: o.id,
            base: Some(o.base),
            size: o.size,
            allocated_bytes: o.allocated_bytes,
            node: None,
            origin: Some(id),
            server: Some(self.me.clone()),
        })
    }

    /// Deletes an overlay (refused while attached or open; on the server
    /// that holds it) or a base (of this server).
    pub async fn delete_disk(&self, id: String, base: bool) -> Result<()> {
        if base {
            let i = id.clone();
            self.on_disks(move |d| d.delete_base(&i)).await?;
            self.events.emit(
                None,
                EventKind::DiskDeleted,
                json!({ "name": id, "base": true }),
            );
            return Ok(());
        }
        if let Some(other) = self.elsewhere(&id).await? {
            self.remote_disk_op(&other, DiskOp::Delete { overlay: id }, REMOTE_TIMEOUT)
                .await?;
            return Ok(());
        }
        self.delete_overlay_here(id).await
    }

    async fn delete_overlay_here(&self, id: String) -> Result<()> {
        if self
            .store
            .disk_attachments()
            .await?
            .iter()
            .any(|a| a.overlay == id)
        {
            return Err(Error::conflict(format!(
                "overlay {id} is attached to a node; detach it first"
            )));
        }
        let i = id.clone();
        self.on_disks(move |d| d.delete_overlay(&i)).await?;
        self.store.forget_overlay(&id).await?;
        self.events.emit(
            None,
            EventKind::DiskDeleted,
            json!({ "name": id, "base": false, "server": self.me }),
        );
        Ok(())
    }

    /// Attaches an overlay to a node under a fresh secret export name; with
    /// `now`, the running agent attaches it at once (mounted at `mount`),
    /// from the overlay's serving server. Works from every server: the
    /// attachment is a row in the store, which the serving server's export
    /// table follows (told at once).
    pub async fn attach_disk(
        &self,
        id: String,
        node: &str,
        now: bool,
        mount: Option<String>,
    ) -> Result<(String, String, Option<i64>)> {
        let server = match self.overlay_server(&id).await? {
            Some(s) => s,
            None => {
                // Not recorded: this server's own file, if it has it.
                let i = id.clone();
                let here = match self.disks {
                    Some(_) => {
                        self.on_disks(move |d| {
                            Ok(d.list_overlays()?.into_iter().find(|o| o.id == i))
                        })
                        .await?
                    }
                    None => None,
                };
                let Some(o) = here else {
                    return Err(Error::not_found(format!("no overlay {id}")));
                };
                self.record_here(&o.id, &o.base).await?;
                self.me.clone()
            }
        };
        let node = self.find_node(node).await?;
        let export = format!("{id}.{}", crate::secret::random_token(12));
        self.store.attach_disk(&id, &node.id, &export).await?;
        self.refresh_exports_of(&server).await;
        let mut command = None;
        if now {
            let Some(addr) = self
                .plan
                .disk_address(&server, crate::model::DiskTransport::Nbd)
                .await?
            else {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("overlay {id} is attached, but its server {server} has no NBD address for nodes; the agent was not told"),
                ));
            };
            let kind = CommandKind::AttachDisk {
                export: export.clone(),
                host: addr.ip().to_string(),
                port: addr.port(),
                mount,
            };
            command = Some(self.queue(&node.id, kind).await?);
        }
        self.events.emit(
            Some(node.id.clone()),
            EventKind::DiskAttached,
            json!({ "overlay": id, "command": command, "server": server }),
        );
        Ok((node.id, export, command))
    }

    /// Detaches an overlay: its export name stops working and its open
    /// connections are closed at once.
    pub async fn detach_disk(&self, id: &str) -> Result<usize> {
        self.detach(id, true).await
    }

    /// Detaches an overlay but leaves its open connections to the node
    /// still running from it (it is about to kexec or reboot away; the
    /// engine cuts them with [`Control::cut_disk`] once it has left).
    pub async fn detach_disk_keep_open(&self, id: &str) -> Result<usize> {
        self.detach(id, false).await
    }

    /// The iSCSI target and CHAP credentials of an attachment (None when iSCSI
    /// is off or the overlay id makes no valid iSCSI name).
    pub fn iscsi_access(
        &self,
        overlay: &str,
        node: &str,
        export: &str,
    ) -> Option<crate::iscsi::NodeTarget> {
        if !self.config.iscsi.enabled {
            return None;
        }
        crate::iscsi::node_target(overlay, node, export)
    }

    /// Closes every open connection to an overlay (NBD and iSCSI); how many
    /// were closed here. When another server serves the overlay, the cut is
    /// queued for it in the background (not counted).
    pub fn cut_disk(&self, id: &str) -> usize {
        let n = self.exports.as_ref().map(|e| e.revoke(id)).unwrap_or(0);
        let (store, me, overlay) = (self.store.clone(), self.me.clone(), id.to_string());
        tokio::spawn(async move {
            let server = match store.overlays().await {
                Ok(all) => all
                    .into_iter()
                    .find(|o| o.overlay == overlay)
                    .map(|o| o.server),
                Err(e) => {
                    tracing::warn!(%overlay, error = %format!("{e:#}"), "overlay's server unknown; its connections there not cut");
                    return;
                }
            };
            if let Some(server) = server.filter(|s| !s.is_empty() && *s != me) {
                let op = DiskOp::Revoke {
                    overlay: overlay.clone(),
                    wait_ms: None,
                };
                if let Err(e) = store.queue_disk_request(&server, &op).await {
                    tracing::warn!(%overlay, %server, error = %format!("{e:#}"), "connections on the serving server not cut");
                }
            }
        });
        n
    }

    /// Fencing: closes every open connection to an overlay on the server
    /// that serves it and waits until their requests in flight have ended,
    /// at most `timeout`; how many were closed.
    pub async fn cut_disk_and_wait(&self, id: &str, timeout: Duration) -> Result<usize> {
        if let Some(other) = self.elsewhere(id).await? {
            let answer = self
                .remote_disk_op(
                    &other,
                    DiskOp::Revoke {
                        overlay: id.to_string(),
                        wait_ms: Some(timeout.as_millis() as u64),
                    },
                    timeout + Duration::from_secs(5),
                )
                .await?;
            return Ok(answer.parse().unwrap_or(0));
        }
        self.refresh_exports().await;
        match &self.exports {
            Some(x) => x
                .revoke_and_wait(id, timeout)
                .await
                .map_err(|e| Error::new(ErrorKind::Unavailable, format!("{e:#}"))),
            None => Ok(0),
        }
    }

    async fn detach(&self, id: &str, cut: bool) -> Result<usize> {
        let Some(a) = self
            .store
            .disk_attachments()
            .await?
            .into_iter()
            .find(|a| a.overlay == id)
        else {
            return Err(Error::not_found(format!("overlay {id} is not attached")));
        };
        self.store.detach_disk(id).await?;
        self.refresh_exports().await;
        let mut remote_error = None;
        let closed = match (cut, self.serves(&a.server)) {
            (false, true) => 0,
            (false, false) => {
                // The export name stops working there at once, too.
                if let Err(e) = self
                    .store
                    .queue_disk_request(&a.server, &DiskOp::Refresh)
                    .await
                {
                    tracing::warn!(overlay = id, server = a.server, error = %format!("{e:#}"), "serving server not told of the detach; it notices within a second");
                }
                0
            }
            (true, true) => self.cut_disk(id),
            (true, false) => match self
                .remote_disk_op(
                    &a.server,
                    DiskOp::Revoke {
                        overlay: id.to_string(),
                        wait_ms: None,
                    },
                    Duration::from_secs(10),
                )
                .await
            {
                Ok(n) => n.parse().unwrap_or(0),
                Err(e) => {
                    tracing::warn!(overlay = id, server = a.server, error = %e.message, "detached, but the open connections on the serving server were not cut");
                    remote_error = Some(e.message);
                    0
                }
            },
        };
        self.events.emit(
            Some(a.node),
            EventKind::DiskDetached,
            json!({ "overlay": id, "connections_closed": closed, "kept_open": !cut,
                    "server": a.server, "cut_failed": remote_error }),
        );
        Ok(closed)
    }

    pub(super) async fn refresh_exports(&self) {
        if let Some(e) = &self.exports {
            if let Err(err) = e.refresh().await {
                tracing::warn!(error = %format!("{err:#}"), "NBD/iSCSI export table not refreshed");
            }
        }
    }

    /// Refreshes the export table of the server serving an overlay: this
    /// one's at once, another's by a queued request (not awaited).
    async fn refresh_exports_of(&self, server: &str) {
        if self.serves(server) {
            self.refresh_exports().await;
        } else if let Err(e) = self
            .store
            .queue_disk_request(server, &DiskOp::Refresh)
            .await
        {
            tracing::warn!(%server, error = %format!("{e:#}"), "serving server not told to refresh its exports; it does within a second");
        }
    }
}

/// Carries out the disk operations other servers queue for this one, as
/// soon as they are queued (LISTEN/NOTIFY wakes [`Control::disk_wake`]) and
/// at least every second, until the task is dropped.
pub async fn run_disk_requests(control: Arc<Control>) -> anyhow::Result<()> {
    let mut failing = false;
    loop {
        match control.store.take_disk_requests(&control.me).await {
            Ok(requests) => {
                failing = false;
                for r in requests {
                    let c = control.clone();
                    let on_its_own = matches!(r.op, DiskOp::Snapshot { .. });
                    let job = async move {
                        let op = format!("{:?}", r.op);
                        let (ok, result) = match c.carry_out_disk_op(r.op).await {
                            Ok(answer) => (true, answer),
                            Err(e) => (false, e.message),
                        };
                        tracing::info!(request = r.id, %op, ok, "disk request carried out");
                        if let Err(e) = c.store.finish_disk_request(r.id, ok, &result).await {
                            tracing::warn!(request = r.id, error = %format!("{e:#}"), "disk request's outcome not stored");
                        }
                    };
                    // In the order queued (a cut before the delete that follows
                    // it), but a snapshot, which copies data, runs on its own.
                    if on_its_own {
                        tokio::spawn(job);
                    } else {
                        job.await;
                    }
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %format!("{e:#}"), "disk requests not read; retrying every second");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = control.disk_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
