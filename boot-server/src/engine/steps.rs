//! The durable steps of a slot. Each pass looks at a slot's stored step and
//! what the node did since (commands finished, a hello in the new image),
//! takes the step's action and stores the next step. Every action is
//! idempotent and every step is stored before the next action, so a server
//! killed at any point resumes the move after restart, and a slot never
//! holds two nodes (the store refuses it).
//!
//! Moving in: `pending → stopping → pointing → booting → starting → ready`;
//! moving out: `releasing → vacant`; a move that fails goes `failed → vacant`
//! and its node cools down before it is picked again.

use super::Engine;
use crate::control::is_virtual;
use crate::model::{
    BootMode, Environment, EventKind, ImageKind, Node, NodeState, Reservation, Selector, Slot,
    SlotStep, Transition,
};
use crate::store::Expect;
use anyhow::{Context, Result};
use boot_proto::{CommandKind, CommandStatus, SlotConfig};
use serde_json::json;

/// What the step is waiting on, decided from the node and its command.
pub(super) enum Wait {
    /// Done: go on.
    Done,
    /// The command failed (its detail).
    Failed(String),
    /// Still waiting.
    Pending,
}

impl Engine {
    /// Advances one slot that holds a node by at most one step.
    pub(super) async fn advance(
        &self,
        slot: Slot,
        env: &Environment,
        node: Option<Node>,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let Some(node) = node else {
            // The node row vanished (never expected): free the slot.
            return self
                .vacate(&slot, "its node is gone", false)
                .await
                .map(|_| ());
        };
        let up = node.agent_up(now, self.fresh_ms());
        let waited = now - slot.step_since_ms;
        match slot.step {
            SlotStep::Ready if slot.cloning() => self.cloning(slot, env, &node).await,
            SlotStep::Vacant | SlotStep::Ready => self.check_ready(slot, env, &node).await,
            SlotStep::Pending => {
                if up {
                    let id = self.stop_app(&node.id).await?;
                    self.step(&slot, SlotStep::Stopping, "stopping its work", Some(id))
                        .await
                } else {
                    self.step(
                        &slot,
                        SlotStep::Pointing,
                        "agent not up: nothing to stop",
                        None,
                    )
                    .await
                }
            }
            SlotStep::Stopping => {
                let limit = (self.cfg().stop_timeout_secs as i64 + 15) * 1000;
                let detail = match self.command_wait(slot.command).await? {
                    Wait::Done => "work stopped".to_string(),
                    Wait::Failed(d) => format!("stop hook failed ({d}); forced"),
                    Wait::Pending if !up => "agent went down while stopping".into(),
                    Wait::Pending if waited > limit => "stop timed out; going on".into(),
                    Wait::Pending => return Ok(()),
                };
                self.step(&slot, SlotStep::Pointing, &detail, None).await
            }
            SlotStep::Pointing => {
                let leftovers = self.point(&slot, env, &node).await?;
                // Stored before the boot command is queued: a restart in
                // between finds `booting` with no command and queues it.
                let mut next = slot.clone();
                next.hello_before = node.last_hello_ms;
                for d in leftovers {
                    if !next.cut_after_boot.contains(&d) {
                        next.cut_after_boot.push(d);
                    }
                }
                self.step_from(
                    &slot,
                    next,
                    SlotStep::Booting,
                    "boot pointed at the environment",
                    None,
                )
                .await
            }
            SlotStep::Booting => self.booting(slot, env, &node, up, waited).await,
            SlotStep::Starting => {
                let limit = self.cfg().start_timeout_secs as i64 * 1000;
                match self.command_wait(slot.command).await? {
                    Wait::Done => {
                        let mut next = slot.clone();
                        next.failed_over_ms = None;
                        // A clone's node has taken its own identity.
                        next.reidentify = false;
                        if !is_virtual(&node) {
                            // On a physical node (its home or a spare): no failback.
                            next.home = None;
                            next.home_left_ms = None;
                            next.home_repaired = false;
                        }
                        self.step_from(&slot, next, SlotStep::Ready, "application started", None)
                            .await?;
                        self.ready(&slot, env, &node, now);
                        Ok(())
                    }
                    Wait::Failed(d) => self.fail(&slot, &format!("start hook failed: {d}")).await,
                    Wait::Pending if node.state == NodeState::Failed => {
                        self.fail(&slot, "node stopped heart-beating while starting")
                            .await
                    }
                    Wait::Pending if waited > limit => self.fail(&slot, "start timed out").await,
                    Wait::Pending if slot.command.is_none() && up => {
                        self.start(&slot, env, &node).await
                    }
                    Wait::Pending => Ok(()),
                }
            }
            SlotStep::Releasing => self.releasing(slot, &node, up, waited).await,
            SlotStep::Failed => {
                self.point_back(&slot, &node, true).await?;
                self.cut_unattached(&slot.cut_after_boot).await?;
                self.cool(&node.id);
                self.vacate(&slot, &format!("move failed: {}", slot.detail), true)
                    .await
                    .map(|_| ())
            }
        }
    }

