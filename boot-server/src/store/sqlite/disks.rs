//! Virtual-disk attachments (table `disk_attachments`).

use super::SqliteStore;
use crate::model::{now_ms, DiskAttachment};
use crate::store::{DiskAttachmentStore, Result};
use async_trait::async_trait;

#[async_trait]
impl DiskAttachmentStore for SqliteStore {
    async fn attach_disk(&self, overlay: &str, node: &str, export: &str) -> Result<()> {
        self.exec(
            "INSERT INTO disk_attachments(overlay, node, export, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(overlay) DO UPDATE SET node = excluded.node, export = excluded.export, created_ms = excluded.created_ms",
            vec![overlay.to_string().into(), node.to_string().into(), export.to_string().into(), now_ms().into()],
        )
        .await?;
        Ok(())
    }

    async fn detach_disk(&self, overlay: &str) -> Result<bool> {
        Ok(self
            .exec(
                "DELETE FROM disk_attachments WHERE overlay = ?1",
                vec![overlay.to_string().into()],
            )
            .await?
            > 0)
    }

    async fn disk_attachments(&self) -> Result<Vec<DiskAttachment>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT overlay, node, export, created_ms FROM disk_attachments ORDER BY overlay",
            )?;
            let rows = st.query_map([], |r| {
                Ok(DiskAttachment {
                    overlay: r.get(0)?,
                    node: r.get(1)?,
                    export: r.get(2)?,
                    created_ms: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}
