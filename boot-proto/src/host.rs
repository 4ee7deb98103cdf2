//! The failover-host protocol (`/api/host/*`): a host-mode agent
//! (`node-agent host`) authenticates with the secret an admin issued
//! (`boot-server host add NAME`), reports its capacity and the VMs it runs
//! on every poll, and gets back the VMs to start or stop. The server derives
//! the commands from the VMs it wants on the host and what the host reports,
//! so a lost answer or a restarted agent is repaired by the next poll.

use crate::FirmwareKind;
use serde::{Deserialize, Serialize};

/// Header carrying a host's secret: `Authorization: Bearer <secret>`.
pub const HOST_TOKEN_HEADER: &str = "authorization";

/// What a failover host offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostCapacity {
    /// Logical CPUs of the host.
    pub cpus: u32,
    /// Memory of the host in bytes.
    pub memory_bytes: u64,
    /// How many VMs the host reserves for failover (m in N+m).
    pub reserve: u32,
    /// Whether VMs run with KVM (else TCG emulation).
    pub kvm: bool,
}

/// One VM as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReport {
    /// The VM's id (from its [`VmSpec`]).
    pub id: String,
    /// Its QEMU process runs.
    pub running: bool,
    /// How it ended (exit status, start failure), when it is not running.
    #[serde(default)]
    pub detail: String,
}

/// A host's poll: its capacity and its VMs (running, and ended since the last poll).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostReport {
    /// The agent's version.
    pub agent_version: String,
    /// What the host offers.
    pub capacity: HostCapacity,
    /// The VMs it runs, and those that ended since its last report.
    pub vms: Vec<VmReport>,
}

/// A VM to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The VM's id (unique on the server).
    pub id: String,
    /// MAC of its network interface (it netboots from it).
    pub mac: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Firmware (BIOS or UEFI).
    pub firmware: FirmwareKind,
}

/// What the server asks a host to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostCommand {
    /// Start this VM (nothing to do if it already runs).
    StartVm {
        /// The VM.
        vm: VmSpec,
    },
    /// Stop this VM (nothing to do if it does not run).
    StopVm {
        /// The VM's id.
        id: String,
    },
}

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostReply {
    /// The host's name, as the server enrolled it.
    pub host: String,
    /// What to do now (empty when nothing changed during the wait).
    pub commands: Vec<HostCommand>,
    /// Poll again at once after acting; at the latest after this many seconds.
    pub poll_secs: u64,
}
