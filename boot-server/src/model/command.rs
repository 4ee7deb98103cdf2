//! Agent commands as the server keeps them.

pub use boot_proto::CommandStatus;
use serde::{Deserialize, Serialize};

/// A command queued for a node's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedCommand {
    pub id: i64,
    pub node: String,
    pub command: boot_proto::CommandKind,
    pub status: CommandStatus,
    pub detail: String,
    pub created_ms: i64,
    /// When it was last handed to the agent (redelivered until started).
    #[serde(default)]
    pub delivered_ms: Option<i64>,
}