    async fn booting(
        &self,
        slot: Slot,
        env: &Environment,
        node: &Node,
        up: bool,
        waited: i64,
    ) -> Result<()> {
        let arrived = node.last_hello_ms.is_some()
            && node.last_hello_ms != slot.hello_before
            && node.running_image.as_deref() == Some(env.image.as_str());
        if arrived {
            // It left the image it ran from: cut what it kept open.
            self.cut_unattached(&slot.cut_after_boot).await?;
            let mut next = slot.clone();
            next.cut_after_boot.clear();
            self.step_from(
                &slot,
                next,
                SlotStep::Starting,
                "up in the environment's image",
                None,
            )
            .await?;
            let slot = self.reload(&slot).await?;
            return self.start(&slot, env, node).await;
        }
        if waited > self.cfg().boot_timeout_secs as i64 * 1000 {
            return self
                .fail(&slot, "not up in the environment's image in time")
                .await;
        }
        match (slot.command, up) {
            (None, true) => {
                // A restart (or a takeover by another server) between
                // queuing the boot and storing its id must not boot twice:
                // the node may have carried it out already and be on its way
                // down with its heartbeat still fresh; a second kexec would
                // carry a newer token, a second reboot would end the new boot.
                if let Some(id) = self.boot_command_of_present_boot(&node.id).await? {
                    return self.set_command(&slot, id, "rebooting").await;
                }
                let (kind, how) = self.boot_command(env, node).await;
                let id = self.c.queue(&node.id, kind).await?;
                self.set_command(&slot, id, &format!("rebooting ({how})"))
                    .await
            }
            (None, false) => {
                self.set_detail(&slot, "waiting for the node to network-boot (agent not up)")
                    .await
            }
            (Some(id), _) => {
                if let Wait::Failed(d) = self.command_wait(Some(id)).await? {
                    if self.cold_after_failed_kexec(&slot, node, &d).await? {
                        return Ok(());
                    }
                    return self.fail(&slot, &format!("reboot failed: {d}")).await;
                }
                Ok(())
            }
        }
    }

    /// A warm boot whose command failed (kexec download or load) falls back
    /// to a cold reboot, once: true when the reboot was queued. The agent
    /// that reported the failure is alive, though the node counts as
    /// provisioning (not up) since the kexec was planned.
    async fn cold_after_failed_kexec(&self, slot: &Slot, node: &Node, why: &str) -> Result<bool> {
        let Some(id) = slot.command else {
            return Ok(false);
        };
        let was_kexec = matches!(
            self.c.store.command(id).await?.map(|c| c.command),
            Some(CommandKind::Kexec { .. })
        );
        if !was_kexec {
            return Ok(false);
        }
        let id = self.c.queue(&node.id, CommandKind::Reprovision).await?;
        self.set_command(slot, id, &format!("kexec failed ({why}); cold reboot"))
            .await?;
        Ok(true)
    }

    /// Warm (kexec) when the environment allows it, the agent is up and the
    /// image is Linux; else a cold reboot through the firmware's network boot.
    async fn boot_command(&self, env: &Environment, node: &Node) -> (CommandKind, &'static str) {
        if env.boot == BootMode::Warm {
            let linux = matches!(
                self.c.store.image(&env.image).await,
                Ok(Some(i)) if i.kind == ImageKind::Linux
            );
            if linux {
                match self.c.plan.kexec_command(node).await {
                    Ok(k) => return (k, "warm, kexec"),
                    Err(e) => {
                        tracing::warn!(node = %node.id, error = %format!("{e:#}"), "kexec not possible; cold reboot")
                    }
                }
            }
        }
        (CommandKind::Reprovision, "cold, network boot")
    }

