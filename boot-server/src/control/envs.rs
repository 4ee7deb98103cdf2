//! Environment operations: create, change, delete, activate, scale, add or
//! remove a node, quarantine, policies, slots and history. They change what
//! the engine wants (the store) and wake it; the engine does the moving.

use super::{Control, Error, Result};
use crate::model::{
    now_ms, Environment, EventKind, LoadSample, Node, NodeState, Policy, Slot, SlotStep, Transition,
};
use crate::store::{Expect, Fence};
use serde::Serialize;
use serde_json::{json, Value};

/// An environment with its slots (what `env show` prints).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EnvView {
    /// The environment.
    #[serde(flatten)]
    pub env: Environment,
    /// Its stored slots, by index.
    pub slots: Vec<Slot>,
    /// Slots holding a node.
    pub holding: u32,
    /// Nodes it should hold now.
    pub target: u32,
}

/// Load reports and engine decisions of an environment.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EnvHistory {
    /// Load reports of its nodes, oldest first.
    pub load: Vec<LoadSample>,
    /// Engine decisions, slot steps and alerts about it, oldest first.
    pub decisions: Vec<crate::model::Event>,
}

impl Control {
    /// Wakes the engine (something it decides on changed).
    pub fn wake_engine(&self) {
        self.engine_wake.notify_one();
        // The controller may be another server.
        if let Some(peers) = self.peers() {
            peers.wake_engine();
        }
    }

    /// An environment with its slots.
    pub async fn environment(&self, name: &str) -> Result<EnvView> {
        let env = self.must_env(name).await?;
        let slots = self.store.slots(Some(name)).await?;
        Ok(view(env, slots))
    }

    /// Every environment with its slots.
    pub async fn environments(&self) -> Result<Vec<EnvView>> {
        let slots = self.store.slots(None).await?;
        Ok(self
            .store
            .environments()
            .await?
            .into_iter()
            .map(|e| {
                let own = slots
                    .iter()
                    .filter(|s| s.environment == e.name)
                    .cloned()
                    .collect();
                view(e, own)
            })
            .collect())
    }

    pub(super) async fn must_env(&self, name: &str) -> Result<Environment> {
        self.store.environment(name).await?.ok_or_else(|| {
            Error::not_found(format!(
                "no environment {name} (see `boot-server env list`)"
            ))
        })
    }

    pub(super) async fn check_env(&self, env: &Environment) -> Result<()> {
        env.validate().map_err(Error::bad_request)?;
        if self.store.image(&env.image).await?.is_none() {
            return Err(Error::bad_request(format!(
                "image {} is not in the image table (boot-server image list)",
                env.image
            )));
        }
        if let Some(base) = &env.disk_base {
            if !self.config.nbd.enabled {
                return Err(Error::bad_request(
                    "a disk base needs NBD ([nbd] enabled = true)",
                ));
            }
            let disks = self.list_disks().await?;
            if !disks.iter().any(|d| &d.name == base) {
                return Err(Error::bad_request(format!(
                    "no base disk {base} (boot-server disk add-base)"
                )));
            }
        }
        Ok(())
    }

    /// Creates an environment.
    pub async fn create_env(&self, mut env: Environment) -> Result<EnvView> {
        if self.store.environment(&env.name).await?.is_some() {
            return Err(Error::conflict(format!(
                "environment {} exists (change it with `env set`)",
                env.name
            )));
        }
        let now = now_ms();
        env.created_ms = now;
        env.updated_ms = now;
        if env.desired == 0 {
            env.desired = env.min;
        }
        self.check_env(&env).await?;
        self.store.put_environment(&env).await?;
        self.events.emit(
            None,
            EventKind::EnvChanged,
            json!({ "env": env.name, "change": "created", "active": env.active, "desired": env.desired }),
        );
        self.wake_engine();
        self.environment(&env.name).await
    }

    /// Changes an environment: `patch` holds the fields to change (as in
    /// [`Environment`]'s JSON); name and creation time stay.
    pub async fn update_env(&self, name: &str, patch: Value) -> Result<EnvView> {
        let env = self.must_env(name).await?;
        let Value::Object(fields) = patch else {
            return Err(Error::bad_request(
                "send a JSON object of the fields to change",
            ));
        };
        let mut merged = serde_json::to_value(&env).map_err(anyhow::Error::from)?;
        for (k, v) in fields {
            if k == "name" || k == "created_ms" || k == "updated_ms" {
                continue;
            }
            merged[k] = v;
        }
        let mut next: Environment = serde_json::from_value(merged)
            .map_err(|e| Error::bad_request(format!("environment fields: {e}")))?;
        next.updated_ms = now_ms();
        self.check_env(&next).await?;
        self.store.put_environment(&next).await?;
        self.events.emit(
            None,
            EventKind::EnvChanged,
            json!({ "env": name, "change": "updated", "active": next.active, "desired": next.desired }),
        );
        self.wake_engine();
        self.environment(name).await
    }

