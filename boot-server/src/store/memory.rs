//! In-memory [`Store`](super::Store): the same semantics as the SQLite
//! backend without any I/O, for unit tests of the plan, the control layer and
//! engine decisions.

use super::*;
use crate::model::now_ms;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
struct Data {
    images: BTreeMap<String, BootImage>,
    default_image: Option<String>,
    assignments: BTreeMap<String, (Selector, String)>,
    nodes: BTreeMap<String, Node>,
    tokens: HashMap<String, (Option<String>, Option<String>)>,
    /// Each node's boot counter (advanced by a promoted token).
    boots: HashMap<String, i64>,
    leases: BTreeMap<MacAddr, Lease>,
    reservations: BTreeMap<MacAddr, Reservation>,
    attachments: BTreeMap<String, DiskAttachment>,
    overlays: BTreeMap<String, OverlayRecord>,
    disk_requests: BTreeMap<i64, DiskRequest>,
    next_disk_request: i64,
    commands: BTreeMap<i64, QueuedCommand>,
    next_command: i64,
    events: Vec<Event>,
    next_event: i64,
    environments: BTreeMap<String, Environment>,
    slots: BTreeMap<(String, u32), Slot>,
    load: Vec<LoadSample>,
    api_tokens: BTreeMap<String, (ApiToken, String)>,
    servers: BTreeMap<String, (crate::model::ServerInfo, i64)>,
    preferred_controller: Option<String>,
    hosts: BTreeMap<String, (Host, String)>,
    vms: BTreeMap<String, Vm>,
}

impl Data {
    /// A node as the store returns it: with the slot it holds.
    fn with_slot(&self, n: &Node) -> Node {
        let mut n = n.clone();
        let held = self
            .slots
            .values()
            .find(|s| s.node.as_deref() == Some(n.id.as_str()));
        n.environment = held.map(|s| s.environment.clone());
        n.slot = held.map(|s| s.index);
        n
    }
}

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore(Mutex<Data>);

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Data) -> Result<T>) -> Result<T> {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut d)
    }
}

fn node_mut<'a>(d: &'a mut Data, id: &str) -> Result<&'a mut Node> {
    match d.nodes.get_mut(id) {
        Some(n) => Ok(n),
        None => Err(Refused::NotFound(format!("no node {id}")).into()),
    }
}

fn new_node(mac: MacAddr, now: i64) -> Node {
    Node {
        id: mac.node_id(),
        mac,
        uuid: None,
        arch: None,
        state: NodeState::Discovered,
        first_seen_ms: now,
        last_seen_ms: now,
        last_heartbeat_ms: None,
        booted_image: None,
        inventory: None,
        heartbeat: None,
        enrolled: false,
        serial: None,
        labels: BTreeMap::new(),
        power: None,
        observed_ip: None,
        last_hello_ms: None,
        running_image: None,
        agent_protocol: None,
        environment: None,
        slot: None,
    }
}

fn apply(n: &mut Node, t: Transition) -> Option<(NodeState, NodeState)> {
    let before = n.state;
    let after = before.next(t)?;
    n.state = after;
    Some((before, after))
}

