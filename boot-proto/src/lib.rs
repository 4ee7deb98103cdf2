//! Wire types shared by `boot-server` and `node-agent`: the JSON bodies of the
//! agent endpoints (`/api/agent/*`), defined once so both sides agree.
//!
//! Keep this crate small and free of heavy dependencies: the agent is built
//! static and shipped inside the netboot initramfs.

use serde::{Deserialize, Serialize};

pub mod host;
pub mod mac;
pub use mac::{fmt_mac, write_mac};

/// Header carrying the per-node, per-boot agent token minted into the boot
/// script's kernel command line (`bootsrv.token=`).
pub const AGENT_TOKEN_HEADER: &str = "x-node-token";

/// Header carrying a pre-staged boot's one-time hand-off credential
/// (`bootsrv.handoff`), exchanged at `POST /api/agent/handoff` for the
/// boot's agent token.
pub const AGENT_HANDOFF_HEADER: &str = "x-node-handoff";
/// Header carrying the admin token for the admin API.
pub const ADMIN_TOKEN_HEADER: &str = "authorization";

/// Version of the agent protocol this build speaks (sent in [`Hello`]).
pub const PROTOCOL_VERSION: u32 = 4;
/// First agent protocol version with live cloning ([`CommandKind::PrepareClone`],
/// [`CommandKind::FinishClone`], the clone hooks and [`SlotConfig::reidentify`]).
pub const CLONE_PROTOCOL_VERSION: u32 = 4;
/// Oldest agent protocol version a server still accepts: agents inside
/// installed operating systems lag one release behind.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

fn round1_protocol() -> u32 {
    1
}

/// Kernel command-line keys the boot script sets for the agent.
pub mod cmdline {
    /// Base URL of the boot server's agent API, e.g. `http://10.0.0.1:8080`,
    /// or `https://10.0.0.1:8443` with [`TLS_PIN`].
    pub const SERVER: &str = "bootsrv.server";
    /// SHA-256 (hex) of the agent API's TLS certificate, pinned by the agent.
    pub const TLS_PIN: &str = "bootsrv.tlspin";
    /// Node id assigned by the server.
    pub const NODE: &str = "bootsrv.node";
    /// Per-boot agent token.
    pub const TOKEN: &str = "bootsrv.token";
    /// Name of the image this boot came from.
    pub const IMAGE: &str = "bootsrv.image";
    /// Root file system on a network disk: `nbd:HOST:PORT:EXPORT`.
    pub const ROOT: &str = "bootsrv.root";
    /// UEFI HTTP boot URI the agent writes into a firmware boot entry.
    pub const HTTPBOOT: &str = "bootsrv.httpboot";
    /// Address iPXE leased for this boot (the initramfs reuses it).
    pub const IP: &str = "bootsrv.ip";
    /// Netmask that came with [`IP`].
    pub const NETMASK: &str = "bootsrv.netmask";
    /// Default gateway that came with [`IP`].
    pub const GATEWAY: &str = "bootsrv.gateway";
    /// pxelinux convention: `01-` + the boot NIC's MAC with dashes.
    pub const BOOTIF: &str = "BOOTIF";
    /// One-time hand-off credential of a pre-staged boot (instead of
    /// [`TOKEN`]): the new boot exchanges it for its token once the server
    /// has bound it to the decision.
    pub const HANDOFF: &str = "bootsrv.handoff";
}

/// NBD wire constants (NetworkBlockDevice `doc/proto.md`) shared by the
/// server (`boot-nbd`) and the agent's userspace handshake.
pub mod nbd {
    /// `NBDMAGIC`, first 8 bytes of every handshake.
    pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
    /// `IHAVEOPT`: newstyle handshake / option request magic.
    pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    /// Oldstyle handshake magic (second 8 bytes).
    pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
    /// Option reply magic.
    pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
    /// Transmission request magic.
    pub const REQUEST_MAGIC: u32 = 0x2560_9513;
    /// Simple reply magic (the only reply the kernel driver parses).
    pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
    /// Structured reply chunk magic.
    pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

