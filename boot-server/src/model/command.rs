//! Agent commands as the server keeps them.

pub use boot_proto::CommandStatus;
use serde::{Deserialize, Serialize};

/// A command queued for a node's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedCommand {
    /// Id the agent quotes in its result.
    pub id: i64,
    /// Id of the node it is for.
    pub node: String,
    /// What the agent is to do.
    pub command: boot_proto::CommandKind,
    /// Where it stands.
    pub status: CommandStatus,
    /// The agent's detail text (error cause or output summary).
    pub detail: String,
    /// When it was queued (ms since the Unix epoch).
    pub created_ms: i64,
    /// When it was last handed to the agent (redelivered until started).
    #[serde(default)]
    pub delivered_ms: Option<i64>,
}
