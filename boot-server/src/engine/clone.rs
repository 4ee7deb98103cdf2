//! Live clones and slot removals, as durable engine steps.
//!
//! A clone job lives on its template slot ([`Slot::clone`]) and goes
//! `preparing → snapshotting → thawing → done` (or `failed`), each phase
//! stored before its action: the agent runs `prepare-clone` and freezes
//! ([`CommandKind::PrepareClone`]), the server snapshots the slot's overlay
//! into the new slot's, stores the new (vacant) slot marked to take a new
//! identity and grows the environment by one, then the agent thaws and runs
//! `clone-done` ([`CommandKind::FinishClone`]). The engine then fills the
//! new slot the normal way. A restart resumes the stored phase; the agent's
//! watchdog thaws by itself once the hold time passed, and a snapshot that
//! late fails the clone rather than copy a thawed disk.
//!
//! A slot marked for removal (`env remove-node`) goes away once vacant,
//! with its overlay when asked.

use super::steps::Wait;
use super::Engine;
use crate::control::new_slot;
use crate::model::{
    CloneJob, CloneOrigin, ClonePhase, Environment, EventKind, Node, NodeState, Slot, SlotStep,
};
use crate::store::Expect;
use anyhow::Result;
use boot_proto::{CommandKind, CLONE_PROTOCOL_VERSION};
use serde_json::json;

/// Margin before the agent's own thaw within which no snapshot starts.
const SNAPSHOT_MARGIN_MS: i64 = 2_000;
/// How long the engine waits for the thaw's answer before it moves on.
const THAW_ANSWER_MS: i64 = 60_000;

impl Engine {
    /// Advances the clone job of a ready slot by its stored phase.
    pub(super) async fn cloning(&self, slot: Slot, env: &Environment, node: &Node) -> Result<()> {
        let Some(job) = slot.clone.clone() else {
            return Ok(());
        };
        match job.phase {
            ClonePhase::Preparing => self.clone_prepare(slot, job, env, node).await,
            ClonePhase::Snapshotting => self.clone_snapshot(slot, job, env, node).await,
            ClonePhase::Thawing => self.clone_thaw(slot, job, env, node).await,
            ClonePhase::Done | ClonePhase::Failed => Ok(()),
        }
    }

    async fn clone_prepare(
        &self,
        slot: Slot,
        mut job: CloneJob,
        env: &Environment,
        node: &Node,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let hold_ms = self.cfg().clone_hold_secs as i64 * 1000;
        if node.state == NodeState::Failed {
            return self
                .clone_failed(&slot, job, "the template's node failed")
                .await;
        }
        let Some(id) = job.command else {
            let protocol = node.agent_protocol.unwrap_or(1);
            if protocol < CLONE_PROTOCOL_VERSION {
                let why = format!(
                    "the agent of {} speaks protocol {protocol}; live cloning needs {CLONE_PROTOCOL_VERSION}",
                    node.id
                );
                return self.clone_failed(&slot, job, &why).await;
            }
            let open = self
                .open_command(&node.id, |k| matches!(k, CommandKind::PrepareClone { .. }))
                .await?;
            let id = match open {
                Some(id) => id,
                None => {
                    let kind = CommandKind::PrepareClone {
                        force: job.force,
                        hold_secs: self.cfg().clone_hold_secs,
                    };
                    self.c.queue(&node.id, kind).await?
                }
            };
            job.command = Some(id);
            job.detail = "prepare-clone and freeze asked of the agent".into();
            return self.put_job(&slot, job).await.map(|_| ());
        };
        match self.command_wait(Some(id)).await? {
            Wait::Done => {
                job.phase = ClonePhase::Snapshotting;
                job.phase_since_ms = now;
                job.frozen_ms = Some(now);
                job.command = None;
                job.overlay = env.overlay(job.into);
                job.detail = "frozen; snapshotting".into();
                if self.put_job(&slot, job.clone()).await? {
                    let slot = self.reload(&slot).await?;
                    return self.clone_snapshot(slot, job, env, node).await;
                }
                Ok(())
            }
            Wait::Failed(d) => self.clone_failed(&slot, job, &d).await,
            Wait::Pending => {
                let waited = now - job.phase_since_ms;
                if waited > hold_ms + 120_000 || !node.agent_up(now, self.fresh_ms()) {
                    // Whatever it did, let it thaw and resume.
                    let _ = self.c.queue(&node.id, CommandKind::FinishClone).await;
                    return self
                        .clone_failed(&slot, job, "no answer from the agent to prepare-clone")
                        .await;
                }
                Ok(())
            }
        }
    }

