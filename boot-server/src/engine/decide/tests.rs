//! Unit tests of the allocation decisions: plain values in, decisions out.

use super::failover::vm_size;
use super::*;
use crate::model::{
    failback_window_open, Failback, HostCapacity, HostState, MacAddr, VmMapping, VmState,
    HOST_LABEL, VIRTUAL_LABEL,
};

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
        held("web", 0, "n1"),
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

/// Calls `f` with a world of these values at `NOW` (10 s freshness, no
/// enrolment, no usage history), `cooling` nodes cooling down.
fn in_world<T>(
    envs: &[Environment],
    slots: &[Slot],
    nodes: &[Node],
    hosts: &[Host],
    vms: &[Vm],
    cooling: &[&str],
    f: impl FnOnce(&World) -> T,
) -> T {
    let cooling: HashSet<String> = cooling.iter().map(|s| s.to_string()).collect();
    let usage = HashMap::new();
    f(&World {
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

fn run(
    envs: &[Environment],
    slots: &[Slot],
    nodes: &[Node],
    hosts: &[Host],
    vms: &[Vm],
    cooling: &[&str],
) -> Vec<Decision> {
    in_world(envs, slots, nodes, hosts, vms, cooling, decide)
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

/// `decide` for the slots and nodes of [`on_vm`] under failback `policy`,
/// with no hosts or VMs and `cooling` nodes cooling down.
fn failback_run(
    policy: Failback,
    slots: &[Slot],
    nodes: &[Node],
    cooling: &[&str],
) -> Vec<Decision> {
    run(&[env(policy)], slots, nodes, &[], &[], cooling)
}

#[test]
fn failback_when_the_home_node_is_back_as_the_policy_says() {
    let (slots, mut nodes) = on_vm();
    // The home node rebooted since the slot left it (hello after): back,
    // cool-down or not.
    nodes[1].last_hello_ms = Some(NOW - 10);
    let d = failback_run(Failback::Immediate, &slots, &nodes, &["n2"]);
    assert!(
        matches!(&d[..], [Decision::Failback { index: 1, vm, home, .. }] if vm == "n5" && home == "n2"),
        "{d:?}"
    );
    // never: stays on the VM.
    let d = failback_run(Failback::Never, &slots, &nodes, &["n2"]);
    assert!(d.is_empty(), "{d:?}");
    // when-idle: not while the VM says busy.
    nodes[2].heartbeat = Some(serde_json::json!({"busy": true}));
    let d = failback_run(Failback::WhenIdle, &slots, &nodes, &["n2"]);
    assert!(d.is_empty(), "{d:?}");
    nodes[2].heartbeat = Some(serde_json::json!({"busy": false}));
    let d = failback_run(Failback::WhenIdle, &slots, &nodes, &["n2"]);
    assert!(matches!(&d[..], [Decision::Failback { .. }]), "{d:?}");
}

#[test]
fn no_failback_to_a_home_node_that_is_not_back() {
    let (mut slots, mut nodes) = on_vm();
    // Still cooling down and no hello since it failed: not back.
    let d = failback_run(Failback::Immediate, &slots, &nodes, &["n2"]);
    assert!(d.is_empty(), "{d:?}");
    // An admin marked it repaired: back.
    slots[1].home_repaired = true;
    let d = failback_run(Failback::Immediate, &slots, &nodes, &["n2"]);
    assert!(matches!(&d[..], [Decision::Failback { .. }]), "{d:?}");
    // Its agent is down, or it is failed: not back, repaired or not.
    nodes[1].last_heartbeat_ms = Some(NOW - 60_000);
    let d = failback_run(Failback::Immediate, &slots, &nodes, &[]);
    assert!(d.is_empty(), "{d:?}");
    nodes[1].last_heartbeat_ms = Some(NOW);
    nodes[1].state = NodeState::Failed;
    let d = failback_run(Failback::Immediate, &slots, &nodes, &[]);
    assert!(d.is_empty(), "{d:?}");
    // A slot failing back already is not asked twice.
    nodes[1].state = NodeState::Idle;
    slots[1].failing_back = true;
    let d = failback_run(Failback::Immediate, &slots, &nodes, &[]);
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
    let ups: HashMap<String, u32> = ups.iter().map(|(e, t)| (e.to_string(), *t)).collect();
    in_world(envs, slots, nodes, &[], &[], &[], |w| likely_next(w, &ups))
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
fn an_inactive_environment_stages_its_desired_count_and_preemptible_nodes_stage_higher_priorities()
{
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
    let slots = vec![held("web", 0, "n1"), held("web", 1, "n2")];
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
        held("web", 0, "n1"),
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