    /// Sends the slot's configuration and starts the application.
    async fn start(&self, slot: &Slot, env: &Environment, node: &Node) -> Result<()> {
        let started = |k: &CommandKind| matches!(k, CommandKind::StartApp { .. });
        if let Some(id) = self.open_command(&node.id, started).await? {
            return self.set_command(slot, id, "starting the application").await;
        }
        let protocol = node.agent_protocol.unwrap_or(1);
        if slot.reidentify && protocol < boot_proto::CLONE_PROTOCOL_VERSION {
            let why = format!(
                "a clone's node must change its identity; the agent of {} speaks protocol {protocol}, needs {}",
                node.id,
                boot_proto::CLONE_PROTOCOL_VERSION
            );
            return self.fail(slot, &why).await;
        }
        if protocol >= 3 {
            let mut config = env.config.clone();
            config.extend(slot.config.clone());
            if let Some(ip) = slot.ip {
                config.insert("SLOT_IP".into(), ip.to_string());
            }
            let cfg = SlotConfig {
                environment: env.name.clone(),
                slot: slot.index,
                hostname: slot.hostname.clone(),
                hooks: env.hooks.clone(),
                config,
                reidentify: slot.reidentify,
            };
            self.c
                .queue(&node.id, CommandKind::Configure { slot: cfg })
                .await?;
        }
        let id = self
            .c
            .queue(
                &node.id,
                CommandKind::StartApp {
                    timeout_secs: self.cfg().start_timeout_secs,
                },
            )
            .await?;
        self.set_command(slot, id, "configured; starting the application")
            .await
    }

    /// Points the node's boot at the environment: its image, the slot's
    /// address and host name, the slot's disk (created on first use; taken
    /// from whichever node had it, whose connections are cut).
    async fn point(&self, slot: &Slot, env: &Environment, node: &Node) -> Result<Vec<String>> {
        let c = &self.c;
        if let Some(ip) = slot.ip {
            for r in c.store.reservations().await? {
                if r.ip == ip && r.mac != node.mac {
                    c.remove_reservation(r.mac)
                        .await
                        .map_err(anyhow::Error::from)?;
                }
            }
            c.put_reservation(Reservation {
                mac: node.mac,
                ip,
                hostname: Some(slot.hostname.clone()),
            })
            .await
            .map_err(anyhow::Error::from)
            .context("slot address")?;
        }
        // Disks of the node's previous slot: detached now (the new boot must
        // not get them), their connections left open while it still runs
        // from them, cut once it is up in the new image.
        let attached = c.store.disk_attachments().await?;
        let mut leftovers = Vec::new();
        for a in attached.iter().filter(|a| a.node == node.id) {
            if Some(&a.overlay) != slot.overlay.as_ref() {
                c.detach_disk_keep_open(&a.overlay)
                    .await
                    .map_err(anyhow::Error::from)?;
                leftovers.push(a.overlay.clone());
            }
        }
        if let (Some(overlay), Some(base)) = (&slot.overlay, &env.disk_base) {
            let exists = c
                .list_disks()
                .await
                .map_err(anyhow::Error::from)?
                .iter()
                .any(|d| &d.name == overlay);
            if !exists {
                c.create_overlay(overlay.clone(), base.clone())
                    .await
                    .map_err(anyhow::Error::from)
                    .context("slot disk")?;
            }
            match attached.iter().find(|a| &a.overlay == overlay) {
                Some(a) if a.node == node.id => {}
                Some(_) => {
                    // Fencing: the slot's disk is taken from its holder.
                    c.detach_disk(overlay).await.map_err(anyhow::Error::from)?;
                    c.attach_disk(overlay.clone(), &node.id, false, None)
                        .await
                        .map_err(anyhow::Error::from)?;
                }
                None => {
                    // A node that left the slot may still have it open.
                    c.cut_disk(overlay);
                    c.attach_disk(overlay.clone(), &node.id, false, None)
                        .await
                        .map_err(anyhow::Error::from)?;
                }
            }
        }
        c.assign(Selector::Mac(node.mac), Some(env.image.clone()))
            .await
            .map_err(anyhow::Error::from)?;
        Ok(leftovers)
    }

