//! Failover hosts and their VMs as admin operations and agent exchanges:
//! enrol a host (its secret shown once, stored as a digest), list, show and
//! remove hosts; a host agent's poll (its capacity and VMs in, the VMs to
//! start or stop out); a host going down (its VMs' nodes fail); starting a
//! VM for a failing-over slot and stopping it once the slot left it; an
//! admin marking a failed node repaired (its slots may move back).

use super::{Control, Error, Result};
use crate::model::{
    now_ms, EventKind, Host, HostCapacity, HostState, Node, NodeState, Transition, Vm, VmState,
    HOST_LABEL, VIRTUAL_LABEL,
};
use crate::store::{Enrolment, Expect, Fence};
use boot_proto::host::{HostCommand, HostReport, VmSpec};
use boot_proto::FirmwareKind;
use rand::RngCore;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

/// A host just enrolled: its record and its secret (shown this once).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewHost {
    /// The host as listed.
    #[serde(flatten)]
    pub host: Host,
    /// The secret its agent sends as `Authorization: Bearer <secret>`
    /// (`node-agent host --credential-file`); only its SHA-256 is kept.
    pub secret: String,
}

/// A host with its VMs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HostView {
    /// The host.
    #[serde(flatten)]
    pub host: Host,
    /// VMs holding a place on it (requested, running or stopping).
    pub vms_in_use: u32,
    /// Every VM record of the host, newest first.
    pub vms: Vec<Vm>,
}

/// What a VM for a failing-over slot is to be.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRequest {
    /// The host to run it.
    pub host: String,
    /// The slot's environment.
    pub environment: String,
    /// The slot's index.
    pub slot: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Firmware.
    pub firmware: FirmwareKind,
    /// The node it stands in for.
    pub stands_in_for: Option<String>,
}

/// Whether a node is a VM on a failover host.
pub fn is_virtual(n: &Node) -> bool {
    n.labels.get(VIRTUAL_LABEL).map(String::as_str) == Some("true")
}

fn firmware_name(f: FirmwareKind) -> &'static str {
    match f {
        FirmwareKind::Bios => "bios",
        FirmwareKind::Uefi => "uefi",
    }
}

fn host_capacity(c: &boot_proto::host::HostCapacity) -> HostCapacity {
    HostCapacity {
        cpus: c.cpus,
        memory_bytes: c.memory_bytes,
        reserve: c.reserve,
        kvm: c.kvm,
    }
}

impl Control {
    /// Enrols a failover host; the answer holds its secret, which is not
    /// kept and cannot be shown again.
    pub async fn add_host(&self, name: &str, by: &str) -> Result<NewHost> {
        super::tokens::check_name("host name", name)?;
        let secret = crate::secret::random_token(24);
        let host = Host {
            name: name.to_string(),
            state: HostState::New,
            capacity: None,
            last_seen_ms: None,
            down_since_ms: None,
            agent_version: None,
            created_ms: now_ms(),
            created_by: by.to_string(),
            fingerprint: crate::secret::fingerprint(&secret),
        };
        self.store
            .add_host(&host, &crate::secret::digest(&secret))
            .await?;
        self.events.emit(
            None,
            EventKind::Host,
            json!({ "host": name, "action": "enrolled", "fingerprint": host.fingerprint, "by": by }),
        );
        Ok(NewHost { host, secret })
    }

    /// Every host with its VMs.
    pub async fn hosts(&self) -> Result<Vec<HostView>> {
        let vms = self.store.vms().await?;
        Ok(self
            .store
            .hosts()
            .await?
            .into_iter()
            .map(|h| view(h, &vms))
            .collect())
    }

    /// One host with its VMs.
    pub async fn host(&self, name: &str) -> Result<HostView> {
        self.hosts()
            .await?
            .into_iter()
            .find(|h| h.host.name == name)
            .ok_or_else(|| Error::not_found(format!("no host {name:?} (see `host list`)")))
    }

    /// Removes a host: its secret stops working. Refused while it runs VMs.
    pub async fn remove_host(&self, name: &str, by: &str) -> Result<()> {
        let h = self.host(name).await?;
        if h.vms_in_use > 0 {
            return Err(Error::conflict(format!(
                "host {name:?} runs {} VM(s) for failed-over slots; wait until they are freed (failback) or the host is down",
                h.vms_in_use
            )));
        }
        self.store.remove_host(name).await?;
        self.events.emit(
            None,
            EventKind::Host,
            json!({ "host": name, "action": "removed", "by": by }),
        );
        self.wakeups.wake(&host_key(name));
        Ok(())
    }

    /// The host whose secret is `secret`, if any.
    pub async fn host_by_secret(&self, secret: &str) -> Result<Option<Host>> {
        Ok(self
            .store
            .host_by_digest(&crate::secret::digest(secret))
            .await?)
    }

