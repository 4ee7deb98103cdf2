//! The store owns all durable state: nodes, the boot-image table, assignments,
//! DHCP leases, agent commands and the append-only event log.
//!
//! [`Store`] is the seam: protocol servers and the engine only see this trait.
//! The embedded SQLite backend ([`sqlite::SqliteStore`]) is the default; a
//! PostgreSQL backend will implement the same trait, so nothing here may rely
//! on SQLite-only behaviour (no rowid tricks, no implicit type affinity).
//! Every write returns only once it is durable.

pub mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

pub use sqlite::SqliteStore;

pub type Result<T> = anyhow::Result<T>;

/// Milliseconds since the Unix epoch (all timestamps in the store).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lowercase colon-separated MAC, the canonical key for nodes and leases.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse `52:54:00:12:34:56`, `52-54-00-12-34-56` or `525400123456`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    if hex.len() != 12
        || s.chars()
            .any(|c| !(c.is_ascii_hexdigit() || c == ':' || c == '-'))
    {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(mac)
}

/// Node life-cycle states (DESIGN.md data model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    Discovered,
    Idle,
    Provisioning,
    Ready,
    Failed,
    Quarantined,
    Retired,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Discovered => "discovered",
            NodeState::Idle => "idle",
            NodeState::Provisioning => "provisioning",
            NodeState::Ready => "ready",
            NodeState::Failed => "failed",
            NodeState::Quarantined => "quarantined",
            NodeState::Retired => "retired",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "discovered" => NodeState::Discovered,
            "idle" => NodeState::Idle,
            "provisioning" => NodeState::Provisioning,
            "ready" => NodeState::Ready,
            "failed" => NodeState::Failed,
            "quarantined" => NodeState::Quarantined,
            "retired" => NodeState::Retired,
            _ => return None,
        })
    }
}

/// A machine the server has seen (by DHCP, HTTP or its agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Stable id derived from the first MAC seen: `node-525400123456`.
    pub id: String,
    pub mac: String,
    pub uuid: Option<String>,
    /// Firmware/architecture as seen at boot: `bios`, `uefi-x64`, `uefi-arm64`, `uefi-http`.
    pub arch: Option<String>,
    pub state: NodeState,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub last_heartbeat_ms: Option<i64>,
    /// Image the node was last told to boot.
    pub booted_image: Option<String>,
    /// Agent inventory (boot_proto::Inventory as JSON).
    pub inventory: Option<serde_json::Value>,
    /// Last heartbeat body (boot_proto::Heartbeat as JSON).
    pub heartbeat: Option<serde_json::Value>,
}

impl Node {
    pub fn id_for_mac(mac: &str) -> String {
        format!("node-{}", mac.replace([':', '-'], ""))
    }
}

/// What the firmware/boot chain facts say about a node at boot time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sighting {
    pub mac: String,
    pub uuid: Option<String>,
    pub arch: Option<String>,
}

/// How an image boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// Kernel + initrd over HTTP.
    Linux,
    /// Boot from the node's local disk (iPXE `sanboot --no-describe --drive 0x80` / exit).
    Localdisk,
    /// SAN boot from a URL (iSCSI / HTTP SAN).
    Sanboot,
}

/// A row of the boot-image table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootImage {
    pub name: String,
    #[serde(default)]
    pub version: String,
    pub kind: ImageKind,
    /// Kernel path relative to the images directory (linux images).
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    /// Kernel command-line template; `{server}`, `{node}`, `{mac}`, `{image}` are substituted.
    #[serde(default)]
    pub cmdline: String,
    /// Supported firmware kinds (`bios`, `uefi-x64`, ...); empty = any.
    #[serde(default)]
    pub archs: Vec<String>,
    /// SAN URL for sanboot images.
    #[serde(default)]
    pub san_url: Option<String>,
    /// SHA-256 of kernel and initrd, hex, computed when the image is added.
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub size_bytes: u64,
}

/// Which nodes an assignment applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", content = "value", rename_all = "lowercase")]
pub enum Selector {
    Mac(String),
    Uuid(String),
}

impl Selector {
    fn key(&self) -> String {
        match self {
            Selector::Mac(m) => format!("mac:{m}"),
            Selector::Uuid(u) => format!("uuid:{}", u.to_ascii_lowercase()),
        }
    }
}

/// A DHCP binding. Durable before the ACK that promises it leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub expires_at_ms: i64,
    pub hostname: Option<String>,
    pub client_id: Option<Vec<u8>>,
}

/// A virtual disk (NBD overlay) attached to a node. The export name holds a
/// random secret, and the NBD server also checks the peer's leased address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskAttachment {
    pub overlay: String,
    pub node: String,
    pub export: String,
    pub created_ms: i64,
}

/// An entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at_ms: i64,
    pub node: Option<String>,
    pub kind: String,
    pub detail: serde_json::Value,
}

/// A command queued for a node's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedCommand {
    pub id: i64,
    pub node: String,
    pub command: boot_proto::CommandKind,
    /// queued, delivered, started, succeeded, failed
    pub status: String,
    pub detail: String,
    pub created_ms: i64,
}

