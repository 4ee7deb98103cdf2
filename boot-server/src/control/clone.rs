//! `env clone` and `env remove-node` by slot: the admin side of live
//! cloning. A clone is checked here and stored as a job on its template
//! slot; the engine carries it out (see `engine/clone.rs`) and this call
//! waits for its outcome, so the caller learns the refusal's reason or the
//! template's pause. Removal marks the slot; the engine releases its node
//! and then deletes the slot (and its disk when asked).

use super::{Control, Error, Result};
use crate::model::{now_ms, CloneJob, ClonePhase, EventKind, Removal, Slot, SlotStep};
use crate::store::{Expect, Fence};
use serde::Serialize;
use serde_json::json;
use std::time::Duration;

/// What `env clone` reports.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CloneReport {
    /// Environment.
    pub environment: String,
    /// The template slot.
    pub slot: u32,
    /// The template's node.
    pub node: Option<String>,
    /// The job as it ended (or stands, when the wait ran out).
    pub job: CloneJob,
    /// The new slot (vacant, waiting for a node), once the snapshot is taken.
    pub new_slot: Option<Slot>,
}

impl Control {
    /// Clones slot `index` of `name` (ready, holding a node) into slot
    /// `into` (default: the lowest free one) while it keeps running, and
    /// waits until the snapshot is taken or the clone stopped. A refusal of
    /// the `prepare-clone` hook is a conflict carrying its reason, unless
    /// `force`.
    pub async fn env_clone(
        &self,
        name: &str,
        index: u32,
        into: Option<u32>,
        force: bool,
    ) -> Result<CloneReport> {
        let job = self.start_clone(name, index, into, force).await?;
        let hold = self.config.engine.clone_hold_secs;
        let deadline = std::time::Instant::now() + Duration::from_secs(hold + 180);
        loop {
            let slots = self.store.slots(Some(name)).await?;
            let t = slots.iter().find(|s| s.index == index);
            let now = t.and_then(|s| s.clone.clone());
            let ours = now
                .as_ref()
                .is_some_and(|j| j.requested_ms == job.requested_ms && j.into == job.into);
            let done = !ours || now.as_ref().is_some_and(|j| j.phase.is_final());
            if done || std::time::Instant::now() >= deadline {
                let job = if ours { now.unwrap_or(job) } else { job };
                if !ours {
                    return Err(Error::conflict(format!(
                        "slot {index} of {name} changed while cloning (its node left?)"
                    )));
                }
                if job.phase == ClonePhase::Failed {
                    return Err(Error::conflict(format!(
                        "clone of {name} slot {index} stopped: {}",
                        job.detail
                    )));
                }
                let new_slot = if job.phase == ClonePhase::Done {
                    slots.iter().find(|s| s.index == job.into).cloned()
                } else {
                    None
                };
                return Ok(CloneReport {
                    environment: name.to_string(),
                    slot: index,
                    node: t.and_then(|s| s.node.clone()),
                    job,
                    new_slot,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks a clone request and stores its job; the engine takes it on.
    async fn start_clone(
        &self,
        name: &str,
        index: u32,
        into: Option<u32>,
        force: bool,
    ) -> Result<CloneJob> {
        let env = self.must_env(name).await?;
        if !self.config.engine.enabled {
            return Err(Error::conflict(
                "the engine is off ([engine] enabled = false): nothing would carry the clone out",
            ));
        }
        if !env.active {
            return Err(Error::conflict(format!(
                "{name} is inactive (env activate {name})"
            )));
        }
        if env.disk_base.is_none() {
            return Err(Error::conflict(format!(
                "{name} has no disk base: its slots have no disk to clone (env set {name} --disk-base BASE)"
            )));
        }
        let slots = self.store.slots(Some(name)).await?;
        let template = slots
            .iter()
            .find(|s| s.index == index)
            .filter(|s| s.node.is_some())
            .ok_or_else(|| {
                Error::conflict(format!("slot {index} of {name} holds no node to clone"))
            })?;
        if template.step != SlotStep::Ready {
            return Err(Error::conflict(format!(
                "slot {index} of {name} is {}, not ready: clone a running slot",
                template.step.as_str()
            )));
        }
        if template.cloning() {
            return Err(Error::conflict(format!(
                "slot {index} of {name} is being cloned already"
            )));
        }
        let node_id = template.node.clone().unwrap_or_default();
        let node = self.find_node(&node_id).await?;
        let protocol = node.agent_protocol.unwrap_or(1);
        if protocol < boot_proto::CLONE_PROTOCOL_VERSION {
            return Err(Error::conflict(format!(
                "the agent of {node_id} speaks protocol {protocol}; live cloning needs {} (update the image's node-agent)",
                boot_proto::CLONE_PROTOCOL_VERSION
            )));
        }
        let usable = |s: Option<&Slot>| {
            s.is_none_or(|s| {
                s.node.is_none()
                    && s.step == SlotStep::Vacant
                    && !s.reidentify
                    && s.removal.is_none()
            })
        };
        let find = |i: u32| slots.iter().find(|s| s.index == i);
        let into = match into {
            Some(i) => {
                if i == index {
                    return Err(Error::bad_request("a slot cannot be cloned into itself"));
                }
                if i >= env.max {
                    return Err(Error::bad_request(format!(
                        "{name} has slots 0..{} (max {}); slot {i} is outside",
                        env.max.saturating_sub(1),
                        env.max
                    )));
                }
                if !usable(find(i)) {
                    return Err(Error::conflict(format!(
                        "slot {i} of {name} is in use (holds a node, or a clone waits in it)"
                    )));
                }
                i
            }
            None => (0..env.max)
                .find(|i| *i != index && usable(find(*i)))
                .ok_or_else(|| {
                    Error::conflict(format!("{name} has no free slot (max {})", env.max))
                })?,
        };
        let held = slots
            .iter()
            .filter(|s| (s.node.is_some() && s.step != SlotStep::Releasing) || s.reidentify)
            .count() as u32;
        if held >= env.max {
            return Err(Error::conflict(format!(
                "{name} holds its maximum ({}) nodes; raise max first",
                env.max
            )));
        }
        let overlay = env.overlay(into).unwrap_or_default();
        if self.list_disks().await?.iter().any(|d| d.name == overlay) {
            return Err(Error::conflict(format!(
                "slot {into}'s disk {overlay} exists (a slot used before): delete it (disk delete {overlay}) or clone --into another slot"
            )));
        }
        let now = now_ms();
        let job = CloneJob {
            into,
            force,
            phase: ClonePhase::Preparing,
            requested_ms: now,
            phase_since_ms: now,
            desired_before: Some(env.desired.max(held).min(env.max)),
            detail: "asked".into(),
            ..Default::default()
        };
        let mut next = template.clone();
        next.clone = Some(job.clone());
        if !self
            .store
            .write_slots(Fence::default(), &[(next, Expect::Step(SlotStep::Ready))])
            .await?
        {
            return Err(Error::conflict("the slot changed meanwhile; try again"));
        }
        self.events.emit(
            Some(node_id.clone()),
            EventKind::EngineDecision,
            json!({ "env": name, "action": "clone-asked", "slot": index, "into": into, "nodes": [node_id],
                    "forced": force, "reason": "admin clone" }),
        );
        self.wake_engine();
        Ok(job)
    }

    /// `env remove-node`: by node (id or MAC) or by slot. A clone's slot,
    /// a slot given by index, or `delete_disk` take the slot away
    /// ([`Control::env_remove_slot`]); a plain node removal keeps its slot
    /// for when the environment grows again ([`Control::env_remove_node`]).
    pub async fn env_remove(
        &self,
        name: &str,
        node: Option<&str>,
        slot: Option<u32>,
        delete_disk: bool,
    ) -> Result<Slot> {
        match (node, slot) {
            (Some(_), Some(_)) | (None, None) => Err(Error::bad_request(
                "name either a node (id or MAC) or a slot index",
            )),
            (None, Some(i)) => self.env_remove_slot(name, i, delete_disk).await,
            (Some(n), None) => {
                let (_, s) = self.slot_of(name, n).await?;
                if delete_disk || s.clone_of.is_some() {
                    self.env_remove_slot(name, s.index, delete_disk).await
                } else {
                    self.env_remove_node(name, n).await
                }
            }
        }
    }

    /// Takes slot `index` out of the environment: its node (if any) goes
    /// back to the pool, then the slot goes away, its overlay kept or (with
    /// `delete_disk`) deleted. One node fewer is wanted.
    pub async fn env_remove_slot(&self, name: &str, index: u32, delete_disk: bool) -> Result<Slot> {
        let env = self.must_env(name).await?;
        let slots = self.store.slots(Some(name)).await?;
        let mut slot = slots
            .iter()
            .find(|s| s.index == index)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("{name} has no slot {index}")))?;
        if slot.cloning() {
            return Err(Error::conflict(format!(
                "slot {index} of {name} is being cloned; wait for the clone to end"
            )));
        }
        let holding = slots
            .iter()
            .filter(|s| s.node.is_some() && s.step != SlotStep::Releasing)
            .count() as u32;
        let wanted = holding
            + slots
                .iter()
                .filter(|s| s.node.is_none() && s.reidentify && s.removal.is_none())
                .count() as u32;
        let holds = slot.node.is_some() && slot.step != SlotStep::Releasing;
        if holds && holding <= env.min && env.active {
            return Err(Error::conflict(format!(
                "{name} would fall below its minimum ({}); lower min first",
                env.min
            )));
        }
        let before = slot.step;
        slot.removal = Some(Removal { delete_disk });
        if slot.node.is_some() && before != SlotStep::Releasing {
            slot.step = SlotStep::Releasing;
            slot.step_since_ms = now_ms();
            slot.command = None;
        }
        slot.detail = if delete_disk {
            "removed by an admin (disk deleted)".into()
        } else {
            "removed by an admin (disk kept)".into()
        };
        if !self
            .store
            .write_slots(Fence::default(), &[(slot.clone(), Expect::Step(before))])
            .await?
        {
            return Err(Error::conflict("the slot changed meanwhile; try again"));
        }
        // One fewer wanted: whatever it was counted as (held, or a clone
        // waiting for its node).
        let counted = holds || (slot.node.is_none() && slot.reidentify);
        if counted {
            let desired = env
                .desired
                .min(wanted.saturating_sub(1))
                .max(env.min)
                .min(env.max);
            if desired != env.desired {
                self.update_env(name, json!({ "desired": desired })).await?;
            }
        }
        self.events.emit(
            slot.node.clone(),
            EventKind::EngineDecision,
            json!({ "env": name, "action": "release", "slot": index, "nodes": [slot.node],
                    "delete_disk": delete_disk, "reason": "admin remove-node" }),
        );
        self.wake_engine();
        Ok(slot)
    }
}