    /// Server handshake flag: fixed newstyle.
    pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
    /// Server handshake flag: no zero padding after NBD_OPT_EXPORT_NAME.
    pub const FLAG_NO_ZEROES: u16 = 1 << 1;
    /// Client flag: fixed newstyle.
    pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
    /// Client flag: no zero padding.
    pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

    /// Transmission flag: the other flags are valid.
    pub const TF_HAS_FLAGS: u16 = 1 << 0;
    /// Transmission flag: read-only export.
    pub const TF_READ_ONLY: u16 = 1 << 1;
    /// Transmission flag: FLUSH supported.
    pub const TF_SEND_FLUSH: u16 = 1 << 2;
    /// Transmission flag: FUA supported.
    pub const TF_SEND_FUA: u16 = 1 << 3;
    /// Transmission flag: TRIM supported.
    pub const TF_SEND_TRIM: u16 = 1 << 5;
    /// Transmission flag: WRITE_ZEROES supported.
    pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// Transmission flag: DF (don't fragment) supported.
    pub const TF_SEND_DF: u16 = 1 << 7;
    /// Transmission flag: several connections see one consistent disk.
    pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
    /// Transmission flag: CACHE supported.
    pub const TF_SEND_CACHE: u16 = 1 << 10;
    /// Transmission flag: FAST_ZERO supported.
    pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

    /// Option: export name (old way to select an export; no error reply).
    pub const OPT_EXPORT_NAME: u32 = 1;
    /// Option: abort the handshake.
    pub const OPT_ABORT: u32 = 2;
    /// Option: list exports.
    pub const OPT_LIST: u32 = 3;
    /// Option: STARTTLS.
    pub const OPT_STARTTLS: u32 = 5;
    /// Option: export information without selecting it.
    pub const OPT_INFO: u32 = 6;
    /// Option: select an export and start transmission.
    pub const OPT_GO: u32 = 7;
    /// Option: structured replies.
    pub const OPT_STRUCTURED_REPLY: u32 = 8;
    /// Option: list metadata contexts.
    pub const OPT_LIST_META_CONTEXT: u32 = 9;
    /// Option: select metadata contexts.
    pub const OPT_SET_META_CONTEXT: u32 = 10;

    /// Option reply: acknowledged.
    pub const REP_ACK: u32 = 1;
    /// Option reply: one export of a LIST.
    pub const REP_SERVER: u32 = 2;
    /// Option reply: export information.
    pub const REP_INFO: u32 = 3;
    /// Option reply: a metadata context.
    pub const REP_META_CONTEXT: u32 = 4;
    /// Option error: unsupported option.
    pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
    /// Option error: refused by policy.
    pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
    /// Option error: invalid option.
    pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
    /// Option error: unknown export.
    pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// Option error: request too big.
    pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

    /// NBD_INFO: export size and transmission flags.
    pub const INFO_EXPORT: u16 = 0;
    /// NBD_INFO: export name.
    pub const INFO_NAME: u16 = 1;
    /// NBD_INFO: description.
    pub const INFO_DESCRIPTION: u16 = 2;
    /// NBD_INFO: block size constraints.
    pub const INFO_BLOCK_SIZE: u16 = 3;
}

/// Firmware the node booted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirmwareKind {
    /// Legacy BIOS (PXE from the NIC's option ROM).
    Bios,
    /// UEFI firmware.
    Uefi,
}