#[async_trait]
impl ImageStore for MemoryStore {
    async fn put_image(&self, image: &BootImage) -> Result<()> {
        self.with(|d| {
            d.images.insert(image.name.clone(), image.clone());
            Ok(())
        })
    }
    async fn image(&self, name: &str) -> Result<Option<BootImage>> {
        self.with(|d| Ok(d.images.get(name).cloned()))
    }
    async fn images(&self) -> Result<Vec<BootImage>> {
        self.with(|d| Ok(d.images.values().cloned().collect()))
    }
    async fn remove_image(&self, name: &str) -> Result<()> {
        self.with(|d| {
            if d.assignments.values().any(|(_, i)| i == name)
                || d.default_image.as_deref() == Some(name)
            {
                return Err(Refused::Conflict(format!(
                    "image {name} is assigned or the default; change that first"
                ))
                .into());
            }
            if d.images.remove(name).is_none() {
                return Err(Refused::NotFound(format!("no image named {name}")).into());
            }
            Ok(())
        })
    }
    async fn set_default_image(&self, image: Option<&str>) -> Result<()> {
        self.with(|d| {
            if let Some(i) = image {
                if !d.images.contains_key(i) {
                    return Err(Refused::NotFound(format!("no image named {i}")).into());
                }
            }
            d.default_image = image.map(str::to_string);
            Ok(())
        })
    }
    async fn default_image(&self) -> Result<Option<String>> {
        self.with(|d| Ok(d.default_image.clone()))
    }
    async fn assign(&self, selector: &Selector, image: Option<&str>) -> Result<()> {
        self.with(|d| {
            match image {
                Some(i) => {
                    if !d.images.contains_key(i) {
                        return Err(Refused::NotFound(format!("no image named {i}")).into());
                    }
                    d.assignments
                        .insert(selector.key(), (selector.clone(), i.to_string()));
                }
                None => {
                    d.assignments.remove(&selector.key());
                }
            }
            Ok(())
        })
    }
    async fn assignment(&self, selector: &Selector) -> Result<Option<String>> {
        self.with(|d| Ok(d.assignments.get(&selector.key()).map(|(_, i)| i.clone())))
    }
    async fn assignments(&self) -> Result<Vec<(Selector, String)>> {
        self.with(|d| Ok(d.assignments.values().cloned().collect()))
    }
}

