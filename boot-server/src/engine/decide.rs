//! Allocation decisions, as pure functions of what the store holds: which
//! environment gets which node (an idle pool node first, else one taken
//! from a lower-priority or over-entitled preemptible environment, else —
//! for a slot failing over — a VM on the least-loaded live failover host),
//! which slots give their node back when an environment shrinks, and which
//! slots standing on a VM go back to their repaired home node (inside the
//! maintenance window when the policy names one), and — for environments
//! with the 1:1 VM mapping — which standby VMs to reserve or drop. No I/O:
//! unit tests feed it plain values.

use crate::control::is_virtual;
use crate::model::{
    failback_window_open, Environment, Failback, Host, HostState, Node, NodeState, Slot, SlotStep,
    Vm, VmMapping, VmState,
};
use boot_proto::FirmwareKind;
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

/// Whether slot `index` of `env` is vacant and failing over.
fn failing_over(slots: &[Slot], env: &Environment, index: u32) -> bool {
    slots.iter().any(|s| {
        s.environment == env.name
            && s.index == index
            && s.node.is_none()
            && s.failed_over_ms.is_some()
    })
}

/// A VM the size of the node it stands in for: its CPUs, memory and
/// firmware (1 CPU, 512 MiB, BIOS when its inventory says nothing).
pub fn vm_size(n: Option<&Node>) -> (u32, u64, FirmwareKind) {
    let inv = n.and_then(|n| n.inventory.as_ref());
    let cpus = inv
        .and_then(|i| i.get("cpus"))
        .and_then(|v| v.as_u64())
        .filter(|c| *c > 0)
        .unwrap_or(1) as u32;
    let memory_mb = inv
        .and_then(|i| i.get("memory_bytes"))
        .and_then(|v| v.as_u64())
        .map(|b| b.div_ceil(1 << 20))
        .filter(|m| *m > 0)
        .unwrap_or(512);
    let uefi = inv
        .and_then(|i| i.get("firmware"))
        .and_then(|v| v.as_str())
        .map(|f| f == "uefi")
        .or_else(|| {
            n.and_then(|n| n.arch.as_deref())
                .map(|a| a.starts_with("uefi"))
        })
        .unwrap_or(false);
    let firmware = if uefi {
        FirmwareKind::Uefi
    } else {
        FirmwareKind::Bios
    };
    (cpus, memory_mb, firmware)
}

/// Live failover hosts and what their VMs use, as decisions add VMs.
struct HostLoad {
    /// (host, VMs in use, CPUs in use, MiB in use), live hosts with a capacity.
    hosts: Vec<(Host, u32, u64, u64)>,
}

impl HostLoad {
    fn new(w: &World) -> HostLoad {
        let hosts = w
            .hosts
            .iter()
            .filter(|h| {
                h.state == HostState::Up
                    && h.capacity.is_some()
                    && h.last_seen_ms
                        .is_some_and(|t| w.now_ms.saturating_sub(t) <= w.fresh_ms)
            })
            .map(|h| {
                let mine = w.vms.iter().filter(|v| v.host == h.name && v.state.live());
                let (n, cpus, mem) = mine.fold((0, 0, 0), |(n, c, m), v| {
                    (n + 1, c + u64::from(v.cpus), m + v.memory_mb)
                });
                (h.clone(), n, cpus, mem)
            })
            .collect();
        HostLoad { hosts }
    }

    /// Whether `name` is a live host.
    fn is_live(&self, name: &str) -> bool {
        self.hosts.iter().any(|(h, ..)| h.name == name)
    }

    /// The least-loaded live host (VMs in use against its reserve, then
    /// name) with a free VM and room for `cpus` and `memory_mb`; counts the
    /// VM as placed. Also says why.
    fn pick(&mut self, cpus: u32, memory_mb: u64) -> Option<(String, String)> {
        let fits = |(h, n, c, m): &(Host, u32, u64, u64)| {
            let Some(cap) = h.capacity.as_ref() else {
                return false;
            };
            *n < cap.reserve
                && c + u64::from(cpus) <= u64::from(cap.cpus)
                && m + memory_mb <= cap.memory_bytes >> 20
        };
        let best = self.hosts.iter_mut().filter(|x| fits(x)).min_by(|a, b| {
            let ra = a.0.capacity.as_ref().map_or(1, |c| c.reserve.max(1));
            let rb = b.0.capacity.as_ref().map_or(1, |c| c.reserve.max(1));
            // a.n / ra against b.n / rb, without floats.
            (u64::from(a.1) * u64::from(rb))
                .cmp(&(u64::from(b.1) * u64::from(ra)))
                .then(a.0.name.cmp(&b.0.name))
        })?;
        let reserve = best.0.capacity.as_ref().map_or(0, |c| c.reserve);
        let why = format!(
            "VM on host {} ({} of its {reserve} failover VMs in use, the least loaded)",
            best.0.name, best.1
        );
        best.1 += 1;
        best.2 += u64::from(cpus);
        best.3 += memory_mb;
        Some((best.0.name.clone(), why))
    }
}