/// One network interface as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Nic {
    /// Kernel interface name, e.g. `eth0`.
    pub name: String,
    /// Hardware address as sysfs prints it (`52:54:00:12:34:ab`).
    pub mac: String,
    /// IPv4 addresses configured on it (`10.0.0.5`).
    #[serde(default)]
    pub ipv4: Vec<String>,
    /// Kernel driver bound to the interface, if any.
    #[serde(default)]
    pub driver: Option<String>,
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Disk {
    /// Kernel block device name, e.g. `sda` or `nvme0n1`.
    pub name: String,
    /// Capacity in bytes.
    pub size_bytes: u64,
    /// Model string the device reports, if any.
    #[serde(default)]
    pub model: Option<String>,
}

/// Hardware inventory reported once per boot in [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Inventory {
    /// Every network interface except loopback, sorted by name.
    pub nics: Vec<Nic>,
    /// MAC of the interface the node booted from, if known.
    #[serde(default)]
    pub boot_mac: Option<String>,
    /// SMBIOS system UUID (firmware's stable machine id).
    #[serde(default)]
    pub smbios_uuid: Option<String>,
    /// SMBIOS system serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// SMBIOS system manufacturer.
    #[serde(default)]
    pub vendor: Option<String>,
    /// SMBIOS product name.
    #[serde(default)]
    pub product: Option<String>,
    /// Logical CPUs listed in `/proc/cpuinfo`.
    pub cpus: u32,
    /// CPU model name from `/proc/cpuinfo`.
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Whole block devices (`/sys/block`), without loop, RAM, optical and empty NBD devices.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Firmware the node booted with, if the agent could tell.
    pub firmware: Option<FirmwareKind>,
    /// Running kernel release (`uname -r`).
    #[serde(default)]
    pub kernel: Option<String>,
}

/// First message of an agent after boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Agent protocol version ([`PROTOCOL_VERSION`]); round-1 agents send none (1).
    #[serde(default = "round1_protocol")]
    pub protocol_version: u32,
    /// Agent build version (its crate version).
    pub agent_version: String,
    /// What the node is made of.
    pub inventory: Inventory,
    /// Milliseconds since the kernel started when the agent became ready.
    #[serde(default)]
    pub uptime_ms: Option<u64>,
    /// The image the node believes it is running (from the command line).
    #[serde(default)]
    pub image: Option<String>,
    /// PID 1's start time, milliseconds on the kernel's boot clock. PID 1 is
    /// created early in kernel init (before it execs `/init`), and under
    /// emulation the boot clock can go on across kexec: a diagnostic only
    /// (bench/reprovision.sh takes its phases from the serial console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_ms: Option<u64>,
    /// Milliseconds since the kernel started when the agent process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_start_ms: Option<u64>,
}

/// The server's answer to a hand-off (`POST /api/agent/handoff`): the
/// boot's agent token, given once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffReply {
    /// The agent token of this boot.
    pub token: String,
}

impl std::fmt::Debug for HandoffReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("HandoffReply").finish_non_exhaustive()
    }
}

/// The server's answer to a [`Hello`]: who the node is and how often to report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    /// Id the server knows the node by; the agent quotes it in later calls.
    pub node_id: String,
    /// Seconds between heartbeats the server expects.
    pub heartbeat_interval_secs: u64,
    /// Every live boot server's agent API (several servers on one store):
    /// where the agent goes on when its server stops answering. Empty from
    /// a server that does not say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<AgentServer>,
}

/// One boot server's agent API, as a server the agent trusts lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentServer {
    /// Base URL (`http://…` or `https://…`).
    pub url: String,
    /// SHA-256 of its certificate (hex), for an `https://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

/// The server's answer to a [`Heartbeat`] (an empty body from a server
/// that says nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// As [`HelloReply::servers`], refreshed with every heartbeat.
    #[serde(default)]
    pub servers: Vec<AgentServer>,
}

/// State of the node's application work, as the hooks report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AppState {
    /// No application hook ran yet (or none is defined).
    #[default]
    None,
    /// The start hook is running.
    Starting,
    /// The application is up (start hook succeeded).
    Running,
    /// The stop hook is running.
    Stopping,
    /// The application was stopped on purpose.
    Stopped,
    /// A hook failed or the application died.
    Failed,
}

