//! The store owns all durable state: nodes, the boot-image table and
//! assignments, DHCP leases and reservations, virtual-disk attachments, agent
//! commands, the append-only event log, and the engine's environments,
//! slots and load history.
//!
//! One trait per aggregate ([`ImageStore`], [`NodeStore`], [`LeaseStore`],
//! [`ReservationStore`], [`DiskAttachmentStore`], [`CommandStore`],
//! [`EventStore`], [`EnvStore`], [`TokenStore`], [`HostStore`]); [`Store`] is all of them. Backends: [`SqliteStore`]
//! (embedded default: WAL, group commit, versioned migrations) and
//! [`MemoryStore`] (unit tests of plan, control and engine decisions, no I/O)
//! and [`PgStore`] (several servers sharing one PostgreSQL database, with the
//! designated-controller lease). Nothing here may rely on one backend's
//! behaviour; [`conformance`] checks every backend against the same tests.
//! Every write returns only once it is durable.

#[cfg(test)]
pub mod conformance;
pub mod memory;
pub mod postgres;
pub mod sqlite;

use crate::model::{
    ApiToken, BootImage, CommandStatus, DiskAttachment, DiskOp, DiskRequest, Environment, Event,
    EventKind, HelloFacts, Host, Lease, LoadSample, MacAddr, Node, NodeState, OverlayRecord,
    QueuedCommand, Reservation, Selector, ServerInfo, ServerRecord, Sighting, Slot, SlotStep,
    Transition, Vm,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub use memory::MemoryStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Store results carry context for the log; callers map them to API errors.
pub type Result<T> = anyhow::Result<T>;

/// Why a write was refused (a conflict with what the store holds, not a failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The address is leased to another MAC whose lease has not expired.
    #[error("address {ip} is leased to {holder}")]
    AddressHeld {
        /// The address asked for.
        ip: Ipv4Addr,
        /// The MAC holding it.
        holder: MacAddr,
    },
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with what uses it.
    #[error("{0}")]
    Conflict(String),
    /// An engine write carried the fence of a controller that has since
    /// lost its lease (another server took over).
    #[error("fence {fence} is older than the designated controller's ({current}): this server is no longer the controller")]
    Fenced {
        /// The write's fence.
        fence: u64,
        /// The current controller's fence.
        current: u64,
    },
}

/// The boot-image table, the default image and assignments.
#[async_trait]
pub trait ImageStore: Send + Sync {
    /// Adds or replaces an image row.
    async fn put_image(&self, image: &BootImage) -> Result<()>;
    /// The image named `name`, if any.
    async fn image(&self, name: &str) -> Result<Option<BootImage>>;
    /// Every image, by name.
    async fn images(&self) -> Result<Vec<BootImage>>;
    /// Removes an image; refuses ([`Refused::Conflict`]) while an assignment or the default names it.
    async fn remove_image(&self, name: &str) -> Result<()>;
    /// Sets (or with `None` clears) the image of nodes without an assignment.
    async fn set_default_image(&self, image: Option<&str>) -> Result<()>;
    /// The image of nodes without an assignment.
    async fn default_image(&self) -> Result<Option<String>>;
    /// Sets (or with `None` removes) the image of the selected nodes.
    async fn assign(&self, selector: &Selector, image: Option<&str>) -> Result<()>;
    /// The image assigned to the selected nodes, if any.
    async fn assignment(&self, selector: &Selector) -> Result<Option<String>>;
    /// Every assignment.
    async fn assignments(&self) -> Result<Vec<(Selector, String)>>;
}

/// An admin's registration of a node ahead of its first boot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Enrolment {
    /// MAC of the node's boot interface.
    pub mac: MacAddr,
    /// Serial number, if known.
    pub serial: Option<String>,
    /// Free-form labels (rack, location, ...).
    pub labels: BTreeMap<String, String>,
    /// Power control URI (`ipmi://host`, `qmp:///path`).
    pub power: Option<String>,
}

