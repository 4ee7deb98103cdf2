//! The dynamic boot engine: it owns decisions. Each pass reads what the
//! store holds (environments, slots, nodes, load), turns schedules and
//! load policies into desired node counts, decides which node goes where
//! ([`decide`]), stores each claim or release as a slot step, and advances
//! every slot by its durable steps ([`steps`]). It runs on every change
//! the control layer or an agent reports, and at least once per tick.
//! Time comes from a [`Clock`], so tests move it by hand.

mod clock;
mod clone;
mod decide;
mod steps;
#[cfg(test)]
mod tests;

pub use clock::{Clock, ManualClock, SystemClock};
pub use decide::{decide, Decision, World};

use crate::config::EngineConfig;
use crate::control::{new_slot, Control};
use crate::model::{Environment, EventKind, Node, ScheduleAction, Slot, SlotStep};
use crate::store::{Expect, Fence};
use anyhow::Result;
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the usage window takes a sample, at most.
const USAGE_SAMPLE_MS: i64 = 5_000;

/// What the engine remembers between passes (all of it can be lost: the
/// store holds every step; this only paces alerts, schedules and policies).
#[derive(Default)]
struct Memory {
    /// Nodes not to pick until the given time (their move failed).
    cooling: HashMap<String, i64>,
    /// (time, nodes held per environment), over the entitlement window.
    usage: VecDeque<(i64, HashMap<String, u32>)>,
    /// Environments with an open "below minimum" alert.
    short: HashSet<String>,
    /// Short environments, with the (holding, target) last reported for them.
    waiting: HashMap<String, (u32, u32)>,
    /// Environments whose target was met (for started/stopped alerts).
    met: HashMap<String, bool>,
    /// Last time each environment's schedules were checked.
    schedule_checked: HashMap<String, i64>,
    /// Last policy action per environment.
    policy_acted: HashMap<String, i64>,
    /// Last SLA alert per environment.
    sla_alerted: HashMap<String, i64>,
    /// Last load-sample pruning.
    pruned_ms: i64,
    /// Failing-over slots with an open "failover-failed" alert.
    failover_failed: HashSet<(String, u32)>,
    /// (node, image) pairs that cannot be pre-staged, until when.
    stage_refused: HashMap<(String, String), i64>,
}

/// Each environment's target after its next schedule that adds nodes
/// (scale up or activate), if its next schedule does.
fn scale_ups(envs: &[Environment], now: i64) -> HashMap<String, u32> {
    use chrono::{TimeZone, Utc};
    let Some(from) = Utc.timestamp_millis_opt(now).single() else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for env in envs {
        let next = env
            .schedules
            .iter()
            .filter_map(|s| Some((s.parse_cron().ok()?.after(&from).next()?, &s.action)))
            .min_by_key(|(t, _)| *t);
        let target = match next {
            Some((_, ScheduleAction::Scale(n))) => (*n).clamp(env.min, env.max),
            Some((_, ScheduleAction::Activate)) => env.desired.clamp(env.min, env.max),
            _ => continue,
        };
        if target > env.target() {
            out.insert(env.name.clone(), target);
        }
    }
    out
}

/// The engine.
pub struct Engine {
    c: Arc<Control>,
    clock: Arc<dyn Clock>,
    mem: Mutex<Memory>,
    /// Fence of the controller lease this engine runs under (0: embedded store).
    fence: Fence,
}

impl Engine {
    /// An engine over the control layer.
    pub fn new(c: Arc<Control>, clock: Arc<dyn Clock>) -> Engine {
        Engine {
            c,
            clock,
            mem: Mutex::new(Memory::default()),
            fence: Fence::default(),
        }
    }

    /// The engine of the designated controller holding the lease `fence`:
    /// its slot writes carry it, so they are refused once another server
    /// has taken the lease over.
    pub fn with_fence(mut self, fence: Fence) -> Engine {
        self.fence = fence;
        self
    }

    fn cfg(&self) -> &EngineConfig {
        &self.c.config.engine
    }