/// Periodic liveness and load report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Heartbeat {
    /// 1-minute load average.
    pub load1: f64,
    /// CPU busy fraction since the previous heartbeat, 0..=1.
    pub cpu_busy: f64,
    /// Total memory in bytes.
    pub mem_total_bytes: u64,
    /// Memory available to new work in bytes (`MemAvailable`).
    pub mem_available_bytes: u64,
    /// State of the node's application.
    #[serde(default)]
    pub app: AppState,
    /// Milliseconds since the kernel started.
    pub uptime_ms: u64,
    /// What the environment's `health` hook printed, as `key=value` pairs
    /// (e.g. `load=0.7 busy=1 latency_ms=40`); empty without a hook.
    /// Protocol 3.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub health: std::collections::BTreeMap<String, String>,
    /// What the `busy` hook said (exit 0 = busy); `None` without a hook.
    /// A busy node is never taken from its environment. Protocol 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<bool>,
}

/// The application hooks an environment defines on the server and delivers
/// to the agent with its slot (shell scripts, run with `/bin/sh`). A hook
/// left out falls back to the agent's local `/etc/node-agent/hooks/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Hooks {
    /// Starts the application (long-running, or a launcher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Asks the application to stop (SIGTERM/SIGKILL follow on timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// Exit 0 = healthy; its stdout's `key=value` pairs go into heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Exit 0 = busy (the node must not be taken away now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<String>,
    /// Before a live clone of this node: stop taking new work, finish or
    /// suspend sessions. A non-zero exit refuses the clone (its output is
    /// the reason) unless the clone is forced. Protocol 4.
    #[serde(
        default,
        rename = "prepare-clone",
        skip_serializing_if = "Option::is_none"
    )]
    pub prepare_clone: Option<String>,
    /// After the clone's snapshot (file systems thawed): resume. Protocol 4.
    #[serde(
        default,
        rename = "clone-done",
        skip_serializing_if = "Option::is_none"
    )]
    pub clone_done: Option<String>,
    /// On a clone's first boot, before the start hook: drop the sessions,
    /// caches and leases it inherited from its template. Protocol 4.
    #[serde(
        default,
        rename = "purge-sessions",
        skip_serializing_if = "Option::is_none"
    )]
    pub purge_sessions: Option<String>,
}

/// Every hook name an environment can define, as written on the wire and
/// as file names under the agent's hook directories.
pub const HOOK_NAMES: [&str; 7] = [
    "start",
    "stop",
    "health",
    "busy",
    "prepare-clone",
    "clone-done",
    "purge-sessions",
];

impl Hooks {
    /// The script of hook `name` (one of [`HOOK_NAMES`]).
    pub fn get(&self, name: &str) -> Option<&String> {
        match name {
            "start" => self.start.as_ref(),
            "stop" => self.stop.as_ref(),
            "health" => self.health.as_ref(),
            "busy" => self.busy.as_ref(),
            "prepare-clone" => self.prepare_clone.as_ref(),
            "clone-done" => self.clone_done.as_ref(),
            "purge-sessions" => self.purge_sessions.as_ref(),
            _ => None,
        }
    }
}

