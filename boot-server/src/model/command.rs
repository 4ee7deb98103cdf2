//! Agent commands as the server keeps them.

pub use boot_proto::CommandStatus;
use serde::{Deserialize, Serialize};

/// A command queued for a node's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueuedCommand {
    /// Id the agent quotes in its result.
    pub id: i64,
    /// Id of the node it is for.
    pub node: String,
    /// What the agent is to do.
    #[schema(value_type = Object)]
    pub command: boot_proto::CommandKind,
    /// Where it stands.
    #[schema(value_type = CommandStatusSchema)]
    pub status: CommandStatus,
    /// The agent's detail text (error cause or output summary).
    pub detail: String,
    /// When it was queued (ms since the Unix epoch).
    pub created_ms: i64,
    /// When it was last handed to the agent (redelivered until started).
    #[serde(default)]
    pub delivered_ms: Option<i64>,
    /// The boot of the node it was queued for (the node's boot counter,
    /// advanced by each new boot's hello): only that boot's agent is handed
    /// it; a later boot's hello closes it.
    #[serde(default)]
    pub boot: i64,
}

/// OpenAPI schema of [`CommandStatus`] (defined in boot-proto, which does
/// not depend on utoipa): the same kebab-case names.
#[derive(utoipa::ToSchema)]
#[schema(as = CommandStatus)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
pub(crate) enum CommandStatusSchema {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_schema_lists_the_wire_names() {
        let schema =
            serde_json::to_value(<CommandStatusSchema as utoipa::PartialSchema>::schema()).unwrap();
        let names: Vec<String> = serde_json::from_value(schema["enum"].clone()).unwrap();
        for s in [
            CommandStatus::Queued,
            CommandStatus::Delivered,
            CommandStatus::Started,
            CommandStatus::Succeeded,
            CommandStatus::Failed,
            CommandStatus::Acknowledged,
        ] {
            assert!(names.contains(
                &serde_json::to_value(s)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            ));
        }
        assert_eq!(names.len(), 6);
    }
}