    async fn clone_snapshot(
        &self,
        slot: Slot,
        mut job: CloneJob,
        env: &Environment,
        node: &Node,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let hold_ms = self.cfg().clone_hold_secs as i64 * 1000;
        let frozen = job.frozen_ms.unwrap_or(job.phase_since_ms);
        let (Some(src), Some(dst)) = (slot.overlay.clone(), job.overlay.clone()) else {
            return self
                .clone_thaw_failed(&slot, job, node, "no overlay to snapshot")
                .await;
        };
        // Already taken (a restart after the snapshot, before its write)?
        let ours = self
            .c
            .list_disks()
            .await
            .map_err(anyhow::Error::from)?
            .into_iter()
            .find(|d| d.name == dst)
            .map(|d| d.origin.as_deref() == Some(src.as_str()));
        if ours == Some(false) {
            let why = format!("disk {dst} exists and is not a snapshot of {src}");
            return self.clone_thaw_failed(&slot, job, node, &why).await;
        }
        if ours.is_none() {
            if now - frozen > hold_ms - SNAPSHOT_MARGIN_MS {
                return self
                    .clone_thaw_failed(
                        &slot,
                        job,
                        node,
                        "the hold time passed before the snapshot (the agent thaws by itself)",
                    )
                    .await;
            }
            let t = std::time::Instant::now();
            if let Err(e) = self.c.snapshot(src.clone(), dst.clone()).await {
                let why = format!("snapshot of {src} failed: {}", e.message);
                return self.clone_thaw_failed(&slot, job, node, &why).await;
            }
            job.snapshot_ms = Some(t.elapsed().as_millis() as i64);
        }
        // The new slot, vacant, with the snapshot as its disk; the template
        // goes on to thaw. One write: both or neither.
        let existing = self
            .c
            .store
            .slots(Some(&env.name))
            .await?
            .into_iter()
            .find(|s| s.index == job.into);
        let mut new = existing.clone().unwrap_or_else(|| new_slot(env, job.into));
        if new.node.is_some() || new.step != SlotStep::Vacant {
            let why = format!("slot {} was taken meanwhile", job.into);
            if ours.is_none() {
                let _ = self.c.delete_disk(dst.clone(), false).await;
            }
            return self.clone_thaw_failed(&slot, job, node, &why).await;
        }
        new.hostname = env.hostname(job.into);
        new.ip = env.address(job.into);
        new.overlay = Some(dst.clone());
        new.reidentify = true;
        new.removal = None;
        new.clone_of = Some(CloneOrigin {
            slot: slot.index,
            node: slot.node.clone(),
            requested_ms: job.requested_ms,
            pause_ms: None,
        });
        new.detail = format!("cloned from slot {}; waiting for a node", slot.index);
        let mut next = slot.clone();
        job.phase = ClonePhase::Thawing;
        job.phase_since_ms = self.clock.now_ms();
        job.command = None;
        job.detail = "snapshot taken; thawing".into();
        next.clone = Some(job.clone());
        let written = self
            .c
            .store
            .write_slots(
                self.fence,
                &[
                    (next, Expect::Step(SlotStep::Ready)),
                    (new, Expect::Step(SlotStep::Vacant)),
                ],
            )
            .await?;
        if !written {
            return Ok(()); // someone moved; the next pass sees what
        }
        self.grow_for_clone(env, &job).await?;
        self.c.wake_engine();
        let slot = self.reload(&slot).await?;
        self.clone_thaw(slot, job, env, node).await
    }

    /// The environment wants one node more than when the clone was asked
    /// (idempotent: a repeated call sets the same number).
    async fn grow_for_clone(&self, env: &Environment, job: &CloneJob) -> Result<()> {
        let Some(env) = self.c.store.environment(&env.name).await? else {
            return Ok(());
        };
        let want = job
            .desired_before
            .map_or(env.desired + 1, |d| d + 1)
            .min(env.max);
        if env.desired < want {
            self.c
                .update_env(&env.name, json!({ "desired": want }))
                .await
                .map_err(anyhow::Error::from)?;
        }
        Ok(())
    }