    /// The wake-up key of a host's long poll.
    pub fn host_wakeup(&self, name: &str) -> std::sync::Arc<tokio::sync::Notify> {
        self.wakeups.for_node(&host_key(name))
    }

    /// A host agent's poll: records that it is up and what it offers,
    /// brings its VMs' records in line with what it reports (a VM that
    /// ended by itself fails its node at once), and says which VMs to
    /// start and stop.
    pub async fn host_poll(&self, host: &Host, report: &HostReport) -> Result<Vec<HostCommand>> {
        let now = now_ms();
        let mut h = host.clone();
        if let Some(fresh) = self
            .store
            .hosts()
            .await?
            .into_iter()
            .find(|x| x.name == host.name)
        {
            h = fresh;
        }
        let was = h.state;
        h.state = HostState::Up;
        h.down_since_ms = None;
        h.last_seen_ms = Some(now);
        h.capacity = Some(host_capacity(&report.capacity));
        h.agent_version = Some(report.agent_version.clone());
        self.store.update_host(&h).await?;
        if was != HostState::Up {
            tracing::info!(host = %h.name, "failover host up");
            self.events.emit(
                None,
                EventKind::Host,
                json!({ "host": h.name, "action": "up", "from": was, "capacity": h.capacity }),
            );
            self.wake_engine();
        }
        let reported: BTreeMap<&str, &boot_proto::host::VmReport> =
            report.vms.iter().map(|v| (v.id.as_str(), v)).collect();
        let mut commands = Vec::new();
        let vms: Vec<Vm> = self
            .store
            .vms()
            .await?
            .into_iter()
            .filter(|v| v.host == h.name)
            .collect();
        for mut vm in vms {
            let r = reported.get(vm.id.as_str());
            let running = r.is_some_and(|r| r.running);
            match (vm.state, running) {
                (VmState::Requested, true) => {
                    vm.state = VmState::Running;
                    vm.started_ms = Some(now);
                    vm.detail = "running".into();
                    self.store.put_vm(&vm).await?;
                    self.vm_event(&vm, "running", json!({ "start_ms": now - vm.requested_ms }));
                }
                (VmState::Requested, false) => match r {
                    Some(r) => {
                        let why = format!("did not start: {}", r.detail);
                        self.vm_ended(&mut vm, VmState::Exited, &why, now).await?;
                    }
                    None => commands.push(HostCommand::StartVm { vm: spec(&vm) }),
                },
                (VmState::Running, false) => {
                    let why = match r {
                        Some(r) => format!("QEMU ended: {}", r.detail),
                        None => "no longer reported by its host".to_string(),
                    };
                    self.vm_ended(&mut vm, VmState::Exited, &why, now).await?;
                }
                (VmState::Stopping, false) => {
                    vm.state = VmState::Stopped;
                    vm.ended_ms = Some(now);
                    vm.detail = "stopped and freed".into();
                    self.store.put_vm(&vm).await?;
                    self.vm_event(&vm, "stopped", json!({}));
                }
                (VmState::Running, true) => {}
                (_, true) => commands.push(HostCommand::StopVm { id: vm.id.clone() }),
                (_, false) => {}
            }
        }
        for r in &report.vms {
            let known = self
                .store
                .vms()
                .await?
                .into_iter()
                .any(|v| v.id == r.id && v.host == h.name);
            if r.running && !known {
                commands.push(HostCommand::StopVm { id: r.id.clone() });
            }
        }
        Ok(commands)
    }

    /// Marks a VM ended and fails its node (its slot fails over again).
    async fn vm_ended(&self, vm: &mut Vm, state: VmState, why: &str, now: i64) -> Result<()> {
        vm.state = state;
        vm.ended_ms = Some(now);
        vm.detail = why.to_string();
        self.store.put_vm(vm).await?;
        tracing::warn!(vm = %vm.id, host = %vm.host, why, "VM ended");
        self.vm_event(vm, "ended", json!({ "why": why }));
        self.fail_node(&vm.node, why).await
    }

    async fn fail_node(&self, id: &str, why: &str) -> Result<()> {
        if let Some((from, to)) = self.store.transition_node(id, Transition::Fail).await? {
            self.events.emit(
                Some(id.to_string()),
                EventKind::NodeFailed,
                json!({ "reason": why, "from": from.as_str(), "to": to.as_str() }),
            );
            self.wake_engine();
        }
        Ok(())
    }

