//! Virtual-disk attachments (table `disk_attachments`), the overlay table
//! (`overlays`: each overlay's serving server) and disk operations queued
//! for the server that serves an overlay (`disk_requests`). Queueing a
//! request notifies `d:<server>` in its transaction, so the serving server
//! takes it as soon as it commits; taking locks the rows (`FOR UPDATE SKIP
//! LOCKED`), so a request is handed out once.

use super::PgStore;
use crate::model::{now_ms, DiskAttachment, DiskOp, DiskRequest, DiskRequestStatus, OverlayRecord};
use crate::store::{DiskAttachmentStore, Result};
use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

/// Finished requests are kept this long (ms) for their requester to read.
const FINISHED_KEPT_MS: i64 = 3_600_000;

fn to_request(r: &Row) -> Result<DiskRequest> {
    Ok(DiskRequest {
        id: r.get(0),
        server: r.get(1),
        op: serde_json::from_str(r.get(2)).context("stored disk request")?,
        status: DiskRequestStatus::parse(r.get(3)).unwrap_or(DiskRequestStatus::Failed),
        result: r.get(4),
    })
}

fn to_overlay(r: &Row) -> OverlayRecord {
    OverlayRecord {
        overlay: r.get(0),
        server: r.get(1),
        base: r.get(2),
        created_ms: r.get(3),
    }
}

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
                "SELECT a.overlay, a.node, a.export, a.created_ms, COALESCE(o.server, '')
                 FROM disk_attachments a LEFT JOIN overlays o ON o.overlay = a.overlay
                 ORDER BY a.overlay",
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
                server: r.get(4),
            })
            .collect())
    }

    async fn record_overlay(&self, o: &OverlayRecord) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO overlays(overlay, server, base, created_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT(overlay) DO UPDATE SET server = excluded.server, base = excluded.base, created_ms = excluded.created_ms",
                &[&o.overlay, &o.server, &o.base, &o.created_ms],
            )
            .await?;
        Ok(())
    }

    async fn record_overlay_if_new(&self, o: &OverlayRecord) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute(
                "INSERT INTO overlays(overlay, server, base, created_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT(overlay) DO NOTHING",
                &[&o.overlay, &o.server, &o.base, &o.created_ms],
            )
            .await?
            > 0)
    }

    async fn forget_overlay(&self, overlay: &str) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute("DELETE FROM overlays WHERE overlay = $1", &[&overlay])
            .await?
            > 0)
    }

    async fn overlays(&self) -> Result<Vec<OverlayRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT overlay, server, base, created_ms FROM overlays ORDER BY overlay",
                &[],
            )
            .await?;
        Ok(rows.iter().map(to_overlay).collect())
    }

    async fn queue_disk_request(&self, server: &str, op: &DiskOp) -> Result<i64> {
        let body = serde_json::to_string(op)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO disk_requests(server, body, status, created_ms) VALUES ($1, $2, 'queued', $3) RETURNING id",
                &[&server, &body, &now_ms()],
            )
            .await?
            .get(0);
        super::notify::notify(&tx, &format!("d:{server}")).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn take_disk_requests(&self, server: &str) -> Result<Vec<DiskRequest>> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM disk_requests WHERE status IN ('done', 'failed') AND done_ms < $1",
                &[&(now_ms() - FINISHED_KEPT_MS)],
            )
            .await?;
        let rows = client
            .query(
                "UPDATE disk_requests SET status = 'taken' WHERE id IN (
                     SELECT id FROM disk_requests WHERE server = $1 AND status = 'queued'
                     ORDER BY id FOR UPDATE SKIP LOCKED)
                 RETURNING id, server, body, status, result",
                &[&server],
            )
            .await?;
        let mut out = rows.iter().map(to_request).collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    async fn finish_disk_request(&self, id: i64, ok: bool, result: &str) -> Result<bool> {
        let status = if ok { "done" } else { "failed" };
        Ok(self
            .client()
            .await?
            .execute(
                "UPDATE disk_requests SET status = $2, result = $3, done_ms = $4
                 WHERE id = $1 AND status IN ('queued', 'taken')",
                &[&id, &status, &result, &now_ms()],
            )
            .await?
            > 0)
    }

    async fn disk_request(&self, id: i64) -> Result<Option<DiskRequest>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id, server, body, status, result FROM disk_requests WHERE id = $1",
                &[&id],
            )
            .await?;
        row.as_ref().map(to_request).transpose()
    }
}
