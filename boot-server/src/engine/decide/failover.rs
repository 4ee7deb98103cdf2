//! The failover side of the decisions: where a slot that lost its node and
//! found no spare stands in the meantime (a VM on the least-loaded live
//! failover host, sized like the node it replaces, or that node's reserved
//! standby under the 1:1 mapping), which standby VMs to reserve or drop, and
//! which slots go back to their repaired home node.

use super::{Decision, World};
use crate::control::is_virtual;
use crate::model::{
    failback_window_open, Environment, Failback, Host, HostState, Node, Slot, SlotStep, Vm,
    VmMapping, VmState,
};
use boot_proto::FirmwareKind;
use std::collections::{BTreeMap, HashSet};

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
pub(super) struct HostLoad {
    /// (host, VMs in use, CPUs in use, MiB in use), live hosts with a capacity.
    hosts: Vec<(Host, u32, u64, u64)>,
}

impl HostLoad {
    pub(super) fn new(w: &World) -> HostLoad {
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
pub(super) fn failbacks(w: &World, env: &Environment, used: &mut HashSet<String>) -> Vec<Decision> {
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

/// Why slot `index` of `env` may get a VM: it is failing over (sized from
/// its home node) or it is a clone waiting for its node (sized from its
/// template's node).
pub(super) struct VmWant<'a> {
    home: Option<&'a Node>,
    sized_from: Option<&'a Node>,
    why: &'static str,
}

pub(super) fn vm_wanted<'a>(w: &'a World, env: &Environment, index: u32) -> Option<VmWant<'a>> {
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

/// The VM slot `index` of `env` gets (`want` says why it wants one): the
/// node's reserved standby under the 1:1 mapping, else a new VM of its size
/// on the least-loaded live host with room (counted as placed in `hosts`).
/// `None` when no host has room.
pub(super) fn start_vm(
    w: &World,
    env: &Environment,
    index: u32,
    want: &VmWant,
    hosts: &mut HostLoad,
) -> Option<Decision> {
    let standby = (env.vm_mapping == VmMapping::OneToOne)
        .then(|| want.home.and_then(|h| standby_of(w, env, &h.id, hosts)))
        .flatten();
    let (host, why, standby, (cpus, memory_mb, firmware)) = match standby {
        Some(v) => (
            v.host.clone(),
            format!("its standby VM {} on host {} (1:1 mapping)", v.id, v.host),
            Some(v.id.clone()),
            (v.cpus, v.memory_mb, firmware_of(v)),
        ),
        None => {
            let (cpus, memory_mb, firmware) = vm_size(want.sized_from);
            let (h, why) = hosts.pick(cpus, memory_mb)?;
            (h, why, None, (cpus, memory_mb, firmware))
        }
    };
    Some(Decision::StartVm {
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
    })
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
pub(super) fn standbys(w: &World, decided: &[Decision], hosts: &mut HostLoad) -> Vec<Decision> {
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
