//! Agent commands (table `commands`), delivered at least once: a delivered
//! command is handed out again until the agent reports it started. Each is
//! bound to the boot it was queued for (`commands.boot`, the node's
//! `nodes.boot` when it was queued): only that boot's poll takes it.

use super::SqliteStore;
use crate::model::{now_ms, CommandStatus, QueuedCommand};
use crate::store::{closed_by_new_boot, CommandStore, Result};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};

const COMMAND_COLS: &str = "id, node, body, status, detail, created_ms, delivered_ms, boot";

type RawCommand = (i64, String, String, String, String, i64, Option<i64>, i64);

fn command_from_row(r: &Row) -> rusqlite::Result<RawCommand> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn to_command(t: RawCommand) -> Result<QueuedCommand> {
    Ok(QueuedCommand {
        id: t.0,
        node: t.1,
        command: serde_json::from_str(&t.2).context("stored command body")?,
        status: CommandStatus::parse(&t.3).unwrap_or(CommandStatus::Failed),
        detail: t.4,
        created_ms: t.5,
        delivered_ms: t.6,
        boot: t.7,
    })
}

#[async_trait]
impl CommandStore for SqliteStore {
    async fn queue_command(&self, node: &str, command: &boot_proto::CommandKind) -> Result<i64> {
        let (node, body) = (node.to_string(), serde_json::to_string(command)?);
        self.write(move |c| {
            c.execute(
                "INSERT INTO commands(node, body, status, created_ms, boot) \
                 VALUES (?1, ?2, 'queued', ?3, COALESCE((SELECT boot FROM nodes WHERE id = ?1), 0))",
                params![node, body, now_ms()],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    async fn take_commands(
        &self,
        node: &str,
        boot: i64,
        redeliver_after_ms: i64,
    ) -> Result<Vec<QueuedCommand>> {
        let node = node.to_string();
        self.write(move |c| {
            let now = now_ms();
            let due = now - redeliver_after_ms;
            // One writer: the node's boot cannot advance between the two.
            let mut st = c.prepare(&format!(
                "SELECT {COMMAND_COLS} FROM commands WHERE node = ?1 AND boot = ?3 \
                 AND (status = 'queued' OR (status = 'delivered' AND COALESCE(delivered_ms, 0) <= ?2)) \
                 AND NOT EXISTS (SELECT 1 FROM nodes WHERE id = ?1 AND boot <> ?3) ORDER BY id"
            ))?;
            let rows: Vec<_> = st
                .query_map(params![node, due, boot], command_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mut cmd = to_command(row)?;
                c.execute(
                    "UPDATE commands SET status = 'delivered', delivered_ms = ?2 WHERE id = ?1",
                    params![cmd.id, now],
                )?;
                cmd.status = CommandStatus::Delivered;
                cmd.delivered_ms = Some(now);
                out.push(cmd);
            }
            Ok(out)
        })
        .await
    }

    async fn command(&self, id: i64) -> Result<Option<QueuedCommand>> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {COMMAND_COLS} FROM commands WHERE id = ?1"),
                params![id],
                command_from_row,
            )
            .optional()?
            .map(to_command)
            .transpose()
        })
        .await
    }

    async fn commands_of(&self, node: &str, limit: u32) -> Result<Vec<QueuedCommand>> {
        let node = node.to_string();
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {COMMAND_COLS} FROM commands WHERE node = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = st.query_map(params![node, limit], command_from_row)?;
            rows.map(|r| to_command(r?)).collect()
        })
        .await
    }

    async fn update_command(
        &self,
        node: &str,
        id: i64,
        status: CommandStatus,
        detail: &str,
    ) -> Result<bool> {
        let (node, detail) = (node.to_string(), detail.to_string());
        self.write(move |c| {
            let current: Option<String> = c
                .query_row(
                    "SELECT status FROM commands WHERE id = ?1 AND node = ?2",
                    params![id, node],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(current) = current else {
                return Ok(false);
            };
            // A late or repeated report never moves a finished command back.
            if !CommandStatus::parse(&current).is_some_and(CommandStatus::is_final) {
                c.execute(
                    "UPDATE commands SET status = ?2, detail = ?3 WHERE id = ?1",
                    params![id, status.as_str(), detail],
                )?;
            }
            Ok(true)
        })
        .await
    }

    async fn node_boot(&self, node: &str) -> Result<i64> {
        let node = node.to_string();
        self.read(move |c| {
            Ok(
                c.query_row("SELECT boot FROM nodes WHERE id = ?1", params![node], |r| {
                    r.get(0)
                })
                .optional()?
                .unwrap_or(0),
            )
        })
        .await
    }

    async fn boot_of_token(&self, node: &str, token_sha256: &str) -> Result<Option<i64>> {
        let (node, token) = (node.to_string(), token_sha256.to_string());
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT boot FROM nodes WHERE id = ?1 \
                 AND (agent_token = ?2 OR (agent_token IS NULL AND next_agent_token = ?2))",
                params![node, token],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn close_commands_of_previous_boot(&self, node: &str) -> Result<usize> {
        let node = node.to_string();
        self.write(move |c| {
            let present: Option<i64> = c
                .query_row("SELECT boot FROM nodes WHERE id = ?1", params![node], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(present) = present else {
                return Ok(0);
            };
            let mut st = c.prepare(&format!(
                "SELECT {COMMAND_COLS} FROM commands WHERE node = ?1 AND boot < ?2 \
                 AND status IN ('queued', 'delivered', 'started')"
            ))?;
            let rows: Vec<_> = st
                .query_map(params![node, present], command_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            let n = rows.len();
            for row in rows {
                let cmd = to_command(row)?;
                let (status, detail) =
                    closed_by_new_boot(&cmd.command, cmd.status, cmd.boot, present);
                c.execute(
                    "UPDATE commands SET status = ?2, detail = ?3 WHERE id = ?1",
                    params![cmd.id, status.as_str(), detail],
                )?;
            }
            Ok(n)
        })
        .await
    }
}