/// Nodes, their states and agent tokens (stored as SHA-256 digests only).
#[async_trait]
pub trait NodeStore: Send + Sync {
    /// Records that a node was seen at boot; creates it as discovered when new.
    /// Returns the node and whether it was new.
    async fn observe_node(&self, sighting: &Sighting) -> Result<(Node, bool)>;
    /// Registers (or updates the registration of) a node; returns it.
    async fn enrol_node(&self, enrolment: &Enrolment) -> Result<Node>;
    /// The node with id `id`, if any.
    async fn node(&self, id: &str) -> Result<Option<Node>>;
    /// The node first seen with `mac`, if any.
    async fn node_by_mac(&self, mac: MacAddr) -> Result<Option<Node>>;
    /// Every node.
    async fn nodes(&self) -> Result<Vec<Node>>;
    /// Applies a life-cycle transition ([`NodeState::next`]); returns the
    /// state before and after, or `None` when it did not apply.
    async fn transition_node(
        &self,
        id: &str,
        transition: Transition,
    ) -> Result<Option<(NodeState, NodeState)>>;
    /// Sets a state directly (admin override); refuses unknown nodes.
    async fn set_node_state(&self, id: &str, state: NodeState) -> Result<()>;
    /// The node was told to boot `image` (applies [`Transition::Boot`]).
    async fn set_booted_image(&self, id: &str, image: &str) -> Result<()>;
    /// Stores what the agent's hello says (inventory, image, protocol, its
    /// time) and applies [`Transition::AgentUp`].
    async fn record_hello(&self, id: &str, hello: &HelloFacts, serving: bool) -> Result<()>;
    /// Stores a heartbeat; returns the state transition it caused (a failed
    /// node recovering), if any.
    async fn record_heartbeat(
        &self,
        id: &str,
        heartbeat: &serde_json::Value,
        serving: bool,
    ) -> Result<Option<(NodeState, NodeState)>>;
    /// Records the address a node showed at boot (proxy/relay DHCP, or an
    /// enrolled node's first script fetch).
    async fn set_observed_ip(&self, id: &str, ip: Option<Ipv4Addr>) -> Result<()>;
    /// Stores the digest of the token minted for the node's next boot. The
    /// current boot's token keeps working until the next boot's agent says hello.
    async fn set_next_token(&self, id: &str, token_sha256: &str) -> Result<()>;
    /// The node holding this token digest (current or next boot), and
    /// whether it is the next boot's token.
    async fn node_by_token(&self, token_sha256: &str) -> Result<Option<(Node, bool)>>;
    /// The next boot's agent said hello: its token becomes the only valid one.
    async fn promote_token(&self, id: &str, token_sha256: &str) -> Result<bool>;
}

/// DHCP leases. An address belongs to at most one MAC while its lease lives.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Every lease, expired ones included until they are removed.
    async fn leases(&self) -> Result<Vec<Lease>>;
    /// Adds or renews a lease. Refused ([`Refused::AddressHeld`]) when
    /// another MAC holds a live lease on the address; an expired lease of
    /// another MAC on it is replaced.
    async fn put_lease(&self, lease: &Lease) -> Result<()>;
    /// Removes the lease of `mac` on `ip` (RELEASE, DECLINE by its holder).
    async fn remove_lease(&self, mac: MacAddr, ip: Ipv4Addr) -> Result<bool>;
    /// Removes the lease of `mac` on `ip` only if it expires at or before
    /// `expires_at_ms` (not renewed in between), in one operation. True when
    /// no lease of `mac` on `ip` remains (removed or absent), false when a
    /// renewed one is stored.
    async fn expire_lease(&self, mac: MacAddr, ip: Ipv4Addr, expires_at_ms: i64) -> Result<bool>;
    /// The live lease of a MAC, if any.
    async fn lease_of(&self, mac: MacAddr) -> Result<Option<Lease>>;
    /// The node at `ip`: the holder of a live lease on it, else (proxy and
    /// relay mode) the node whose observed address it is.
    async fn node_by_lease_ip(&self, ip: Ipv4Addr) -> Result<Option<Node>>;
}