/// What a node needs to know about the environment slot it holds: sent with
/// [`CommandKind::Configure`] before the application starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SlotConfig {
    /// Environment name.
    pub environment: String,
    /// Slot index within the environment (0-based).
    pub slot: u32,
    /// Host name the node takes.
    pub hostname: String,
    /// Application hooks of the environment.
    #[serde(default)]
    pub hooks: Hooks,
    /// Per-slot post-boot configuration, written to
    /// `/run/node-agent/slot.env` as `KEY=value` lines for the hooks.
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, String>,
    /// This is a clone's boot: give the node its own identity before the
    /// application starts (new `/etc/machine-id`, SSH host keys regenerated
    /// if present, the `purge-sessions` hook). Protocol 4.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reidentify: bool,
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
        /// URL of the kernel to download.
        kernel_url: String,
        /// URL of the initrd, if the kernel needs one.
        initrd_url: Option<String>,
        /// Kernel command line for the new kernel.
        cmdline: String,
        /// SHA-256 (hex) of the kernel: the agent's image cache serves a
        /// known one without downloading it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kernel_sha256: Option<String>,
        /// SHA-256 (hex) of the initrd.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd_sha256: Option<String>,
        /// Id of a [`CommandKind::Prestage`] image this boot may use as it
        /// is (already loaded): the agent then only jumps. An agent that
        /// does not hold that staged image loads the URLs above instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        staged: Option<String>,
    },
    /// Download kernel + initrd (through the image cache) and load them
    /// with `kexec_file_load` now, without jumping: a later
    /// [`CommandKind::Kexec`] naming `id` in `staged` only jumps. The
    /// command line carries no token, only a one-time hand-off credential.
    Prestage {
        /// Id of this staged image, quoted back by the [`CommandKind::Kexec`]
        /// that uses it (not `id`: the command's own id shares the object).
        stage: String,
        /// URL of the kernel.
        kernel_url: String,
        /// URL of the initrd, if any.
        initrd_url: Option<String>,
        /// Kernel command line (with `bootsrv.handoff`, never a token).
        cmdline: String,
        /// SHA-256 (hex) of the kernel.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kernel_sha256: Option<String>,
        /// SHA-256 (hex) of the initrd.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd_sha256: Option<String>,
    },
    /// Run the node's application start hook.
    StartApp {
        /// Seconds the start hook may take before it counts as failed.
        timeout_secs: u64,
    },
    /// Run the stop hook; force-kill after the timeout.
    StopApp {
        /// Seconds the stop hook may take before the application is killed.
        timeout_secs: u64,
    },
    /// Sync and freeze file systems for a clone; report when quiesced.
    Quiesce,
    /// Undo [`CommandKind::Quiesce`].
    Thaw,
    /// Live clone, first half (protocol 4): run the `prepare-clone` hook
    /// (a refusal fails the command with its reason unless `force`), then
    /// sync and freeze the file systems and answer. The agent thaws by
    /// itself (and runs `clone-done`) after `hold_secs` if no
    /// [`CommandKind::FinishClone`] came.
    PrepareClone {
        /// Go on when the `prepare-clone` hook refuses.
        force: bool,
        /// Longest freeze before the agent thaws on its own.
        hold_secs: u64,
    },
    /// Live clone, second half (protocol 4): the snapshot is taken; thaw
    /// and run the `clone-done` hook. The result's detail starts with
    /// `pause_ms=N` (freeze to thaw, as the agent measured it).
    FinishClone,
    /// Take on an environment slot's configuration: host name, hooks and
    /// key/values (protocol 3). The agent answers succeeded once installed.
    Configure {
        /// The slot the node now holds.
        slot: SlotConfig,
    },
    /// Forget the slot configuration (server hooks, host name): the node
    /// went back to the pool (protocol 3).
    Unconfigure,
    /// Attach a network block device.
    AttachDisk {
        /// NBD export name.
        export: String,
        /// NBD server host (name or address).
        host: String,
        /// NBD server TCP port.
        port: u16,
        /// Where to mount the device once attached; `None` leaves it unmounted.
        mount: Option<String>,
    },
}

/// The `pause_ms=N` a [`CommandKind::FinishClone`] result's detail starts with.
pub fn clone_pause_ms(detail: &str) -> Option<u64> {
    detail
        .strip_prefix("pause_ms=")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// One queued command as the agent receives it on its poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Server-assigned id, quoted back in the [`CommandResult`].
    pub id: u64,
    /// What to do.
    #[serde(flatten)]
    pub kind: CommandKind,
}

