//! Virtual-disk attachments (table `disk_attachments`).

use super::PgStore;
use crate::model::{now_ms, DiskAttachment};
use crate::store::{DiskAttachmentStore, Result};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;

#[async_trait]
impl DiskAttachmentStore for PgStore {
    async fn attach_disk(&self, overlay: &str, node: &str, export: &str) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO disk_attachments(overlay, node, export, created_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT(overlay) DO UPDATE SET node = excluded.node, export = excluded.export, created_ms = excluded.created_ms",
                &[&overlay, &node, &export, &now_ms()],
            )
            .await?;
        Ok(())
    }

    async fn detach_disk(&self, overlay: &str) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute(
                "DELETE FROM disk_attachments WHERE overlay = $1",
                &[&overlay],
            )
            .await?
            > 0)
    }

    async fn disk_attachments(&self) -> Result<Vec<DiskAttachment>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT overlay, node, export, created_ms FROM disk_attachments ORDER BY overlay",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DiskAttachment {
                overlay: r.get(0),
                node: r.get(1),
                export: r.get(2),
                created_ms: r.get(3),
            })
            .collect())
    }
}