    fn vm_event(&self, vm: &Vm, action: &str, extra: serde_json::Value) {
        let mut d = json!({ "vm": vm.id, "host": vm.host, "action": action, "node": vm.node,
            "env": vm.environment, "slot": vm.slot, "state": vm.state });
        if let (Some(o), Some(e)) = (d.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        self.events.emit(Some(vm.node.clone()), EventKind::Vm, d);
    }

    /// Hosts whose agent has not polled for `limit_ms` go down: their
    /// live VMs are lost and their nodes fail (their slots fail over again).
    pub async fn hosts_check(&self, limit_ms: i64) -> Result<Vec<String>> {
        let now = now_ms();
        let mut down = Vec::new();
        for mut h in self.store.hosts().await? {
            let silent = h.last_seen_ms.is_some_and(|t| now - t > limit_ms);
            if h.state != HostState::Up || !silent {
                continue;
            }
            h.state = HostState::Down;
            h.down_since_ms = Some(now);
            self.store.update_host(&h).await?;
            let silent_ms = now - h.last_seen_ms.unwrap_or(now);
            tracing::warn!(host = %h.name, silent_ms, "failover host down");
            self.events.emit(
                None,
                EventKind::Host,
                json!({ "host": h.name, "action": "down", "silent_ms": silent_ms }),
            );
            for mut vm in self.store.vms().await? {
                if vm.host == h.name && vm.state == VmState::Reserved {
                    // A standby that never ran: nothing failed; the engine
                    // reserves another on a live host.
                    vm.state = VmState::Lost;
                    vm.ended_ms = Some(now);
                    vm.detail = format!("standby lost: its host {} went down", h.name);
                    self.store.put_vm(&vm).await?;
                    self.vm_event(&vm, "ended", json!({ "why": vm.detail }));
                    self.retire_vm_node(&vm.node, &vm.detail).await?;
                } else if vm.host == h.name && vm.state.live() {
                    let why = format!("its host {} went down", h.name);
                    self.vm_ended(&mut vm, VmState::Lost, &why, now).await?;
                }
            }
            down.push(h.name.clone());
        }
        Ok(down)
    }

    /// Asks for a VM on a host for a failing-over slot: a fresh MAC, its
    /// node enrolled as virtual (so it joins no pool but its slot), the
    /// host's poll woken. The slot is claimed for the node by the engine.
    pub async fn start_vm(&self, req: &VmRequest) -> Result<Vm> {
        self.new_vm(req, VmState::Requested).await
    }

    /// Reserves a standby VM (1:1 mapping) for the node `req.stands_in_for`:
    /// its MAC and node are made and it holds a place on its host, but the
    /// host is not asked to run it until [`Control::start_standby`].
    pub async fn reserve_vm(&self, req: &VmRequest) -> Result<Vm> {
        self.new_vm(req, VmState::Reserved).await
    }

    /// Starts the reserved standby VM `id` for slot `slot` of its
    /// environment (its node failed): asked of its host now.
    pub async fn start_standby(&self, id: &str, slot: u32) -> Result<Vm> {
        let mut vm = self
            .store
            .vms()
            .await?
            .into_iter()
            .find(|v| v.id == id && v.state == VmState::Reserved)
            .ok_or_else(|| Error::conflict(format!("no reserved standby VM {id}")))?;
        vm.state = VmState::Requested;
        vm.slot = slot;
        vm.requested_ms = now_ms();
        vm.detail = "standby asked of its host".into();
        self.store.put_vm(&vm).await?;
        tracing::info!(vm = %vm.id, host = %vm.host, env = %vm.environment, slot, "standby VM requested");
        self.vm_event(
            &vm,
            "requested",
            json!({ "standby": true, "stands_in_for": vm.stands_in_for }),
        );
        self.wakeups.wake(&host_key(&vm.host));
        Ok(vm)
    }

    async fn new_vm(&self, req: &VmRequest, state: VmState) -> Result<Vm> {
        let nodes = self.store.nodes().await?;
        let mac = loop {
            let mut b = [0u8; 6];
            rand::thread_rng().fill_bytes(&mut b);
            // Locally administered, unicast: 02:b5:xx:xx:xx:xx.
            b[0] = 0x02;
            b[1] = 0xb5;
            let m = crate::model::MacAddr(b);
            if !nodes.iter().any(|n| n.mac == m) {
                break m;
            }
        };
        let mut labels = BTreeMap::new();
        labels.insert(VIRTUAL_LABEL.to_string(), "true".to_string());
        labels.insert(HOST_LABEL.to_string(), req.host.clone());
        let node = self
            .store
            .enrol_node(&Enrolment {
                mac,
                serial: None,
                labels,
                power: None,
            })
            .await?;
        let digits: String = mac.to_string().replace(':', "");
        let vm = Vm {
            id: format!("vm-{digits}"),
            host: req.host.clone(),
            mac: mac.to_string(),
            node: node.id.clone(),
            cpus: req.cpus.max(1),
            memory_mb: req.memory_mb.max(128),
            firmware: firmware_name(req.firmware).to_string(),
            environment: req.environment.clone(),
            slot: req.slot,
            stands_in_for: req.stands_in_for.clone(),
            state,
            requested_ms: now_ms(),
            started_ms: None,
            ended_ms: None,
            detail: if state == VmState::Reserved {
                "standby: reserved on its host, not running".into()
            } else {
                "asked of its host".into()
            },
        };
        self.store.put_vm(&vm).await?;
        let action = if state == VmState::Reserved {
            "reserved"
        } else {
            "requested"
        };
        tracing::info!(vm = %vm.id, host = %vm.host, env = %vm.environment, slot = vm.slot, action, "VM");
        self.vm_event(
            &vm,
            action,
            json!({ "cpus": vm.cpus, "memory_mb": vm.memory_mb, "firmware": vm.firmware, "mac": vm.mac, "stands_in_for": vm.stands_in_for }),
        );
        if state != VmState::Reserved {
            self.wakeups.wake(&host_key(&vm.host));
        }
        Ok(vm)
    }

    /// Stops the VM that is node `node` (its slot left it) and retires the
    /// node (a VM is never reused); nothing when the node is no VM.
    pub async fn stop_vm_of(&self, node: &str, why: &str) -> Result<Option<Vm>> {
        let Some(mut vm) = self
            .store
            .vms()
            .await?
            .into_iter()
            .filter(|v| v.node == node)
            .max_by_key(|v| v.requested_ms)
        else {
            return Ok(None);
        };
        if vm.state == VmState::Reserved {
            // Never ran: freed at once.
            vm.state = VmState::Stopped;
            vm.ended_ms = Some(now_ms());
            vm.detail = format!("standby freed: {why}");
            self.store.put_vm(&vm).await?;
            self.vm_event(&vm, "stopped", json!({ "why": why }));
        } else if vm.state.live() {
            vm.state = VmState::Stopping;
            vm.detail = why.to_string();
            self.store.put_vm(&vm).await?;
            self.vm_event(&vm, "stopping", json!({ "why": why }));
            self.wakeups.wake(&host_key(&vm.host));
        }
        self.retire_vm_node(node, why).await?;
        Ok(Some(vm))
    }

    /// Retires a VM's node (a VM is never reused).
    async fn retire_vm_node(&self, node: &str, why: &str) -> Result<()> {
        if let Some((from, to)) = self.store.transition_node(node, Transition::Retire).await? {
            self.events.emit(
                Some(node.to_string()),
                EventKind::NodeState,
                json!({ "from": from.as_str(), "to": to.as_str(), "by": "failover", "why": why }),
            );
        }
        Ok(())
    }

    /// An admin says a failed node is repaired: it leaves the failed state
    /// (to idle; its agent's heartbeats keep it there) and the slots whose
    /// home it is may move back to it without waiting out its cool-down.
    pub async fn node_repaired(&self, id: &str, by: &str) -> Result<Node> {
        let node = self.find_node(id).await?;
        if matches!(node.state, NodeState::Retired | NodeState::Quarantined) {
            return Err(Error::conflict(format!(
                "node {} is {}: release it first",
                node.id,
                node.state.as_str()
            )));
        }
        if node.state == NodeState::Failed {
            self.store.set_node_state(&node.id, NodeState::Idle).await?;
        }
        let mut slots = Vec::new();
        for s in self.store.slots(None).await? {
            if s.home.as_deref() == Some(node.id.as_str()) && !s.home_repaired {
                let mut next = s.clone();
                next.home_repaired = true;
                if self
                    .store
                    .write_slots(Fence::default(), &[(next, Expect::Step(s.step))])
                    .await?
                {
                    slots.push(json!({ "env": s.environment, "slot": s.index }));
                }
            }
        }
        self.events.emit(
            Some(node.id.clone()),
            EventKind::NodeState,
            json!({ "action": "repaired", "from": node.state.as_str(), "by": by, "home_of": slots }),
        );
        self.wake_engine();
        self.find_node(&node.id).await
    }
}

pub(super) fn host_key(name: &str) -> String {
    format!("host:{name}")
}

fn spec(vm: &Vm) -> VmSpec {
    VmSpec {
        id: vm.id.clone(),
        mac: vm.mac.clone(),
        cpus: vm.cpus,
        memory_mb: vm.memory_mb,
        firmware: if vm.firmware == "uefi" {
            FirmwareKind::Uefi
        } else {
            FirmwareKind::Bios
        },
    }
}

fn view(host: Host, vms: &[Vm]) -> HostView {
    let mut mine: Vec<Vm> = vms
        .iter()
        .filter(|v| v.host == host.name)
        .cloned()
        .collect();
    mine.sort_by_key(|v| std::cmp::Reverse(v.requested_ms));
    HostView {
        vms_in_use: mine.iter().filter(|v| v.state.live()).count() as u32,
        host,
        vms: mine,
    }
}