/// Life of a command, from the server's queue to the agent's result.
/// The agent reports `Started`, `Succeeded` and `Failed`; the server sets the
/// others (`Delivered` when a poll hands it out, `Acknowledged` once whoever
/// queued it has seen the result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandStatus {
    /// Waiting in the server's queue.
    Queued,
    /// Handed to the agent by a poll.
    Delivered,
    /// The agent began carrying it out.
    Started,
    /// The agent finished it successfully.
    Succeeded,
    /// The agent could not carry it out (see the result's detail).
    Failed,
    /// Whoever queued it has seen the final result.
    Acknowledged,
}

impl CommandStatus {
    /// The kebab-case name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Delivered => "delivered",
            CommandStatus::Started => "started",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
            CommandStatus::Acknowledged => "acknowledged",
        }
    }

    /// Parses [`CommandStatus::as_str`]'s names.
    pub fn parse(s: &str) -> Option<CommandStatus> {
        Some(match s {
            "queued" => CommandStatus::Queued,
            "delivered" => CommandStatus::Delivered,
            "started" => CommandStatus::Started,
            "succeeded" => CommandStatus::Succeeded,
            "failed" => CommandStatus::Failed,
            "acknowledged" => CommandStatus::Acknowledged,
            _ => return None,
        })
    }

    /// Whether an agent may report this status.
    pub fn is_agent_report(self) -> bool {
        matches!(
            self,
            CommandStatus::Started | CommandStatus::Succeeded | CommandStatus::Failed
        )
    }

    /// Whether the command has finished (successfully or not).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CommandStatus::Succeeded | CommandStatus::Failed | CommandStatus::Acknowledged
        )
    }
}

/// The agent's report on a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Id of the [`Command`] this reports on.
    pub id: u64,
    /// Where the command stands now.
    pub status: CommandStatus,
    /// Free text for the operator: error cause or output summary.
    #[serde(default)]
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prestage_round_trips_beside_the_command_id() {
        let c = Command {
            id: 9,
            kind: CommandKind::Prestage {
                stage: "s1".into(),
                kernel_url: "http://s/k".into(),
                initrd_url: None,
                cmdline: "bootsrv.handoff=h".into(),
                kernel_sha256: None,
                initrd_sha256: None,
            },
        };
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&s).unwrap(), c);
    }

    #[test]
    fn command_round_trips_with_flat_tag() {
        let c = Command {
            id: 7,
            kind: CommandKind::Kexec {
                kernel_url: "http://s/k".into(),
                initrd_url: None,
                cmdline: "console=ttyS0".into(),
                kernel_sha256: None,
                initrd_sha256: None,
                staged: None,
            },
        };
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains(r#""kind":"kexec""#), "{s}");
        assert_eq!(serde_json::from_str::<Command>(&s).unwrap(), c);
    }

    #[test]
    fn clone_wire_forms() {
        let c = CommandKind::PrepareClone {
            force: true,
            hold_secs: 30,
        };
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(s, r#"{"kind":"prepare-clone","force":true,"hold_secs":30}"#);
        let h: Hooks =
            serde_json::from_str(r#"{"start":"a","prepare-clone":"b","purge-sessions":"c"}"#)
                .unwrap();
        assert_eq!(h.get("prepare-clone").map(String::as_str), Some("b"));
        assert_eq!(h.get("purge-sessions").map(String::as_str), Some("c"));
        assert_eq!(h.get("clone-done"), None);
        // A protocol-3 slot has no reidentify; a false one is not sent.
        let old: SlotConfig =
            serde_json::from_str(r#"{"environment":"e","slot":1,"hostname":"h"}"#).unwrap();
        assert!(!old.reidentify);
        assert!(!serde_json::to_string(&old).unwrap().contains("reidentify"));
        assert_eq!(clone_pause_ms("pause_ms=412; thawed"), Some(412));
        assert_eq!(clone_pause_ms("thawed"), None);
    }
}
