//! Virtual-disk operations (bases, overlays, snapshots, attachments), done
//! inside the server so its in-use checks, locks and NBD revocation apply.

use super::{Control, Error, ErrorKind, Result};
use crate::model::EventKind;
use boot_proto::CommandKind;
use serde::Serialize;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

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
            .map_err(|e| {
                let m = format!("{e:#}");
                let kind = if m.contains("not found") || m.contains("no such") {
                    ErrorKind::NotFound
                } else if m.contains("in use")
                    || m.contains("exists")
                    || m.contains("used by")
                    || m.contains("being exported")
                {
                    ErrorKind::Conflict
                } else if m.contains("invalid") {
                    ErrorKind::BadRequest
                } else {
                    ErrorKind::Unavailable
                };
                Error::new(kind, m)
            })
    }

    /// Bases, overlays and snapshots with their attachments.
    pub async fn list_disks(&self) -> Result<Vec<DiskView>> {
        let attached: std::collections::HashMap<String, String> = self
            .store
            .disk_attachments()
            .await?
            .into_iter()
            .map(|a| (a.overlay, a.node))
            .collect();
        let (bases, overlays) = self
            .on_disks(|d| Ok((d.list_bases()?, d.list_overlays()?)))
            .await?;
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
            })
            .collect();
        out.extend(overlays.into_iter().map(|o| DiskView {
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
        }));
        Ok(out)
    }

    /// Creates a read-only base from a file on the server (raw copied,
    /// qcow2 and friends converted).
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
        })
    }

    /// Creates a copy-on-write overlay of a base.
    pub async fn create_overlay(&self, id: String, base: String) -> Result<DiskView> {
        let (i, b) = (id.clone(), base.clone());
        let o = self.on_disks(move |d| d.create_overlay(&i, &b)).await?;
        self.events.emit(
            None,
            EventKind::DiskCreated,
            json!({ "kind": "overlay", "name": id, "base": base }),
        );
        Ok(DiskView {
            kind: "overlay",
            name: o.id,
            base: Some(o.base),
            size: o.size,
            allocated_bytes: o.allocated_bytes,
            node: None,
            origin: None,
        })
    }

    /// Snapshots an overlay (reflink or copy of its allocated chunks).
    pub async fn snapshot(&self, id: String, snapshot: String) -> Result<DiskView> {
        let (i, s) = (id.clone(), snapshot.clone());
        let o = self.on_disks(move |d| d.snapshot_overlay(&i, &s)).await?;
        self.events.emit(
            None,
            EventKind::DiskCreated,
            json!({ "kind": "snapshot", "name": snapshot, "origin": id, "reflinked": o.reflinked }),
        );
        Ok(DiskView {
            kind: "snapshot",
            name: o.id,
            base: Some(o.base),
            size: o.size,
            allocated_bytes: o.allocated_bytes,
            node: None,
            origin: Some(id),
        })
    }

    /// Deletes an overlay (refused while attached or open) or a base.
    pub async fn delete_disk(&self, id: String, base: bool) -> Result<()> {
        if !base
            && self
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
        self.on_disks(move |d| {
            if base {
                d.delete_base(&i)
            } else {
                d.delete_overlay(&i)
            }
        })
        .await?;
        self.events.emit(
            None,
            EventKind::DiskDeleted,
            json!({ "name": id, "base": base }),
        );
        Ok(())
    }

    /// Attaches an overlay to a node under a fresh secret export name; with
    /// `now`, the running agent attaches it at once (mounted at `mount`).
    pub async fn attach_disk(
        &self,
        id: String,
        node: &str,
        now: bool,
        mount: Option<String>,
    ) -> Result<(String, String, Option<i64>)> {
        let i = id.clone();
        let exists = self
            .on_disks(move |d| Ok(d.list_overlays()?.iter().any(|o| o.id == i)))
            .await?;
        if !exists {
            return Err(Error::not_found(format!("no overlay {id}")));
        }
        let node = self.find_node(node).await?;
        let export = format!("{id}.{}", crate::secret::random_token(12));
        self.store.attach_disk(&id, &node.id, &export).await?;
        self.refresh_exports().await;
        let mut command = None;
        if now {
            let host = self
                .config
                .server_ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| "127.0.0.1".into());
            let kind = CommandKind::AttachDisk {
                export: export.clone(),
                host,
                port: self.config.nbd.listen.port(),
                mount,
            };
            command = Some(self.queue(&node.id, kind).await?);
        }
        self.events.emit(
            Some(node.id.clone()),
            EventKind::DiskAttached,
            json!({ "overlay": id, "command": command }),
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

    /// Closes every open connection to an overlay (NBD and iSCSI); how many.
    pub fn cut_disk(&self, id: &str) -> usize {
        self.exports.as_ref().map(|e| e.revoke(id)).unwrap_or(0)
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
        let closed = if cut { self.cut_disk(id) } else { 0 };
        self.events.emit(
            Some(a.node),
            EventKind::DiskDetached,
            json!({ "overlay": id, "connections_closed": closed, "kept_open": !cut }),
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
}