    /// Closes the connections of these overlays unless they are attached
    /// again (then their new holder's attach already fenced them).
    async fn cut_unattached(&self, overlays: &[String]) -> Result<()> {
        if overlays.is_empty() {
            return Ok(());
        }
        let attached = self.c.store.disk_attachments().await?;
        for o in overlays {
            if !attached.iter().any(|a| &a.overlay == o) {
                let n = self.c.cut_disk(o);
                tracing::info!(overlay = %o, connections = n, "cut the connections its old holder kept");
            }
        }
        Ok(())
    }

    /// Undoes [`Engine::point`] for a node leaving its slot: no image of
    /// its own (the default image), no slot address, no slot disk.
    async fn point_back(&self, slot: &Slot, node: &Node, cut: bool) -> Result<()> {
        let c = &self.c;
        c.assign(Selector::Mac(node.mac), None)
            .await
            .map_err(anyhow::Error::from)?;
        if slot.ip.is_some() {
            let mine = c
                .store
                .reservations()
                .await?
                .into_iter()
                .any(|r| r.mac == node.mac && Some(r.ip) == slot.ip);
            if mine {
                c.remove_reservation(node.mac)
                    .await
                    .map_err(anyhow::Error::from)?;
            }
        }
        if let Some(overlay) = &slot.overlay {
            let attached = c.store.disk_attachments().await?;
            if attached
                .iter()
                .any(|a| &a.overlay == overlay && a.node == node.id)
            {
                if cut {
                    c.detach_disk(overlay).await.map_err(anyhow::Error::from)?;
                } else {
                    c.detach_disk_keep_open(overlay)
                        .await
                        .map_err(anyhow::Error::from)?;
                }
            }
        }
        Ok(())
    }

    /// Leaving: wait while busy, stop the work, then send the node back to
    /// the pool image (kexec or reboot) with its slot's disk detached but
    /// still open, and only once it has left that image cut the disk's
    /// connections and empty the slot.
    async fn releasing(&self, slot: Slot, node: &Node, up: bool, waited: i64) -> Result<()> {
        if slot.returning {
            let left = node.last_hello_ms.is_some() && node.last_hello_ms != slot.hello_before;
            let mut gave_up = waited > self.cfg().boot_timeout_secs as i64 * 1000;
            if let (false, Wait::Failed(d)) = (left, self.command_wait(slot.command).await?) {
                if self.cold_after_failed_kexec(&slot, node, &d).await? {
                    return Ok(());
                }
                gave_up = true;
            }
            if !(left || gave_up) {
                return Ok(());
            }
            let mut cut = slot.cut_after_boot.clone();
            cut.extend(slot.overlay.clone());
            self.cut_unattached(&cut).await?;
            if self
                .vacate(&slot, "node returned to the pool", false)
                .await?
            {
                self.removed_if_asked(&slot).await;
                if left {
                    // Its new boot said hello while it still held the slot.
                    self.c
                        .store
                        .transition_node(&node.id, Transition::AgentUp { serving: false })
                        .await?;
                }
                self.c.events.emit(
                    Some(node.id.clone()),
                    EventKind::Alert,
                    json!({ "alert": "node-removed", "env": slot.environment, "slot": slot.index, "node": node.id, "left": left }),
                );
            }
            return Ok(());
        }
        if up && node.busy() == Some(true) && slot.command.is_none() {
            return self
                .set_detail(&slot, "waiting: the node's busy hook says busy")
                .await;
        }
        if slot.command.is_none() && up {
            let id = self.stop_app(&node.id).await?;
            return self.set_command(&slot, id, "stopping its work").await;
        }
        let limit = (self.cfg().stop_timeout_secs as i64 + 15) * 1000;
        if let Wait::Pending = self.command_wait(slot.command).await? {
            if up && waited <= limit {
                return Ok(());
            }
        }
        if !up || is_virtual(node) {
            // Nothing runs there (or a VM, which is stopped rather than
            // sent back to a pool): cut everything and free the slot.
            self.point_back(&slot, node, true).await?;
            self.cut_unattached(&slot.cut_after_boot).await?;
            let why = if up {
                "VM freed"
            } else {
                "node down; slot freed"
            };
            if self.vacate(&slot, why, false).await? {
                self.removed_if_asked(&slot).await;
                if is_virtual(node) {
                    self.c
                        .stop_vm_of(&node.id, "its slot was released")
                        .await
                        .map_err(anyhow::Error::from)?;
                }
                self.c.events.emit(
                    Some(node.id.clone()),
                    EventKind::Alert,
                    json!({ "alert": "node-removed", "env": slot.environment, "slot": slot.index, "node": node.id, "left": false }),
                );
            }
            return Ok(());
        }
        // Back to the pool image: the next boot gets no slot disk, no slot address.
        self.point_back(&slot, node, false).await?;
        if node.agent_protocol.unwrap_or(1) >= 3 {
            self.c.queue(&node.id, CommandKind::Unconfigure).await?;
        }
        let refreshed = self.c.store.node(&node.id).await?.unwrap_or(node.clone());
        let kind = match self.c.plan.kexec_command(&refreshed).await {
            Ok(k) => k,
            Err(_) => CommandKind::Reprovision,
        };
        let id = self.c.queue(&node.id, kind).await?;
        let mut next = slot.clone();
        next.returning = true;
        next.hello_before = node.last_hello_ms;
        next.command = Some(id);
        next.step_since_ms = self.clock.now_ms();
        next.detail = "returning to the pool image".into();
        self.write(&slot, next).await.map(|_| ())
    }

