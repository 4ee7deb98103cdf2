//! Allocation decisions, as pure functions of what the store holds: which
//! environment gets which node (an idle pool node first, else one taken
//! from a lower-priority or over-entitled preemptible environment, else —
//! for a slot failing over — a VM, see [`failover`]) and which slots give
//! their node back when an environment shrinks. [`failover`] also decides
//! standby VMs and failbacks; [`stage`] where idle nodes pre-stage. No I/O:
//! unit tests feed it plain values.

mod failover;
mod stage;
#[cfg(test)]
mod tests;

use crate::control::is_virtual;
use crate::model::{Environment, Host, Node, NodeState, Slot, SlotStep, Vm};
use boot_proto::FirmwareKind;
use failover::{failbacks, standbys, start_vm, vm_wanted, HostLoad};
pub use stage::likely_next;
use std::collections::{BTreeMap, HashMap, HashSet};

/// What the engine decided to do with one slot.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Put `node` into slot `index` of `env`; `from` is the slot it leaves
    /// (preemption), vacated in the same store write.
    #[allow(missing_docs)]
    Claim {
        env: String,
        index: u32,
        node: String,
        from: Option<(String, u32)>,
        reason: String,
    },
    /// Slot `index` of `env` gives its node back.
    #[allow(missing_docs)]
    Release {
        env: String,
        index: u32,
        node: String,
        reason: String,
    },
    /// The environment `env` holds `holding` of its `target` nodes and none
    /// can be had now (`below_min`: under its minimum; `failing_over`: the
    /// slot failing over that found no spare and no failover host).
    #[allow(missing_docs)]
    Short {
        env: String,
        holding: u32,
        target: u32,
        below_min: bool,
        failing_over: Option<u32>,
    },
    /// Start a VM on failover host `host` for slot `index` of `env`, which
    /// is failing over (or a clone waiting for its node) and found no spare
    /// node; the slot takes the VM's node. Sized from the node it stands in
    /// for (`stands_in_for`; a clone: its template's node). `standby`: the
    /// reserved standby VM (1:1 mapping) to start instead of a new one.
    #[allow(missing_docs)]
    StartVm {
        env: String,
        index: u32,
        host: String,
        cpus: u32,
        memory_mb: u64,
        firmware: FirmwareKind,
        stands_in_for: Option<String>,
        standby: Option<String>,
        reason: String,
    },
    /// 1:1 mapping: reserve a standby VM on `host` for the physical node
    /// `protects`, which holds a slot of `env` (sized from its inventory).
    #[allow(missing_docs)]
    ReserveVm {
        env: String,
        index: u32,
        protects: String,
        host: String,
        cpus: u32,
        memory_mb: u64,
        firmware: FirmwareKind,
        reason: String,
    },
    /// A reserved standby VM no longer protects anything (its node left the
    /// environment, or the environment left the 1:1 mapping): free it.
    #[allow(missing_docs)]
    DropStandby {
        vm: String,
        node: String,
        reason: String,
    },
    /// Slot `index` of `env` stands on the VM node `vm` and its home node
    /// `home` is back: stop the VM's work, then move the slot home.
    #[allow(missing_docs)]
    Failback {
        env: String,
        index: u32,
        vm: String,
        home: String,
        reason: String,
    },
}

/// Everything a decision looks at.
pub struct World<'a> {
    /// Every environment.
    pub envs: &'a [Environment],
    /// Every stored slot.
    pub slots: &'a [Slot],
    /// Every node (with the slot it holds).
    pub nodes: &'a [Node],
    /// Now, by the engine's clock.
    pub now_ms: i64,
    /// A node whose heartbeat is older than this is not up.
    pub fresh_ms: i64,
    /// Only enrolled nodes join the pool.
    pub manual_enrolment: bool,
    /// Nodes not to pick now (a move of theirs failed recently).
    pub cooling: &'a HashSet<String>,
    /// Average nodes held per environment over the entitlement window.
    pub usage: &'a HashMap<String, f64>,
    /// Failover hosts.
    pub hosts: &'a [Host],
    /// VMs on failover hosts (every record; live ones hold host capacity).
    pub vms: &'a [Vm],
}

