//! Failover hosts and their virtual machines. A host runs `node-agent host`
//! under a credential an admin issued (the store keeps its SHA-256 only); it
//! reports its capacity and reserves `m` VMs for failover. A VM is started
//! on a host when a failing-over slot finds no spare node: it netboots like
//! any node, and its node carries the labels `virtual=true` and
//! `host=<name>` ([`VIRTUAL_LABEL`], [`HOST_LABEL`]).

use serde::{Deserialize, Serialize};

/// Node label marking a virtual node (value `true`).
pub const VIRTUAL_LABEL: &str = "virtual";
/// Node label naming a virtual node's host.
pub const HOST_LABEL: &str = "host";

/// Whether a host's agent is heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    /// Enrolled; its agent never polled.
    New,
    /// Its agent polls.
    Up,
    /// Its agent stopped polling: its VMs are taken as dead.
    Down,
}

/// What a failover host offers (as its agent last reported it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct HostCapacity {
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// VMs the host reserves for failover (m in N+m).
    pub reserve: u32,
    /// VMs run with KVM (else TCG).
    pub kvm: bool,
}

/// A failover host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Host {
    /// Unique name (the admin's choice).
    pub name: String,
    /// Heard from or not.
    pub state: HostState,
    /// What it offers (none before its first poll).
    pub capacity: Option<HostCapacity>,
    /// Last poll (ms since the Unix epoch).
    pub last_seen_ms: Option<i64>,
    /// When it went down (ms since the Unix epoch), while down.
    #[serde(default)]
    pub down_since_ms: Option<i64>,
    /// The agent's version at its last poll.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// When it was enrolled.
    pub created_ms: i64,
    /// Who enrolled it.
    pub created_by: String,
    /// Short fingerprint of its secret (never the secret).
    pub fingerprint: String,
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Asked of its host, not reported running yet.
    Requested,
    /// Its host reports it running.
    Running,
    /// Asked to stop, still reported running.
    Stopping,
    /// Stopped on the server's request (freed).
    Stopped,
    /// Ended by itself (QEMU exited) or failed to start.
    Exited,
    /// Its host went down while it ran.
    Lost,
    /// A standby of the 1:1 mapping: defined for one protected node (its
    /// MAC, node and size fixed) and holding a place on its host, but not
    /// running until that node fails.
    Reserved,
}

impl VmState {
    /// Whether the VM holds a place on its host.
    pub fn live(self) -> bool {
        matches!(
            self,
            VmState::Requested | VmState::Running | VmState::Stopping | VmState::Reserved
        )
    }
}

/// A VM on a failover host; its node is `node` (MAC `mac`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Vm {
    /// Unique id (`vm-<mac digits>`).
    pub id: String,
    /// The host running it.
    pub host: String,
    /// Its network interface's MAC (locally administered).
    pub mac: String,
    /// The node it is (id derived from the MAC).
    pub node: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// `bios` or `uefi`.
    pub firmware: String,
    /// The environment whose slot it was started for.
    pub environment: String,
    /// That slot's index.
    pub slot: u32,
    /// The node it stands in for (the slot's home), if known.
    #[serde(default)]
    pub stands_in_for: Option<String>,
    /// Where it is.
    pub state: VmState,
    /// When it was asked for (ms since the Unix epoch).
    pub requested_ms: i64,
    /// When its host first reported it running.
    #[serde(default)]
    pub started_ms: Option<i64>,
    /// When it ended.
    #[serde(default)]
    pub ended_ms: Option<i64>,
    /// Why it ended, or what it waits for.
    #[serde(default)]
    pub detail: String,
}