/// Records an event for whichever node holds a lease on `peer` (protocols
/// that only see an address: HTTP and TFTP file fetches). Best effort.
pub async fn record_peer_event(
    store: &std::sync::Arc<dyn Store>,
    peer: Option<std::net::IpAddr>,
    kind: &str,
    detail: serde_json::Value,
) {
    let node = match peer {
        Some(std::net::IpAddr::V4(ip)) => store
            .node_by_lease_ip(ip)
            .await
            .ok()
            .flatten()
            .map(|n| n.id),
        _ => None,
    };
    if let Err(e) = store.record_event(node.as_deref(), kind, detail).await {
        tracing::warn!(error = %format!("{e:#}"), kind, "event not recorded");
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- boot-image table
    async fn put_image(&self, image: &BootImage) -> Result<()>;
    async fn image(&self, name: &str) -> Result<Option<BootImage>>;
    async fn images(&self) -> Result<Vec<BootImage>>;
    /// Removes an image; refuses while an assignment or the default names it.
    async fn remove_image(&self, name: &str) -> Result<()>;

    // --- assignments
    async fn set_default_image(&self, image: Option<&str>) -> Result<()>;
    async fn default_image(&self) -> Result<Option<String>>;
    async fn assign(&self, selector: &Selector, image: Option<&str>) -> Result<()>;
    async fn assignment(&self, selector: &Selector) -> Result<Option<String>>;
    async fn assignments(&self) -> Result<Vec<(Selector, String)>>;

    // --- nodes
    /// Records that a node was seen at boot; creates it as discovered when new.
    /// Returns the node and whether it was new.
    async fn observe_node(&self, sighting: &Sighting) -> Result<(Node, bool)>;
    async fn node(&self, id: &str) -> Result<Option<Node>>;
    async fn node_by_mac(&self, mac: &str) -> Result<Option<Node>>;
    async fn nodes(&self) -> Result<Vec<Node>>;
    async fn set_node_state(&self, id: &str, state: NodeState) -> Result<()>;
    async fn set_booted_image(&self, id: &str, image: &str) -> Result<()>;
    /// Stores the agent's inventory (hello) and moves the node to ready.
    async fn record_hello(&self, id: &str, inventory: &serde_json::Value) -> Result<()>;
    async fn record_heartbeat(&self, id: &str, heartbeat: &serde_json::Value) -> Result<()>;
    /// Mints the token of the node's next boot. The current boot's token
    /// keeps working until the next boot's agent says hello (so a running
    /// agent can still fetch the kexec command that carries the new token).
    async fn set_next_agent_token(&self, id: &str, token: &str) -> Result<()>;
    /// The node holding this token (current or next boot), and whether it is
    /// the next boot's token.
    async fn node_by_agent_token(&self, token: &str) -> Result<Option<(Node, bool)>>;
    /// The next boot's agent said hello: its token becomes the only valid one.
    async fn promote_agent_token(&self, id: &str, token: &str) -> Result<()>;

    // --- leases
    async fn leases(&self) -> Result<Vec<Lease>>;
    async fn put_lease(&self, lease: &Lease) -> Result<()>;
    /// The node holding a lease on `ip` (by the lease's MAC), if any.
    async fn node_by_lease_ip(&self, ip: Ipv4Addr) -> Result<Option<Node>>;
    async fn remove_lease(&self, mac: &str, ip: Ipv4Addr) -> Result<()>;

    // --- virtual disks
    /// Attaches an overlay to a node (replacing an earlier attachment of that
    /// overlay) under the given export name.
    async fn attach_disk(&self, overlay: &str, node: &str, export: &str) -> Result<()>;
    async fn detach_disk(&self, overlay: &str) -> Result<bool>;
    async fn disk_attachments(&self) -> Result<Vec<DiskAttachment>>;

    // --- agent commands
    async fn queue_command(&self, node: &str, command: &boot_proto::CommandKind) -> Result<i64>;
    /// Pending (queued) commands for a node, marking them delivered.
    async fn take_commands(&self, node: &str) -> Result<Vec<QueuedCommand>>;
    async fn command(&self, id: i64) -> Result<Option<QueuedCommand>>;
    async fn update_command(&self, node: &str, id: i64, status: &str, detail: &str)
        -> Result<bool>;

    // --- events
    async fn record_event(
        &self,
        node: Option<&str>,
        kind: &str,
        detail: serde_json::Value,
    ) -> Result<i64>;
    async fn events(&self, after_id: i64, node: Option<&str>, limit: u32) -> Result<Vec<Event>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms() {
        let m = [0x52, 0x54, 0, 0x12, 0x34, 0xab];
        assert_eq!(format_mac(m), "52:54:00:12:34:ab");
        assert_eq!(parse_mac("52:54:00:12:34:AB"), Some(m));
        assert_eq!(parse_mac("52-54-00-12-34-ab"), Some(m));
        assert_eq!(parse_mac("5254001234ab"), Some(m));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:zz"), None);
    }
}
