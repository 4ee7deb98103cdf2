//! The server registry (table `servers`) and the preferred controller
//! (`settings`). Heartbeats are stamped with the database's clock, so a
//! server's age does not depend on the reader's clock.

use super::PgStore;
use crate::model::{ServerInfo, ServerRecord};
use crate::store::{Result, ServerStore};
use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::GenericClient;

/// The database's clock in ms since the Unix epoch.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

#[async_trait]
impl ServerStore for PgStore {
    async fn heartbeat_server(&self, server: &ServerInfo) -> Result<()> {
        let body = serde_json::to_string(server).context("encoding a server")?;
        self.client()
            .await?
            .execute(
                format!(
                    "INSERT INTO servers(name, body, heartbeat_ms) VALUES ($1, $2, {NOW_MS})
                     ON CONFLICT(name) DO UPDATE SET body = excluded.body, heartbeat_ms = excluded.heartbeat_ms"
                )
                .as_str(),
                &[&server.name, &body],
            )
            .await?;
        Ok(())
    }

    async fn servers(&self) -> Result<Vec<ServerRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                format!(
                    "SELECT body, heartbeat_ms, {NOW_MS} - heartbeat_ms FROM servers ORDER BY name"
                )
                .as_str(),
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ServerRecord {
                    info: serde_json::from_str(r.get(0)).context("stored server")?,
                    last_heartbeat_ms: r.get(1),
                    age_ms: r.get(2),
                })
            })
            .collect()
    }

    async fn forget_server(&self, name: &str) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute("DELETE FROM servers WHERE name = $1", &[&name])
            .await?
            > 0)
    }

    async fn set_preferred_controller(&self, name: Option<&str>) -> Result<()> {
        let c = self.client().await?;
        match name {
            Some(n) => c.execute(
                "INSERT INTO settings(key, value) VALUES ('preferred_controller', $1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                &[&n],
            )
            .await?,
            None => c
                .execute("DELETE FROM settings WHERE key = 'preferred_controller'", &[])
                .await?,
        };
        Ok(())
    }

    async fn preferred_controller(&self) -> Result<Option<String>> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT value FROM settings WHERE key = 'preferred_controller'",
                &[],
            )
            .await?
            .map(|r| r.get(0)))
    }
}
