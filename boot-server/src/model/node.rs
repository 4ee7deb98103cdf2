//! Nodes: identity, life-cycle states with their allowed transitions, what
//! the boot chain saw of a node, assignments and disk attachments.

use super::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Node life-cycle states.
///
/// - `discovered`: seen at boot (DHCP, or a script fetch when allowed), never
///   enrolled and no agent has said hello yet;
/// - `idle`: in the pool, its agent up (or enrolled by an admin), in no environment;
/// - `provisioning`: told to boot an image, not up yet;
/// - `ready`: its agent is up and it serves an environment (or an assignment);
/// - `failed`: heart-beating state whose heartbeats stopped (or that reported failure);
/// - `quarantined`: cut out by an admin or the engine, kept up, never allocated;
/// - `retired`: out of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Seen at boot, never enrolled, no agent yet.
    Discovered,
    /// In the pool, in no environment.
    Idle,
    /// Told to boot an image, not up yet.
    Provisioning,
    /// Agent up and serving.
    Ready,
    /// Heartbeats stopped or failure reported.
    Failed,
    /// Cut out of service, kept up, never allocated.
    Quarantined,
    /// Out of service for good.
    Retired,
}

/// What moves a node from one state to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// An admin registered the node (`node add`).
    Enrol,
    /// The node was told to boot an image (script served, kexec planned).
    Boot,
    /// The node's agent said hello; `serving` when the node holds an
    /// environment slot or an explicit assignment.
    AgentUp {
        /// The node holds an environment slot or an explicit assignment.
        serving: bool,
    },
    /// Heartbeats stopped or the node reported failure.
    Fail,
    /// A heartbeat arrived from a failed node.
    Recover {
        /// As for [`Transition::AgentUp`].
        serving: bool,
    },
    /// Cut out of service by an admin or the engine.
    Quarantine,
    /// Back into the pool from quarantine.
    Release,
    /// Out of service for good.
    Retire,
}

impl NodeState {
    /// The kebab-case name (wire and store).
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

    /// Parses [`NodeState::as_str`] names.
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

    /// States in which the node's agent is expected to heartbeat: the
    /// watchdog marks them failed when heartbeats stop.
    pub fn heart_beating(self) -> bool {
        matches!(self, NodeState::Idle | NodeState::Ready)
    }

    /// The one place that decides what may follow what: the state after
    /// `t`, or `None` when `t` does not apply in this state (the node keeps
    /// its state; e.g. a quarantined node stays quarantined when it boots).
    pub fn next(self, t: Transition) -> Option<NodeState> {
        use NodeState::*;
        use Transition::*;
        let up = |serving: bool| if serving { Ready } else { Idle };
        match (self, t) {
            (Retired, _) => None,
            (_, Retire) => Some(Retired),
            (Quarantined, Release) => Some(Idle),
            (Quarantined, _) | (_, Release) => None,
            (_, Quarantine) => Some(Quarantined),
            (Discovered, Enrol) => Some(Idle),
            (_, Enrol) => None,
            (_, Boot) => Some(Provisioning),
            (_, AgentUp { serving }) => Some(up(serving)),
            (s, Fail) if s.heart_beating() || s == Provisioning => Some(Failed),
            (_, Fail) => None,
            (Failed, Recover { serving }) => Some(up(serving)),
            (_, Recover { .. }) => None,
        }
    }
}

/// A machine the server knows (seen by DHCP, HTTP or its agent, or enrolled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Node {
    /// Stable id derived from the first MAC seen: `node-525400123456`.
    pub id: String,
    /// MAC the node was first seen with (its id derives from it).
    pub mac: MacAddr,
    /// SMBIOS system UUID, if the firmware or agent reported one.
    pub uuid: Option<String>,
    /// Firmware/architecture as seen at boot: `bios`, `uefi-x64`, `uefi-arm64`.
    pub arch: Option<String>,
    /// Life-cycle state.
    pub state: NodeState,
    /// When the server first saw it (ms since the Unix epoch).
    pub first_seen_ms: i64,
    /// When the server last heard of it (any protocol).
    pub last_seen_ms: i64,
    /// When its agent last sent a heartbeat.
    pub last_heartbeat_ms: Option<i64>,
    /// Image the node was last told to boot.
    pub booted_image: Option<String>,
    /// Agent inventory (boot_proto::Inventory as JSON).
    pub inventory: Option<serde_json::Value>,
    /// Last heartbeat body (boot_proto::Heartbeat as JSON).
    pub heartbeat: Option<serde_json::Value>,
    /// Registered by an admin (`node add`) rather than only discovered.
    #[serde(default)]
    pub enrolled: bool,
    /// Serial number (enrolment or inventory).
    #[serde(default)]
    pub serial: Option<String>,
    /// Free-form labels (rack, location, ...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Power control URI (`ipmi://host`, `qmp:///path`), credentials kept apart.
    #[serde(default)]
    pub power: Option<String>,
    /// The address the node showed in this boot's DHCP exchange (proxy and
    /// relay mode) or its first script fetch (enrolled nodes without DHCP);
    /// in full mode the node's live lease is its address.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub observed_ip: Option<Ipv4Addr>,
    /// When this boot's agent said hello (ms since the epoch).
    #[serde(default)]
    pub last_hello_ms: Option<i64>,
    /// The image the agent said it runs (from its command line) at hello.
    #[serde(default)]
    pub running_image: Option<String>,
    /// Agent protocol version of the running agent.
    #[serde(default)]
    pub agent_protocol: Option<u32>,
    /// Environment whose slot the node holds (from the slot table).
    #[serde(default)]
    pub environment: Option<String>,
    /// Index of that slot.
    #[serde(default)]
    pub slot: Option<u32>,
}