    /// A ready slot whose node failed (heartbeats stopped, its BMC reads
    /// off, its VM ended or its failover host went down) fails over: the
    /// node is fenced first — the slot disk's export revoked and its
    /// connections drained, the node powered off through its BMC where it
    /// has one, a VM stopped on its host — and only then is the slot freed,
    /// to be refilled from the pool (or a VM) with the same host name,
    /// address and disk. The slot remembers its home: the physical node it
    /// failed from, to move back to once that node is repaired.
    /// A ready slot failing back waits for the VM's work to stop, then
    /// moves to its home node.
    async fn check_ready(&self, slot: Slot, _env: &Environment, node: &Node) -> Result<()> {
        if slot.failing_back && node.state != NodeState::Failed {
            return self.failing_back(slot, node).await;
        }
        if node.state != NodeState::Failed {
            return Ok(());
        }
        let detected = self.clock.now_ms();
        let fence = self.c.fence(node, slot.overlay.as_deref()).await;
        let detail =
            json!({ "env": slot.environment, "slot": slot.index, "node": node.id, "fence": fence });
        self.c
            .events
            .emit(Some(node.id.clone()), EventKind::Fenced, detail.clone());
        let mut alert = detail;
        alert["alert"] = json!("failover-started");
        self.c
            .events
            .emit(Some(node.id.clone()), EventKind::Alert, alert);
        self.cool(&node.id);
        let mut next = slot.vacated(detected, "its node failed; fenced, failing over");
        next.attempt = slot.attempt + 1;
        next.failed_over_ms = Some(detected);
        next.failing_back = false;
        if !is_virtual(node) {
            next.home = Some(node.id.clone());
            next.home_left_ms = Some(detected);
            next.home_repaired = false;
        }
        if self.write(&slot, next).await? {
            // Back from its repair, the node boots the pool image: no slot
            // image, address or disk of its own any more.
            if let Err(e) = self.point_back(&slot, node, true).await {
                tracing::warn!(node = %node.id, error = %format!("{e:#}"), "failed node not pointed back to the pool image");
            }
            if is_virtual(node) {
                self.c
                    .stop_vm_of(&node.id, "its slot failed over")
                    .await
                    .map_err(anyhow::Error::from)?;
            }
        }
        Ok(())
    }

    /// Failback: the VM's application is stopped (stop hook), then the slot
    /// goes to its home node through the normal move (which takes the disk
    /// from the VM, cutting its connections), and the VM is stopped and freed.
    async fn failing_back(&self, slot: Slot, vm: &Node) -> Result<()> {
        let Some(home) = slot.home.clone() else {
            let mut next = slot.clone();
            next.failing_back = false;
            return self.write(&slot, next).await.map(|_| ());
        };
        let now = self.clock.now_ms();
        let up = vm.agent_up(now, self.fresh_ms());
        if slot.command.is_none() && up {
            let id = self.stop_app(&vm.id).await?;
            return self
                .set_command(
                    &slot,
                    id,
                    &format!("failing back to {home}: stopping the VM's work"),
                )
                .await;
        }
        let limit = (self.cfg().stop_timeout_secs as i64 + 15) * 1000;
        let waited = now - slot.step_since_ms;
        if let Wait::Pending = self.command_wait(slot.command).await? {
            if up && waited <= limit {
                return Ok(());
            }
        }
        let mut next = slot.clone();
        next.node = Some(home.clone());
        next.step = SlotStep::Pending;
        next.step_since_ms = now;
        next.move_since_ms = now;
        next.command = None;
        next.timings.clear();
        next.failing_back = false;
        next.detail = format!("failing back from VM {} to its home node", vm.id);
        if self.write(&slot, next).await? {
            self.c.wake_engine();
            self.c.events.emit(
                Some(home.clone()),
                EventKind::SlotStep,
                json!({ "env": slot.environment, "slot": slot.index, "node": home, "from": "ready", "to": "pending", "ms": now - slot.step_since_ms, "detail": "failback: the VM's work stopped" }),
            );
            self.c
                .stop_vm_of(&vm.id, "its slot failed back to its home node")
                .await
                .map_err(anyhow::Error::from)?;
        }
        Ok(())
    }

