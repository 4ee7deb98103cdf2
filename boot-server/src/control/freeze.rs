//! Freezing running slots for a consistent snapshot outside a clone job: a
//! live export asks each ready slot's agent for the clone path's
//! `prepare-clone` hook and file-system freeze ([`CommandKind::PrepareClone`]),
//! snapshots while they hold, then thaws them ([`CommandKind::FinishClone`],
//! which runs `clone-done` and reports the pause). A slot whose agent is
//! down or too old is snapshotted crash-consistent and said to be so.

use super::{Control, Error, Result};
use crate::model::{now_ms, CommandStatus, Environment, Slot, SlotStep};
use boot_proto::{CommandKind, CLONE_PROTOCOL_VERSION};
use std::time::{Duration, Instant};

/// How a slot's overlay was captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Capture {
    /// Its agent ran `prepare-clone` and froze the file systems.
    Frozen {
        /// The node whose agent holds the freeze.
        node: String,
    },
    /// No agent could freeze it (vacant, agent down or too old): the
    /// snapshot is what a power cut would leave.
    CrashConsistent(String),
}

impl Control {
    /// Waits up to `timeout` for command `id`'s outcome: `Ok(detail)` when
    /// it succeeded, an error with the agent's reason when it failed or no
    /// answer came.
    pub(super) async fn await_command(&self, id: i64, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.command(id).await?;
            match c.status {
                CommandStatus::Succeeded | CommandStatus::Acknowledged => return Ok(c.detail),
                CommandStatus::Failed => return Err(Error::conflict(c.detail)),
                _ if Instant::now() >= deadline => {
                    return Err(Error::new(
                        super::ErrorKind::Unavailable,
                        format!(
                            "no answer from {}'s agent within {}s",
                            c.node,
                            timeout.as_secs()
                        ),
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Freezes every ready slot of `env` whose agent can: all at once, so
    /// the snapshots are of one moment. A refusing `prepare-clone` hook
    /// thaws the others and fails the whole with its reason.
    pub(super) async fn freeze_slots(
        &self,
        env: &Environment,
        slots: &[Slot],
    ) -> Result<Vec<(u32, Capture)>> {
        let hold = self.config.engine.clone_hold_secs;
        let fresh = (self.config.agent.heartbeat_timeout_secs * 1000) as i64;
        let mut out = Vec::new();
        let mut asks = Vec::new();
        for s in slots {
            let why = match (&s.node, s.step) {
                (None, _) => "no node holds it".to_string(),
                (Some(_), step) if step != SlotStep::Ready => format!("it is {step:?}"),
                (Some(n), _) => match self.store.node(n).await? {
                    Some(node) if !node.agent_up(now_ms(), fresh) => {
                        format!("the agent of {n} is not up")
                    }
                    Some(node) if node.agent_protocol.unwrap_or(1) < CLONE_PROTOCOL_VERSION => {
                        format!("the agent of {n} cannot freeze (protocol too old)")
                    }
                    Some(_) => {
                        let kind = CommandKind::PrepareClone {
                            force: false,
                            hold_secs: hold,
                        };
                        asks.push((s.index, n.clone(), self.queue(n, kind).await?));
                        continue;
                    }
                    None => format!("its node {n} is gone"),
                },
            };
            out.push((s.index, Capture::CrashConsistent(why)));
        }
        let mut refused = None;
        let wait = Duration::from_secs(hold.clamp(5, 60));
        for (index, node, id) in asks {
            match self.await_command(id, wait).await {
                Ok(_) => out.push((index, Capture::Frozen { node })),
                Err(e) => {
                    refused.get_or_insert(format!(
                        "slot {index} of {} was not frozen: {}",
                        env.name, e.message
                    ));
                    // Whatever it did, let it thaw.
                    let _ = self.queue(&node, CommandKind::FinishClone).await;
                }
            }
        }
        if let Some(why) = refused {
            self.thaw_slots(&out).await;
            return Err(Error::conflict(format!(
                "{why}; nothing exported (export with --halt to stop the environment first)"
            )));
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out)
    }

    /// Thaws what [`Control::freeze_slots`] froze; returns each slot's
    /// pause as the agent measured it (ms), when it said.
    pub(super) async fn thaw_slots(&self, captures: &[(u32, Capture)]) -> Vec<(u32, Option<u64>)> {
        let mut asked = Vec::new();
        for (index, c) in captures {
            let Capture::Frozen { node } = c else {
                continue;
            };
            match self.queue(node, CommandKind::FinishClone).await {
                Ok(id) => asked.push((*index, node, id)),
                Err(e) => tracing::warn!(node = %node, error = %e.message, "thaw not queued"),
            }
        }
        let mut out = Vec::new();
        for (index, node, id) in asked {
            match self.await_command(id, Duration::from_secs(30)).await {
                Ok(detail) => out.push((index, boot_proto::clone_pause_ms(&detail))),
                Err(e) => {
                    // The agent's own watchdog thaws after the hold time.
                    tracing::warn!(node = %node, error = %e.message, "thaw not confirmed");
                    out.push((index, None));
                }
            }
        }
        out
    }
}