/// DHCP reservations (fixed address and hostname per MAC).
#[async_trait]
pub trait ReservationStore: Send + Sync {
    /// Every reservation.
    async fn reservations(&self) -> Result<Vec<Reservation>>;
    /// Adds or replaces the reservation of a MAC. Refused when the address
    /// is reserved for another MAC.
    async fn put_reservation(&self, reservation: &Reservation) -> Result<()>;
    /// Removes the reservation of a MAC; true if there was one.
    async fn remove_reservation(&self, mac: MacAddr) -> Result<bool>;
}

/// Which overlay is attached to which node, under which secret export name.
#[async_trait]
pub trait DiskAttachmentStore: Send + Sync {
    /// Attaches an overlay to a node (replacing an earlier attachment of that overlay).
    async fn attach_disk(&self, overlay: &str, node: &str, export: &str) -> Result<()>;
    /// Detaches an overlay; false if it was not attached.
    async fn detach_disk(&self, overlay: &str) -> Result<bool>;
    /// Every attachment, with the overlay's serving server (empty when unrecorded).
    async fn disk_attachments(&self) -> Result<Vec<DiskAttachment>>;
    /// Records the server that holds and serves an overlay (replacing an
    /// earlier record of that overlay).
    async fn record_overlay(&self, record: &OverlayRecord) -> Result<()>;
    /// Records an overlay only if it has no record yet; whether it was added.
    async fn record_overlay_if_new(&self, record: &OverlayRecord) -> Result<bool>;
    /// Forgets an overlay's record; false if there was none.
    async fn forget_overlay(&self, overlay: &str) -> Result<bool>;
    /// Every recorded overlay, by id.
    async fn overlays(&self) -> Result<Vec<OverlayRecord>>;
    /// Queues a disk operation for `server` (the overlay's serving server);
    /// returns its id. A shared store wakes that server at once.
    async fn queue_disk_request(&self, server: &str, op: &DiskOp) -> Result<i64>;
    /// The queued requests for `server`, oldest first, marked taken (each is
    /// handed out once). Finished requests older than an hour are removed.
    async fn take_disk_requests(&self, server: &str) -> Result<Vec<DiskRequest>>;
    /// Records a taken request's outcome; false when there is no such
    /// request or it is already finished.
    async fn finish_disk_request(&self, id: i64, ok: bool, result: &str) -> Result<bool>;
    /// A request by id.
    async fn disk_request(&self, id: i64) -> Result<Option<DiskRequest>>;
}

/// Agent commands, delivered at least once, each bound to one boot of its
/// node: a node's boot counter (0 until a new boot's hello first promotes
/// its token) advances with every new boot's hello; a command carries the
/// counter of the boot it was queued for, only that boot's agent is handed
/// it, and the next boot's hello closes whatever it left unfinished.
#[async_trait]
pub trait CommandStore: Send + Sync {
    /// Queues a command for the node's present boot; returns its id.
    async fn queue_command(&self, node: &str, command: &boot_proto::CommandKind) -> Result<i64>;
    /// Commands for a poll by boot `boot` of the node: its queued ones, and
    /// its delivered ones not started within `redeliver_after_ms` (their
    /// delivery may have been lost). Marks them delivered. Nothing when
    /// `boot` is not the node's present boot.
    async fn take_commands(
        &self,
        node: &str,
        boot: i64,
        redeliver_after_ms: i64,
    ) -> Result<Vec<QueuedCommand>>;
    /// The command with id `id`, if any.
    async fn command(&self, id: i64) -> Result<Option<QueuedCommand>>;
    /// A node's commands, newest first.
    async fn commands_of(&self, node: &str, limit: u32) -> Result<Vec<QueuedCommand>>;
    /// Records an agent's report; false when the node has no such command.
    /// A report never moves a finished command back.
    async fn update_command(
        &self,
        node: &str,
        id: i64,
        status: CommandStatus,
        detail: &str,
    ) -> Result<bool>;
    /// The node's present boot (its boot counter; 0 for an unknown node).
    async fn node_boot(&self, node: &str) -> Result<i64>;
    /// The present boot of the node when `token_sha256` is its present
    /// boot's token (promoted by that boot's hello), or the token of its
    /// first boot before that boot's hello (no other boot to tell it from);
    /// else `None` (a next boot's token before its hello, or a token that
    /// is no longer valid).
    async fn boot_of_token(&self, node: &str, token_sha256: &str) -> Result<Option<i64>>;
    /// A new boot of the node said hello (its token promoted, the boot
    /// counter advanced): every unfinished command of an earlier boot is
    /// closed. Handed out and not reported: a boot-ending one
    /// ([`ends_boot`]) succeeded, any other failed; never handed out:
    /// failed, not carried out. The detail says which boot it was for.
    async fn close_commands_of_previous_boot(&self, node: &str) -> Result<usize>;
}

