//! Agent commands (table `commands`), delivered at least once: a delivered
//! command is handed out again until the agent reports it started. Each is
//! bound to the boot it was queued for (`commands.boot`, the node's
//! `nodes.boot` when it was queued): only that boot's poll takes it. Taking
//! commands locks their rows (`FOR UPDATE SKIP LOCKED`), so two servers
//! answering polls of one node never hand out one command twice at once.
//! Queueing notifies every server (`notify`), so a poll waiting on any of
//! them wakes when the command commits.

use super::PgStore;
use crate::model::{now_ms, CommandStatus, QueuedCommand};
use crate::store::{closed_by_new_boot, CommandStore, Result};
use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

const COMMAND_COLS: &str = "id, node, body, status, detail, created_ms, delivered_ms, boot";

fn to_command(r: &Row) -> Result<QueuedCommand> {
    Ok(QueuedCommand {
        id: r.get(0),
        node: r.get(1),
        command: serde_json::from_str(r.get(2)).context("stored command body")?,
        status: CommandStatus::parse(r.get(3)).unwrap_or(CommandStatus::Failed),
        detail: r.get(4),
        created_ms: r.get(5),
        delivered_ms: r.get(6),
        boot: r.get(7),
    })
}

#[async_trait]
impl CommandStore for PgStore {
    async fn queue_command(&self, node: &str, command: &boot_proto::CommandKind) -> Result<i64> {
        let body = serde_json::to_string(command)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO commands(node, body, status, created_ms, boot) \
                 VALUES ($1, $2, 'queued', $3, COALESCE((SELECT boot FROM nodes WHERE id = $1), 0)) RETURNING id",
                &[&node, &body, &now_ms()],
            )
            .await?
            .get(0);
        // Wakes the node's long poll on whichever server it waits.
        super::notify::notify(&tx, &format!("c:{node}")).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn take_commands(
        &self,
        node: &str,
        boot: i64,
        redeliver_after_ms: i64,
    ) -> Result<Vec<QueuedCommand>> {
        let now = now_ms();
        let due = now - redeliver_after_ms;
        // The node row is read in the same statement: a boot that is no
        // longer the node's present one takes nothing.
        let rows = self
            .client()
            .await?
            .query(
                format!(
                    "UPDATE commands SET status = 'delivered', delivered_ms = $3 WHERE id IN (
                         SELECT id FROM commands WHERE node = $1 AND boot = $4
                           AND (status = 'queued' OR (status = 'delivered' AND COALESCE(delivered_ms, 0) <= $2))
                           AND NOT EXISTS (SELECT 1 FROM nodes WHERE id = $1 AND boot <> $4)
                         ORDER BY id FOR UPDATE SKIP LOCKED)
                     RETURNING {COMMAND_COLS}"
                )
                .as_str(),
                &[&node, &due, &now, &boot],
            )
            .await?;
        let mut out = rows.iter().map(to_command).collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|c| c.id);
        Ok(out)
    }

    async fn command(&self, id: i64) -> Result<Option<QueuedCommand>> {
        self.client()
            .await?
            .query_opt(
                format!("SELECT {COMMAND_COLS} FROM commands WHERE id = $1").as_str(),
                &[&id],
            )
            .await?
            .as_ref()
            .map(to_command)
            .transpose()
    }

    async fn commands_of(&self, node: &str, limit: u32) -> Result<Vec<QueuedCommand>> {
        let rows = self
            .client()
            .await?
            .query(
                format!(
                    "SELECT {COMMAND_COLS} FROM commands WHERE node = $1 ORDER BY id DESC LIMIT $2"
                )
                .as_str(),
                &[&node, &(limit as i64)],
            )
            .await?;
        rows.iter().map(to_command).collect()
    }

    async fn update_command(
        &self,
        node: &str,
        id: i64,
        status: CommandStatus,
        detail: &str,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let current = tx
            .query_opt(
                "SELECT status FROM commands WHERE id = $1 AND node = $2 FOR UPDATE",
                &[&id, &node],
            )
            .await?;
        let Some(current) = current else {
            return Ok(false);
        };
        // A late or repeated report never moves a finished command back.
        if !CommandStatus::parse(current.get(0)).is_some_and(CommandStatus::is_final) {
            tx.execute(
                "UPDATE commands SET status = $2, detail = $3 WHERE id = $1",
                &[&id, &status.as_str(), &detail],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn node_boot(&self, node: &str) -> Result<i64> {
        Ok(self
            .client()
            .await?
            .query_opt("SELECT boot FROM nodes WHERE id = $1", &[&node])
            .await?
            .map_or(0, |r| r.get(0)))
    }

    async fn boot_of_token(&self, node: &str, token_sha256: &str) -> Result<Option<i64>> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT boot FROM nodes WHERE id = $1 \
                 AND (agent_token = $2 OR (agent_token IS NULL AND next_agent_token = $2))",
                &[&node, &token_sha256],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn close_commands_of_previous_boot(&self, node: &str) -> Result<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The node row first: a hello advancing the counter meanwhile waits.
        let Some(present) = tx
            .query_opt("SELECT boot FROM nodes WHERE id = $1 FOR SHARE", &[&node])
            .await?
            .map(|r| r.get::<_, i64>(0))
        else {
            return Ok(0);
        };
        let rows = tx
            .query(
                format!(
                    "SELECT {COMMAND_COLS} FROM commands WHERE node = $1 AND boot < $2 \
                     AND status IN ('queued', 'delivered', 'started') FOR UPDATE"
                )
                .as_str(),
                &[&node, &present],
            )
            .await?;
        for row in &rows {
            let cmd = to_command(row)?;
            let (status, detail) = closed_by_new_boot(&cmd.command, cmd.status, cmd.boot, present);
            tx.execute(
                "UPDATE commands SET status = $2, detail = $3 WHERE id = $1",
                &[&cmd.id, &status.as_str(), &detail],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }
}
