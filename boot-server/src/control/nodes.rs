//! Node operations: listing, enrolment, state changes, agent commands
//! (reboot, reprovision, kexec) and image assignments.

use super::{Control, Error, Result};
use crate::model::{EventKind, NodeState, QueuedCommand, Selector, Transition};
use crate::store::Enrolment;
use boot_proto::CommandKind;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A command an admin sends to a node's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
// One per admin request: the size of `Raw` (an agent command, grown with the
// clone hooks of protocol 4) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum NodeCommand {
    /// Cold reboot through firmware (and so PXE).
    Reboot,
    /// Point the firmware at network boot, then reboot.
    Reprovision,
    /// Warm reprovision: assign `image` and kexec straight into it.
    Kexec {
        /// Image to boot.
        image: String,
    },
    /// Load `image` on the node ahead of a decision (kexec_file_load, no
    /// jump): a later `kexec` into the same image only jumps.
    Prestage {
        /// Image to stage.
        image: String,
    },
    /// Any agent command as is (advanced; disk attach goes through `disk attach`).
    Raw {
        /// The command, sent as is.
        #[schema(value_type = Object)]
        command: CommandKind,
    },
}

/// A command for the event log: a kexec or prestage command line's token or
/// hand-off credential replaced by its fingerprint.
pub fn redacted(kind: &CommandKind) -> CommandKind {
    use boot_proto::cmdline::{HANDOFF, TOKEN};
    let hide = |cmdline: &str| {
        cmdline
            .split(' ')
            .map(|w| match w.split_once('=') {
                Some((k, v)) if k == TOKEN || k == HANDOFF => {
                    format!("{k}=<{}>", crate::secret::fingerprint(v))
                }
                _ => w.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut k = kind.clone();
    match &mut k {
        CommandKind::Kexec { cmdline, .. } | CommandKind::Prestage { cmdline, .. } => {
            *cmdline = hide(cmdline)
        }
        _ => {}
    }
    k
}

impl Control {
    /// Registers a node ahead of its first boot (or updates its registration).
    pub async fn enrol(&self, e: Enrolment) -> Result<crate::model::Node> {
        if let Some(p) = &e.power {
            crate::power::check_uri(p).map_err(|e| Error::bad_request(format!("{e:#}")))?;
        }
        let node = self.store.enrol_node(&e).await?;
        self.events.emit(
            Some(node.id.clone()),
            EventKind::NodeEnrolled,
            json!({ "mac": node.mac, "serial": node.serial, "labels": node.labels, "power": node.power }),
        );
        Ok(node)
    }

    /// Quarantine, release from quarantine, or retire a node.
    pub async fn set_node_state(&self, id: &str, state: NodeState) -> Result<crate::model::Node> {
        let node = self.find_node(id).await?;
        let t = match state {
            NodeState::Quarantined => Transition::Quarantine,
            NodeState::Retired => Transition::Retire,
            NodeState::Idle if node.state == NodeState::Quarantined => Transition::Release,
            other => {
                return Err(Error::bad_request(format!(
                    "an admin can set quarantined, retired, or idle (from quarantined), not {}",
                    other.as_str()
                )))
            }
        };
        match self.store.transition_node(&node.id, t).await? {
            Some((from, to)) => {
                self.events.emit(
                    Some(node.id.clone()),
                    EventKind::NodeState,
                    json!({ "from": from.as_str(), "to": to.as_str(), "by": "admin" }),
                );
                self.find_node(&node.id).await
            }
            None => Err(Error::conflict(format!(
                "node {} is {}: cannot become {}",
                node.id,
                node.state.as_str(),
                state.as_str()
            ))),
        }
    }

    /// Queues a command for a node's agent and wakes its long poll.
    pub async fn command_node(&self, id: &str, cmd: NodeCommand) -> Result<i64> {
        let node = self.find_node(id).await?;
        let kind = match cmd {
            NodeCommand::Reboot => CommandKind::Reboot,
            NodeCommand::Reprovision => CommandKind::Reprovision,
            NodeCommand::Raw { command } => command,
            NodeCommand::Kexec { image } => {
                self.assign(Selector::Mac(node.mac), Some(image)).await?;
                self.plan
                    .kexec_command(&node)
                    .await
                    .map_err(|e| Error::conflict(format!("{e:#}")))?
            }
            NodeCommand::Prestage { image } => self
                .plan
                .prestage_command(&node, &image)
                .await
                .map_err(|e| Error::conflict(format!("{e:#}")))?,
        };
        self.queue(&node.id, kind).await
    }

    /// Queues `kind` for node `node_id` (which must exist) and wakes its poll.
    pub async fn queue(&self, node_id: &str, kind: CommandKind) -> Result<i64> {
        let id = self.store.queue_command(node_id, &kind).await?;
        self.events.emit(
            Some(node_id.to_string()),
            EventKind::CommandQueued,
            json!({ "id": id, "command": redacted(&kind) }),
        );
        self.wakeups.wake(node_id);
        Ok(id)
    }

    /// One command.
    pub async fn command(&self, id: i64) -> Result<QueuedCommand> {
        self.store
            .command(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no command {id}")))
    }

    /// Sets (or with `None` removes) the image of the selected nodes.
    pub async fn assign(&self, selector: Selector, image: Option<String>) -> Result<()> {
        if let Selector::Uuid(u) = &selector {
            if u.chars().filter(|c| c.is_ascii_hexdigit()).count() != 32 {
                return Err(Error::bad_request(format!("not an SMBIOS UUID: {u}")));
            }
        }
        let selector = match selector {
            Selector::Uuid(u) => Selector::Uuid(u.to_ascii_lowercase()),
            s => s,
        };
        self.store.assign(&selector, image.as_deref()).await?;
        self.events.emit(
            None,
            EventKind::Assigned,
            json!({ "selector": selector, "image": image }),
        );
        Ok(())
    }
}