impl World<'_> {
    fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Nodes that could serve some environment (not retired, quarantined or failed).
    fn pool_size(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| self.eligible(n) || n.environment.is_some())
            .count()
    }

    fn eligible(&self, n: &Node) -> bool {
        self.up_idle(n) && !self.cooling.contains(&n.id)
    }

    /// Idle in no environment, its agent up, enrolled when that is asked
    /// for; never a VM (a VM serves the slot it was started for only).
    fn up_idle(&self, n: &Node) -> bool {
        n.state == NodeState::Idle
            && !is_virtual(n)
            && n.environment.is_none()
            && n.agent_up(self.now_ms, self.fresh_ms)
            && (!self.manual_enrolment || n.enrolled)
    }

    /// The home node of a slot standing on a VM is back: up and idle, and
    /// either past its cool-down, said hello since the slot left it (it
    /// rebooted), or marked repaired by an admin.
    fn home_is_back(&self, s: &Slot, home: &Node) -> bool {
        let rebooted = home
            .last_hello_ms
            .zip(s.home_left_ms)
            .is_some_and(|(hello, left)| hello > left);
        self.up_idle(home) && (!self.cooling.contains(&home.id) || rebooted || s.home_repaired)
    }

    /// Entitled nodes of `env` (its share of the pool), if it has a share.
    fn entitled(&self, env: &Environment) -> Option<f64> {
        env.share_pct
            .map(|p| f64::from(p) / 100.0 * self.pool_size() as f64)
    }

    fn over_entitlement(&self, env: &Environment) -> bool {
        let used = self.usage.get(&env.name).copied().unwrap_or(0.0);
        match self.entitled(env) {
            Some(e) => used > e,
            None => true,
        }
    }

    fn under_entitlement(&self, env: &Environment) -> bool {
        let used = self.usage.get(&env.name).copied().unwrap_or(0.0);
        self.entitled(env).is_some_and(|e| used < e)
    }
}

/// Slots of `env` that hold a node and are not giving it back.
fn holding(slots: &[Slot], env: &str) -> u32 {
    slots
        .iter()
        .filter(|s| {
            s.environment == env
                && s.node.is_some()
                && !matches!(s.step, SlotStep::Releasing | SlotStep::Failed)
        })
        .count() as u32
}

/// The slot of `env` to fill next: a vacant slot failing over first (its
/// host name, address and disk come back on the new node), else the lowest
/// free one (absent or vacant); never one already taken this pass.
fn free_index(env: &Environment, slots: &[Slot], taken: &HashSet<(String, u32)>) -> Option<u32> {
    let slot = |i: u32| {
        slots
            .iter()
            .find(|s| s.environment == env.name && s.index == i)
    };
    let free = |i: &u32| {
        !taken.contains(&(env.name.clone(), *i))
            && slot(*i).is_none_or(|s| {
                s.node.is_none() && s.step == SlotStep::Vacant && s.removal.is_none()
            })
    };
    (0..env.max)
        .filter(free)
        .find(|i| slot(*i).is_some_and(|s| s.failed_over_ms.is_some()))
        .or_else(|| {
            // Then a clone waiting for its node (its disk is the snapshot).
            (0..env.max)
                .filter(free)
                .find(|i| slot(*i).is_some_and(|s| s.reidentify))
        })
        .or_else(|| (0..env.max).find(free))
}

/// Smaller is a better fit: the least capable node that meets the
/// requirements keeps bigger nodes for environments that need them.
fn fit_rank(n: &Node) -> (u64, u64, String) {
    let inv = n.inventory.as_ref();
    let cpus = inv.and_then(|i| i.get("cpus")).and_then(|v| v.as_u64());
    let mem = inv
        .and_then(|i| i.get("memory_bytes"))
        .and_then(|v| v.as_u64());
    (cpus.unwrap_or(0), mem.unwrap_or(0), n.id.clone())
}

