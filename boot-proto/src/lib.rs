//! Wire types shared by `boot-server` and `node-agent`: the JSON bodies of the
//! agent endpoints (`/api/agent/*`), defined once so both sides agree.
//!
//! Keep this crate small and free of heavy dependencies: the agent is built
//! static and shipped inside the netboot initramfs.

use serde::{Deserialize, Serialize};

/// Header carrying the per-node, per-boot agent token minted into the boot
/// script's kernel command line (`bootsrv.token=`).
pub const AGENT_TOKEN_HEADER: &str = "x-node-token";
/// Header carrying the admin token for the admin API.
pub const ADMIN_TOKEN_HEADER: &str = "authorization";

/// Kernel command-line keys the boot script sets for the agent.
pub mod cmdline {
    /// Base URL of the boot server's HTTP service, e.g. `http://10.0.0.1:8080`.
    pub const SERVER: &str = "bootsrv.server";
    /// Node id assigned by the server.
    pub const NODE: &str = "bootsrv.node";
    /// Per-boot agent token.
    pub const TOKEN: &str = "bootsrv.token";
    /// Name of the image this boot came from.
    pub const IMAGE: &str = "bootsrv.image";
}

/// Firmware the node booted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirmwareKind {
    Bios,
    Uefi,
}

/// One network interface as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    #[serde(default)]
    pub ipv4: Vec<String>,
    #[serde(default)]
    pub driver: Option<String>,
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    #[serde(default)]
    pub model: Option<String>,
}

/// Hardware inventory reported once per boot in [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Inventory {
    pub nics: Vec<Nic>,
    /// MAC of the interface the node booted from, if known.
    #[serde(default)]
    pub boot_mac: Option<String>,
    #[serde(default)]
    pub smbios_uuid: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub product: Option<String>,
    pub cpus: u32,
    #[serde(default)]
    pub cpu_model: Option<String>,
    pub memory_bytes: u64,
    #[serde(default)]
    pub disks: Vec<Disk>,
    pub firmware: Option<FirmwareKind>,
    #[serde(default)]
    pub kernel: Option<String>,
}

/// First message of an agent after boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub agent_version: String,
    pub inventory: Inventory,
    /// Milliseconds since the kernel started when the agent became ready.
    #[serde(default)]
    pub uptime_ms: Option<u64>,
    /// The image the node believes it is running (from the command line).
    #[serde(default)]
    pub image: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    pub node_id: String,
    /// Seconds between heartbeats the server expects.
    pub heartbeat_interval_secs: u64,
}

/// State of the node's application work, as the hooks report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AppState {
    #[default]
    None,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

/// Periodic liveness and load report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Heartbeat {
    /// 1-minute load average.
    pub load1: f64,
    /// CPU busy fraction since the previous heartbeat, 0..=1.
    pub cpu_busy: f64,
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    #[serde(default)]
    pub app: AppState,
    pub uptime_ms: u64,
}

/// A command the server asks the agent to carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CommandKind {
    /// Cold reboot through firmware (and so PXE).
    Reboot,
    /// Point the firmware at network boot (BootNext) and cold reboot.
    Reprovision,
    /// Download kernel + initrd and kexec into them.
    Kexec {
        kernel_url: String,
        initrd_url: Option<String>,
        cmdline: String,
    },
    /// Run the node's application start hook.
    StartApp { timeout_secs: u64 },
    /// Run the stop hook; force-kill after the timeout.
    StopApp { timeout_secs: u64 },
    /// Sync and freeze file systems for a clone; report when quiesced.
    Quiesce,
    /// Undo [`CommandKind::Quiesce`].
    Thaw,
    /// Attach a network block device.
    AttachDisk {
        export: String,
        host: String,
        port: u16,
        mount: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    #[serde(flatten)]
    pub kind: CommandKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandStatus {
    Started,
    Succeeded,
    Failed,
}

/// The agent's report on a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: u64,
    pub status: CommandStatus,
    #[serde(default)]
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_with_flat_tag() {
        let c = Command {
            id: 7,
            kind: CommandKind::Kexec {
                kernel_url: "http://s/k".into(),
                initrd_url: None,
                cmdline: "console=ttyS0".into(),
            },
        };
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains(r#""kind":"kexec""#), "{s}");
        assert_eq!(serde_json::from_str::<Command>(&s).unwrap(), c);
    }
}
