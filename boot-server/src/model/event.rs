//! The append-only event log: typed kinds (serialised as kebab-case strings,
//! the names round 1 stored), the node they concern and a JSON detail.

use serde::{Deserialize, Serialize};

/// What an event records. Kinds written by a newer server and unknown here
/// read back as [`EventKind::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A DHCP answer carried boot options (loader or script URL).
    DhcpBoot,
    /// A loader or file fetched over TFTP.
    TftpFile,
    /// A per-node iPXE script was served (with the image it boots).
    Script,
    /// The node got the wait script (no image, or not allowed a token).
    ScriptWait,
    /// A file fetched over HTTP (kernel, initrd).
    HttpFile,
    /// A warm reprovision (kexec) was planned.
    KexecPlanned,
    /// A pre-staged boot exchanged its hand-off credential for its token.
    Handoff,
    /// First sight of a node.
    NodeDiscovered,
    /// An admin registered a node.
    NodeEnrolled,
    /// A node's agent said hello.
    AgentReady,
    /// A node stopped heart-beating (or reported failure).
    NodeFailed,
    /// A failed node heart-beats again.
    NodeRecovered,
    /// A node's state was changed by an admin.
    NodeState,
    /// A request carried a token or came from an address it may not use.
    AccessRefused,
    /// A command was queued for an agent.
    CommandQueued,
    /// An agent reported on a command.
    CommandResult,
    /// An image was assigned to a node (or the assignment removed).
    Assigned,
    /// The default image changed.
    DefaultImage,
    /// An image was added or updated in the table.
    ImageAdded,
    /// An image was removed from the table.
    ImageRemoved,
    /// A file of an image no longer matches its recorded digest.
    ImageCorrupt,
    /// A virtual disk (base, overlay or snapshot) was created.
    DiskCreated,
    /// A virtual disk was deleted.
    DiskDeleted,
    /// An overlay was attached to a node.
    DiskAttached,
    /// An overlay was detached (its connections closed).
    DiskDetached,
    /// A DHCP reservation was added or changed.
    ReservationSet,
    /// A DHCP reservation was removed.
    ReservationRemoved,
    /// A store operation failed (the service keeps running).
    StoreError,
    /// An environment was created, changed or deleted by an admin.
    EnvChanged,
    /// The engine decided something (claim, release, preempt, scale) and why.
    EngineDecision,
    /// A slot moved from one step to the next (with how long the last took).
    SlotStep,
    /// Something an operator should look at (detail `alert` says what).
    Alert,
    /// A power action on a node through its BMC or QEMU monitor.
    Power,
    /// A failed node was fenced (connections cut, powered off) before its
    /// slot's disk went to another machine; says whether that is proven.
    Fenced,
    /// A state-changing admin API call: the token's name, method, path and
    /// outcome (never the token).
    Audit,
    /// An API token was created or revoked.
    TokenChanged,
    /// A failover host was enrolled, removed, came up or went down.
    Host,
    /// A VM on a failover host was asked for, started, stopped or ended.
    Vm,
    /// A kind this build does not know.
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// Every kind.
    pub const ALL: &'static [EventKind] = &[
        EventKind::DhcpBoot,
        EventKind::TftpFile,
        EventKind::Script,
        EventKind::ScriptWait,
        EventKind::HttpFile,
        EventKind::KexecPlanned,
        EventKind::Handoff,
        EventKind::NodeDiscovered,
        EventKind::NodeEnrolled,
        EventKind::AgentReady,
        EventKind::NodeFailed,
        EventKind::NodeRecovered,
        EventKind::NodeState,
        EventKind::AccessRefused,
        EventKind::CommandQueued,
        EventKind::CommandResult,
        EventKind::Assigned,
        EventKind::DefaultImage,
        EventKind::ImageAdded,
        EventKind::ImageRemoved,
        EventKind::ImageCorrupt,
        EventKind::DiskCreated,
        EventKind::DiskDeleted,
        EventKind::DiskAttached,
        EventKind::DiskDetached,
        EventKind::ReservationSet,
        EventKind::ReservationRemoved,
        EventKind::StoreError,
        EventKind::EnvChanged,
        EventKind::EngineDecision,
        EventKind::SlotStep,
        EventKind::Alert,
        EventKind::Power,
        EventKind::Fenced,
        EventKind::Audit,
        EventKind::TokenChanged,
        EventKind::Host,
        EventKind::Vm,
        EventKind::Unknown,
    ];

    /// The kebab-case name (the same string serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DhcpBoot => "dhcp-boot",
            EventKind::TftpFile => "tftp-file",
            EventKind::Script => "script",
            EventKind::ScriptWait => "script-wait",
            EventKind::HttpFile => "http-file",
            EventKind::KexecPlanned => "kexec-planned",
            EventKind::Handoff => "handoff",
            EventKind::NodeDiscovered => "node-discovered",
            EventKind::NodeEnrolled => "node-enrolled",
            EventKind::AgentReady => "agent-ready",
            EventKind::NodeFailed => "node-failed",
            EventKind::NodeRecovered => "node-recovered",
            EventKind::NodeState => "node-state",
            EventKind::AccessRefused => "access-refused",
            EventKind::CommandQueued => "command-queued",
            EventKind::CommandResult => "command-result",
            EventKind::Assigned => "assigned",
            EventKind::DefaultImage => "default-image",
            EventKind::ImageAdded => "image-added",
            EventKind::ImageRemoved => "image-removed",
            EventKind::ImageCorrupt => "image-corrupt",
            EventKind::DiskCreated => "disk-created",
            EventKind::DiskDeleted => "disk-deleted",
            EventKind::DiskAttached => "disk-attached",
            EventKind::DiskDetached => "disk-detached",
            EventKind::ReservationSet => "reservation-set",
            EventKind::ReservationRemoved => "reservation-removed",
            EventKind::StoreError => "store-error",
            EventKind::EnvChanged => "env-changed",
            EventKind::EngineDecision => "engine-decision",
            EventKind::SlotStep => "slot-step",
            EventKind::Alert => "alert",
            EventKind::Power => "power",
            EventKind::Fenced => "fenced",
            EventKind::Audit => "audit",
            EventKind::TokenChanged => "token-changed",
            EventKind::Host => "host",
            EventKind::Vm => "vm",
            EventKind::Unknown => "unknown",
        }
    }

    /// Parses a stored name (unknown names give [`EventKind::Unknown`]).
    pub fn parse(s: &str) -> EventKind {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .unwrap_or(EventKind::Unknown)
    }
}

/// An entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Position in the log (increasing; `events --after` pages by it).
    pub id: i64,
    /// When it happened (ms since the Unix epoch).
    pub at_ms: i64,
    /// Node it concerns, if any.
    pub node: Option<String>,
    /// What happened.
    pub kind: EventKind,
    /// Kind-specific facts (JSON object).
    pub detail: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_round_one_names() {
        assert_eq!(
            serde_json::to_string(&EventKind::DhcpBoot).unwrap(),
            "\"dhcp-boot\""
        );
        assert_eq!(EventKind::parse("agent-ready"), EventKind::AgentReady);
        assert_eq!(EventKind::parse("no-such-kind"), EventKind::Unknown);
        for k in EventKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str(), "{k:?}");
        }
    }
}
