//! The server registry (table `servers`: the server's registration as JSON
//! and its last heartbeat) and the preferred controller (`settings`). With
//! the embedded store there is one server, which registers itself too.

use super::SqliteStore;
use crate::model::{now_ms, ServerInfo, ServerRecord};
use crate::store::{Result, ServerStore};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl ServerStore for SqliteStore {
    async fn heartbeat_server(&self, server: &ServerInfo) -> Result<()> {
        let body = serde_json::to_string(server).context("encoding a server")?;
        let name = server.name.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO servers(name, body, heartbeat_ms) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET body = excluded.body, heartbeat_ms = excluded.heartbeat_ms",
                params![name, body, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    async fn servers(&self) -> Result<Vec<ServerRecord>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT body, heartbeat_ms FROM servers ORDER BY name")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let now = now_ms();
            let mut out = Vec::new();
            for row in rows {
                let (body, at) = row?;
                out.push(ServerRecord {
                    info: serde_json::from_str(&body).context("stored server")?,
                    last_heartbeat_ms: at,
                    age_ms: now - at,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn forget_server(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.write(move |c| {
            Ok(c.execute("DELETE FROM servers WHERE name = ?1", params![name])? > 0)
        })
        .await
    }

    async fn set_preferred_controller(&self, name: Option<&str>) -> Result<()> {
        let name = name.map(str::to_string);
        self.write(move |c| {
            match name {
                Some(n) => c.execute(
                    "INSERT INTO settings(key, value) VALUES ('preferred_controller', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![n],
                )?,
                None => c.execute("DELETE FROM settings WHERE key = 'preferred_controller'", [])?,
            };
            Ok(())
        })
        .await
    }

    async fn preferred_controller(&self) -> Result<Option<String>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT value FROM settings WHERE key = 'preferred_controller'",
                [],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }
}