/// What an agent's hello says about the boot it runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HelloFacts {
    /// Agent inventory (boot_proto::Inventory as JSON).
    pub inventory: serde_json::Value,
    /// Image named on the boot's command line.
    pub image: Option<String>,
    /// Agent protocol version.
    pub protocol: u32,
}

impl Node {
    /// Whether the agent heart-beat within `fresh_ms` of `now_ms`.
    pub fn agent_up(&self, now_ms: i64, fresh_ms: i64) -> bool {
        self.last_heartbeat_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= fresh_ms)
            && self.state.heart_beating()
    }

    /// What the last heartbeat's busy hook said.
    pub fn busy(&self) -> Option<bool> {
        self.heartbeat
            .as_ref()
            .and_then(|h| h.get("busy"))
            .and_then(|b| b.as_bool())
    }

    /// The last heartbeat's load: the health hook's `load` when it prints
    /// one (what the environment's policies use), else the 1-minute load average.
    pub fn load(&self) -> f64 {
        let hb = self.heartbeat.as_ref();
        let health = hb
            .and_then(|h| h.get("health"))
            .and_then(|h| h.get("load"))
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite());
        health.unwrap_or_else(|| {
            hb.and_then(|h| h.get("load1"))
                .and_then(|b| b.as_f64())
                .unwrap_or(0.0)
        })
    }
}

/// What the firmware/boot chain facts say about a node at boot time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sighting {
    /// MAC of the booting interface.
    pub mac: MacAddr,
    /// SMBIOS UUID the boot chain reported (DHCP option 97, script URL), if any.
    pub uuid: Option<String>,
    /// Firmware/architecture the boot chain reported (`bios`, `uefi-x64`, ...).
    pub arch: Option<String>,
    /// Address shown in a proxy/relay DHCP exchange (option 50 or ciaddr).
    pub observed_ip: Option<Ipv4Addr>,
}

/// Which nodes an assignment applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "by", content = "value", rename_all = "lowercase")]
pub enum Selector {
    /// By MAC of the node.
    Mac(MacAddr),
    /// By SMBIOS UUID (compared lowercase).
    Uuid(String),
}

impl Selector {
    /// Store key: `mac:52:54:...` or `uuid:...` (lowercase).
    pub fn key(&self) -> String {
        match self {
            Selector::Mac(m) => format!("mac:{m}"),
            Selector::Uuid(u) => format!("uuid:{}", u.to_ascii_lowercase()),
        }
    }

    /// Inverse of [`Selector::key`].
    pub fn from_key(key: &str) -> Option<Selector> {
        match key.split_once(':') {
            Some(("mac", v)) => v.parse().ok().map(Selector::Mac),
            Some(("uuid", v)) => Some(Selector::Uuid(v.to_string())),
            _ => None,
        }
    }
}

/// A virtual disk (overlay) attached to a node. The export name holds a
/// random secret, and the NBD server also checks the peer's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiskAttachment {
    /// The overlay disk's id.
    pub overlay: String,
    /// Id of the node it is attached to.
    pub node: String,
    /// The NBD export name (holds a random secret).
    pub export: String,
    /// When it was attached (ms since the Unix epoch).
    pub created_ms: i64,
    /// The server that holds and serves the overlay (its registry name, from
    /// the overlay table); empty when the overlay was never recorded (a
    /// store from before schema 7 whose server has not started since).
    #[serde(default)]
    pub server: String,
}

#[cfg(test)]
mod tests {
    use super::NodeState::*;
    use super::Transition::*;

    #[test]
    fn transitions() {
        assert_eq!(Discovered.next(AgentUp { serving: false }), Some(Idle));
        assert_eq!(Provisioning.next(AgentUp { serving: true }), Some(Ready));
        assert_eq!(Discovered.next(Enrol), Some(Idle));
        assert_eq!(Idle.next(Enrol), None);
        assert_eq!(Ready.next(Fail), Some(Failed));
        assert_eq!(Idle.next(Fail), Some(Failed));
        assert_eq!(Discovered.next(Fail), None);
        assert_eq!(Failed.next(Recover { serving: false }), Some(Idle));
        assert_eq!(Ready.next(Recover { serving: true }), None);
        assert_eq!(Quarantined.next(Boot), None);
        assert_eq!(Quarantined.next(AgentUp { serving: true }), None);
        assert_eq!(Quarantined.next(Release), Some(Idle));
        assert_eq!(Retired.next(Boot), None);
        assert_eq!(Ready.next(Retire), Some(Retired));
        assert!(Idle.heart_beating() && Ready.heart_beating());
        assert!(!Provisioning.heart_beating() && !Discovered.heart_beating());
    }
}