/// What to do now, environments by priority (highest first).
pub fn decide(w: &World) -> Vec<Decision> {
    let mut out = Vec::new();
    let mut envs: Vec<&Environment> = w.envs.iter().collect();
    envs.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    let mut held: BTreeMap<String, u32> = envs
        .iter()
        .map(|e| (e.name.clone(), holding(w.slots, &e.name)))
        .collect();
    let mut used_nodes: HashSet<String> = HashSet::new();
    let mut taken_slots: HashSet<(String, u32)> = HashSet::new();
    let mut pool: Vec<&Node> = w.nodes.iter().filter(|n| w.eligible(n)).collect();
    pool.sort_by_key(|n| fit_rank(n));

    let mut hosts = HostLoad::new(w);

    for env in &envs {
        out.extend(failbacks(w, env, &mut used_nodes));
        let target = env.target();
        let mut have = held[&env.name];
        while have < target {
            let Some(index) = free_index(env, w.slots, &taken_slots) else {
                break;
            };
            // A slot's preferred node (an import's node map) first, when idle.
            let preferred = w
                .slots
                .iter()
                .find(|s| s.environment == env.name && s.index == index)
                .and_then(|s| s.preferred_node.as_deref());
            let usable = |n: &&Node| !used_nodes.contains(&n.id) && env.requirements.met_by(n);
            let idle = preferred
                .and_then(|p| pool.iter().position(|n| n.id == p && usable(n)))
                .or_else(|| pool.iter().position(usable));
            let (node, from, reason) = if let Some(i) = idle {
                let n = pool.remove(i);
                (
                    n.id.clone(),
                    None,
                    format!(
                        "{} wants {target} nodes, holds {have}; idle pool node",
                        env.name
                    ),
                )
            } else if let Some((victim, why)) = pick_victim(w, env, &held, &used_nodes) {
                let v_env = victim.environment.clone();
                *held.get_mut(&v_env).expect("victim env is known") -= 1;
                (
                    victim.node.clone().expect("victim holds a node"),
                    Some((v_env, victim.index)),
                    why,
                )
            } else if let Some(want) = vm_wanted(w, env, index) {
                match start_vm(w, env, index, &want, &mut hosts) {
                    Some(start) => {
                        taken_slots.insert((env.name.clone(), index));
                        out.push(start);
                        have += 1;
                        continue;
                    }
                    None => {
                        out.push(Decision::Short {
                            env: env.name.clone(),
                            holding: have,
                            target,
                            below_min: have < env.min.min(env.max) && env.active,
                            failing_over: Some(index),
                        });
                        break;
                    }
                }
            } else {
                out.push(Decision::Short {
                    env: env.name.clone(),
                    holding: have,
                    target,
                    below_min: have < env.min.min(env.max) && env.active,
                    failing_over: None,
                });
                break;
            };
            used_nodes.insert(node.clone());
            taken_slots.insert((env.name.clone(), index));
            out.push(Decision::Claim {
                env: env.name.clone(),
                index,
                node,
                from,
                reason,
            });
            have += 1;
        }
        held.insert(env.name.clone(), have);
        if have > target {
            out.extend(releases(w, env, have - target, target));
        }
    }
    // Standbys last: failovers above had the first pick of host capacity.
    out.extend(standbys(w, &out, &mut hosts));
    out
}

/// Which of `env`'s nodes to give back: ready ones that are not busy, the
/// highest slot index first (so slot numbers stay dense and each slot
/// keeps its disk for when the environment grows again).
fn releases(w: &World, env: &Environment, excess: u32, target: u32) -> Vec<Decision> {
    let mut candidates: Vec<&Slot> = w
        .slots
        .iter()
        .filter(|s| {
            s.environment == env.name
                && s.node.is_some()
                && matches!(s.step, SlotStep::Ready | SlotStep::Pending)
                && !s.cloning()
        })
        .collect();
    candidates.sort_by_key(|s| std::cmp::Reverse(s.index));
    let mut out = Vec::new();
    for s in candidates {
        if out.len() as u32 >= excess {
            break;
        }
        let node_id = s.node.clone().unwrap_or_default();
        if w.node(&node_id).and_then(|n| n.busy()) == Some(true) {
            continue;
        }
        out.push(Decision::Release {
            env: env.name.clone(),
            index: s.index,
            node: node_id,
            reason: if env.active {
                format!("{} wants {target} nodes", env.name)
            } else {
                format!("{} is inactive", env.name)
            },
        });
    }
    out
}

/// A ready slot of another environment whose node `env` may take: that
/// environment is preemptible, stays at or above its minimum, and ranks
/// below `env` (lower priority, or over its entitlement while `env` is
/// under its own); its node is not busy and meets `env`'s requirements.
/// The lowest-priority, least-loaded node wins.
fn pick_victim<'a>(
    w: &'a World,
    env: &Environment,
    held: &BTreeMap<String, u32>,
    used: &HashSet<String>,
) -> Option<(&'a Slot, String)> {
    let under = w.under_entitlement(env);
    let mut best: Option<(&Slot, (i32, i64), String)> = None;
    for s in w.slots.iter().filter(|s| s.step == SlotStep::Ready) {
        let Some(node_id) = &s.node else { continue };
        if s.environment == env.name || used.contains(node_id) || s.cloning() {
            continue;
        }
        let Some(v) = w.envs.iter().find(|e| e.name == s.environment) else {
            continue;
        };
        let Some(node) = w.node(node_id) else {
            continue;
        };
        let v_held = held.get(&v.name).copied().unwrap_or(0);
        if !v.preemptible || v_held <= v.min || node.busy() == Some(true) {
            continue;
        }
        if !env.requirements.met_by(node) {
            continue;
        }
        let why = if v.priority < env.priority {
            format!(
                "{} (priority {}) is short; preempting {} (priority {}), least loaded",
                env.name, env.priority, v.name, v.priority
            )
        } else if under && w.over_entitlement(v) {
            format!(
                "{} is under its {}% share; {} is over its own",
                env.name,
                env.share_pct.unwrap_or(0),
                v.name
            )
        } else {
            continue;
        };
        let load_milli = (node.load() * 1000.0) as i64;
        let rank = (v.priority, load_milli);
        if best.as_ref().is_none_or(|(_, r, _)| rank < *r) {
            best = Some((s, rank, why));
        }
    }
    best.map(|(s, _, why)| (s, why))
}