/// Slots of `env` standing on a VM whose home node is back, as the
/// environment's failback policy allows; their home nodes are taken.
fn failbacks(w: &World, env: &Environment, used: &mut HashSet<String>) -> Vec<Decision> {
    let mut out = Vec::new();
    if env.failback == Failback::Never {
        return out;
    }
    for s in w
        .slots
        .iter()
        .filter(|s| s.environment == env.name && s.step == SlotStep::Ready && !s.failing_back)
    {
        let (Some(vm_id), Some(home_id)) = (&s.node, &s.home) else {
            continue;
        };
        let (Some(vm), Some(home)) = (w.node(vm_id), w.node(home_id)) else {
            continue;
        };
        if !is_virtual(vm) || used.contains(home_id) || !w.home_is_back(s, home) {
            continue;
        }
        if !env.requirements.met_by(home) {
            continue;
        }
        if env.failback == Failback::WhenIdle && vm.busy() == Some(true) {
            continue;
        }
        if env.failback == Failback::Window
            && !env
                .failback_window
                .as_deref()
                .is_some_and(|spec| failback_window_open(spec, w.now_ms).unwrap_or(false))
        {
            continue;
        }
        used.insert(home_id.clone());
        out.push(Decision::Failback {
            env: env.name.clone(),
            index: s.index,
            vm: vm_id.clone(),
            home: home_id.clone(),
            reason: format!(
                "{home_id} is back; slot {} of {} leaves VM {vm_id} ({} failback)",
                s.index,
                env.name,
                match env.failback {
                    Failback::Immediate => "immediate".to_string(),
                    Failback::Window => format!(
                        "in its window {}",
                        env.failback_window.as_deref().unwrap_or("?")
                    ),
                    _ => "when-idle".to_string(),
                }
            ),
        });
    }
    out
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
                let standby = (env.vm_mapping == VmMapping::OneToOne)
                    .then(|| want.home.and_then(|h| standby_of(w, env, &h.id, &hosts)))
                    .flatten();
                let (cpus, memory_mb, firmware) = vm_size(want.sized_from);
                let placed = match standby {
                    Some(v) => Some((
                        v.host.clone(),
                        format!("its standby VM {} on host {} (1:1 mapping)", v.id, v.host),
                        Some(v.id.clone()),
                        (v.cpus, v.memory_mb, firmware_of(v)),
                    )),
                    None => hosts
                        .pick(cpus, memory_mb)
                        .map(|(h, why)| (h, why, None, (cpus, memory_mb, firmware))),
                };
                match placed {
                    Some((host, why, standby, (cpus, memory_mb, firmware))) => {
                        taken_slots.insert((env.name.clone(), index));
                        out.push(Decision::StartVm {
                            env: env.name.clone(),
                            index,
                            host,
                            cpus,
                            memory_mb,
                            firmware,
                            stands_in_for: want.home.map(|h| h.id.clone()),
                            standby,
                            reason: format!(
                                "slot {index} of {} {} and no spare node is free; {why}",
                                env.name, want.why
                            ),
                        });
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

/// Why slot `index` of `env` may get a VM: it is failing over (sized from
/// its home node) or it is a clone waiting for its node (sized from its
/// template's node).
struct VmWant<'a> {
    home: Option<&'a Node>,
    sized_from: Option<&'a Node>,
    why: &'static str,
}

fn vm_wanted<'a>(w: &'a World, env: &Environment, index: u32) -> Option<VmWant<'a>> {
    let slot = w
        .slots
        .iter()
        .find(|s| s.environment == env.name && s.index == index)?;
    if failing_over(w.slots, env, index) {
        let home = slot.home.as_deref().and_then(|h| w.node(h));
        return Some(VmWant {
            home,
            sized_from: home,
            why: "is failing over",
        });
    }
    if slot.node.is_none() && slot.reidentify && slot.removal.is_none() {
        let template = slot
            .clone_of
            .as_ref()
            .and_then(|o| o.node.as_deref())
            .and_then(|n| w.node(n));
        return Some(VmWant {
            home: None,
            sized_from: template,
            why: "is a clone waiting for its node",
        });
    }
    None
}

/// The reserved standby VM of physical node `node` in `env` on a live host, if any.
fn standby_of<'a>(w: &'a World, env: &Environment, node: &str, hosts: &HostLoad) -> Option<&'a Vm> {
    w.vms.iter().find(|v| {
        v.state == VmState::Reserved
            && v.environment == env.name
            && v.stands_in_for.as_deref() == Some(node)
            && hosts.is_live(&v.host)
    })
}

fn firmware_of(v: &Vm) -> FirmwareKind {
    if v.firmware == "uefi" {
        FirmwareKind::Uefi
    } else {
        FirmwareKind::Bios
    }
}