/// How a new boot's hello closes an unfinished command of an earlier boot
/// (`status` as stored, `boot` the command's, `now` the node's present
/// boot): the final status and the detail that says why.
pub fn closed_by_new_boot(
    kind: &boot_proto::CommandKind,
    status: CommandStatus,
    boot: i64,
    now: i64,
) -> (CommandStatus, String) {
    match status {
        CommandStatus::Queued => (
            CommandStatus::Failed,
            format!(
                "not carried out: queued for boot {boot} of the node, which ended before its agent took it (boot {now} said hello)"
            ),
        ),
        _ if ends_boot(kind) => (
            CommandStatus::Succeeded,
            format!("the node booted again (boot {now} said hello)"),
        ),
        _ => (
            CommandStatus::Failed,
            format!(
                "boot {boot} of the node ended before its agent reported this command (boot {now} said hello)"
            ),
        ),
    }
}

/// An event not yet stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// When it happened (ms since the Unix epoch).
    pub at_ms: i64,
    /// Node it concerns, if any.
    pub node: Option<String>,
    /// What happened.
    pub kind: EventKind,
    /// Kind-specific facts (JSON object).
    pub detail: serde_json::Value,
}

/// The append-only event log, bounded by a retention limit.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends events in one transaction; returns them with their ids.
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<Event>>;
    /// Events after `after_id`, optionally of one node, oldest first.
    async fn events(&self, after_id: i64, node: Option<&str>, limit: u32) -> Result<Vec<Event>>;
    /// Deletes the oldest events beyond `keep`; returns how many.
    async fn prune_events(&self, keep: u64) -> Result<u64>;
    /// Id of the newest event (0 when the log is empty).
    async fn last_event_id(&self) -> Result<i64>;
}

/// The engine's fencing token. Every engine slot write carries it: the
/// PostgreSQL store refuses ([`Refused::Fenced`]) a write whose fence is
/// older than the designated controller's; `Fence(0)` is an unfenced write
/// (admin changes, guarded by their [`Expect`]). The embedded store has one
/// engine and accepts every fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fence(pub u64);

/// What a slot write expects to find in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (admin changes).
    Any,
    /// The slot is at this step (a slot not stored yet counts as vacant).
    Step(SlotStep),
}

/// Environments, their slots and the load history (the engine's state).
#[async_trait]
pub trait EnvStore: Send + Sync {
    /// Adds or replaces an environment.
    async fn put_environment(&self, env: &Environment) -> Result<()>;
    /// One environment by name.
    async fn environment(&self, name: &str) -> Result<Option<Environment>>;
    /// Every environment, by name.
    async fn environments(&self) -> Result<Vec<Environment>>;
    /// Deletes an environment and its slots; refused ([`Refused::Conflict`])
    /// while one of its slots holds a node.
    async fn delete_environment(&self, name: &str) -> Result<()>;
    /// Stored slots (of one environment, or all), by environment and index.
    async fn slots(&self, env: Option<&str>) -> Result<Vec<Slot>>;
    /// Writes slots in one transaction if each is at its expected step;
    /// false (nothing written) when one moved on. Refused
    /// ([`Refused::Conflict`]) when a node would hold two slots.
    async fn write_slots(&self, fence: Fence, writes: &[(Slot, Expect)]) -> Result<bool>;
    /// Deletes a vacant slot (`env remove-node` of a clone: the slot goes
    /// away) if it is still vacant and holds no node; whether it was deleted.
    async fn delete_slot(&self, fence: Fence, env: &str, index: u32) -> Result<bool>;
    /// Records a load report of a node serving an environment.
    async fn append_load(&self, sample: &LoadSample) -> Result<()>;
    /// An environment's load reports since `since_ms`, oldest first.
    async fn load_history(&self, env: &str, since_ms: i64) -> Result<Vec<LoadSample>>;
    /// Deletes load reports older than `before_ms`; returns how many.
    async fn prune_load(&self, before_ms: i64) -> Result<u64>;
    /// Downsamples load reports older than `before_ms` to the first one per
    /// node and `bucket_ms`; returns how many were dropped.
    async fn downsample_load(&self, before_ms: i64, bucket_ms: i64) -> Result<u64>;
}