#[async_trait]
impl NodeStore for MemoryStore {
    async fn observe_node(&self, s: &Sighting) -> Result<(Node, bool)> {
        self.with(|d| {
            let now = now_ms();
            let id = d
                .nodes
                .values()
                .find(|n| n.mac == s.mac)
                .map(|n| n.id.clone());
            let new = id.is_none();
            let id = id.unwrap_or_else(|| s.mac.node_id());
            let n = d.nodes.entry(id).or_insert_with(|| new_node(s.mac, now));
            n.last_seen_ms = now;
            if s.uuid.is_some() {
                n.uuid = s.uuid.clone();
            }
            if s.arch.is_some() {
                n.arch = s.arch.clone();
            }
            if s.observed_ip.is_some() {
                n.observed_ip = s.observed_ip;
            }
            Ok((n.clone(), new))
        })
    }
    async fn enrol_node(&self, e: &Enrolment) -> Result<Node> {
        self.with(|d| {
            let now = now_ms();
            let id = d
                .nodes
                .values()
                .find(|n| n.mac == e.mac)
                .map(|n| n.id.clone())
                .unwrap_or_else(|| e.mac.node_id());
            let n = d.nodes.entry(id).or_insert_with(|| new_node(e.mac, now));
            n.enrolled = true;
            if e.serial.is_some() {
                n.serial = e.serial.clone();
            }
            n.labels.extend(e.labels.clone());
            if e.power.is_some() {
                n.power = e.power.clone();
            }
            apply(n, Transition::Enrol);
            Ok(n.clone())
        })
    }
    async fn node(&self, id: &str) -> Result<Option<Node>> {
        self.with(|d| Ok(d.nodes.get(id).map(|n| d.with_slot(n))))
    }
    async fn node_by_mac(&self, mac: MacAddr) -> Result<Option<Node>> {
        self.with(|d| {
            Ok(d.nodes
                .values()
                .find(|n| n.mac == mac)
                .map(|n| d.with_slot(n)))
        })
    }
    async fn nodes(&self) -> Result<Vec<Node>> {
        self.with(|d| Ok(d.nodes.values().map(|n| d.with_slot(n)).collect()))
    }
    async fn transition_node(
        &self,
        id: &str,
        t: Transition,
    ) -> Result<Option<(NodeState, NodeState)>> {
        self.with(|d| Ok(apply(node_mut(d, id)?, t)))
    }
    async fn set_node_state(&self, id: &str, state: NodeState) -> Result<()> {
        self.with(|d| {
            node_mut(d, id)?.state = state;
            Ok(())
        })
    }
    async fn set_booted_image(&self, id: &str, image: &str) -> Result<()> {
        self.with(|d| {
            let n = node_mut(d, id)?;
            n.booted_image = Some(image.to_string());
            apply(n, Transition::Boot);
            Ok(())
        })
    }
    async fn record_hello(&self, id: &str, hello: &HelloFacts, serving: bool) -> Result<()> {
        self.with(|d| {
            let n = node_mut(d, id)?;
            let now = now_ms();
            n.inventory = Some(hello.inventory.clone());
            n.running_image = hello.image.clone();
            n.agent_protocol = Some(hello.protocol);
            n.last_hello_ms = Some(now);
            n.last_heartbeat_ms = Some(now);
            n.last_seen_ms = now;
            apply(n, Transition::AgentUp { serving });
            Ok(())
        })
    }
    async fn record_heartbeat(
        &self,
        id: &str,
        hb: &serde_json::Value,
        serving: bool,
    ) -> Result<Option<(NodeState, NodeState)>> {
        self.with(|d| {
            let n = node_mut(d, id)?;
            let now = now_ms();
            n.heartbeat = Some(hb.clone());
            n.last_heartbeat_ms = Some(now);
            n.last_seen_ms = now;
            Ok(apply(n, Transition::Recover { serving }))
        })
    }
    async fn set_observed_ip(&self, id: &str, ip: Option<Ipv4Addr>) -> Result<()> {
        self.with(|d| {
            node_mut(d, id)?.observed_ip = ip;
            Ok(())
        })
    }
    async fn set_next_token(&self, id: &str, token: &str) -> Result<()> {
        self.with(|d| {
            node_mut(d, id)?;
            d.tokens.entry(id.to_string()).or_default().1 = Some(token.to_string());
            Ok(())
        })
    }
    async fn node_by_token(&self, token: &str) -> Result<Option<(Node, bool)>> {
        self.with(|d| {
            for (id, (cur, next)) in &d.tokens {
                let which = if cur.as_deref() == Some(token) {
                    Some(false)
                } else if next.as_deref() == Some(token) {
                    Some(true)
                } else {
                    None
                };
                if let (Some(is_next), Some(n)) = (which, d.nodes.get(id)) {
                    return Ok(Some((n.clone(), is_next)));
                }
            }
            Ok(None)
        })
    }
    async fn promote_token(&self, id: &str, token: &str) -> Result<bool> {
        self.with(|d| {
            let t = d.tokens.entry(id.to_string()).or_default();
            if t.1.as_deref() == Some(token) {
                t.0 = t.1.take();
                *d.boots.entry(id.to_string()).or_default() += 1;
                Ok(true)
            } else {
                Ok(false)
            }
        })
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn leases(&self) -> Result<Vec<Lease>> {
        self.with(|d| {
            let mut v: Vec<Lease> = d.leases.values().cloned().collect();
            v.sort_by_key(|l| l.ip);
            Ok(v)
        })
    }
    async fn put_lease(&self, l: &Lease) -> Result<()> {
        self.with(|d| {
            let now = now_ms();
            if let Some(other) = d
                .leases
                .values()
                .find(|o| o.ip == l.ip && o.mac != l.mac)
                .cloned()
            {
                if other.expires_at_ms > now {
                    return Err(Refused::AddressHeld {
                        ip: l.ip,
                        holder: other.mac,
                    }
                    .into());
                }
                d.leases.remove(&other.mac);
            }
            d.leases.insert(l.mac, l.clone());
            Ok(())
        })
    }
    async fn remove_lease(&self, mac: MacAddr, ip: Ipv4Addr) -> Result<bool> {
        self.with(|d| {
            if d.leases.get(&mac).is_some_and(|l| l.ip == ip) {
                d.leases.remove(&mac);
                return Ok(true);
            }
            Ok(false)
        })
    }
    async fn expire_lease(&self, mac: MacAddr, ip: Ipv4Addr, expires_at_ms: i64) -> Result<bool> {
        self.with(|d| {
            if d.leases
                .get(&mac)
                .is_some_and(|l| l.ip == ip && l.expires_at_ms == expires_at_ms)
            {
                d.leases.remove(&mac);
                return Ok(true);
            }
            Ok(false)
        })
    }
    async fn lease_of(&self, mac: MacAddr) -> Result<Option<Lease>> {
        let now = now_ms();
        self.with(|d| {
            Ok(d.leases
                .get(&mac)
                .filter(|l| l.expires_at_ms > now)
                .cloned())
        })
    }
    async fn node_by_lease_ip(&self, ip: Ipv4Addr) -> Result<Option<Node>> {
        let now = now_ms();
        self.with(|d| {
            match d
                .leases
                .values()
                .find(|l| l.ip == ip && l.expires_at_ms > now)
            {
                Some(l) => Ok(d.nodes.values().find(|n| n.mac == l.mac).cloned()),
                None => Ok(d
                    .nodes
                    .values()
                    .find(|n| n.observed_ip == Some(ip))
                    .cloned()),
            }
        })
    }
}

#[async_trait]
impl ReservationStore for MemoryStore {
    async fn reservations(&self) -> Result<Vec<Reservation>> {
        self.with(|d| Ok(d.reservations.values().cloned().collect()))
    }
    async fn put_reservation(&self, r: &Reservation) -> Result<()> {
        self.with(|d| {
            if let Some(o) = d
                .reservations
                .values()
                .find(|o| o.ip == r.ip && o.mac != r.mac)
            {
                return Err(Refused::Conflict(format!(
                    "address {} is reserved for {}",
                    r.ip, o.mac
                ))
                .into());
            }
            d.reservations.insert(r.mac, r.clone());
            Ok(())
        })
    }
    async fn remove_reservation(&self, mac: MacAddr) -> Result<bool> {
        self.with(|d| Ok(d.reservations.remove(&mac).is_some()))
    }
}

#[async_trait]
impl DiskAttachmentStore for MemoryStore {
    async fn attach_disk(&self, overlay: &str, node: &str, export: &str) -> Result<()> {
        self.with(|d| {
            d.attachments.insert(
                overlay.to_string(),
                DiskAttachment {
                    overlay: overlay.to_string(),
                    node: node.to_string(),
                    export: export.to_string(),
                    created_ms: now_ms(),
                    server: String::new(),
                },
            );
            Ok(())
        })
    }
    async fn detach_disk(&self, overlay: &str) -> Result<bool> {
        self.with(|d| Ok(d.attachments.remove(overlay).is_some()))
    }
    async fn disk_attachments(&self) -> Result<Vec<DiskAttachment>> {
        self.with(|d| {
            Ok(d.attachments
                .values()
                .map(|a| DiskAttachment {
                    server: d
                        .overlays
                        .get(&a.overlay)
                        .map(|o| o.server.clone())
                        .unwrap_or_default(),
                    ..a.clone()
                })
                .collect())
        })
    }
    async fn record_overlay(&self, o: &OverlayRecord) -> Result<()> {
        self.with(|d| {
            d.overlays.insert(o.overlay.clone(), o.clone());
            Ok(())
        })
    }
    async fn record_overlay_if_new(&self, o: &OverlayRecord) -> Result<bool> {
        self.with(|d| {
            if d.overlays.contains_key(&o.overlay) {
                return Ok(false);
            }
            d.overlays.insert(o.overlay.clone(), o.clone());
            Ok(true)
        })
    }
    async fn forget_overlay(&self, overlay: &str) -> Result<bool> {
        self.with(|d| Ok(d.overlays.remove(overlay).is_some()))
    }
    async fn overlays(&self) -> Result<Vec<OverlayRecord>> {
        self.with(|d| Ok(d.overlays.values().cloned().collect()))
    }
    async fn queue_disk_request(&self, server: &str, op: &DiskOp) -> Result<i64> {
        self.with(|d| {
            d.next_disk_request += 1;
            let id = d.next_disk_request;
            d.disk_requests.insert(
                id,
                DiskRequest {
                    id,
                    server: server.to_string(),
                    op: op.clone(),
                    status: crate::model::DiskRequestStatus::Queued,
                    result: String::new(),
                },
            );
            Ok(id)
        })
    }
    async fn take_disk_requests(&self, server: &str) -> Result<Vec<DiskRequest>> {
        use crate::model::DiskRequestStatus as S;
        self.with(|d| {
            let mut out = Vec::new();
            for r in d.disk_requests.values_mut() {
                if r.server == server && r.status == S::Queued {
                    r.status = S::Taken;
                    out.push(r.clone());
                }
            }
            Ok(out)
        })
    }
    async fn finish_disk_request(&self, id: i64, ok: bool, result: &str) -> Result<bool> {
        use crate::model::DiskRequestStatus as S;
        self.with(|d| match d.disk_requests.get_mut(&id) {
            Some(r) if matches!(r.status, S::Queued | S::Taken) => {
                r.status = if ok { S::Done } else { S::Failed };
                r.result = result.to_string();
                Ok(true)
            }
            _ => Ok(false),
        })
    }
    async fn disk_request(&self, id: i64) -> Result<Option<DiskRequest>> {
        self.with(|d| Ok(d.disk_requests.get(&id).cloned()))
    }
}

#[async_trait]
impl CommandStore for MemoryStore {
    async fn queue_command(&self, node: &str, command: &boot_proto::CommandKind) -> Result<i64> {
        self.with(|d| {
            d.next_command += 1;
            let id = d.next_command;
            let boot = d.boots.get(node).copied().unwrap_or(0);
            d.commands.insert(
                id,
                QueuedCommand {
                    id,
                    node: node.to_string(),
                    command: command.clone(),
                    status: CommandStatus::Queued,
                    detail: String::new(),
                    created_ms: now_ms(),
                    delivered_ms: None,
                    boot,
                },
            );
            Ok(id)
        })
    }
    async fn take_commands(
        &self,
        node: &str,
        boot: i64,
        redeliver_after_ms: i64,
    ) -> Result<Vec<QueuedCommand>> {
        self.with(|d| {
            let now = now_ms();
            let mut out = Vec::new();
            if d.boots.get(node).copied().unwrap_or(0) != boot {
                return Ok(out);
            }
            for c in d
                .commands
                .values_mut()
                .filter(|c| c.node == node && c.boot == boot)
            {
                let due = match c.status {
                    CommandStatus::Queued => true,
                    CommandStatus::Delivered => {
                        c.delivered_ms.unwrap_or(0) + redeliver_after_ms <= now
                    }
                    _ => false,
                };
                if due {
                    c.status = CommandStatus::Delivered;
                    c.delivered_ms = Some(now);
                    out.push(c.clone());
                }
            }
            Ok(out)
        })
    }
    async fn command(&self, id: i64) -> Result<Option<QueuedCommand>> {
        self.with(|d| Ok(d.commands.get(&id).cloned()))
    }
    async fn commands_of(&self, node: &str, limit: u32) -> Result<Vec<QueuedCommand>> {
        self.with(|d| {
            Ok(d.commands
                .values()
                .rev()
                .filter(|c| c.node == node)
                .take(limit as usize)
                .cloned()
                .collect())
        })
    }
    async fn update_command(
        &self,
        node: &str,
        id: i64,
        status: CommandStatus,
        detail: &str,
    ) -> Result<bool> {
        self.with(|d| match d.commands.get_mut(&id) {
            Some(c) if c.node == node => {
                if !c.status.is_final() {
                    c.status = status;
                    c.detail = detail.to_string();
                }
                Ok(true)
            }
            _ => Ok(false),
        })
    }
    async fn node_boot(&self, node: &str) -> Result<i64> {
        self.with(|d| Ok(d.boots.get(node).copied().unwrap_or(0)))
    }
    async fn boot_of_token(&self, node: &str, token: &str) -> Result<Option<i64>> {
        self.with(|d| {
            let present = match d.tokens.get(node) {
                Some((Some(cur), _)) => cur == token,
                Some((None, next)) => next.as_deref() == Some(token),
                None => false,
            };
            Ok(present.then(|| d.boots.get(node).copied().unwrap_or(0)))
        })
    }
    async fn close_commands_of_previous_boot(&self, node: &str) -> Result<usize> {
        self.with(|d| {
            let present = d.boots.get(node).copied().unwrap_or(0);
            let mut n = 0;
            for c in d
                .commands
                .values_mut()
                .filter(|c| c.node == node && c.boot < present && !c.status.is_final())
            {
                (c.status, c.detail) = closed_by_new_boot(&c.command, c.status, c.boot, present);
                n += 1;
            }
            Ok(n)
        })
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<Event>> {
        self.with(|d| {
            let mut out = Vec::with_capacity(events.len());
            for e in events {
                d.next_event += 1;
                let ev = Event {
                    id: d.next_event,
                    at_ms: e.at_ms,
                    node: e.node,
                    kind: e.kind,
                    detail: e.detail,
                };
                d.events.push(ev.clone());
                out.push(ev);
            }
            Ok(out)
        })
    }
    async fn events(&self, after_id: i64, node: Option<&str>, limit: u32) -> Result<Vec<Event>> {
        self.with(|d| {
            Ok(d.events
                .iter()
                .filter(|e| e.id > after_id && (node.is_none() || e.node.as_deref() == node))
                .take(limit as usize)
                .cloned()
                .collect())
        })
    }
    async fn last_event_id(&self) -> Result<i64> {
        self.with(|d| Ok(d.events.last().map_or(0, |e| e.id)))
    }
    async fn prune_events(&self, keep: u64) -> Result<u64> {
        self.with(|d| {
            let extra = d.events.len().saturating_sub(keep as usize);
            d.events.drain(..extra);
            Ok(extra as u64)
        })
    }
}

#[async_trait]
impl EnvStore for MemoryStore {
    async fn put_environment(&self, env: &Environment) -> Result<()> {
        self.with(|d| {
            d.environments.insert(env.name.clone(), env.clone());
            Ok(())
        })
    }
    async fn environment(&self, name: &str) -> Result<Option<Environment>> {
        self.with(|d| Ok(d.environments.get(name).cloned()))
    }
    async fn environments(&self) -> Result<Vec<Environment>> {
        self.with(|d| Ok(d.environments.values().cloned().collect()))
    }
    async fn delete_environment(&self, name: &str) -> Result<()> {
        self.with(|d| {
            let held = d
                .slots
                .values()
                .filter(|s| s.environment == name && s.node.is_some())
                .count();
            if held > 0 {
                return Err(Refused::Conflict(format!(
                    "environment {name} still holds {held} node(s); deactivate it and wait until its slots are vacant"
                ))
                .into());
            }
            if d.environments.remove(name).is_none() {
                return Err(Refused::NotFound(format!("no environment {name}")).into());
            }
            d.slots.retain(|(e, _), _| e != name);
            Ok(())
        })
    }
    async fn slots(&self, env: Option<&str>) -> Result<Vec<Slot>> {
        self.with(|d| {
            Ok(d.slots
                .values()
                .filter(|s| env.is_none_or(|e| s.environment == e))
                .cloned()
                .collect())
        })
    }
    async fn write_slots(&self, _fence: Fence, writes: &[(Slot, Expect)]) -> Result<bool> {
        self.with(|d| {
            for (slot, expect) in writes {
                if let Expect::Step(want) = expect {
                    let key = (slot.environment.clone(), slot.index);
                    let have = d.slots.get(&key).map(|s| s.step).unwrap_or_default();
                    if have != *want {
                        return Ok(false);
                    }
                }
            }
            let mut next = d.slots.clone();
            for (slot, _) in writes {
                next.insert((slot.environment.clone(), slot.index), slot.clone());
            }
            let mut holders = std::collections::HashSet::new();
            for s in next.values() {
                if let Some(n) = &s.node {
                    if !holders.insert(n.clone()) {
                        return Err(
                            Refused::Conflict(format!("node {n} would hold two slots")).into()
                        );
                    }
                }
            }
            d.slots = next;
            Ok(true)
        })
    }
    async fn delete_slot(&self, _fence: Fence, env: &str, index: u32) -> Result<bool> {
        self.with(|d| {
            let key = (env.to_string(), index);
            let vacant = d
                .slots
                .get(&key)
                .is_some_and(|s| s.node.is_none() && s.step == SlotStep::Vacant);
            if vacant {
                d.slots.remove(&key);
            }
            Ok(vacant)
        })
    }
    async fn append_load(&self, sample: &LoadSample) -> Result<()> {
        self.with(|d| {
            d.load.push(sample.clone());
            Ok(())
        })
    }
    async fn load_history(&self, env: &str, since_ms: i64) -> Result<Vec<LoadSample>> {
        self.with(|d| {
            Ok(d.load
                .iter()
                .filter(|s| s.environment == env && s.at_ms >= since_ms)
                .cloned()
                .collect())
        })
    }
    async fn prune_load(&self, before_ms: i64) -> Result<u64> {
        self.with(|d| {
            let n = d.load.len();
            d.load.retain(|s| s.at_ms >= before_ms);
            Ok((n - d.load.len()) as u64)
        })
    }
    async fn downsample_load(&self, before_ms: i64, bucket_ms: i64) -> Result<u64> {
        self.with(|d| {
            let n = d.load.len();
            let mut seen = std::collections::HashSet::new();
            let bucket = bucket_ms.max(1);
            d.load.retain(|s| {
                s.at_ms >= before_ms || seen.insert((s.node.clone(), s.at_ms.div_euclid(bucket)))
            });
            Ok((n - d.load.len()) as u64)
        })
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn put_token(&self, token: &ApiToken, digest: &str) -> Result<()> {
        self.with(|d| {
            if d.api_tokens.contains_key(&token.name) {
                return Err(
                    Refused::Conflict(format!("a token named {:?} exists", token.name)).into(),
                );
            }
            d.api_tokens
                .insert(token.name.clone(), (token.clone(), digest.to_string()));
            Ok(())
        })
    }
    async fn tokens(&self) -> Result<Vec<ApiToken>> {
        self.with(|d| Ok(d.api_tokens.values().map(|(t, _)| t.clone()).collect()))
    }
    async fn token_by_digest(&self, digest: &str) -> Result<Option<ApiToken>> {
        self.with(|d| {
            Ok(d.api_tokens
                .values()
                .find(|(_, h)| h == digest)
                .map(|(t, _)| t.clone()))
        })
    }
    async fn revoke_token(&self, name: &str) -> Result<bool> {
        self.with(|d| Ok(d.api_tokens.remove(name).is_some()))
    }
}

#[async_trait]
impl crate::store::ServerStore for MemoryStore {
    async fn heartbeat_server(&self, server: &crate::model::ServerInfo) -> Result<()> {
        self.with(|d| {
            d.servers
                .insert(server.name.clone(), (server.clone(), now_ms()));
            Ok(())
        })
    }
    async fn servers(&self) -> Result<Vec<crate::model::ServerRecord>> {
        let now = now_ms();
        self.with(|d| {
            Ok(d.servers
                .values()
                .map(|(info, at)| crate::model::ServerRecord {
                    info: info.clone(),
                    last_heartbeat_ms: *at,
                    age_ms: now - at,
                })
                .collect())
        })
    }
    async fn forget_server(&self, name: &str) -> Result<bool> {
        self.with(|d| Ok(d.servers.remove(name).is_some()))
    }
    async fn set_preferred_controller(&self, name: Option<&str>) -> Result<()> {
        self.with(|d| {
            d.preferred_controller = name.map(str::to_string);
            Ok(())
        })
    }
    async fn preferred_controller(&self) -> Result<Option<String>> {
        self.with(|d| Ok(d.preferred_controller.clone()))
    }
}

#[async_trait]
impl HostStore for MemoryStore {
    async fn add_host(&self, host: &Host, digest: &str) -> Result<()> {
        self.with(|d| {
            if d.hosts.contains_key(&host.name) {
                return Err(
                    Refused::Conflict(format!("a host named {:?} exists", host.name)).into(),
                );
            }
            if d.hosts.values().any(|(_, h)| h == digest) {
                return Err(Refused::Conflict("that secret is in use".into()).into());
            }
            d.hosts
                .insert(host.name.clone(), (host.clone(), digest.to_string()));
            Ok(())
        })
    }
    async fn hosts(&self) -> Result<Vec<Host>> {
        self.with(|d| Ok(d.hosts.values().map(|(h, _)| h.clone()).collect()))
    }
    async fn host_by_digest(&self, digest: &str) -> Result<Option<Host>> {
        self.with(|d| {
            Ok(d.hosts
                .values()
                .find(|(_, h)| h == digest)
                .map(|(h, _)| h.clone()))
        })
    }
    async fn update_host(&self, host: &Host) -> Result<bool> {
        self.with(|d| {
            Ok(match d.hosts.get_mut(&host.name) {
                Some((h, _)) => {
                    *h = host.clone();
                    true
                }
                None => false,
            })
        })
    }
    async fn remove_host(&self, name: &str) -> Result<bool> {
        self.with(|d| {
            d.vms.retain(|_, v| v.host != name);
            Ok(d.hosts.remove(name).is_some())
        })
    }
    async fn put_vm(&self, vm: &Vm) -> Result<()> {
        self.with(|d| {
            d.vms.insert(vm.id.clone(), vm.clone());
            Ok(())
        })
    }
    async fn vms(&self) -> Result<Vec<Vm>> {
        self.with(|d| Ok(d.vms.values().cloned().collect()))
    }
}