    async fn clone_thaw(
        &self,
        slot: Slot,
        mut job: CloneJob,
        env: &Environment,
        node: &Node,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let Some(id) = job.command else {
            let open = self
                .open_command(&node.id, |k| matches!(k, CommandKind::FinishClone))
                .await?;
            let id = match open {
                Some(id) => id,
                None => self.c.queue(&node.id, CommandKind::FinishClone).await?,
            };
            job.command = Some(id);
            return self.put_job(&slot, job).await.map(|_| ());
        };
        let cmd = self.c.store.command(id).await?;
        let waited = now - job.phase_since_ms;
        let (pause, warning) = match self.command_wait(Some(id)).await? {
            Wait::Done => {
                let d = cmd.map(|c| c.detail).unwrap_or_default();
                (boot_proto::clone_pause_ms(&d).map(|p| p as i64), None)
            }
            Wait::Failed(d) => (
                boot_proto::clone_pause_ms(&d).map(|p| p as i64),
                Some(format!("the thaw reported a failure: {d}")),
            ),
            Wait::Pending if waited > THAW_ANSWER_MS || node.state == NodeState::Failed => (
                None,
                Some("no answer to the thaw; the agent thaws by itself after the hold time".into()),
            ),
            Wait::Pending => return Ok(()),
        };
        job.phase = ClonePhase::Done;
        job.phase_since_ms = now;
        job.command = None;
        job.pause_ms = pause;
        job.detail = warning
            .clone()
            .unwrap_or_else(|| format!("slot {} joins {}", job.into, env.name));
        if !self.put_job(&slot, job.clone()).await? {
            return Ok(());
        }
        // The new slot learns its template's pause (for `slot list`).
        if let Some(mut s) = self
            .c
            .store
            .slots(Some(&env.name))
            .await?
            .into_iter()
            .find(|s| s.index == job.into)
        {
            if let Some(o) = s.clone_of.as_mut() {
                o.pause_ms = pause;
                let step = s.step;
                let _ = self
                    .c
                    .store
                    .write_slots(self.fence, &[(s, Expect::Step(step))])
                    .await;
            }
        }
        tracing::info!(env = %env.name, slot = slot.index, into = job.into, pause_ms = ?pause, snapshot_ms = ?job.snapshot_ms, "clone taken");
        self.c.events.emit(
            Some(node.id.clone()),
            EventKind::EngineDecision,
            json!({ "env": env.name, "action": "clone", "slot": slot.index, "into": job.into,
                    "nodes": [node.id], "pause_ms": pause, "snapshot_ms": job.snapshot_ms,
                    "overlay": job.overlay, "forced": job.force, "warning": warning,
                    "reason": format!("clone of slot {} into slot {}", slot.index, job.into) }),
        );
        Ok(())
    }

    /// Fails a clone after the freeze: the agent is asked to thaw (and run
    /// `clone-done`); no slot is created.
    async fn clone_thaw_failed(
        &self,
        slot: &Slot,
        job: CloneJob,
        node: &Node,
        why: &str,
    ) -> Result<()> {
        let _ = self.c.queue(&node.id, CommandKind::FinishClone).await;
        self.clone_failed(slot, job, why).await
    }

    async fn clone_failed(&self, slot: &Slot, mut job: CloneJob, why: &str) -> Result<()> {
        tracing::warn!(env = %slot.environment, slot = slot.index, into = job.into, why, "clone failed");
        job.phase = ClonePhase::Failed;
        job.phase_since_ms = self.clock.now_ms();
        job.command = None;
        job.detail = why.to_string();
        if self.put_job(slot, job.clone()).await? {
            self.c.events.emit(
                slot.node.clone(),
                EventKind::EngineDecision,
                json!({ "env": slot.environment, "action": "clone-failed", "slot": slot.index,
                        "into": job.into, "nodes": [slot.node], "reason": why }),
            );
        }
        Ok(())
    }

    /// Stores the job on its (still ready) template slot; true if written.
    async fn put_job(&self, slot: &Slot, job: CloneJob) -> Result<bool> {
        let mut next = slot.clone();
        next.clone = Some(job);
        let done = self
            .c
            .store
            .write_slots(self.fence, &[(next, Expect::Step(SlotStep::Ready))])
            .await?;
        if done {
            self.c.wake_engine();
        }
        Ok(done)
    }

    /// A vacant slot marked for removal goes away (its overlay deleted
    /// first when asked; retried on later passes while still in use).
    pub(super) async fn finish_removal(&self, slot: &Slot) -> Result<()> {
        let Some(removal) = &slot.removal else {
            return Ok(());
        };
        if slot.node.is_some() || slot.step != SlotStep::Vacant {
            return Ok(());
        }
        // A VM that held the slot was already stopped by the releasing step.
        if removal.delete_disk {
            if let Some(o) = &slot.overlay {
                let exists = self
                    .c
                    .list_disks()
                    .await
                    .map_err(anyhow::Error::from)?
                    .iter()
                    .any(|d| &d.name == o);
                if exists {
                    self.c.cut_disk(o);
                    if let Err(e) = self.c.delete_disk(o.clone(), false).await {
                        return self
                            .set_detail(
                                slot,
                                &format!("removing: disk {o} not deleted yet ({})", e.message),
                            )
                            .await;
                    }
                }
            }
        }
        if self
            .c
            .store
            .delete_slot(self.fence, &slot.environment, slot.index)
            .await?
        {
            tracing::info!(env = %slot.environment, slot = slot.index, disk_deleted = removal.delete_disk, "slot removed");
            self.c.events.emit(
                None,
                EventKind::EngineDecision,
                json!({ "env": slot.environment, "action": "slot-removed", "slot": slot.index,
                        "overlay": slot.overlay, "disk_deleted": removal.delete_disk,
                        "reason": "admin remove-node" }),
            );
        }
        Ok(())
    }
}