    /// Deletes an environment that holds no node.
    pub async fn delete_env(&self, name: &str) -> Result<()> {
        self.store.delete_environment(name).await?;
        self.events.emit(
            None,
            EventKind::EnvChanged,
            json!({ "env": name, "change": "deleted" }),
        );
        Ok(())
    }

    /// Activates or deactivates an environment (inactive: it gives its nodes back).
    pub async fn set_env_active(&self, name: &str, active: bool) -> Result<EnvView> {
        self.update_env(name, json!({ "active": active })).await
    }

    /// Sets the number of nodes an environment wants.
    pub async fn scale_env(&self, name: &str, nodes: u32) -> Result<EnvView> {
        let env = self.must_env(name).await?;
        if nodes < env.min || nodes > env.max {
            return Err(Error::bad_request(format!(
                "{name} takes {}..={} nodes; {nodes} is outside (change min/max with `env set`)",
                env.min, env.max
            )));
        }
        self.update_env(name, json!({ "desired": nodes })).await
    }

    /// Sets (or with `None` clears) an environment's scaling policy.
    pub async fn set_policy(&self, name: &str, policy: Option<Policy>) -> Result<EnvView> {
        if let Some(p) = &policy {
            p.validate().map_err(Error::bad_request)?;
        }
        self.update_env(name, json!({ "policy": policy })).await
    }

    /// Puts a particular pool node into the environment (one more node wanted).
    pub async fn env_add_node(&self, name: &str, node: &str) -> Result<Slot> {
        let env = self.must_env(name).await?;
        let node = self.find_node(node).await?;
        if !env.active {
            return Err(Error::conflict(format!(
                "{name} is inactive (env activate {name})"
            )));
        }
        if let Some(e) = &node.environment {
            return Err(Error::conflict(format!(
                "node {} already serves {e} (env remove-node {e} {})",
                node.id, node.id
            )));
        }
        if node.state != NodeState::Idle {
            return Err(Error::conflict(format!(
                "node {} is {}; only idle pool nodes can be added",
                node.id,
                node.state.as_str()
            )));
        }
        if !env.requirements.met_by(&node) {
            return Err(Error::conflict(format!(
                "node {} does not meet {name}'s requirements",
                node.id
            )));
        }
        let slots = self.store.slots(Some(name)).await?;
        let holding = slots.iter().filter(|s| s.node.is_some()).count() as u32;
        if holding >= env.max {
            return Err(Error::conflict(format!(
                "{name} holds its maximum ({}) nodes",
                env.max
            )));
        }
        let index = (0..env.max)
            .find(|i| {
                slots
                    .iter()
                    .find(|s| s.index == *i)
                    .is_none_or(|s| s.node.is_none() && s.step == SlotStep::Vacant)
            })
            .ok_or_else(|| Error::conflict(format!("{name} has no vacant slot")))?;
        let mut slot = slots
            .iter()
            .find(|s| s.index == index)
            .cloned()
            .unwrap_or_else(|| new_slot(&env, index));
        let now = now_ms();
        slot.node = Some(node.id.clone());
        slot.step = SlotStep::Pending;
        slot.step_since_ms = now;
        slot.move_since_ms = now;
        slot.detail = "added by an admin".into();
        slot.timings.clear();
        if !self
            .store
            .write_slots(
                Fence::default(),
                &[(slot.clone(), Expect::Step(SlotStep::Vacant))],
            )
            .await?
        {
            return Err(Error::conflict("the slot changed meanwhile; try again"));
        }
        let desired = (holding + 1).max(env.desired).min(env.max);
        self.update_env(name, json!({ "desired": desired })).await?;
        self.events.emit(
            Some(node.id.clone()),
            EventKind::EngineDecision,
            json!({ "env": name, "action": "claim", "slot": index, "nodes": [node.id], "reason": "admin add-node" }),
        );
        self.wake_engine();
        Ok(slot)
    }

    /// Takes a node out of the environment (one node fewer wanted); the
    /// engine stops its work (waiting while it is busy) and returns it to the pool.
    pub async fn env_remove_node(&self, name: &str, node: &str) -> Result<Slot> {
        let env = self.must_env(name).await?;
        let (node, mut slot) = self.slot_of(name, node).await?;
        let holding = self
            .store
            .slots(Some(name))
            .await?
            .iter()
            .filter(|s| s.node.is_some() && s.step != SlotStep::Releasing)
            .count() as u32;
        if holding <= env.min && env.active {
            return Err(Error::conflict(format!(
                "{name} would fall below its minimum ({}); lower min first",
                env.min
            )));
        }
        let before = slot.step;
        if before == SlotStep::Releasing {
            return Ok(slot);
        }
        slot.step = SlotStep::Releasing;
        slot.step_since_ms = now_ms();
        // A command of the step it leaves (a start under way) is not the stop.
        slot.command = None;
        slot.detail = "removed by an admin".into();
        if !self
            .store
            .write_slots(Fence::default(), &[(slot.clone(), Expect::Step(before))])
            .await?
        {
            return Err(Error::conflict("the slot changed meanwhile; try again"));
        }
        let desired = holding.saturating_sub(1).max(env.min);
        self.update_env(name, json!({ "desired": desired })).await?;
        self.events.emit(
            Some(node.id.clone()),
            EventKind::EngineDecision,
            json!({ "env": name, "action": "release", "slot": slot.index, "nodes": [node.id], "reason": "admin remove-node" }),
        );
        self.wake_engine();
        Ok(slot)
    }

