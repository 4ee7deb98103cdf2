//! Virtual-disk attachments (table `disk_attachments`), the overlay table
//! (`overlays`: each overlay's serving server) and disk operations queued
//! for a server (`disk_requests`; with one server on SQLite every overlay is
//! its own, so the queue is only exercised by the store's tests).

use super::SqliteStore;
use crate::model::{now_ms, DiskAttachment, DiskOp, DiskRequest, DiskRequestStatus, OverlayRecord};
use crate::store::{DiskAttachmentStore, Result};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

/// Finished requests are kept this long (ms) for their requester to read.
const FINISHED_KEPT_MS: i64 = 3_600_000;

type RawRequest = (i64, String, String, String, String);

fn to_request(r: RawRequest) -> Result<DiskRequest> {
    Ok(DiskRequest {
        id: r.0,
        server: r.1,
        op: serde_json::from_str(&r.2).context("stored disk request")?,
        status: DiskRequestStatus::parse(&r.3).unwrap_or(DiskRequestStatus::Failed),
        result: r.4,
    })
}

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
                "SELECT a.overlay, a.node, a.export, a.created_ms, COALESCE(o.server, '')
                 FROM disk_attachments a LEFT JOIN overlays o ON o.overlay = a.overlay
                 ORDER BY a.overlay",
            )?;
            let rows = st.query_map([], |r| {
                Ok(DiskAttachment {
                    overlay: r.get(0)?,
                    node: r.get(1)?,
                    export: r.get(2)?,
                    created_ms: r.get(3)?,
                    server: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn record_overlay(&self, o: &OverlayRecord) -> Result<()> {
        self.exec(
            "INSERT INTO overlays(overlay, server, base, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(overlay) DO UPDATE SET server = excluded.server, base = excluded.base, created_ms = excluded.created_ms",
            vec![
                o.overlay.clone().into(),
                o.server.clone().into(),
                o.base.clone().into(),
                o.created_ms.into(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn record_overlay_if_new(&self, o: &OverlayRecord) -> Result<bool> {
        Ok(self
            .exec(
                "INSERT INTO overlays(overlay, server, base, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(overlay) DO NOTHING",
                vec![
                    o.overlay.clone().into(),
                    o.server.clone().into(),
                    o.base.clone().into(),
                    o.created_ms.into(),
                ],
            )
            .await?
            > 0)
    }

    async fn forget_overlay(&self, overlay: &str) -> Result<bool> {
        Ok(self
            .exec(
                "DELETE FROM overlays WHERE overlay = ?1",
                vec![overlay.to_string().into()],
            )
            .await?
            > 0)
    }

    async fn overlays(&self) -> Result<Vec<OverlayRecord>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT overlay, server, base, created_ms FROM overlays ORDER BY overlay",
            )?;
            let rows = st.query_map([], |r| {
                Ok(OverlayRecord {
                    overlay: r.get(0)?,
                    server: r.get(1)?,
                    base: r.get(2)?,
                    created_ms: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn queue_disk_request(&self, server: &str, op: &DiskOp) -> Result<i64> {
        let (server, body) = (server.to_string(), serde_json::to_string(op)?);
        self.write(move |c| {
            c.execute(
                "INSERT INTO disk_requests(server, body, status, created_ms) VALUES (?1, ?2, 'queued', ?3)",
                params![server, body, now_ms()],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    async fn take_disk_requests(&self, server: &str) -> Result<Vec<DiskRequest>> {
        let server = server.to_string();
        let rows: Vec<RawRequest> = self
            .write(move |c| {
                let now = now_ms();
                c.execute(
                    "DELETE FROM disk_requests WHERE status IN ('done', 'failed') AND done_ms < ?1",
                    params![now - FINISHED_KEPT_MS],
                )?;
                let rows: Vec<RawRequest> = {
                    let mut st = c.prepare(
                        "SELECT id, server, body, status, result FROM disk_requests
                         WHERE server = ?1 AND status = 'queued' ORDER BY id",
                    )?;
                    let rows = st.query_map(params![server], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                for r in &rows {
                    c.execute(
                        "UPDATE disk_requests SET status = 'taken' WHERE id = ?1",
                        params![r.0],
                    )?;
                }
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|mut r| {
                r.3 = "taken".into();
                to_request(r)
            })
            .collect()
    }

    async fn finish_disk_request(&self, id: i64, ok: bool, result: &str) -> Result<bool> {
        let status = if ok { "done" } else { "failed" };
        Ok(self
            .exec(
                "UPDATE disk_requests SET status = ?2, result = ?3, done_ms = ?4
                 WHERE id = ?1 AND status IN ('queued', 'taken')",
                vec![
                    id.into(),
                    status.to_string().into(),
                    result.to_string().into(),
                    now_ms().into(),
                ],
            )
            .await?
            > 0)
    }

    async fn disk_request(&self, id: i64) -> Result<Option<DiskRequest>> {
        let row: Option<RawRequest> = self
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT id, server, body, status, result FROM disk_requests WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?)
            })
            .await?;
        row.map(to_request).transpose()
    }
}