/// The 1:1 mapping's standbys: every physical node holding a slot of an
/// active environment with that mapping has one reserved VM (on the
/// least-loaded live host with room); a reserved VM that protects nothing
/// any more is dropped. A node whose slot is failing over keeps its
/// standby until the failover above starts it.
fn standbys(w: &World, decided: &[Decision], hosts: &mut HostLoad) -> Vec<Decision> {
    let mut out = Vec::new();
    let started: HashSet<&str> = decided
        .iter()
        .filter_map(|d| match d {
            Decision::StartVm {
                standby: Some(v), ..
            } => Some(v.as_str()),
            _ => None,
        })
        .collect();
    // (env, node) pairs that want a standby.
    let mut protected: BTreeMap<(String, String), (&Node, u32)> = BTreeMap::new();
    for env in w
        .envs
        .iter()
        .filter(|e| e.vm_mapping == VmMapping::OneToOne && e.active)
    {
        for s in w.slots.iter().filter(|s| s.environment == env.name) {
            let holder = match (&s.node, &s.home) {
                (Some(n), _) if !matches!(s.step, SlotStep::Releasing | SlotStep::Failed) => {
                    Some(n)
                }
                // Failing over from its home: the standby is about to serve.
                (None, Some(h)) if s.failed_over_ms.is_some() => Some(h),
                _ => None,
            };
            let Some(n) = holder.and_then(|id| w.node(id)) else {
                continue;
            };
            if !is_virtual(n) {
                protected.insert((env.name.clone(), n.id.clone()), (n, s.index));
            }
        }
    }
    for v in w.vms.iter().filter(|v| v.state == VmState::Reserved) {
        let key = (
            v.environment.clone(),
            v.stands_in_for.clone().unwrap_or_default(),
        );
        if !protected.contains_key(&key) && !started.contains(v.id.as_str()) {
            out.push(Decision::DropStandby {
                vm: v.id.clone(),
                node: v.node.clone(),
                reason: format!(
                    "standby VM {} of {} in {} protects nothing now",
                    v.id, key.1, key.0
                ),
            });
        }
    }
    for ((env, node_id), (node, index)) in protected {
        let has = w.vms.iter().any(|v| {
            v.state == VmState::Reserved
                && v.environment == env
                && v.stands_in_for.as_deref() == Some(node_id.as_str())
                && hosts.is_live(&v.host)
        });
        let failing = w.slots.iter().any(|s| {
            s.environment == env && s.node.is_none() && s.home.as_deref() == Some(&node_id)
        });
        if has || failing {
            continue;
        }
        let (cpus, memory_mb, firmware) = vm_size(Some(node));
        if let Some((host, why)) = hosts.pick(cpus, memory_mb) {
            out.push(Decision::ReserveVm {
                env: env.clone(),
                index,
                protects: node_id.clone(),
                host,
                cpus,
                memory_mb,
                firmware,
                reason: format!("{node_id} serves {env} (1:1 mapping); standby {why}"),
            });
        }
    }
    out
}

/// A node's most likely next environment: pre-stage its image there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// The node to pre-stage.
    pub node: String,
    /// The environment it is most likely to join next.
    pub env: String,
    /// Why, for the log.
    pub reason: String,
}

