//! The server registry: every boot server sharing a store says who it is
//! and that it is alive (a heartbeat), so `server list` shows the cluster
//! and a silent server is marked down.

use serde::{Deserialize, Serialize};

/// How often a server heartbeats into the store.
pub const SERVER_HEARTBEAT_MS: u64 = 1_000;
/// A server whose last heartbeat is older than this is down.
pub const SERVER_DOWN_AFTER_MS: i64 = 5_000;

/// A server's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerRole {
    /// Holds the designated-controller lease: runs the engine.
    Controller,
    /// Answers DHCP, TFTP, HTTP and NBD for its segment; no engine.
    Member,
}

/// What a server registers about itself (with every heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerInfo {
    /// Unique name (`[store] server_name`, default the host name).
    pub name: String,
    /// Its id in the controller lease (`name:pid:random`, one per run);
    /// empty when it never runs the engine (not a candidate).
    #[serde(default)]
    pub holder: String,
    /// Controller or member, as of its last heartbeat.
    pub role: ServerRole,
    /// The network segment it serves (`[store] segment`, default its DHCP subnets).
    #[serde(default)]
    pub segment: String,
    /// Its boot-server version.
    pub version: String,
    /// Where it listens (`http=…`, `tftp=…`, …).
    #[serde(default)]
    pub listen: Vec<String>,
    /// When this run started (ms since the Unix epoch).
    pub started_ms: i64,
}

/// A registered server as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRecord {
    /// What it registered.
    pub info: ServerInfo,
    /// Its last heartbeat (ms since the Unix epoch, the store's clock).
    pub last_heartbeat_ms: i64,
    /// How long ago that was (ms, measured by the store's clock).
    pub age_ms: i64,
}
