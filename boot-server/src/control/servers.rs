//! The server registry as admins see it (`server list`, `GET /api/servers`)
//! and the preferred controller (`server prefer`), plus this server's own
//! heartbeat into the registry ([`run_heartbeat`]).

use super::{Control, Error, Result};
use crate::model::{ServerInfo, ServerRole, SERVER_DOWN_AFTER_MS, SERVER_HEARTBEAT_MS};
use crate::store::Fence;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A registered server as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServerView {
    /// Unique name.
    pub name: String,
    /// `controller`, `member`, or `down` (no heartbeat for 5 s).
    pub role: String,
    /// Whether it heart-beats.
    pub up: bool,
    /// Whether it is the preferred controller.
    pub preferred: bool,
    /// The network segment it serves.
    pub segment: String,
    /// Its boot-server version.
    pub version: String,
    /// Where it listens.
    pub listen: Vec<String>,
    /// Its id in the controller lease (empty: never runs the engine).
    pub holder: String,
    /// When its current run started (ms since the Unix epoch).
    pub started_ms: i64,
    /// Its last heartbeat (ms since the Unix epoch).
    pub last_heartbeat_ms: i64,
    /// How long ago that was, in ms.
    pub heartbeat_age_ms: i64,
}

impl Control {
    /// Every registered server, by name.
    pub async fn list_servers(&self) -> Result<Vec<ServerView>> {
        let preferred = self.store.preferred_controller().await?;
        let mut out: Vec<ServerView> = self
            .store
            .servers()
            .await?
            .into_iter()
            .map(|r| {
                let up = r.age_ms < SERVER_DOWN_AFTER_MS;
                let role = match (up, r.info.role) {
                    (false, _) => "down",
                    (true, ServerRole::Controller) => "controller",
                    (true, ServerRole::Member) => "member",
                };
                ServerView {
                    preferred: preferred.as_deref() == Some(r.info.name.as_str()),
                    name: r.info.name,
                    role: role.into(),
                    up,
                    segment: r.info.segment,
                    version: r.info.version,
                    listen: r.info.listen,
                    holder: r.info.holder,
                    started_ms: r.info.started_ms,
                    last_heartbeat_ms: r.last_heartbeat_ms,
                    heartbeat_age_ms: r.age_ms,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Makes `name` the preferred controller (it takes the lease whenever it
    /// is up), or with `None` lets any server keep it.
    pub async fn prefer_server(&self, name: Option<String>) -> Result<()> {
        if let Some(n) = &name {
            let known = self.store.servers().await?;
            match known.iter().find(|r| &r.info.name == n) {
                None => {
                    return Err(Error::not_found(format!(
                        "no server {n} has registered (see `server list`)"
                    )))
                }
                Some(r) if r.info.holder.is_empty() => {
                    return Err(Error::conflict(format!(
                        "server {n} does not run the engine ([engine] enabled = false there)"
                    )))
                }
                Some(_) => {}
            }
        }
        self.store.set_preferred_controller(name.as_deref()).await?;
        Ok(())
    }

    /// Removes a down server from the registry.
    pub async fn forget_server(&self, name: &str) -> Result<()> {
        let known = self.store.servers().await?;
        match known.iter().find(|r| r.info.name == name) {
            None => Err(Error::not_found(format!("no server {name}"))),
            Some(r) if r.age_ms < SERVER_DOWN_AFTER_MS => Err(Error::conflict(format!(
                "server {name} is up (heart-beat {} ms ago); stop it first",
                r.age_ms
            ))),
            Some(_) => {
                self.store.forget_server(name).await?;
                Ok(())
            }
        }
    }
}

/// Registers this server and heart-beats every second until the task is
/// dropped; its role follows `controller` (the lease, when it is a
/// candidate; absent: the embedded store's single server is the controller
/// when `engine` is on).
pub async fn run_heartbeat(
    control: Arc<Control>,
    mut info: ServerInfo,
    controller: Option<watch::Receiver<Option<Fence>>>,
) -> anyhow::Result<()> {
    let every = Duration::from_millis(SERVER_HEARTBEAT_MS);
    let single = info.role;
    let mut failing = false;
    loop {
        info.role = match &controller {
            Some(c) if c.borrow().is_some() => ServerRole::Controller,
            Some(_) => ServerRole::Member,
            None => single,
        };
        match control.store.heartbeat_server(&info).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %format!("{e:#}"), "server heartbeat not stored; other servers may mark this one down");
            }
            Err(_) => {}
        }
        let mut changed = controller.clone();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = async {
                match changed.as_mut() {
                    Some(c) => { let _ = c.changed().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
}
