//! The domain model shared by every layer of boot-server: nodes and their
//! life-cycle, application environments and their slots, boot images, leases and reservations, agent commands, virtual
//! disk attachments and the typed event log. Protocol adapters, the boot plan,
//! the control layer, the store and the CLI all take their types from here;
//! nothing in this module does I/O.

mod command;
mod disk;
mod env;
mod event;
mod host;
mod image;
mod lease;
mod mac;
mod node;
mod server;
mod token;

pub use command::{CommandStatus, QueuedCommand};
pub use disk::{DiskOp, DiskRequest, DiskRequestStatus, OverlayRecord};
pub use env::failback_window_open;
pub use env::{
    AddressRange, BootMode, CloneJob, CloneOrigin, ClonePhase, Detection, Environment, Failback,
    LoadSample, Policy, Removal, Requirements, Schedule, ScheduleAction, Slot, SlotStep, VmMapping,
};
pub use event::{Event, EventKind};
pub use host::{Host, HostCapacity, HostState, Vm, VmState, HOST_LABEL, VIRTUAL_LABEL};
pub use image::{BootImage, DiskTransport, Firmware, ImageFile, ImageKind};
pub use lease::{Lease, Reservation};
pub use mac::{BadMac, MacAddr};
pub use node::{DiskAttachment, HelloFacts, Node, NodeState, Selector, Sighting, Transition};
pub use server::{ServerInfo, ServerRecord, ServerRole, SERVER_DOWN_AFTER_MS, SERVER_HEARTBEAT_MS};
pub use token::{ApiToken, TokenRole};

/// Milliseconds since the Unix epoch (every timestamp in the model).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An OpenAPI string schema with a description and an example (for types
/// with their own text form).
pub(crate) fn string_schema(
    description: &str,
    example: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(description))
        .examples([serde_json::json!(example)])
        .into()
}