/// API tokens (digests only; the secret is shown once, at creation).
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Adds a token under the SHA-256 `digest` of its secret; refuses
    /// ([`Refused::Conflict`]) a name already in use.
    async fn put_token(&self, token: &ApiToken, digest: &str) -> Result<()>;
    /// Every token, by name.
    async fn tokens(&self) -> Result<Vec<ApiToken>>;
    /// The token whose secret has this digest.
    async fn token_by_digest(&self, digest: &str) -> Result<Option<ApiToken>>;
    /// Deletes a token; whether it existed.
    async fn revoke_token(&self, name: &str) -> Result<bool>;
}

/// The server registry and the preferred controller.
#[async_trait]
pub trait ServerStore: Send + Sync {
    /// Registers a server, or renews its registration, as alive now.
    async fn heartbeat_server(&self, server: &ServerInfo) -> Result<()>;
    /// Every registered server, by name, with its last heartbeat.
    async fn servers(&self) -> Result<Vec<ServerRecord>>;
    /// Removes a server's registration; whether it was there.
    async fn forget_server(&self, name: &str) -> Result<bool>;
    /// Sets (or with `None` clears) the server that takes the controller
    /// lease whenever it is up.
    async fn set_preferred_controller(&self, name: Option<&str>) -> Result<()>;
    /// The preferred controller, if one is set.
    async fn preferred_controller(&self) -> Result<Option<String>>;
}

/// Failover hosts (credential digests only) and the VMs they run.
#[async_trait]
pub trait HostStore: Send + Sync {
    /// Enrols a host under the SHA-256 `digest` of its secret; refuses
    /// ([`Refused::Conflict`]) a name already in use.
    async fn add_host(&self, host: &Host, digest: &str) -> Result<()>;
    /// Every host, by name.
    async fn hosts(&self) -> Result<Vec<Host>>;
    /// The host whose secret has this digest.
    async fn host_by_digest(&self, digest: &str) -> Result<Option<Host>>;
    /// Stores what changed of a host (state, capacity, last poll); false
    /// when there is no such host.
    async fn update_host(&self, host: &Host) -> Result<bool>;
    /// Deletes a host and its VM records; whether it existed.
    async fn remove_host(&self, name: &str) -> Result<bool>;
    /// Adds or replaces a VM record.
    async fn put_vm(&self, vm: &Vm) -> Result<()>;
    /// Every VM record, by id.
    async fn vms(&self) -> Result<Vec<Vm>>;
}

/// All of the store.
pub trait Store:
    ImageStore
    + NodeStore
    + LeaseStore
    + ReservationStore
    + DiskAttachmentStore
    + CommandStore
    + EventStore
    + EnvStore
    + TokenStore
    + ServerStore
    + HostStore
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: ImageStore
        + NodeStore
        + LeaseStore
        + ReservationStore
        + DiskAttachmentStore
        + CommandStore
        + EventStore
        + EnvStore
        + TokenStore
        + ServerStore
        + HostStore
        + Send
        + Sync
        + 'static
{
}

/// Whether a command of this kind ends its boot (the next boot's hello is its success).
pub fn ends_boot(kind: &boot_proto::CommandKind) -> bool {
    use boot_proto::CommandKind::*;
    matches!(kind, Reboot | Reprovision | Kexec { .. })
}