    /// After a release: a slot marked for removal goes away now (or on a later pass).
    async fn removed_if_asked(&self, slot: &Slot) {
        if slot.removal.is_none() {
            return;
        }
        let r = match self.reload(slot).await {
            Ok(s) => self.finish_removal(&s).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!(env = %slot.environment, slot = slot.index, error = %format!("{e:#}"), "slot removal not finished; retrying");
        }
    }

    fn ready(&self, slot: &Slot, env: &Environment, node: &Node, now: i64) {
        let mut timings = slot.timings.clone();
        timings.insert(SlotStep::Starting.as_str().into(), now - slot.step_since_ms);
        let total = now - slot.move_since_ms;
        tracing::info!(env = %env.name, slot = slot.index, node = %node.id, total_ms = total, "slot ready");
        self.c.events.emit(
            Some(node.id.clone()),
            EventKind::EngineDecision,
            json!({ "env": env.name, "action": "ready", "slot": slot.index, "nodes": [node.id], "total_ms": total, "timings": timings }),
        );
        self.c.events.emit(
            Some(node.id.clone()),
            EventKind::Alert,
            json!({ "alert": "node-added", "env": env.name, "slot": slot.index, "node": node.id, "total_ms": total }),
        );
        if let Some(origin) = slot.clone_of.as_ref().filter(|_| slot.reidentify) {
            self.c.events.emit(
                Some(node.id.clone()),
                EventKind::EngineDecision,
                json!({ "env": env.name, "action": "clone-ready", "slot": slot.index, "from": origin.slot,
                        "nodes": [node.id], "clone_ms": now - origin.requested_ms, "pause_ms": origin.pause_ms,
                        "reason": format!("clone of slot {} ready", origin.slot) }),
            );
        }
        if slot.home.as_deref() == Some(node.id.as_str()) && slot.failed_over_ms.is_none() {
            self.c.events.emit(
                Some(node.id.clone()),
                EventKind::Alert,
                json!({ "alert": "failback-finished", "env": env.name, "slot": slot.index, "node": node.id, "move_ms": total, "away_ms": slot.home_left_ms.map(|t| now - t) }),
            );
        }
        if let Some(failed) = slot.failed_over_ms {
            self.c.events.emit(
                Some(node.id.clone()),
                EventKind::Alert,
                json!({ "alert": "failover-finished", "env": env.name, "slot": slot.index, "node": node.id, "failover_ms": now - failed, "move_ms": total }),
            );
        }
    }

    async fn fail(&self, slot: &Slot, why: &str) -> Result<()> {
        tracing::warn!(env = %slot.environment, slot = slot.index, node = ?slot.node, why, "slot move failed");
        self.step(slot, SlotStep::Failed, why, None).await
    }

    /// Asks the node's agent to stop its application (stop hook, then force).
    async fn stop_app(&self, node: &str) -> Result<i64> {
        let timeout_secs = self.cfg().stop_timeout_secs;
        Ok(self
            .c
            .queue(node, CommandKind::StopApp { timeout_secs })
            .await?)
    }

    /// An unfinished command of the node that `kind` matches (queued by a
    /// pass that did not live to store its id).
    pub(super) async fn open_command(
        &self,
        node: &str,
        kind: impl Fn(&CommandKind) -> bool,
    ) -> Result<Option<i64>> {
        Ok(self
            .c
            .store
            .commands_of(node, 20)
            .await?
            .into_iter()
            .find(|c| !c.status.is_final() && kind(&c.command))
            .map(|c| c.id))
    }