/// Where each idle node, and each node of a preemptible environment's ready
/// slot, most likely goes next, so that its agent can download and load that
/// environment's image ahead of the decision. Environments that boot warm
/// offer places, best first: nodes they want now and lack (unmet demand),
/// then nodes their next scheduled scale-up (`scale_ups`: environment →
/// target) will want, then room to grow (up to `max`; an inactive
/// environment up to its desired count), each class by priority (highest
/// first), then name. Places are filled by idle nodes (best fit first, as
/// [`decide`] picks them); each node a higher-priority environment could
/// preempt stages the best place idle nodes left. A node only stages an
/// environment whose requirements it meets. Environments whose slots have
/// disks are not staged (the slot's root disk is on the command line).
pub fn likely_next(w: &World, scale_ups: &HashMap<String, u32>) -> Vec<Stage> {
    use crate::model::BootMode;
    // (class, -priority, env name, why) per place.
    let mut places: Vec<(u8, i32, &Environment, &'static str)> = Vec::new();
    // An environment whose slots have disks boots from the slot's disk,
    // slot data the command line would carry: not staged.
    for env in w
        .envs
        .iter()
        .filter(|e| e.boot == BootMode::Warm && e.disk_base.is_none())
    {
        let held = holding(w.slots, &env.name);
        let target = env.target();
        let unmet = target.saturating_sub(held);
        let scheduled = scale_ups
            .get(&env.name)
            .map_or(0, |t| t.min(&env.max).saturating_sub(held.max(target)));
        let potential = if env.active {
            env.max
        } else {
            env.desired.clamp(env.min, env.max)
        };
        let room = potential.saturating_sub(held.max(target) + scheduled);
        for (class, n, why) in [
            (0, unmet, "wants nodes it lacks now"),
            (1, scheduled, "its next scheduled scale-up wants nodes"),
            (2, room, "has room to grow"),
        ] {
            places.extend((0..n).map(|_| (class, -env.priority, env, why)));
        }
    }
    places.sort_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)));
    let mut idle: Vec<&Node> = w.nodes.iter().filter(|n| w.eligible(n)).collect();
    idle.sort_by_key(|n| fit_rank(n));
    // Nodes a higher-priority environment could take: ready, not busy, in a
    // preemptible environment.
    let preemptible: Vec<(&Node, &Environment)> = w
        .slots
        .iter()
        .filter(|s| s.step == SlotStep::Ready && !s.cloning())
        .filter_map(|s| {
            let node = w.node(s.node.as_deref()?)?;
            let env = w.envs.iter().find(|e| e.name == s.environment)?;
            (env.preemptible && node.busy() != Some(true)).then_some((node, env))
        })
        .collect();
    let mut used: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    let mut left = Vec::new();
    for (_, _, env, why) in places {
        let Some(node) = idle
            .iter()
            .find(|n| !used.contains(n.id.as_str()) && env.requirements.met_by(n))
        else {
            left.push((env, why));
            continue;
        };
        used.insert(&node.id);
        out.push(Stage {
            node: node.id.clone(),
            env: env.name.clone(),
            reason: format!("{} {why}; node idle", env.name),
        });
    }
    // The places idle nodes could not fill go to preemption; which victim
    // it takes depends on load at the time, so every node it could take
    // stages the best such place (without using it up).
    for (node, from) in preemptible {
        let best = left.iter().find(|(env, _)| {
            from.name != env.name && from.priority < env.priority && env.requirements.met_by(node)
        });
        if let Some((env, why)) = best {
            out.push(Stage {
                node: node.id.clone(),
                env: env.name.clone(),
                reason: format!("{} {why}; node preemptible in {}", env.name, from.name),
            });
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostCapacity, MacAddr, VmState, HOST_LABEL, VIRTUAL_LABEL};

    const NOW: i64 = 1_000_000;

    fn node(i: u8, state: NodeState) -> Node {
        Node {
            id: format!("n{i}"),
            mac: MacAddr([2, 0, 0, 0, 0, i]),
            uuid: None,
            arch: Some("bios".into()),
            state,
            first_seen_ms: 0,
            last_seen_ms: NOW,
            last_heartbeat_ms: Some(NOW),
            booted_image: None,
            inventory: Some(
                serde_json::json!({"cpus": 2, "memory_bytes": 384u64 << 20, "firmware": "bios"}),
            ),
            heartbeat: Some(serde_json::json!({"busy": false})),
            enrolled: true,
            serial: None,
            labels: Default::default(),
            power: None,
            observed_ip: None,
            last_hello_ms: Some(NOW - 500_000),
            running_image: None,
            agent_protocol: Some(3),
            environment: None,
            slot: None,
        }
    }

    fn vm_node(i: u8, host: &str) -> Node {
        let mut n = node(i, NodeState::Ready);
        n.labels.insert(VIRTUAL_LABEL.into(), "true".into());
        n.labels.insert(HOST_LABEL.into(), host.into());
        n
    }

    fn host(name: &str, reserve: u32, seen: i64) -> Host {
        Host {
            name: name.into(),
            state: HostState::Up,
            capacity: Some(HostCapacity {
                cpus: 8,
                memory_bytes: 8 << 30,
                reserve,
                kvm: false,
            }),
            last_seen_ms: Some(seen),
            down_since_ms: None,
            agent_version: None,
            created_ms: 0,
            created_by: "t".into(),
            fingerprint: "f".into(),
        }
    }

    fn vm(id: &str, host: &str, state: VmState) -> Vm {
        Vm {
            id: id.into(),
            host: host.into(),
            mac: "02:b5:00:00:00:01".into(),
            node: format!("node-{id}"),
            cpus: 2,
            memory_mb: 384,
            firmware: "bios".into(),
            environment: "other".into(),
            slot: 0,
            stands_in_for: None,
            state,
            requested_ms: 0,
            started_ms: None,
            ended_ms: None,
            detail: String::new(),
        }
    }

    fn env(failback: Failback) -> Environment {
        Environment {
            name: "web".into(),
            image: "img".into(),
            desired: 2,
            min: 2,
            max: 2,
            failback,
            ..Default::default()
        }
    }

    /// Slot 0 ready on n1; slot 1 vacant and failing over from n2 (home).
    fn failing_slots() -> Vec<Slot> {
        vec![
            Slot {
                environment: "web".into(),
                index: 0,
                node: Some("n1".into()),
                step: SlotStep::Ready,
                ..Default::default()
            },
            Slot {
                environment: "web".into(),
                index: 1,
                step: SlotStep::Vacant,
                failed_over_ms: Some(NOW - 1000),
                home: Some("n2".into()),
                home_left_ms: Some(NOW - 1000),
                ..Default::default()
            },
        ]
    }

    fn run(
        envs: &[Environment],
        slots: &[Slot],
        nodes: &[Node],
        hosts: &[Host],
        vms: &[Vm],
        cooling: &[&str],
    ) -> Vec<Decision> {
        let cooling: HashSet<String> = cooling.iter().map(|s| s.to_string()).collect();
        let usage = HashMap::new();
        decide(&World {
            envs,
            slots,
            nodes,
            now_ms: NOW,
            fresh_ms: 10_000,
            manual_enrolment: false,
            cooling: &cooling,
            usage: &usage,
            hosts,
            vms,
        })
    }

    fn with_slot(mut n: Node, env: &str, i: u32) -> Node {
        n.environment = Some(env.into());
        n.slot = Some(i);
        n
    }

    #[test]
    fn a_spare_node_comes_before_a_vm() {
        let nodes = [
            with_slot(node(1, NodeState::Ready), "web", 0),
            node(2, NodeState::Failed),
            node(3, NodeState::Idle),
        ];
        let d = run(
            &[env(Failback::Immediate)],
            &failing_slots(),
            &nodes,
            &[host("h1", 2, NOW)],
            &[],
            &["n2"],
        );
        assert!(
            matches!(&d[..], [Decision::Claim { index: 1, node, .. }] if node == "n3"),
            "{d:?}"
        );
    }

    #[test]
    fn no_spare_picks_the_least_loaded_live_host_sized_like_the_home_node() {
        let nodes = [
            with_slot(node(1, NodeState::Ready), "web", 0),
            node(2, NodeState::Failed),
        ];
        // h1 runs one of its 2 VMs; h2 none of its 2; h3 is silent; h4 full.
        let hosts = [
            host("h1", 2, NOW),
            host("h2", 2, NOW - 1000),
            host("h3", 4, NOW - 60_000),
            host("h4", 1, NOW),
        ];
        let vms = [
            vm("a", "h1", VmState::Running),
            vm("b", "h4", VmState::Requested),
            // Ended VMs hold no place.
            vm("c", "h2", VmState::Exited),
            vm("d", "h2", VmState::Stopped),
        ];
        let d = run(
            &[env(Failback::Immediate)],
            &failing_slots(),
            &nodes,
            &hosts,
            &vms,
            &["n2"],
        );
        match &d[..] {
            [Decision::StartVm {
                env,
                index: 1,
                host,
                cpus: 2,
                memory_mb: 384,
                firmware: FirmwareKind::Bios,
                stands_in_for,
                ..
            }] => {
                assert_eq!((env.as_str(), host.as_str()), ("web", "h2"));
                assert_eq!(stands_in_for.as_deref(), Some("n2"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_failing_slots_spread_over_hosts_and_a_full_fleet_fails_over_nowhere() {
        let mut slots = failing_slots();
        slots[0] = Slot {
            node: None,
            step: SlotStep::Vacant,
            failed_over_ms: Some(NOW - 1000),
            home: Some("n1".into()),
            ..slots[0].clone()
        };
        let nodes = [node(1, NodeState::Failed), node(2, NodeState::Failed)];
        let hosts = [host("h1", 1, NOW), host("h2", 1, NOW)];
        let d = run(
            &[env(Failback::Immediate)],
            &slots,
            &nodes,
            &hosts,
            &[],
            &[],
        );
        let placed: Vec<(u32, &str)> = d
            .iter()
            .filter_map(|d| match d {
                Decision::StartVm { index, host, .. } => Some((*index, host.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(placed, [(0, "h1"), (1, "h2")], "{d:?}");
        // Every host full: the slot is short, and says it is failing over.
        let vms = [
            vm("a", "h1", VmState::Running),
            vm("b", "h2", VmState::Running),
        ];
        let d = run(
            &[env(Failback::Immediate)],
            &slots,
            &nodes,
            &hosts,
            &vms,
            &[],
        );
        assert!(
            matches!(
                &d[..],
                [Decision::Short {
                    failing_over: Some(0),
                    ..
                }]
            ),
            "{d:?}"
        );
        // A host too small for the node is no choice either.
        let mut small = host("h9", 4, NOW);
        small.capacity.as_mut().unwrap().memory_bytes = 256 << 20;
        let d = run(
            &[env(Failback::Immediate)],
            &slots,
            &nodes,
            &[small],
            &[],
            &[],
        );
        assert!(matches!(&d[0], Decision::Short { .. }), "{d:?}");
        // A slot that is not failing over never gets a VM.
        let plain: Vec<Slot> = slots
            .iter()
            .map(|s| Slot {
                failed_over_ms: None,
                ..s.clone()
            })
            .collect();
        let d = run(
            &[env(Failback::Immediate)],
            &plain,
            &nodes,
            &hosts,
            &[],
            &[],
        );
        assert!(
            d.iter().all(|d| matches!(
                d,
                Decision::Short {
                    failing_over: None,
                    ..
                }
            )),
            "{d:?}"
        );
    }

    #[test]
    fn vms_never_join_the_pool() {
        let mut idle_vm = vm_node(5, "h1");
        idle_vm.state = NodeState::Idle;
        let d = run(&[env(Failback::Immediate)], &[], &[idle_vm], &[], &[], &[]);
        assert!(matches!(&d[..], [Decision::Short { .. }]), "{d:?}");
    }

    /// Slot 1 ready on VM node n5, home n2.
    fn on_vm() -> (Vec<Slot>, Vec<Node>) {
        let mut slots = failing_slots();
        slots[1].node = Some("n5".into());
        slots[1].step = SlotStep::Ready;
        slots[1].failed_over_ms = None;
        let nodes = vec![
            with_slot(node(1, NodeState::Ready), "web", 0),
            node(2, NodeState::Idle),
            with_slot(vm_node(5, "h1"), "web", 1),
        ];
        (slots, nodes)
    }

    #[test]
    fn failback_when_the_home_node_is_back_as_the_policy_says() {
        let (slots, mut nodes) = on_vm();
        // The home node rebooted since the slot left it (hello after): back,
        // cool-down or not.
        nodes[1].last_hello_ms = Some(NOW - 10);
        let d = run(
            &[env(Failback::Immediate)],
            &slots,
            &nodes,
            &[],
            &[],
            &["n2"],
        );
        assert!(
            matches!(&d[..], [Decision::Failback { index: 1, vm, home, .. }] if vm == "n5" && home == "n2"),
            "{d:?}"
        );
        // never: stays on the VM.
        let d = run(&[env(Failback::Never)], &slots, &nodes, &[], &[], &["n2"]);
        assert!(d.is_empty(), "{d:?}");
        // when-idle: not while the VM says busy.
        nodes[2].heartbeat = Some(serde_json::json!({"busy": true}));
        let d = run(
            &[env(Failback::WhenIdle)],
            &slots,
            &nodes,
            &[],
            &[],
            &["n2"],
        );
        assert!(d.is_empty(), "{d:?}");
        nodes[2].heartbeat = Some(serde_json::json!({"busy": false}));
        let d = run(
            &[env(Failback::WhenIdle)],
            &slots,
            &nodes,
            &[],
            &[],
            &["n2"],
        );
        assert!(matches!(&d[..], [Decision::Failback { .. }]), "{d:?}");
    }

    #[test]
    fn no_failback_to_a_home_node_that_is_not_back() {
        let (mut slots, mut nodes) = on_vm();
        // Still cooling down and no hello since it failed: not back.
        let d = run(
            &[env(Failback::Immediate)],
            &slots,
            &nodes,
            &[],
            &[],
            &["n2"],
        );
        assert!(d.is_empty(), "{d:?}");
        // An admin marked it repaired: back.
        slots[1].home_repaired = true;
        let d = run(
            &[env(Failback::Immediate)],
            &slots,
            &nodes,
            &[],
            &[],
            &["n2"],
        );
        assert!(matches!(&d[..], [Decision::Failback { .. }]), "{d:?}");
        // Its agent is down, or it is failed: not back, repaired or not.
        nodes[1].last_heartbeat_ms = Some(NOW - 60_000);
        let d = run(&[env(Failback::Immediate)], &slots, &nodes, &[], &[], &[]);
        assert!(d.is_empty(), "{d:?}");
        nodes[1].last_heartbeat_ms = Some(NOW);
        nodes[1].state = NodeState::Failed;
        let d = run(&[env(Failback::Immediate)], &slots, &nodes, &[], &[], &[]);
        assert!(d.is_empty(), "{d:?}");
        // A slot failing back already is not asked twice.
        nodes[1].state = NodeState::Idle;
        slots[1].failing_back = true;
        let d = run(&[env(Failback::Immediate)], &slots, &nodes, &[], &[], &[]);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn vm_size_follows_the_inventory() {
        let mut n = node(1, NodeState::Failed);
        n.inventory =
            Some(serde_json::json!({"cpus": 4, "memory_bytes": 2u64 << 30, "firmware": "uefi"}));
        assert_eq!(vm_size(Some(&n)), (4, 2048, FirmwareKind::Uefi));
        n.inventory = None;
        n.arch = Some("uefi-x64".into());
        assert_eq!(vm_size(Some(&n)), (1, 512, FirmwareKind::Uefi));
        assert_eq!(vm_size(None), (1, 512, FirmwareKind::Bios));
    }

    fn stage_run(
        envs: &[Environment],
        slots: &[Slot],
        nodes: &[Node],
        ups: &[(&str, u32)],
    ) -> Vec<(String, String)> {
        let cooling = HashSet::new();
        let usage = HashMap::new();
        let ups: HashMap<String, u32> = ups.iter().map(|(e, t)| (e.to_string(), *t)).collect();
        likely_next(
            &World {
                envs,
                slots,
                nodes,
                now_ms: NOW,
                fresh_ms: 10_000,
                manual_enrolment: false,
                cooling: &cooling,
                usage: &usage,
                hosts: &[],
                vms: &[],
            },
            &ups,
        )
        .into_iter()
        .map(|s| (s.node, s.env))
        .collect()
    }

    fn named(name: &str, desired: u32, max: u32, priority: i32) -> Environment {
        Environment {
            name: name.into(),
            image: format!("{name}-img"),
            desired,
            min: 0,
            max,
            priority,
            active: true,
            ..Default::default()
        }
    }

    fn held(env: &str, index: u32, node: &str) -> Slot {
        Slot {
            environment: env.into(),
            index,
            node: Some(node.into()),
            step: SlotStep::Ready,
            ..Default::default()
        }
    }

    fn pair(n: &str, e: &str) -> (String, String) {
        (n.to_string(), e.to_string())
    }

    #[test]
    fn idle_nodes_stage_unmet_demand_first_then_schedules_then_room_by_priority() {
        // low lacks one node now; high's schedule wants one more soon; big
        // (highest priority) only has room to grow.
        let low = named("low", 2, 2, 1);
        let high = named("high", 1, 3, 5);
        let big = named("big", 0, 1, 9);
        let slots = vec![held("low", 0, "n9"), held("high", 0, "n8")];
        let mut nodes: Vec<Node> = (1..=4).map(|i| node(i, NodeState::Idle)).collect();
        for (id, env) in [("n9", "low"), ("n8", "high")] {
            let mut n = node(id[1..].parse().unwrap(), NodeState::Ready);
            n.environment = Some(env.into());
            nodes.push(n);
        }
        let got = stage_run(&[low, high, big], &slots, &nodes, &[("high", 2)]);
        assert_eq!(
            got,
            vec![
                pair("n1", "low"),  // unmet demand now
                pair("n2", "high"), // next scheduled scale-up
                pair("n3", "big"),  // room to grow, highest priority
                pair("n4", "high"), // room to grow (max 3), next priority
            ]
        );
    }

    #[test]
    fn a_node_stages_only_an_environment_whose_requirements_it_meets_and_cold_ones_never() {
        let mut picky = named("picky", 1, 1, 9);
        picky.requirements.min_cpus = Some(64);
        let mut cold = named("cold", 1, 1, 8);
        cold.boot = crate::model::BootMode::Cold;
        let plain = named("plain", 0, 1, 1);
        let mut disk = named("disk", 1, 1, 7);
        disk.disk_base = Some("base".into());
        let nodes = vec![node(1, NodeState::Idle)];
        let got = stage_run(&[picky, cold, disk, plain], &[], &nodes, &[]);
        assert_eq!(got, vec![pair("n1", "plain")]);
        // No place at all: nothing staged.
        let full = named("full", 1, 1, 1);
        let mut n2 = node(2, NodeState::Ready);
        n2.environment = Some("full".into());
        assert!(stage_run(&[full], &[held("full", 0, "n2")], &[n2], &[]).is_empty());
    }

    #[test]
    fn an_inactive_environment_stages_its_desired_count_and_preemptible_nodes_stage_higher_priorities(
    ) {
        // beta is inactive (desired 1): the node most likely to serve it when
        // activated is a node of the preemptible, lower-priority alpha.
        let mut beta = named("beta", 1, 3, 10);
        beta.active = false;
        let mut alpha = named("alpha", 1, 1, 1);
        alpha.preemptible = true;
        let mut n1 = node(1, NodeState::Ready);
        n1.environment = Some("alpha".into());
        let got = stage_run(
            &[beta.clone(), alpha.clone()],
            &[held("alpha", 0, "n1")],
            &[n1.clone()],
            &[],
        );
        assert_eq!(got, vec![pair("n1", "beta")]);
        // Every node beta could preempt stages it: the victim is picked by
        // load at the decision.
        let mut alpha2 = alpha.clone();
        alpha2.desired = 2;
        alpha2.max = 2;
        let mut n2 = node(2, NodeState::Ready);
        n2.environment = Some("alpha".into());
        let two = [held("alpha", 0, "n1"), held("alpha", 1, "n2")];
        let got = stage_run(&[beta.clone(), alpha2], &two, &[n1.clone(), n2], &[]);
        assert_eq!(got, vec![pair("n1", "beta"), pair("n2", "beta")]);
        // Not when alpha is not preemptible, nor for a lower priority.
        alpha.preemptible = false;
        assert!(stage_run(
            &[beta.clone(), alpha.clone()],
            &[held("alpha", 0, "n1")],
            &[n1.clone()],
            &[]
        )
        .is_empty());
        alpha.preemptible = true;
        beta.priority = 0;
        assert!(stage_run(&[beta, alpha], &[held("alpha", 0, "n1")], &[n1], &[]).is_empty());
    }

    fn one_to_one(mut e: Environment) -> Environment {
        e.vm_mapping = VmMapping::OneToOne;
        e
    }

    fn reserved(id: &str, host: &str, protects: &str) -> Vm {
        let mut v = vm(id, host, VmState::Reserved);
        v.environment = "web".into();
        v.stands_in_for = Some(protects.into());
        v
    }

    #[test]
    fn one_to_one_reserves_a_standby_per_protected_node_sized_like_it() {
        let slots = vec![
            Slot {
                environment: "web".into(),
                index: 0,
                node: Some("n1".into()),
                step: SlotStep::Ready,
                ..Default::default()
            },
            Slot {
                environment: "web".into(),
                index: 1,
                node: Some("n2".into()),
                step: SlotStep::Ready,
                ..Default::default()
            },
        ];
        let mut big = with_slot(node(2, NodeState::Ready), "web", 1);
        big.inventory = Some(serde_json::json!({"cpus": 4, "memory_bytes": 1u64 << 30}));
        let nodes = [with_slot(node(1, NodeState::Ready), "web", 0), big];
        let hosts = [host("h1", 1, NOW), host("h2", 2, NOW)];
        let e = one_to_one(env(Failback::Immediate));
        let d = run(std::slice::from_ref(&e), &slots, &nodes, &hosts, &[], &[]);
        let mut got: Vec<(&str, u32, &str, u32, u64)> = d
            .iter()
            .filter_map(|d| match d {
                Decision::ReserveVm {
                    protects,
                    index,
                    host,
                    cpus,
                    memory_mb,
                    ..
                } => Some((protects.as_str(), *index, host.as_str(), *cpus, *memory_mb)),
                _ => None,
            })
            .collect();
        got.sort();
        // One each, spread by load (h1 takes 1 of 1, h2 1 of 2), sized from
        // the protected node's inventory.
        assert_eq!(
            got,
            [("n1", 0, "h1", 2, 384), ("n2", 1, "h2", 4, 1024)],
            "{d:?}"
        );
        // Reserved already: nothing more. Sequential: none wanted, and the
        // ones there are dropped.
        let vms = [reserved("a", "h1", "n1"), reserved("b", "h2", "n2")];
        let d = run(std::slice::from_ref(&e), &slots, &nodes, &hosts, &vms, &[]);
        assert!(d.is_empty(), "{d:?}");
        let d = run(
            &[env(Failback::Immediate)],
            &slots,
            &nodes,
            &hosts,
            &vms,
            &[],
        );
        assert_eq!(
            d.iter()
                .filter(|d| matches!(d, Decision::DropStandby { .. }))
                .count(),
            2,
            "{d:?}"
        );
        // A node that left the environment loses its standby.
        let d = run(
            std::slice::from_ref(&e),
            &slots[..1],
            &nodes,
            &hosts,
            &vms,
            &[],
        );
        assert!(
            d.iter().any(
                |d| matches!(d, Decision::DropStandby { vm, node, .. } if vm == "b" && node == "node-b")
            ),
            "{d:?}"
        );
        // Reserved VMs hold their host's places: a full host takes no more.
        let d = run(
            &[e],
            &slots,
            &nodes,
            &[host("h1", 1, NOW)],
            &[reserved("a", "h1", "n1")],
            &[],
        );
        assert!(d.is_empty(), "n2 finds no room: {d:?}");
    }

    #[test]
    fn one_to_one_failover_starts_the_nodes_own_standby() {
        let e = one_to_one(env(Failback::Immediate));
        let nodes = [
            with_slot(node(1, NodeState::Ready), "web", 0),
            node(2, NodeState::Failed),
        ];
        let hosts = [host("h1", 2, NOW), host("h2", 2, NOW)];
        // n2's standby is on h2 although h1 is as loaded: it is used.
        let vms = [reserved("s1", "h1", "n1"), reserved("s2", "h2", "n2")];
        let d = run(
            std::slice::from_ref(&e),
            &failing_slots(),
            &nodes,
            &hosts,
            &vms,
            &["n2"],
        );
        match &d[..] {
            [Decision::StartVm {
                index: 1,
                host,
                standby: Some(v),
                stands_in_for: Some(home),
                ..
            }] => assert_eq!(
                (host.as_str(), v.as_str(), home.as_str()),
                ("h2", "s2", "n2")
            ),
            other => panic!("{other:?}"),
        }
        // A spare physical node still comes first.
        let mut with_spare = nodes.to_vec();
        with_spare.push(node(3, NodeState::Idle));
        let d = run(
            std::slice::from_ref(&e),
            &failing_slots(),
            &with_spare,
            &hosts,
            &vms,
            &["n2"],
        );
        assert!(
            d.iter()
                .any(|d| matches!(d, Decision::Claim { index: 1, node, .. } if node == "n3")),
            "{d:?}"
        );
        // Its standby's host is silent: a new VM on a live host (sequential),
        // and the silent host's standby is not dropped while n2 still wants one.
        let hosts = [host("h1", 2, NOW), host("h2", 2, NOW - 60_000)];
        let d = run(&[e], &failing_slots(), &nodes, &hosts, &vms, &["n2"]);
        assert!(
            matches!(&d[..], [Decision::StartVm { host, standby: None, .. }] if host == "h1"),
            "{d:?}"
        );
    }

    #[test]
    fn failback_in_a_window_waits_for_it() {
        // NOW is 00:16:40 UTC.
        let (slots, mut nodes) = on_vm();
        nodes[1].last_hello_ms = Some(NOW - 10);
        let at = |w: &str| {
            let mut e = env(Failback::Window);
            e.failback_window = Some(w.into());
            run(&[e], &slots, &nodes, &[], &[], &["n2"])
        };
        for open in ["00:10-00:20", "23:00-00:30", "0 16 0 * * *", "0 * 0 * * *"] {
            let d = at(open);
            assert!(
                matches!(&d[..], [Decision::Failback { reason, .. }] if reason.contains(open)),
                "{open}: {d:?}"
            );
        }
        for shut in ["00:17-00:20", "01:00-00:10", "0 17 0 * * *", "0 * 2 * * *"] {
            assert!(at(shut).is_empty(), "{shut}");
        }
        // Window policy without a window, or a broken one: never.
        let mut e = env(Failback::Window);
        assert!(run(&[e.clone()], &slots, &nodes, &[], &[], &["n2"]).is_empty());
        e.failback_window = Some("bad".into());
        assert!(run(&[e], &slots, &nodes, &[], &[], &["n2"]).is_empty());
    }

    #[test]
    fn failback_window_specs() {
        let at = |h: i64, m: i64| (h * 60 + m) * 60_000 + 30_000;
        let open = |w: &str, t: i64| failback_window_open(w, t).unwrap();
        assert!(open("02:00-04:00", at(2, 0)) && open("02:00-04:00", at(3, 59)));
        assert!(!open("02:00-04:00", at(4, 0)) && !open("02:00-04:00", at(1, 59)));
        assert!(open("22:00-02:00", at(23, 0)) && open("22:00-02:00", at(1, 0)));
        assert!(!open("22:00-02:00", at(12, 0)));
        // Days later, same time of day.
        assert!(open("02:00-04:00", at(2, 30) + 5 * 86_400_000));
        // Cron: every minute of hour 2 on Thursdays (1970-01-01 was one).
        assert!(open("0 * 2 * * Thu", at(2, 30)));
        assert!(!open("0 * 2 * * Fri", at(2, 30)));
        assert!(failback_window_open("02:00-02:00", 0).is_err());
        assert!(failback_window_open("2-4", 0).is_err());
        assert!(failback_window_open("* * *", 0).is_err());
    }

    #[test]
    fn a_clone_with_no_free_node_gets_a_vm_sized_from_its_template() {
        let mut tmpl = with_slot(node(1, NodeState::Ready), "web", 0);
        tmpl.inventory = Some(serde_json::json!({"cpus": 3, "memory_bytes": 768u64 << 20}));
        let slots = vec![
            Slot {
                environment: "web".into(),
                index: 0,
                node: Some("n1".into()),
                step: SlotStep::Ready,
                ..Default::default()
            },
            Slot {
                environment: "web".into(),
                index: 1,
                step: SlotStep::Vacant,
                reidentify: true,
                clone_of: Some(crate::model::CloneOrigin {
                    slot: 0,
                    node: Some("n1".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        let d = run(
            &[env(Failback::Immediate)],
            &slots,
            &[tmpl.clone()],
            &[host("h1", 2, NOW)],
            &[],
            &[],
        );
        match &d[..] {
            [Decision::StartVm {
                index: 1,
                host,
                cpus: 3,
                memory_mb: 768,
                stands_in_for: None,
                standby: None,
                reason,
                ..
            }] => assert!(host == "h1" && reason.contains("clone"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A free physical node comes first; a slot being removed gets nothing.
        let d = run(
            &[env(Failback::Immediate)],
            &slots,
            &[tmpl.clone(), node(2, NodeState::Idle)],
            &[host("h1", 2, NOW)],
            &[],
            &[],
        );
        assert!(
            matches!(&d[..], [Decision::Claim { node, .. }] if node == "n2"),
            "{d:?}"
        );
        let mut removing = slots.clone();
        removing[1].removal = Some(Default::default());
        let d = run(
            &[env(Failback::Immediate)],
            &removing,
            &[tmpl],
            &[host("h1", 2, NOW)],
            &[],
            &[],
        );
        assert!(
            !d.iter().any(|d| matches!(d, Decision::StartVm { .. })),
            "{d:?}"
        );
    }
}