    /// Cuts a node out of the environment without stopping it: it keeps
    /// running (for inspection), is marked quarantined, never allocated, and
    /// an alert is raised. The slot is refilled from the pool.
    pub async fn env_quarantine(&self, name: &str, node: &str) -> Result<Node> {
        let (node, slot) = self.slot_of(name, node).await?;
        let vacated = slot.vacated(now_ms(), &format!("{} quarantined", node.id));
        if !self
            .store
            .write_slots(Fence::default(), &[(vacated, Expect::Step(slot.step))])
            .await?
        {
            return Err(Error::conflict("the slot changed meanwhile; try again"));
        }
        self.store
            .transition_node(&node.id, Transition::Quarantine)
            .await?;
        self.events.emit(
            Some(node.id.clone()),
            EventKind::Alert,
            json!({ "alert": "node-quarantined", "env": name, "slot": slot.index, "node": node.id }),
        );
        self.wake_engine();
        self.find_node(&node.id).await
    }

    pub(super) async fn slot_of(&self, env: &str, node: &str) -> Result<(Node, Slot)> {
        self.must_env(env).await?;
        let node = self.find_node(node).await?;
        let slot = self
            .store
            .slots(Some(env))
            .await?
            .into_iter()
            .find(|s| s.node.as_deref() == Some(node.id.as_str()))
            .ok_or_else(|| Error::conflict(format!("node {} is not in {env}", node.id)))?;
        Ok((node, slot))
    }

    /// Slots of one environment or of all.
    pub async fn slots(&self, env: Option<&str>) -> Result<Vec<Slot>> {
        if let Some(e) = env {
            self.must_env(e).await?;
        }
        Ok(self.store.slots(env).await?)
    }

    /// Load reports and engine decisions of an environment since `since_ms`.
    pub async fn env_history(&self, name: &str, since_ms: i64) -> Result<EnvHistory> {
        self.must_env(name).await?;
        let load = self.store.load_history(name, since_ms).await?;
        let mut decisions = Vec::new();
        let mut after = 0;
        loop {
            let batch = self.store.events(after, None, 5000).await?;
            let Some(last) = batch.last() else { break };
            after = last.id;
            decisions.extend(batch.into_iter().filter(|e| {
                e.at_ms >= since_ms
                    && matches!(
                        e.kind,
                        EventKind::EngineDecision | EventKind::SlotStep | EventKind::Alert
                    )
                    && e.detail.get("env").and_then(|v| v.as_str()) == Some(name)
            }));
        }
        Ok(EnvHistory { load, decisions })
    }

    /// A node's load reports since `since_ms` (from every environment it
    /// served), oldest first: the node view's load chart.
    pub async fn node_load(&self, node: &str, since_ms: i64) -> Result<Vec<LoadSample>> {
        let node = self.find_node(node).await?;
        let mut out = Vec::new();
        for env in self.store.environments().await? {
            out.extend(
                self.store
                    .load_history(&env.name, since_ms)
                    .await?
                    .into_iter()
                    .filter(|l| l.node == node.id),
            );
        }
        out.sort_by_key(|l| l.at_ms);
        Ok(out)
    }

    /// Records a heartbeat of a node serving `env` in the load history.
    pub async fn record_load(&self, node: &str, env: &str, hb: &boot_proto::Heartbeat) {
        let sample = LoadSample {
            at_ms: now_ms(),
            node: node.to_string(),
            environment: env.to_string(),
            load1: hb.load1,
            cpu_busy: hb.cpu_busy,
            busy: hb.busy,
            health: hb.health.clone(),
        };
        if let Err(e) = self.store.append_load(&sample).await {
            tracing::warn!(node, error = %format!("{e:#}"), "load sample not recorded");
        }
    }
}

/// A vacant slot of `env` at `index`, with its host name, address and disk.
pub fn new_slot(env: &Environment, index: u32) -> Slot {
    Slot {
        environment: env.name.clone(),
        index,
        hostname: env.hostname(index),
        ip: env.address(index),
        overlay: env.overlay(index),
        ..Default::default()
    }
}

fn view(env: Environment, slots: Vec<Slot>) -> EnvView {
    let holding = slots.iter().filter(|s| s.node.is_some()).count() as u32;
    let target = env.target();
    EnvView {
        env,
        slots,
        holding,
        target,
    }
}