    /// A boot-ending command queued for the node's present boot that has not
    /// failed (queued, under way, or reported done before the node went
    /// down), newest first.
    pub(super) async fn boot_command_of_present_boot(&self, node: &str) -> Result<Option<i64>> {
        let boot = self.c.store.node_boot(node).await?;
        Ok(self
            .c
            .store
            .commands_of(node, 20)
            .await?
            .into_iter()
            .find(|c| c.boot == boot && c.status != CommandStatus::Failed && is_boot(&c.command))
            .map(|c| c.id))
    }

    /// The state of the command a step waits for.
    pub(super) async fn command_wait(&self, id: Option<i64>) -> Result<Wait> {
        let Some(id) = id else {
            return Ok(Wait::Pending);
        };
        Ok(match self.c.store.command(id).await? {
            None => Wait::Done,
            Some(cmd) => match cmd.status {
                CommandStatus::Succeeded | CommandStatus::Acknowledged => Wait::Done,
                CommandStatus::Failed => Wait::Failed(cmd.detail),
                _ => Wait::Pending,
            },
        })
    }

    /// Stores the slot's next step (if the slot is still where we saw it).
    pub(super) async fn step(
        &self,
        slot: &Slot,
        to: SlotStep,
        detail: &str,
        command: Option<i64>,
    ) -> Result<()> {
        self.step_from(slot, slot.clone(), to, detail, command)
            .await
    }

    /// [`Engine::step`] with other fields of the slot changed too.
    async fn step_from(
        &self,
        slot: &Slot,
        mut next: Slot,
        to: SlotStep,
        detail: &str,
        command: Option<i64>,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let spent = now - slot.step_since_ms;
        next.timings.insert(slot.step.as_str().into(), spent);
        next.step = to;
        next.step_since_ms = now;
        next.detail = detail.to_string();
        next.command = command;
        if to == SlotStep::Ready {
            next.attempt = 0;
        }
        if self.write(slot, next).await? {
            // The next step may be ready to go at once: run another pass
            // rather than wait for the tick.
            self.c.wake_engine();
            self.c.events.emit(
                slot.node.clone(),
                EventKind::SlotStep,
                json!({ "env": slot.environment, "slot": slot.index, "node": slot.node, "from": slot.step.as_str(), "to": to.as_str(), "ms": spent, "detail": detail }),
            );
        }
        Ok(())
    }

    async fn set_command(&self, slot: &Slot, id: i64, detail: &str) -> Result<()> {
        let mut next = slot.clone();
        next.command = Some(id);
        next.detail = detail.to_string();
        self.write(slot, next).await.map(|_| ())
    }

    pub(super) async fn set_detail(&self, slot: &Slot, detail: &str) -> Result<()> {
        if slot.detail == detail {
            return Ok(());
        }
        let mut next = slot.clone();
        next.detail = detail.to_string();
        self.write(slot, next).await.map(|_| ())
    }

    /// Empties the slot (its node leaves it); true if written.
    pub(super) async fn vacate(&self, slot: &Slot, why: &str, failed: bool) -> Result<bool> {
        let now = self.clock.now_ms();
        let mut next = slot.vacated(now, why);
        if failed {
            next.attempt += 1;
            if next.home.is_some() && next.failed_over_ms.is_none() {
                // A failback (or a failover) that failed: fail over again.
                next.failed_over_ms = Some(now);
            }
        }
        let done = self.write(slot, next).await?;
        if done {
            self.c.events.emit(
                slot.node.clone(),
                EventKind::SlotStep,
                json!({ "env": slot.environment, "slot": slot.index, "node": slot.node, "from": slot.step.as_str(), "to": "vacant", "ms": now - slot.step_since_ms, "detail": why }),
            );
        }
        Ok(done)
    }

    async fn write(&self, seen: &Slot, next: Slot) -> Result<bool> {
        self.c
            .store
            .write_slots(self.fence, &[(next, Expect::Step(seen.step))])
            .await
    }

    pub(super) async fn reload(&self, slot: &Slot) -> Result<Slot> {
        self.c
            .store
            .slots(Some(&slot.environment))
            .await?
            .into_iter()
            .find(|s| s.index == slot.index)
            .context("slot vanished")
    }
}

/// Commands that end the node's boot to bring it into a new image.
fn is_boot(k: &CommandKind) -> bool {
    matches!(
        k,
        CommandKind::Kexec { .. } | CommandKind::Reprovision | CommandKind::Reboot
    )
}