    fn fresh_ms(&self) -> i64 {
        (self.c.config.agent.heartbeat_timeout_secs * 1000) as i64
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cool(&self, node: &str) {
        let until = self.clock.now_ms() + self.cfg().failed_node_cooldown_secs as i64 * 1000;
        self.mem().cooling.insert(node.to_string(), until);
    }

    /// Runs passes until the server stops: on every wake-up, else each tick.
    /// A failed pass is logged and retried; it never stops the server.
    pub async fn run(self: Arc<Self>) -> Result<()> {
        let tick = Duration::from_millis(self.cfg().tick_ms.max(50));
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %format!("{e:#}"), "engine pass failed; retrying");
            }
            tokio::select! {
                _ = self.c.engine_wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// One pass: schedules, policies, decisions, then every slot's step.
    pub async fn pass(&self) -> Result<()> {
        let now = self.clock.now_ms();
        self.run_schedules(now).await?;
        self.run_policies(now).await?;
        let envs = self.c.store.environments().await?;
        let slots = self.c.store.slots(None).await?;
        let nodes = self.c.store.nodes().await?;
        let hosts = self.c.store.hosts().await?;
        let vms = self.c.store.vms().await?;
        let usage = self.usage(now, &envs, &slots);
        let cooling: HashSet<String> = {
            let mut m = self.mem();
            m.cooling.retain(|_, until| *until > now);
            m.cooling.keys().cloned().collect()
        };
        let world = World {
            envs: &envs,
            slots: &slots,
            nodes: &nodes,
            now_ms: now,
            fresh_ms: self.fresh_ms(),
            manual_enrolment: self.cfg().manual_enrolment,
            cooling: &cooling,
            usage: &usage,
            hosts: &hosts,
            vms: &vms,
        };
        let decisions = decide(&world);
        let mut shorts = HashSet::new();
        let mut unplaced = HashSet::new();
        for d in decisions {
            if let Decision::Short {
                env, failing_over, ..
            } = &d
            {
                shorts.insert(env.clone());
                if let Some(i) = failing_over {
                    unplaced.insert((env.clone(), *i));
                }
            }
            if let Err(e) = self.apply(d, &envs, &slots, now).await {
                tracing::warn!(error = %format!("{e:#}"), "engine decision not applied");
            }
        }
        self.mem().short.retain(|e| shorts.contains(e));
        self.mem().waiting.retain(|e, _| shorts.contains(e));
        self.mem().failover_failed.retain(|k| unplaced.contains(k));
        // Advance every slot that holds a node, each on its own, so that many
        // nodes move in parallel and one slow store call delays no other.
        let slots = self.c.store.slots(None).await?;
        let nodes: HashMap<String, Node> = self
            .c
            .store
            .nodes()
            .await?
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect();
        let mut work = Vec::new();
        for slot in slots.iter().filter(|s| s.node.is_some()) {
            let Some(env) = envs.iter().find(|e| e.name == slot.environment) else {
                continue;
            };
            let node = slot.node.as_ref().and_then(|n| nodes.get(n)).cloned();
            work.push(async move {
                let (e, i) = (slot.environment.clone(), slot.index);
                if let Err(err) = self.advance(slot.clone(), env, node).await {
                    tracing::warn!(env = %e, slot = i, error = %format!("{err:#}"), "slot step failed; retrying");
                }
            });
        }
        futures_util::future::join_all(work).await;
        // Vacant slots on their way out (`env remove-node`) go away.
        for slot in slots
            .iter()
            .filter(|s| s.node.is_none() && s.removal.is_some())
        {
            if let Err(e) = self.finish_removal(slot).await {
                tracing::warn!(env = %slot.environment, slot = slot.index, error = %format!("{e:#}"), "slot removal not finished; retrying");
            }
        }
        // Alerts on what the steps just did, not on what the pass began with.
        let slots = self.c.store.slots(None).await?;
        self.env_alerts(&envs, &slots);
        if self.cfg().prestage {
            if let Err(e) = self.prestage(now, &envs, &slots, &cooling).await {
                tracing::warn!(error = %format!("{e:#}"), "pre-staging skipped this pass");
            }
        }
        self.prune(now).await;
        Ok(())
    }

    /// Pre-staging: tells each idle or preemptible node to load the image of
    /// the environment it most likely joins next ([`decide::likely_next`]),
    /// unless that image is staged there already. Runs after the pass's
    /// decisions and steps, on what they left.
    async fn prestage(
        &self,
        now: i64,
        envs: &[Environment],
        slots: &[Slot],
        cooling: &HashSet<String>,
    ) -> Result<()> {
        let nodes = self.c.store.nodes().await?;
        let usage = HashMap::new();
        let world = World {
            envs,
            slots,
            nodes: &nodes,
            now_ms: now,
            fresh_ms: self.fresh_ms(),
            manual_enrolment: self.cfg().manual_enrolment,
            cooling,
            usage: &usage,
            hosts: &[],
            vms: &[],
        };
        let ups = scale_ups(envs, now);
        let wall = crate::model::now_ms();
        for st in decide::likely_next(&world, &ups) {
            let (Some(env), Some(node)) = (
                envs.iter().find(|e| e.name == st.env),
                nodes.iter().find(|n| n.id == st.node),
            ) else {
                continue;
            };
            if self.c.plan.handoffs.staged_image(&node.id, wall).as_deref() == Some(&env.image) {
                continue;
            }
            let key = (node.id.clone(), env.image.clone());
            if self
                .mem()
                .stage_refused
                .get(&key)
                .is_some_and(|until| *until > now)
            {
                continue;
            }
            let kind = match self.c.plan.prestage_command(node, &env.image).await {
                Ok(k) => k,
                Err(e) => {
                    // Not a Linux image, another architecture: not again soon.
                    tracing::debug!(node = %node.id, env = %env.name, error = %format!("{e:#}"), "not pre-staged");
                    self.mem().stage_refused.insert(key, now + 600_000);
                    continue;
                }
            };
            self.c.queue(&node.id, kind).await?;
            tracing::info!(node = %node.id, env = %env.name, image = %env.image, reason = %st.reason, "pre-staging");
            self.c.events.emit(
                Some(node.id.clone()),
                EventKind::EngineDecision,
                json!({ "env": env.name, "action": "prestage", "nodes": [node.id], "image": env.image, "reason": st.reason }),
            );
        }
        Ok(())
    }

    /// Stores one decision as slot writes (claims vacate the victim's slot
    /// in the same write) and records why.
    async fn apply(
        &self,
        d: Decision,
        envs: &[Environment],
        slots: &[Slot],
        now: i64,
    ) -> Result<()> {
        let find = |env: &str, index: u32| {
            slots
                .iter()
                .find(|s| s.environment == env && s.index == index)
                .cloned()
        };
        let d = match d {
            Decision::StartVm {
                env,
                index,
                host,
                cpus,
                memory_mb,
                firmware,
                stands_in_for,
                standby,
                reason,
            } => {
                // The VM's node takes the slot at once: the slot is pointed
                // (address, disk, image) before the VM's first network boot.
                let vm = match &standby {
                    Some(id) => self.c.start_standby(id, index).await?,
                    None => {
                        let req = crate::control::VmRequest {
                            host: host.clone(),
                            environment: env.clone(),
                            slot: index,
                            cpus,
                            memory_mb,
                            firmware,
                            stands_in_for,
                        };
                        self.c.start_vm(&req).await?
                    }
                };
                self.c.events.emit(
                    Some(vm.node.clone()),
                    EventKind::EngineDecision,
                    json!({ "env": env, "action": "start-vm", "slot": index, "host": host, "vm": vm.id,
                            "standby": standby.is_some(), "nodes": [vm.node], "reason": reason }),
                );
                Decision::Claim {
                    env,
                    index,
                    node: vm.node,
                    from: None,
                    reason,
                }
            }
            other => other,
        };
        match d {
            Decision::StartVm { .. } => {}
            Decision::ReserveVm {
                env,
                index,
                protects,
                host,
                cpus,
                memory_mb,
                firmware,
                reason,
            } => {
                let req = crate::control::VmRequest {
                    host: host.clone(),
                    environment: env.clone(),
                    slot: index,
                    cpus,
                    memory_mb,
                    firmware,
                    stands_in_for: Some(protects.clone()),
                };
                let vm = self.c.reserve_vm(&req).await?;
                tracing::info!(env = %env, node = %protects, vm = %vm.id, host = %host, "standby VM reserved");
                self.c.events.emit(
                    Some(protects.clone()),
                    EventKind::EngineDecision,
                    json!({ "env": env, "action": "reserve-vm", "slot": index, "host": host, "vm": vm.id,
                            "nodes": [protects], "reason": reason }),
                );
            }
            Decision::DropStandby { vm, node, reason } => {
                if self.c.stop_vm_of(&node, &reason).await?.is_some() {
                    tracing::info!(vm = %vm, "standby VM dropped");
                    self.c.events.emit(
                        Some(node.clone()),
                        EventKind::EngineDecision,
                        json!({ "action": "drop-standby", "vm": vm, "nodes": [node], "reason": reason }),
                    );
                }
            }
            Decision::Failback {
                env,
                index,
                vm,
                home,
                reason,
            } => {
                let Some(slot) = find(&env, index) else {
                    return Ok(());
                };
                let expect = Expect::Step(slot.step);
                let mut next = slot.clone();
                next.failing_back = true;
                next.command = None;
                next.detail = format!("failing back to {home}: stopping the VM's work");
                if self
                    .c
                    .store
                    .write_slots(self.fence, &[(next, expect)])
                    .await?
                {
                    self.c.wake_engine();
                    tracing::info!(env = %env, slot = index, vm = %vm, home = %home, "failback");
                    self.c.events.emit(
                        Some(home.clone()),
                        EventKind::EngineDecision,
                        json!({ "env": env, "action": "failback", "slot": index, "nodes": [home, vm], "reason": reason }),
                    );
                }
            }
            Decision::Claim {
                env,
                index,
                node,
                from,
                reason,
            } => {
                let Some(e) = envs.iter().find(|x| x.name == env) else {
                    return Ok(());
                };
                let mut slot = find(&env, index).unwrap_or_else(|| new_slot(e, index));
                let expect = Expect::Step(slot.step);
                slot.hostname = e.hostname(index);
                slot.ip = e.address(index);
                slot.overlay = e.overlay(index);
                slot.node = Some(node.clone());
                slot.step = SlotStep::Pending;
                slot.step_since_ms = now;
                slot.move_since_ms = now;
                slot.command = None;
                slot.timings.clear();
                slot.detail = reason.clone();
                let mut writes = vec![(slot, expect)];
                if let Some((v_env, v_index)) = &from {
                    let Some(v) = find(v_env, *v_index) else {
                        return Ok(());
                    };
                    let expect = Expect::Step(v.step);
                    writes.push((
                        v.vacated(now, &format!("node {node} taken by {env}")),
                        expect,
                    ));
                }
                if self.c.store.write_slots(self.fence, &writes).await? {
                    self.c.wake_engine();
                    tracing::info!(env = %env, slot = index, node = %node, reason = %reason, "claim");
                    self.c.events.emit(
                        Some(node.clone()),
                        EventKind::EngineDecision,
                        json!({ "env": env, "action": if from.is_some() { "preempt" } else { "claim" }, "slot": index, "nodes": [node], "from": from.as_ref().map(|(e, i)| json!({"env": e, "slot": i})), "reason": reason }),
                    );
                }
            }
            Decision::Release {
                env,
                index,
                node,
                reason,
            } => {
                let Some(mut slot) = find(&env, index) else {
                    return Ok(());
                };
                let expect = Expect::Step(slot.step);
                slot.step = SlotStep::Releasing;
                slot.step_since_ms = now;
                slot.command = None;
                slot.detail = reason.clone();
                if self
                    .c
                    .store
                    .write_slots(self.fence, &[(slot, expect)])
                    .await?
                {
                    self.c.wake_engine();
                    tracing::info!(env = %env, slot = index, node = %node, reason = %reason, "release");
                    self.c.events.emit(
                        Some(node.clone()),
                        EventKind::EngineDecision,
                        json!({ "env": env, "action": "release", "slot": index, "nodes": [node], "reason": reason }),
                    );
                }
            }
            Decision::Short {
                env,
                holding,
                target,
                below_min,
                failing_over,
            } => {
                if let Some(i) = failing_over {
                    if self.mem().failover_failed.insert((env.clone(), i)) {
                        tracing::warn!(env = %env, slot = i, "failover failed: no spare node, no failover host");
                        self.c.events.emit(
                            None,
                            EventKind::Alert,
                            json!({ "alert": "failover-failed", "env": env, "slot": i, "reason": "no idle compatible spare node and no live failover host with a free VM" }),
                        );
                    }
                }
                let seen = self.mem().waiting.insert(env.clone(), (holding, target));
                if seen != Some((holding, target)) {
                    // Said once per shortage (and again when it changes), so
                    // that "why does it not grow?" has an answer in the log.
                    let reason = format!(
                        "{env} wants {target} nodes, holds {holding}: no idle compatible node, none it may preempt"
                    );
                    tracing::info!(env = %env, holding, target, "{reason}");
                    self.c.events.emit(
                        None,
                        EventKind::EngineDecision,
                        json!({ "env": env, "action": "short", "holding": holding, "target": target, "below_min": below_min, "reason": reason }),
                    );
                }
                if below_min && self.mem().short.insert(env.clone()) {
                    self.c.events.emit(
                        None,
                        EventKind::Alert,
                        json!({ "alert": "env-below-minimum", "env": env, "holding": holding, "target": target }),
                    );
                }
            }
        }
        Ok(())
    }

    /// Average nodes held per environment over the entitlement window.
    fn usage(&self, now: i64, envs: &[Environment], slots: &[Slot]) -> HashMap<String, f64> {
        let window = self.cfg().entitlement_window_secs as i64 * 1000;
        let mut m = self.mem();
        if m.usage
            .back()
            .is_none_or(|(t, _)| now - t >= USAGE_SAMPLE_MS)
        {
            let held = envs
                .iter()
                .map(|e| {
                    let n = slots
                        .iter()
                        .filter(|s| s.environment == e.name && s.node.is_some())
                        .count() as u32;
                    (e.name.clone(), n)
                })
                .collect();
            m.usage.push_back((now, held));
        }
        while m.usage.front().is_some_and(|(t, _)| now - t > window) {
            m.usage.pop_front();
        }
        let samples = m.usage.len().max(1) as f64;
        let mut avg: HashMap<String, f64> = HashMap::new();
        for (_, held) in &m.usage {
            for (e, n) in held {
                *avg.entry(e.clone()).or_default() += f64::from(*n) / samples;
            }
        }
        avg
    }

    /// Applies schedules whose time came since the last check.
    async fn run_schedules(&self, now: i64) -> Result<()> {
        use chrono::{TimeZone, Utc};
        for env in self.c.store.environments().await? {
            if env.schedules.is_empty() {
                continue;
            }
            let since = *self
                .mem()
                .schedule_checked
                .entry(env.name.clone())
                .or_insert(now);
            self.mem().schedule_checked.insert(env.name.clone(), now);
            let Some(from) = Utc.timestamp_millis_opt(since).single() else {
                continue;
            };
            for s in &env.schedules {
                let Ok(cron) = s.parse_cron() else { continue };
                let due = cron
                    .after(&from)
                    .next()
                    .is_some_and(|t| t.timestamp_millis() <= now);
                if !due {
                    continue;
                }
                let patch = match s.action {
                    ScheduleAction::Activate => json!({ "active": true }),
                    ScheduleAction::Deactivate => json!({ "active": false }),
                    ScheduleAction::Scale(n) => json!({ "desired": n.clamp(env.min, env.max) }),
                };
                tracing::info!(env = %env.name, cron = %s.cron, action = ?s.action, "schedule");
                self.c.update_env(&env.name, patch).await?;
                self.c.events.emit(
                    None,
                    EventKind::EngineDecision,
                    json!({ "env": env.name, "action": "schedule", "schedule": s, "reason": format!("schedule {}", s.cron) }),
                );
            }
        }
        Ok(())
    }

    /// Load policies: above the threshold for the window adds a node,
    /// below removes one (the decision picks a node that is not busy);
    /// min and max always hold. Acts only when every slot of the
    /// environment is ready and a whole window passed since its last action.
    async fn run_policies(&self, now: i64) -> Result<()> {
        let slots = self.c.store.slots(None).await?;
        for env in self.c.store.environments().await? {
            let Some(p) = env.policy.clone() else {
                continue;
            };
            if !env.active {
                continue;
            }
            let window = p.window_secs as i64 * 1000;
            let mine: Vec<&Slot> = slots
                .iter()
                .filter(|s| s.environment == env.name && s.node.is_some())
                .collect();
            if mine.is_empty() || mine.iter().any(|s| s.step != SlotStep::Ready) {
                continue;
            }
            let settled = mine.iter().map(|s| s.step_since_ms).max().unwrap_or(now);
            let last = self.mem().policy_acted.get(&env.name).copied().unwrap_or(0);
            if now - settled < window || now - last < window {
                continue;
            }
            let samples = self.c.store.load_history(&env.name, now - window).await?;
            let values: Vec<f64> = samples.iter().filter_map(|s| s.metric(&p.metric)).collect();
            if values.is_empty() {
                continue;
            }
            let avg = values.iter().sum::<f64>() / values.len() as f64;
            self.sla_check(&env, &samples, now);
            let desired = env.desired.clamp(env.min, env.max);
            let next = if avg > p.add_above && desired < env.max {
                desired + 1
            } else if avg < p.remove_below && desired > env.min {
                desired - 1
            } else {
                continue;
            };
            self.mem().policy_acted.insert(env.name.clone(), now);
            let reason = format!(
                "{} averaged {avg:.2} over {}s ({} samples); thresholds {} / {}",
                p.metric,
                p.window_secs,
                values.len(),
                p.remove_below,
                p.add_above
            );
            tracing::info!(env = %env.name, from = desired, to = next, %reason, "policy");
            self.c
                .update_env(&env.name, json!({ "desired": next }))
                .await?;
            self.c.events.emit(
                None,
                EventKind::EngineDecision,
                json!({ "env": env.name, "action": "scale", "from": desired, "to": next, "reason": reason }),
            );
            self.c.events.emit(
                None,
                EventKind::Alert,
                json!({ "alert": "load-threshold", "env": env.name, "metric": p.metric, "average": avg, "to": next }),
            );
        }
        Ok(())
    }

    /// An SLA alert when a node's health says `latency_ms` above the
    /// environment's `sla_latency_ms` config value (once per policy window).
    fn sla_check(&self, env: &Environment, samples: &[crate::model::LoadSample], now: i64) {
        let Some(limit) = env
            .config
            .get("sla_latency_ms")
            .and_then(|v| v.parse::<f64>().ok())
        else {
            return;
        };
        let worst = samples
            .iter()
            .filter_map(|s| s.metric("latency_ms"))
            .fold(f64::NEG_INFINITY, f64::max);
        if worst <= limit {
            return;
        }
        let mut m = self.mem();
        let window = env
            .policy
            .as_ref()
            .map_or(60_000, |p| p.window_secs as i64 * 1000);
        if m.sla_alerted
            .get(&env.name)
            .is_some_and(|t| now - t < window)
        {
            return;
        }
        m.sla_alerted.insert(env.name.clone(), now);
        drop(m);
        self.c.events.emit(
            None,
            EventKind::Alert,
            json!({ "alert": "sla-latency", "env": env.name, "latency_ms": worst, "limit_ms": limit }),
        );
    }

    /// `env-started` when an active environment first has all its target
    /// nodes ready; `env-stopped` when an inactive one holds none.
    fn env_alerts(&self, envs: &[Environment], slots: &[Slot]) {
        for env in envs {
            let ready = slots
                .iter()
                .filter(|s| s.environment == env.name && s.step == SlotStep::Ready)
                .count() as u32;
            let held = slots
                .iter()
                .filter(|s| s.environment == env.name && s.node.is_some())
                .count() as u32;
            let state = if env.active && env.target() > 0 && ready >= env.target() {
                Some(true)
            } else if !env.active && held == 0 {
                Some(false)
            } else {
                None
            };
            let Some(state) = state else { continue };
            let before = self.mem().met.insert(env.name.clone(), state);
            if before != Some(state) {
                let alert = if state { "env-started" } else { "env-stopped" };
                if before.is_some() || state {
                    self.c.events.emit(
                        None,
                        EventKind::Alert,
                        json!({ "alert": alert, "env": env.name, "nodes": ready }),
                    );
                }
            }
        }
    }

    async fn prune(&self, now: i64) {
        if now - self.mem().pruned_ms < 600_000 {
            return;
        }
        self.mem().pruned_ms = now;
        let keep = self.cfg().load_retain_secs as i64 * 1000;
        if let Err(e) = self.c.store.prune_load(now - keep).await {
            tracing::warn!(error = %format!("{e:#}"), "load samples not pruned");
        }
        // Older than an hour: one sample per node and minute is enough.
        if let Err(e) = self.c.store.downsample_load(now - 3_600_000, 60_000).await {
            tracing::warn!(error = %format!("{e:#}"), "load samples not downsampled");
        }
    }
}
