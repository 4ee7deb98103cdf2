//! Engine decisions and slot steps against the in-memory store, with agents
//! played by the test (they answer commands the way node-agent does) and a
//! clock moved by hand: no SQLite, no sockets, no guests.

use super::*;
use crate::config::Config;
use crate::events::EventHub;
use crate::images::ImageFiles;
use crate::model::ClonePhase as ClonePhaseT;
use crate::model::{
    now_ms, HelloFacts, MacAddr, NodeState, Policy, Schedule, Sighting, Transition,
};
use crate::plan::BootPlan;
use crate::store::{Expect, Fence, MemoryStore, Refused, Store};
use boot_proto::{CommandKind, CommandStatus};
use std::net::Ipv4Addr;

struct Lab {
    c: Arc<Control>,
    engine: Engine,
    clock: Arc<ManualClock>,
    disks: Arc<boot_nbd::DiskStore>,
    _dir: tempfile::TempDir,
}

fn mac(i: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0xee, 0, i])
}

async fn lab(nodes: u8) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("lab")).unwrap();
    std::fs::write(images.join("lab/k"), b"kernel").unwrap();
    std::fs::write(images.join("lab/i"), b"initrd").unwrap();
    let mut config = Config {
        images_dir: images,
        state_dir: dir.path().join("state"),
        server_ip: Some(Ipv4Addr::new(10, 0, 0, 1)),
        dhcp: crate::config::DhcpConfig {
            subnets: vec![toml::from_str(
                "network = \"10.0.0.0/24\"\nrange = [\"10.0.0.100\", \"10.0.0.200\"]",
            )
            .unwrap()],
            ..Default::default()
        },
        ..Default::default()
    };
    // Heartbeats are stamped by the real clock; the test clock runs ahead.
    config.agent.heartbeat_timeout_secs = 86_400;
    config.engine.vm_fence_timeout_secs = 2;
    let config = Arc::new(config);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let events = EventHub::start(store.clone(), 10_000);
    let plan = Arc::new(BootPlan::new(store.clone(), config.clone(), events.clone()).unwrap());
    let files = Arc::new(ImageFiles::new(&config.images_dir));
    let disks = Arc::new(boot_nbd::DiskStore::open(&dir.path().join("disks")).unwrap());
    let raw = dir.path().join("base.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    disks.create_base_from_file("base", &raw).unwrap();
    let c = Arc::new(Control::new(
        store,
        config,
        plan,
        events,
        files,
        Some(disks.clone()),
        None,
    ));
    for (name, file) in [("pool", "lab/k"), ("img-a", "lab/k"), ("img-b", "lab/k")] {
        c.add_image(format!(
            "name = \"{name}\"\nkind = \"linux\"\nkernel = \"{file}\"\ninitrd = \"lab/i\"\n"
        ))
        .await
        .unwrap();
    }
    c.set_default_image(Some("pool".into())).await.unwrap();
    for i in 1..=nodes {
        let (n, _) = c
            .store
            .observe_node(&Sighting {
                mac: mac(i),
                ..Default::default()
            })
            .await
            .unwrap();
        hello(&c, &n.id, "pool").await;
    }
    let clock = Arc::new(ManualClock::new(now_ms()));
    let engine = Engine::new(c.clone(), clock.clone());
    Lab {
        c,
        engine,
        clock,
        disks,
        _dir: dir,
    }
}

async fn hello(c: &Control, node: &str, image: &str) {
    // A real boot takes seconds; keep two hellos of one node apart in time.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let facts = HelloFacts {
        inventory: serde_json::json!({"cpus": 2, "memory_bytes": 1u64 << 30, "nics": []}),
        image: Some(image.into()),
        protocol: boot_proto::PROTOCOL_VERSION,
    };
    let serving = c
        .store
        .node(node)
        .await
        .unwrap()
        .unwrap()
        .environment
        .is_some();
    c.store.record_hello(node, &facts, serving).await.unwrap();
    c.store
        .record_heartbeat(node, &serde_json::json!({"load1": 0.0}), serving)
        .await
        .unwrap();
}

/// The boot a kexec command line starts says hello as the agent endpoint
/// does: its token promoted (the boot counter advances), the hello stored,
/// then the earlier boots' unfinished commands closed.
async fn new_boot(c: &Control, node: &str, cmdline: &str, image: &str) {
    if let Some(token) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bootsrv.token="))
    {
        c.store
            .promote_token(node, &crate::secret::digest(token))
            .await
            .unwrap();
    }
    hello(c, node, image).await;
    c.store.close_commands_of_previous_boot(node).await.unwrap();
}

/// One heartbeat of `n`'s agent.
async fn beat(l: &Lab, n: &crate::model::Node, busy: bool) {
    let hb = serde_json::json!({"load1": 0.1, "busy": busy});
    l.c.store
        .record_heartbeat(&n.id, &hb, n.environment.is_some())
        .await
        .unwrap();
}

/// Plays every node's agent once: runs its due commands like node-agent.
async fn agents(l: &Lab, busy: &[&str]) {
    agents_answering(l, busy, |_| None).await
}

/// [`agents`], with `answer` deciding some commands' results itself.
async fn agents_answering(
    l: &Lab,
    busy: &[&str],
    answer: impl Fn(&CommandKind) -> Option<(CommandStatus, String)>,
) {
    for n in l.c.store.nodes().await.unwrap() {
        if n.state == NodeState::Failed {
            continue; // a failed node's agent is dead
        }
        beat(l, &n, busy.contains(&n.id.as_str())).await;
        let boot = l.c.store.node_boot(&n.id).await.unwrap();
        for cmd in l.c.store.take_commands(&n.id, boot, 0).await.unwrap() {
            match &cmd.command {
                CommandKind::Kexec { cmdline, .. } => {
                    let image = cmdline
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("bootsrv.image="))
                        .unwrap()
                        .to_string();
                    new_boot(&l.c, &n.id, cmdline, &image).await;
                    break;
                }
                k => {
                    let (st, detail) = answer(k).unwrap_or((CommandStatus::Succeeded, "ok".into()));
                    l.c.store
                        .update_command(&n.id, cmd.id, st, &detail)
                        .await
                        .unwrap();
                }
            }
        }
    }
}

/// Engine passes and agent rounds until nothing moves (or `rounds` ran out).
async fn settle(l: &Lab, busy: &[&str], rounds: usize) {
    for _ in 0..rounds {
        l.engine.pass().await.unwrap();
        agents(l, busy).await;
        l.clock.advance(100);
    }
}

async fn env(l: &Lab, name: &str, image: &str, f: impl FnOnce(&mut Environment)) {
    let mut e = Environment {
        name: name.into(),
        image: image.into(),
        max: 4,
        addresses: Some("10.0.0.50-10.0.0.59".parse().unwrap()),
        ..Default::default()
    };
    if name == "b" {
        e.addresses = Some("10.0.0.60-10.0.0.69".parse().unwrap());
    }
    f(&mut e);
    l.c.create_env(e).await.unwrap();
}

async fn ready_nodes(l: &Lab, name: &str) -> Vec<String> {
    l.c.store
        .slots(Some(name))
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.step == SlotStep::Ready)
        .filter_map(|s| s.node)
        .collect()
}

#[tokio::test]
async fn scaling_claims_idle_nodes_and_points_them_at_the_slot() {
    let l = lab(3).await;
    env(&l, "a", "img-a", |e| e.desired = 1).await;
    settle(&l, &[], 12).await;
    assert_eq!(ready_nodes(&l, "a").await.len(), 1);
    l.c.scale_env("a", 3).await.unwrap();
    settle(&l, &[], 12).await;
    let ready = ready_nodes(&l, "a").await;
    assert_eq!(ready.len(), 3, "{:?}", l.c.store.slots(None).await.unwrap());
    for (i, s) in l.c.store.slots(Some("a")).await.unwrap().iter().enumerate() {
        let n =
            l.c.store
                .node(s.node.as_ref().unwrap())
                .await
                .unwrap()
                .unwrap();
        assert_eq!(n.running_image.as_deref(), Some("img-a"));
        assert_eq!(n.state, NodeState::Ready);
        assert_eq!(
            (n.environment.as_deref(), n.slot),
            (Some("a"), Some(i as u32))
        );
        assert_eq!(s.hostname, format!("a-{i}"));
        assert!(s.timings.contains_key("booting"), "{s:?}");
        let r = l.c.store.reservations().await.unwrap();
        assert!(r.iter().any(|r| r.mac == n.mac && Some(r.ip) == s.ip));
    }
    // Down to 1: the highest slots go back to the pool image.
    l.c.scale_env("a", 1).await.unwrap();
    settle(&l, &[], 12).await;
    let slots = l.c.store.slots(Some("a")).await.unwrap();
    assert_eq!(slots.iter().filter(|s| s.node.is_some()).count(), 1);
    assert!(slots[0].node.is_some());
    let idle: Vec<_> =
        l.c.store
            .nodes()
            .await
            .unwrap()
            .into_iter()
            .filter(|n| n.state == NodeState::Idle)
            .collect();
    assert_eq!(idle.len(), 2);
    assert!(idle
        .iter()
        .all(|n| n.running_image.as_deref() == Some("pool")));
}

#[tokio::test]
async fn higher_priority_preempts_but_never_below_minimum() {
    let l = lab(3).await;
    env(&l, "a", "img-a", |e| {
        e.desired = 3;
        e.min = 2;
    })
    .await;
    settle(&l, &[], 12).await;
    assert_eq!(ready_nodes(&l, "a").await.len(), 3);
    env(&l, "b", "img-b", |e| {
        e.desired = 2;
        e.priority = 10;
    })
    .await;
    settle(&l, &[], 15).await;
    assert_eq!(ready_nodes(&l, "a").await.len(), 2, "A kept its minimum");
    assert_eq!(ready_nodes(&l, "b").await.len(), 1);
    let events = l.c.store.events(0, None, 10_000).await.unwrap();
    assert!(events.iter().any(|e| e.detail["action"] == "preempt"));
    // B stays short: the engine says why, once (not on every pass).
    let short = |e: &crate::model::Event| {
        e.detail["action"] == "short" && e.detail["env"] == "b" && e.detail["holding"] == 1
    };
    let said = wait_event(&l, short).await;
    assert_eq!(said.detail["target"], 2);
    assert!(said.detail["reason"]
        .as_str()
        .unwrap()
        .contains("b wants 2 nodes, holds 1"));
    // A not preemptible: nothing more moves even with a lower minimum.
    l.c.update_env("a", serde_json::json!({"min": 0, "preemptible": false}))
        .await
        .unwrap();
    settle(&l, &[], 6).await;
    assert_eq!(ready_nodes(&l, "b").await.len(), 1);
    let events = l.c.store.events(0, None, 10_000).await.unwrap();
    assert_eq!(events.iter().filter(|e| short(e)).count(), 1);
}

#[tokio::test]
async fn a_busy_node_is_released_only_once_idle() {
    let l = lab(2).await;
    env(&l, "a", "img-a", |e| e.desired = 2).await;
    settle(&l, &[], 12).await;
    let slots = l.c.store.slots(Some("a")).await.unwrap();
    let (n0, n1) = (
        slots[0].node.clone().unwrap(),
        slots[1].node.clone().unwrap(),
    );
    let both = [n0.as_str(), n1.as_str()];
    agents(&l, &both).await;
    l.c.scale_env("a", 1).await.unwrap();
    settle(&l, &both, 10).await;
    let slots = l.c.store.slots(Some("a")).await.unwrap();
    assert!(
        slots.iter().all(|s| s.node.is_some()),
        "busy nodes kept: {slots:?}"
    );
    // The node of slot 0 stays busy; slot 1's becomes idle and goes.
    settle(&l, &[n0.as_str()], 10).await;
    let slots = l.c.store.slots(Some("a")).await.unwrap();
    assert_eq!(slots[0].node.as_deref(), Some(n0.as_str()));
    assert_eq!(slots[1].node, None, "{slots:?}");
}

/// One agent round where every kexec fails to load and a cold reboot comes
/// back up in the image the boot plan gives, which must be `image`.
async fn agents_without_kexec(l: &Lab, image: &str) {
    for n in l.c.store.nodes().await.unwrap() {
        beat(l, &n, false).await;
        let boot = l.c.store.node_boot(&n.id).await.unwrap();
        for cmd in l.c.store.take_commands(&n.id, boot, 0).await.unwrap() {
            match cmd.command {
                CommandKind::Kexec { .. } => {
                    l.c.store
                        .update_command(
                            &n.id,
                            cmd.id,
                            CommandStatus::Failed,
                            "kexec_file_load: EPERM",
                        )
                        .await
                        .unwrap();
                }
                CommandKind::Reprovision => {
                    // The firmware's network boot: the boot plan picks the
                    // image (and mints the boot's token) as for a script.
                    let node = l.c.store.node(&n.id).await.unwrap().unwrap();
                    let CommandKind::Kexec { cmdline, .. } =
                        l.c.plan.kexec_command(&node).await.unwrap()
                    else {
                        unreachable!()
                    };
                    assert!(
                        cmdline.contains(&format!("bootsrv.image={image}")),
                        "{cmdline}"
                    );
                    new_boot(&l.c, &n.id, &cmdline, image).await;
                    break;
                }
                _ => {
                    l.c.store
                        .update_command(&n.id, cmd.id, CommandStatus::Succeeded, "ok")
                        .await
                        .unwrap();
                }
            }
        }
    }
}

async fn settle_without_kexec(l: &Lab, image: &str, rounds: usize) {
    for _ in 0..rounds {
        l.engine.pass().await.unwrap();
        agents_without_kexec(l, image).await;
        l.clock.advance(100);
    }
}

#[tokio::test]
async fn a_kexec_that_fails_falls_back_to_a_cold_reboot_both_ways() {
    let l = lab(1).await;
    env(&l, "a", "img-a", |e| e.desired = 1).await;
    settle_without_kexec(&l, "img-a", 12).await;
    let slots = l.c.store.slots(Some("a")).await.unwrap();
    assert_eq!(slots[0].step, SlotStep::Ready, "{slots:?}");
    let node = slots[0].node.clone().unwrap();
    // Back to the pool: the kexec fails again, the node reboots cold, and
    // only its new boot in the pool image frees the slot.
    l.c.scale_env("a", 0).await.unwrap();
    settle_without_kexec(&l, "pool", 12).await;
    let slots = l.c.store.slots(Some("a")).await.unwrap();
    assert!(slots.iter().all(|s| s.node.is_none()), "{slots:?}");
    let n = l.c.store.node(&node).await.unwrap().unwrap();
    assert_eq!(
        (n.state, n.running_image.as_deref()),
        (NodeState::Idle, Some("pool"))
    );
    let cmds = l.c.store.commands_of(&node, 100).await.unwrap();
    let count = |f: fn(&CommandKind) -> bool| cmds.iter().filter(|c| f(&c.command)).count();
    assert_eq!(
        count(|k| matches!(k, CommandKind::Kexec { .. })),
        2,
        "{cmds:?}"
    );
    assert_eq!(
        count(|k| matches!(k, CommandKind::Reprovision)),
        2,
        "{cmds:?}"
    );
}

#[tokio::test]
async fn load_policy_adds_then_removes_within_min_and_max() {
    let l = lab(3).await;
    env(&l, "a", "img-a", |e| {
        e.desired = 1;
        e.min = 1;
        e.max = 2;
        e.addresses = None;
        e.policy = Some(Policy {
            metric: "load".into(),
            add_above: 0.8,
            remove_below: 0.2,
            window_secs: 10,
        });
    })
    .await;
    settle(&l, &[], 10).await;
    let node = ready_nodes(&l, "a").await[0].clone();
    let sample = |at_ms, load: &str| crate::model::LoadSample {
        at_ms,
        node: node.clone(),
        environment: "a".into(),
        load1: 0.0,
        cpu_busy: 0.0,
        busy: None,
        health: [("load".to_string(), load.to_string())].into(),
    };
    for _ in 0..3 {
        l.clock.advance(5_000);
        l.c.store
            .append_load(&sample(l.clock.now_ms(), "0.95"))
            .await
            .unwrap();
    }
    settle(&l, &[], 12).await;
    assert_eq!(
        l.c.store.environment("a").await.unwrap().unwrap().desired,
        2
    );
    assert_eq!(ready_nodes(&l, "a").await.len(), 2);
    // Never above max, whatever the load.
    for _ in 0..3 {
        l.clock.advance(5_000);
        l.c.store
            .append_load(&sample(l.clock.now_ms(), "0.99"))
            .await
            .unwrap();
    }
    settle(&l, &[], 5).await;
    assert_eq!(
        l.c.store.environment("a").await.unwrap().unwrap().desired,
        2
    );
    for _ in 0..4 {
        l.clock.advance(5_000);
        l.c.store
            .append_load(&sample(l.clock.now_ms(), "0.05"))
            .await
            .unwrap();
    }
    settle(&l, &[], 12).await;
    assert_eq!(
        l.c.store.environment("a").await.unwrap().unwrap().desired,
        1
    );
    assert_eq!(ready_nodes(&l, "a").await.len(), 1);
}

#[tokio::test]
async fn schedules_start_and_stop_an_environment() {
    let l = lab(1).await;
    env(&l, "a", "img-a", |e| {
        e.desired = 1;
        e.active = false;
        e.schedules = vec![
            Schedule {
                cron: "0 0 * * * *".into(),
                action: crate::model::ScheduleAction::Activate,
            },
            Schedule {
                cron: "0 30 * * * *".into(),
                action: crate::model::ScheduleAction::Deactivate,
            },
        ];
    })
    .await;
    // Put the clock just before the hour.
    let hour = 3_600_000;
    let now = l.clock.now_ms();
    l.clock.advance(hour - now % hour - 1_000);
    settle(&l, &[], 3).await;
    assert!(ready_nodes(&l, "a").await.is_empty());
    l.clock.advance(2_000);
    settle(&l, &[], 12).await;
    assert_eq!(ready_nodes(&l, "a").await.len(), 1);
    l.clock.advance(hour / 2);
    settle(&l, &[], 12).await;
    assert!(ready_nodes(&l, "a").await.is_empty());
    let e = l.c.store.environment("a").await.unwrap().unwrap();
    assert!(!e.active);
}

#[tokio::test]
async fn a_restarted_engine_finishes_the_moves_and_no_node_holds_two_slots() {
    let l = lab(2).await;
    env(&l, "a", "img-a", |e| e.desired = 2).await;
    // Two passes: claimed and part-way, then the engine "dies".
    l.engine.pass().await.unwrap();
    agents(&l, &[]).await;
    l.engine.pass().await.unwrap();
    let mid = l.c.store.slots(Some("a")).await.unwrap();
    assert!(mid.iter().all(|s| s.step.moving_in()), "{mid:?}");
    let fresh = Engine::new(l.c.clone(), l.clock.clone());
    for _ in 0..12 {
        fresh.pass().await.unwrap();
        agents(&l, &[]).await;
    }
    assert_eq!(ready_nodes(&l, "a").await.len(), 2);
    // The store refuses a second slot for a node.
    let mut dup = mid[0].clone();
    dup.index = 3;
    let err =
        l.c.store
            .write_slots(Fence::default(), &[(dup, Expect::Any)])
            .await
            .unwrap_err();
    assert!(err.downcast_ref::<Refused>().is_some(), "{err:#}");
}

#[tokio::test]
async fn quarantine_cuts_the_node_out_and_the_slot_is_refilled() {
    let l = lab(2).await;
    env(&l, "a", "img-a", |e| e.desired = 1).await;
    settle(&l, &[], 10).await;
    let first = ready_nodes(&l, "a").await[0].clone();
    l.c.env_quarantine("a", &first).await.unwrap();
    settle(&l, &[], 12).await;
    let n = l.c.store.node(&first).await.unwrap().unwrap();
    assert_eq!(n.state, NodeState::Quarantined);
    assert_eq!(n.environment, None);
    let now_ready = ready_nodes(&l, "a").await;
    assert_eq!(now_ready.len(), 1);
    assert_ne!(now_ready[0], first);
    let events = l.c.store.events(0, None, 10_000).await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.detail["alert"] == "node-quarantined"));
}

#[tokio::test]
async fn a_failed_node_is_fenced_and_its_slot_fails_over_to_a_spare() {
    let l = lab(2).await;
    env(&l, "a", "img-a", |e| e.desired = 1).await;
    settle(&l, &[], 10).await;
    let before = l.c.store.slots(Some("a")).await.unwrap()[0].clone();
    let first = before.node.clone().unwrap();
    l.c.store
        .transition_node(&first, Transition::Fail)
        .await
        .unwrap();
    settle(&l, &[], 12).await;
    let after = l.c.store.slots(Some("a")).await.unwrap()[0].clone();
    assert_eq!(after.step, SlotStep::Ready);
    let spare = after.node.clone().unwrap();
    assert_ne!(spare, first);
    assert_eq!((&after.hostname, after.ip), (&before.hostname, before.ip));
    assert_eq!(after.failed_over_ms, None);
    // Events are written in batches: wait for the last one.
    let mut events = Vec::new();
    for _ in 0..200 {
        events = l.c.store.events(0, None, 10_000).await.unwrap();
        if events
            .iter()
            .any(|e| e.detail["alert"] == "failover-finished")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let fenced = events
        .iter()
        .find(|e| e.kind == EventKind::Fenced)
        .expect("a fenced event");
    assert_eq!(fenced.node.as_deref(), Some(first.as_str()));
    // No BMC: the fence is recorded as not proven.
    assert_eq!(fenced.detail["fence"]["proven"], false);
    assert_eq!(fenced.detail["fence"]["power"], "no power control");
    let started = events
        .iter()
        .position(|e| e.detail["alert"] == "failover-started")
        .unwrap();
    let finished = events
        .iter()
        .position(|e| e.detail["alert"] == "failover-finished")
        .expect("failover-finished alert");
    assert!(started < finished);
    assert_eq!(events[finished].node.as_deref(), Some(spare.as_str()));
    assert!(events[finished].detail["failover_ms"].as_i64().unwrap() >= 0);
}

/// A QEMU guest's monitor socket (a machine with no board: enough for QMP).
fn qemu_with_qmp(dir: &std::path::Path, name: &str) -> (std::process::Child, std::path::PathBuf) {
    let sock = dir.join(format!("{name}.qmp"));
    let child = std::process::Command::new("qemu-system-x86_64")
        .args(["-M", "none", "-display", "none", "-nodefaults", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .spawn()
        .unwrap();
    (child, sock)
}

#[tokio::test]
async fn a_node_whose_power_reads_off_fails_over_fenced_and_proven() {
    if !test_support::require(
        "a_node_whose_power_reads_off_fails_over_fenced_and_proven",
        &[test_support::Need::Tool("qemu-system-x86_64")],
    ) {
        return;
    }
    let l = lab(2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut guests = HashMap::new();
    for i in 1..=2u8 {
        let (child, sock) = qemu_with_qmp(dir.path(), &format!("g{i}"));
        let node =
            l.c.enrol(crate::store::Enrolment {
                mac: mac(i),
                power: Some(format!("qmp://{}", sock.display())),
                ..Default::default()
            })
            .await
            .unwrap();
        guests.insert(node.id.clone(), (child, sock));
    }
    for (_, sock) in guests.values() {
        for _ in 0..500 {
            if sock.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    env(&l, "a", "img-a", |e| e.desired = 1).await;
    settle(&l, &[], 10).await;
    let holder = ready_nodes(&l, "a").await[0].clone();
    // Every machine reads on: nothing fails.
    let mut offs = HashMap::new();
    assert!(crate::watch::power_round(&l.c, &mut offs)
        .await
        .unwrap()
        .is_empty());
    // The holder's QEMU dies.
    let (child, _) = guests.get_mut(&holder).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // Off once or twice is not enough (a busy monitor), the third time is.
    for _ in 1..crate::watch::OFF_READINGS {
        assert!(crate::watch::power_round(&l.c, &mut offs)
            .await
            .unwrap()
            .is_empty());
    }
    assert_eq!(
        crate::watch::power_round(&l.c, &mut offs).await.unwrap(),
        vec![holder.clone()]
    );
    settle(&l, &[], 12).await;
    let now = ready_nodes(&l, "a").await;
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], holder);
    let mut fenced = None;
    for _ in 0..200 {
        let events = l.c.store.events(0, None, 10_000).await.unwrap();
        fenced = events.into_iter().find(|e| e.kind == EventKind::Fenced);
        if fenced.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let fenced = fenced.expect("a fenced event");
    assert_eq!(fenced.node.as_deref(), Some(holder.as_str()));
    assert_eq!(fenced.detail["fence"]["proven"], true, "{}", fenced.detail);
    assert_eq!(fenced.detail["fence"]["power"], "off via qmp");
    for (_, (mut child, _)) in guests {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test]
async fn a_node_whose_health_hook_keeps_failing_fails_over_as_its_environment_asks() {
    let l = lab(2).await;
    env(&l, "a", "img-a", |e| {
        e.desired = 1;
        e.detection.health_failures = 3;
    })
    .await;
    settle(&l, &[], 10).await;
    let first = l.c.store.slots(Some("a")).await.unwrap()[0]
        .node
        .clone()
        .unwrap();
    let beat = |health: &str| boot_proto::Heartbeat {
        health: [("health".to_string(), health.to_string())].into(),
        ..Default::default()
    };
    // One bad beat between good ones, then two: not yet three in a row.
    for h in ["failed", "ok", "failed", "failed"] {
        let node = l.c.store.node(&first).await.unwrap().unwrap();
        l.c.record_load(&first, "a", &beat(h)).await;
        let failed = crate::watch::judge_heartbeat(&l.c, &node, &beat(h))
            .await
            .unwrap();
        assert!(!failed, "failed after {h}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // The third failure in a row fails the node; the engine moves the slot.
    let node = l.c.store.node(&first).await.unwrap().unwrap();
    l.c.record_load(&first, "a", &beat("failed")).await;
    assert!(crate::watch::judge_heartbeat(&l.c, &node, &beat("failed"))
        .await
        .unwrap());
    settle(&l, &[], 12).await;
    let after = l.c.store.slots(Some("a")).await.unwrap()[0].clone();
    assert_eq!(after.step, SlotStep::Ready);
    assert_ne!(after.node.as_deref(), Some(first.as_str()));
    let mut events = Vec::new();
    for _ in 0..200 {
        events = l.c.store.events(0, None, 10_000).await.unwrap();
        if events.iter().any(|e| e.kind == EventKind::Fenced) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let why = events
        .iter()
        .find(|e| e.kind == EventKind::NodeFailed)
        .expect("a node-failed event");
    assert_eq!(why.detail["reason"], "health hook failed");
    assert_eq!(why.detail["heartbeats_failed"], 3);
    assert!(events.iter().any(|e| e.kind == EventKind::Fenced));

    // Without the setting the same beats fail nothing.
    let holder = after.node.unwrap();
    let mut e = l.c.store.environment("a").await.unwrap().unwrap();
    e.detection.health_failures = 0;
    l.c.store.put_environment(&e).await.unwrap();
    let node = l.c.store.node(&holder).await.unwrap().unwrap();
    for _ in 0..4 {
        l.c.record_load(&holder, "a", &beat("failed")).await;
        assert!(!crate::watch::judge_heartbeat(&l.c, &node, &beat("failed"))
            .await
            .unwrap());
    }
}
// ---- live clones -------------------------------------------------------------------

/// An agent that answers the clone commands: prepare-clone refuses unless
/// forced (when `refuse`), the thaw reports a 42 ms pause.
fn clone_agent(refuse: bool) -> impl Fn(&CommandKind) -> Option<(CommandStatus, String)> {
    move |k| {
        match k {
        CommandKind::PrepareClone { force, .. } if refuse && !force => Some((
            CommandStatus::Failed,
            "prepare-clone refused the clone (prepare-clone (server) exit status: 1: 3 sessions open)"
                .into(),
        )),
        CommandKind::PrepareClone { .. } => Some((CommandStatus::Succeeded, "frozen: done [/]".into())),
        CommandKind::FinishClone => Some((
            CommandStatus::Succeeded,
            "pause_ms=42; thawed: done [/]; clone-done ok".into(),
        )),
        _ => None,
    }
    }
}

async fn clone_env(l: &Lab) {
    env(l, "a", "img-a", |e| {
        e.desired = 2;
        e.disk_base = Some("base".into());
        e.hooks.purge_sessions = Some("rm -rf /var/lib/sessions".into());
    })
    .await;
    settle(l, &[], 15).await;
    assert_eq!(ready_nodes(l, "a").await.len(), 2);
}

/// Runs `env clone` while the engine and the agents go on; its answer.
async fn run_clone(
    l: &Lab,
    slot: u32,
    into: Option<u32>,
    force: bool,
    refuse: bool,
) -> crate::control::Result<crate::control::CloneReport> {
    let c = l.c.clone();
    let h = tokio::spawn(async move { c.env_clone("a", slot, into, force).await });
    for _ in 0..100 {
        if h.is_finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        l.engine.pass().await.unwrap();
        agents_answering(l, &[], clone_agent(refuse)).await;
        l.clock.advance(100);
    }
    h.await.unwrap()
}

fn disk(l: &Lab) -> Arc<boot_nbd::DiskStore> {
    l.disks.clone()
}

fn read(l: &Lab, overlay: &str, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    disk(l)
        .open_overlay(overlay)
        .unwrap()
        .read_at(&mut b, off)
        .unwrap();
    b
}

#[tokio::test]
async fn a_clone_copies_the_template_disk_and_boots_with_a_new_identity() {
    let l = lab(3).await;
    clone_env(&l).await;
    let o1 = disk(&l).open_overlay("a-slot1").unwrap();
    o1.write_at(b"as of the freeze", 8192, true).unwrap();
    drop(o1);
    let r = run_clone(&l, 1, Some(3), false, false).await.unwrap();
    assert_eq!(r.job.phase, ClonePhaseT::Done, "{r:?}");
    assert_eq!(r.job.pause_ms, Some(42));
    assert_eq!(r.job.overlay.as_deref(), Some("a-slot3"));
    let ns = r.new_slot.expect("new slot");
    assert_eq!((ns.index, ns.reidentify), (3, true));
    assert_eq!(ns.clone_of.as_ref().map(|o| o.slot), Some(1));
    // The template keeps its node and serves on; later writes stay its own.
    let o1 = disk(&l).open_overlay("a-slot1").unwrap();
    o1.write_at(b"after the thaw!!", 8192, true).unwrap();
    drop(o1);
    assert_eq!(
        l.c.store.environment("a").await.unwrap().unwrap().desired,
        3
    );
    settle(&l, &[], 20).await;
    let slots = l.c.store.slots(Some("a")).await.unwrap();
    let s3 = slots.iter().find(|s| s.index == 3).unwrap();
    assert_eq!(s3.step, SlotStep::Ready, "{s3:?}");
    assert!(!s3.reidentify, "identity change is once");
    assert_eq!(s3.hostname, "a-3");
    assert_eq!(s3.ip, Some(Ipv4Addr::new(10, 0, 0, 53)));
    assert_eq!(read(&l, "a-slot3", 8192, 16), b"as of the freeze");
    assert_eq!(read(&l, "a-slot1", 8192, 16), b"after the thaw!!");
    // Its node got the slot with a new identity, before the start hook.
    let node = s3.node.clone().unwrap();
    let cmds = l.c.store.commands_of(&node, 50).await.unwrap();
    let conf = cmds
        .iter()
        .find_map(|c| match &c.command {
            CommandKind::Configure { slot } => Some((c.id, slot.clone())),
            _ => None,
        })
        .expect("configure");
    assert!(conf.1.reidentify && conf.1.hostname == "a-3", "{conf:?}");
    assert!(conf.1.hooks.purge_sessions.is_some());
    let start = cmds
        .iter()
        .find(|c| matches!(c.command, CommandKind::StartApp { .. }))
        .unwrap();
    assert!(conf.0 < start.id, "configure (and its purge) before start");
    let n = l.c.store.node(&node).await.unwrap().unwrap();
    let res = l.c.store.reservations().await.unwrap();
    assert!(res
        .iter()
        .any(|r| r.mac == n.mac && r.ip == Ipv4Addr::new(10, 0, 0, 53)));
    // Events are written in batches: wait for them.
    let mut seen = (false, false);
    for _ in 0..100 {
        let ev = l.c.store.events(0, None, 10_000).await.unwrap();
        seen = (
            ev.iter()
                .any(|e| e.detail["action"] == "clone" && e.detail["pause_ms"] == 42),
            ev.iter().any(|e| {
                e.detail["action"] == "clone-ready" && e.detail["clone_ms"].as_i64().is_some()
            }),
        );
        if seen == (true, true) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, (true, true), "clone and clone-ready events");
    // The template slot is still ready on its node.
    let s1 = slots.iter().find(|s| s.index == 1).unwrap();
    assert_eq!(s1.step, SlotStep::Ready);
    assert_eq!(s1.node, r.node);

    // remove-node on the clone: its node goes back, the slot goes away,
    // the disk with it (--delete-disk).
    let gone = l.c.env_remove("a", Some(&node), None, true).await.unwrap();
    assert_eq!(gone.index, 3);
    settle(&l, &[], 20).await;
    let slots = l.c.store.slots(Some("a")).await.unwrap();
    assert!(slots.iter().all(|s| s.index != 3), "{slots:?}");
    assert!(!disk(&l)
        .list_overlays()
        .unwrap()
        .iter()
        .any(|o| o.id == "a-slot3"));
    assert_eq!(
        l.c.store.environment("a").await.unwrap().unwrap().desired,
        2
    );
    let n = l.c.store.node(&node).await.unwrap().unwrap();
    assert_eq!((n.state, n.environment), (NodeState::Idle, None));
}

#[tokio::test]
async fn a_refused_clone_creates_nothing_unless_forced_and_a_kept_disk_stays() {
    let l = lab(3).await;
    clone_env(&l).await;
    let e = run_clone(&l, 0, None, false, true).await.unwrap_err();
    assert_eq!(e.kind, crate::control::ErrorKind::Conflict);
    assert!(e.message.contains("3 sessions open"), "{e}");
    let slots = l.c.store.slots(Some("a")).await.unwrap();
    assert_eq!(slots.len(), 2, "no new slot: {slots:?}");
    assert!(!disk(&l)
        .list_overlays()
        .unwrap()
        .iter()
        .any(|o| o.id == "a-slot2"));
    assert_eq!(
        l.c.store.environment("a").await.unwrap().unwrap().desired,
        2
    );
    // Forced: the lowest free slot (2) gets the clone.
    let r = run_clone(&l, 0, None, true, true).await.unwrap();
    assert_eq!(
        (r.job.phase, r.job.into, r.job.force),
        (ClonePhaseT::Done, 2, true)
    );
    settle(&l, &[], 20).await;
    assert_eq!(ready_nodes(&l, "a").await.len(), 3);
    // Bad requests say what is wrong.
    let e = l.c.env_clone("a", 0, Some(0), false).await.unwrap_err();
    assert!(e.message.contains("into itself"), "{e}");
    let e = l.c.env_clone("a", 0, Some(9), false).await.unwrap_err();
    assert!(e.message.contains("outside"), "{e}");
    let e = l.c.env_clone("a", 3, None, false).await.unwrap_err();
    assert!(e.message.contains("no node"), "{e}");
    // Removing the clone by slot index keeps its disk by default.
    l.c.env_remove("a", None, Some(2), false).await.unwrap();
    settle(&l, &[], 20).await;
    assert!(l
        .c
        .store
        .slots(Some("a"))
        .await
        .unwrap()
        .iter()
        .all(|s| s.index != 2));
    assert!(disk(&l)
        .list_overlays()
        .unwrap()
        .iter()
        .any(|o| o.id == "a-slot2"));
    // A slot whose disk exists is refused as a clone target.
    let e = l.c.env_clone("a", 0, Some(2), false).await.unwrap_err();
    assert!(e.message.contains("exists"), "{e}");
}

/// A restarted engine finds the clone frozen but not snapshotted: within
/// the hold time it snapshots and thaws; past it, it fails the clone and
/// asks the agent to thaw (which it does by itself anyway).
#[tokio::test]
async fn a_restart_mid_clone_snapshots_in_time_or_fails_and_thaws() {
    let l = lab(3).await;
    clone_env(&l).await;
    let mut s =
        l.c.store
            .slots(Some("a"))
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.index == 1)
            .unwrap();
    let now = l.clock.now_ms();
    let job = |frozen: i64, into: u32| crate::model::CloneJob {
        into,
        phase: ClonePhaseT::Snapshotting,
        requested_ms: now,
        phase_since_ms: frozen,
        frozen_ms: Some(frozen),
        overlay: Some(format!("a-slot{into}")),
        desired_before: Some(2),
        ..Default::default()
    };
    // Past the hold time: failed, thaw asked, nothing created.
    s.clone = Some(job(now - 61_000, 3));
    assert!(l
        .c
        .store
        .write_slots(Fence::default(), &[(s.clone(), Expect::Any)])
        .await
        .unwrap());
    let restarted = Engine::new(l.c.clone(), l.clock.clone());
    restarted.pass().await.unwrap();
    let t = l.c.store.slots(Some("a")).await.unwrap();
    let j = t[1].clone.clone().unwrap();
    assert_eq!(j.phase, ClonePhaseT::Failed, "{j:?}");
    assert!(j.detail.contains("hold time"), "{j:?}");
    assert!(t.iter().all(|s| s.index != 3));
    let node = s.node.clone().unwrap();
    assert!(l
        .c
        .store
        .commands_of(&node, 20)
        .await
        .unwrap()
        .iter()
        .any(|c| c.command == CommandKind::FinishClone));
    // Within it: snapshot, thaw, done.
    let mut s = t[1].clone();
    s.clone = Some(job(l.clock.now_ms() - 1_000, 2));
    assert!(l
        .c
        .store
        .write_slots(Fence::default(), &[(s, Expect::Any)])
        .await
        .unwrap());
    for _ in 0..5 {
        restarted.pass().await.unwrap();
        agents_answering(&l, &[], clone_agent(false)).await;
    }
    let t = l.c.store.slots(Some("a")).await.unwrap();
    assert_eq!(t[1].clone.as_ref().unwrap().phase, ClonePhaseT::Done);
    assert!(t
        .iter()
        .any(|s| s.index == 2 && (s.reidentify || s.step == SlotStep::Ready)));
}

/// The `kexec-planned` events of `node`: (image, staged id, why not staged).
async fn kexec_plans(l: &Lab, node: &str) -> Vec<(String, Option<String>, Option<String>)> {
    // The event hub writes in the background.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    l.c.store
        .events(0, Some(node), 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::KexecPlanned)
        .map(|e| {
            let s = |k: &str| e.detail[k].as_str().map(str::to_string);
            (s("image").unwrap_or_default(), s("staged"), s("not_staged"))
        })
        .collect()
}

/// Pre-staging: an idle node stages the image of the inactive environment it
/// most likely joins (a prestage command with a hand-off credential, no
/// token); when that environment takes it the kexec names the stage; when
/// another environment takes it instead, the kexec names none (the agent
/// loads the right image) and the stale stage is forgotten.
#[tokio::test]
async fn idle_nodes_prestage_the_likely_environment_and_a_different_decision_falls_back() {
    for (activate, staged) in [("a", true), ("b", false)] {
        let l = lab(1).await;
        let node = l.c.store.nodes().await.unwrap()[0].id.clone();
        env(&l, "a", "img-a", |e| {
            e.desired = 1;
            e.priority = 10;
            e.active = false;
        })
        .await;
        env(&l, "b", "img-b", |e| {
            e.desired = 1;
            e.active = false;
        })
        .await;
        l.engine.pass().await.unwrap();
        let cmds = l.c.store.commands_of(&node, 100).await.unwrap();
        let stages: Vec<_> = cmds
            .iter()
            .filter_map(|c| match &c.command {
                CommandKind::Prestage { stage, cmdline, .. } => {
                    Some((stage.clone(), cmdline.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(stages.len(), 1, "{cmds:?}");
        let (stage, cmdline) = &stages[0];
        assert!(cmdline.contains("bootsrv.image=img-a"), "{cmdline}");
        assert!(cmdline.contains("bootsrv.handoff="), "{cmdline}");
        assert!(!cmdline.contains("bootsrv.token="), "{cmdline}");
        // Staged once: the next passes do not stage it again.
        agents(&l, &[]).await;
        l.engine.pass().await.unwrap();
        let again = l.c.store.commands_of(&node, 100).await.unwrap();
        let n = again
            .iter()
            .filter(|c| matches!(c.command, CommandKind::Prestage { .. }))
            .count();
        assert_eq!(n, 1);
        // The decision.
        l.c.update_env(activate, serde_json::json!({"active": true}))
            .await
            .unwrap();
        settle(&l, &[], 12).await;
        assert_eq!(ready_nodes(&l, activate).await, vec![node.clone()]);
        let plans = kexec_plans(&l, &node).await;
        let img = format!("img-{activate}");
        let plan = plans
            .iter()
            .find(|p| p.0 == img)
            .expect("a kexec into the env's image");
        if staged {
            assert_eq!(plan.1.as_deref(), Some(stage.as_str()), "{plans:?}");
        } else {
            assert_eq!(plan.1, None, "{plans:?}");
            assert!(
                plan.2
                    .as_deref()
                    .is_some_and(|w| w.contains("img-a differs")),
                "{plans:?}"
            );
        }
    }
}

/// A failover host played by the test: it polls like `node-agent host`
/// and runs the VMs it is told to (ids in `running`).
async fn host_round(c: &Control, name: &str, running: &mut std::collections::BTreeSet<String>) {
    use boot_proto::host::{HostCapacity, HostCommand, HostReport, VmReport};
    let host = c
        .store
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .find(|h| h.name == name)
        .unwrap();
    let report = HostReport {
        agent_version: "test".into(),
        capacity: HostCapacity {
            cpus: 8,
            memory_bytes: 8 << 30,
            reserve: 3,
            kvm: false,
        },
        vms: running
            .iter()
            .map(|id| VmReport {
                id: id.clone(),
                running: true,
                detail: String::new(),
            })
            .collect(),
    };
    for cmd in c.host_poll(&host, &report).await.unwrap() {
        match cmd {
            HostCommand::StartVm { vm } => {
                running.insert(vm.id);
            }
            HostCommand::StopVm { id } => {
                running.remove(&id);
            }
        }
    }
}

/// [`settle`] with the failover host `h1` polling between passes.
async fn settle_with_host(
    l: &Lab,
    running: &mut std::collections::BTreeSet<String>,
    rounds: usize,
) {
    for _ in 0..rounds {
        l.engine.pass().await.unwrap();
        host_round(&l.c, "h1", running).await;
        agents(l, &[]).await;
        l.clock.advance(100);
    }
}

async fn vms(l: &Lab) -> Vec<crate::model::Vm> {
    l.c.store.vms().await.unwrap()
}

async fn wait_event(l: &Lab, what: impl Fn(&crate::model::Event) -> bool) -> crate::model::Event {
    for _ in 0..200 {
        let ev = l.c.store.events(0, None, 10_000).await.unwrap();
        if let Some(e) = ev.into_iter().rev().find(|e| what(e)) {
            return e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("event not seen");
}

#[tokio::test]
async fn one_to_one_standby_takes_the_slot_fails_back_in_its_window_and_a_vm_is_fenced_by_its_host()
{
    use crate::model::{Failback, VmMapping, VmState};
    let l = lab(2).await;
    l.c.add_host("h1", "test").await.unwrap();
    let mut running = std::collections::BTreeSet::new();
    host_round(&l.c, "h1", &mut running).await;
    // A window that opens 30 minutes from now, by the engine's clock.
    let hhmm = |m: i64| format!("{:02}:{:02}", m.rem_euclid(1440) / 60, m.rem_euclid(60));
    let m0 = l.clock.now_ms().div_euclid(60_000).rem_euclid(1440);
    let window = format!("{}-{}", hhmm(m0 + 30), hhmm(m0 + 60));
    env(&l, "a", "img-a", |e| {
        e.desired = 2;
        e.min = 2;
        e.max = 2;
        e.vm_mapping = VmMapping::OneToOne;
        e.failback = Failback::Window;
        e.failback_window = Some(window.clone());
    })
    .await;
    settle_with_host(&l, &mut running, 12).await;
    let ready = ready_nodes(&l, "a").await;
    assert_eq!(ready.len(), 2);
    // One standby per node holding a slot, reserved, not running.
    let standby: std::collections::BTreeMap<String, crate::model::Vm> = vms(&l)
        .await
        .into_iter()
        .filter(|v| v.state == VmState::Reserved)
        .map(|v| (v.stands_in_for.clone().unwrap(), v))
        .collect();
    assert_eq!(standby.keys().cloned().collect::<Vec<_>>(), {
        let mut r = ready.clone();
        r.sort();
        r
    });
    assert!(running.is_empty(), "standbys do not run: {running:?}");

    // Slot 1's node fails: its own standby starts and takes the slot.
    let s1 = l.c.store.slots(Some("a")).await.unwrap()[1].clone();
    let home = s1.node.clone().unwrap();
    l.c.store
        .transition_node(&home, Transition::Fail)
        .await
        .unwrap();
    settle_with_host(&l, &mut running, 15).await;
    let s1 = l.c.store.slots(Some("a")).await.unwrap()[1].clone();
    let mine = &standby[&home];
    assert_eq!(s1.step, SlotStep::Ready, "{s1:?}");
    assert_eq!(s1.node.as_deref(), Some(mine.node.as_str()));
    assert!(running.contains(&mine.id));
    assert_eq!(
        vms(&l)
            .await
            .iter()
            .find(|v| v.id == mine.id)
            .unwrap()
            .state,
        VmState::Running
    );

    // The home is repaired and back; outside the window the slot stays.
    l.c.node_repaired(&home, "test").await.unwrap();
    hello(&l.c, &home, "pool").await;
    settle_with_host(&l, &mut running, 10).await;
    let s1 = l.c.store.slots(Some("a")).await.unwrap()[1].clone();
    assert_eq!(
        s1.node.as_deref(),
        Some(mine.node.as_str()),
        "no failback outside {window}"
    );
    // The engine's clock reaches the window: it moves back, the VM stops.
    l.clock.advance(31 * 60_000);
    settle_with_host(&l, &mut running, 20).await;
    let s1 = l.c.store.slots(Some("a")).await.unwrap()[1].clone();
    assert_eq!(
        (s1.step, s1.node.as_deref()),
        (SlotStep::Ready, Some(home.as_str()))
    );
    assert!(!running.contains(&mine.id));
    let d = wait_event(&l, |e| e.detail["action"] == "failback").await;
    assert!(
        d.detail["reason"].as_str().unwrap().contains(&window),
        "{d:?}"
    );
    // The home has a new standby (the old one is spent).
    let fresh = vms(&l)
        .await
        .into_iter()
        .find(|v| v.state == VmState::Reserved && v.stands_in_for.as_deref() == Some(&home))
        .expect("a new standby for the home node");
    assert_ne!(fresh.id, mine.id);

    // Fail the home again: the new standby serves; then that VM's node
    // fails while its QEMU runs: the fence waits for the host to report it
    // gone, and says proven.
    l.c.store
        .transition_node(&home, Transition::Fail)
        .await
        .unwrap();
    settle_with_host(&l, &mut running, 15).await;
    let s1 = l.c.store.slots(Some("a")).await.unwrap()[1].clone();
    assert_eq!(s1.node.as_deref(), Some(fresh.node.as_str()));
    assert!(running.contains(&fresh.id));
    l.c.store
        .transition_node(&fresh.node, Transition::Fail)
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (c, stop) = (l.c.clone(), stop.clone());
        let mut r = running.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                host_round(&c, "h1", &mut r).await;
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            }
            r
        })
    };
    l.engine.pass().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    running = poller.await.unwrap();
    let f = wait_event(&l, |e| {
        e.kind == EventKind::Fenced && e.node.as_deref() == Some(fresh.node.as_str())
    })
    .await;
    assert_eq!(f.detail["fence"]["proven"], true, "{f:?}");
    assert!(
        f.detail["fence"]["power"]
            .as_str()
            .unwrap()
            .contains("reports its QEMU ended"),
        "{f:?}"
    );
    assert!(!running.contains(&fresh.id));
    assert_eq!(
        vms(&l)
            .await
            .iter()
            .find(|v| v.id == fresh.id)
            .unwrap()
            .state,
        VmState::Stopped
    );
}

#[tokio::test]
async fn a_vm_whose_host_never_answers_is_fenced_unproven_after_the_timeout() {
    let l = lab(1).await;
    l.c.add_host("h1", "test").await.unwrap();
    let mut running = std::collections::BTreeSet::new();
    host_round(&l.c, "h1", &mut running).await;
    let vm =
        l.c.start_vm(&crate::control::VmRequest {
            host: "h1".into(),
            environment: "a".into(),
            slot: 0,
            cpus: 1,
            memory_mb: 256,
            firmware: boot_proto::FirmwareKind::Bios,
            stands_in_for: None,
        })
        .await
        .unwrap();
    host_round(&l.c, "h1", &mut running).await;
    host_round(&l.c, "h1", &mut running).await;
    let node = l.c.store.node(&vm.node).await.unwrap().unwrap();
    // The host stops polling (the lab's timeout: 2 s).
    let t = std::time::Instant::now();
    let f = l.c.fence(&node, None).await;
    assert!(!f.proven, "{f:?}");
    assert!(f.power.contains("did not report its QEMU gone"), "{f:?}");
    assert!(t.elapsed() >= std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn a_clone_goes_onto_a_vm_when_no_node_is_free_and_remove_node_destroys_it() {
    use crate::model::VmState;
    let l = lab(2).await;
    l.c.add_host("h1", "test").await.unwrap();
    let mut running = std::collections::BTreeSet::new();
    host_round(&l.c, "h1", &mut running).await;
    env(&l, "a", "img-a", |e| {
        e.desired = 2;
        e.disk_base = Some("base".into());
    })
    .await;
    settle(&l, &[], 15).await;
    assert_eq!(ready_nodes(&l, "a").await.len(), 2);
    let r = run_clone(&l, 1, Some(3), false, false).await.unwrap();
    assert_eq!(r.job.phase, ClonePhaseT::Done, "{r:?}");
    settle_with_host(&l, &mut running, 20).await;
    let s3 =
        l.c.store
            .slots(Some("a"))
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.index == 3)
            .unwrap();
    assert_eq!(s3.step, SlotStep::Ready, "{s3:?}");
    let vm = vms(&l)
        .await
        .into_iter()
        .find(|v| Some(&v.node) == s3.node.as_ref())
        .expect("slot 3 on a VM");
    // Sized from the template's node (2 CPUs, 1 GiB), started on h1.
    assert_eq!(
        (vm.host.as_str(), vm.cpus, vm.memory_mb, vm.state),
        ("h1", 2, 1024, VmState::Running)
    );
    assert!(running.contains(&vm.id));
    // remove-node of the clone: its VM is destroyed, its node retired.
    l.c.env_remove("a", Some(&vm.node), None, true)
        .await
        .unwrap();
    settle_with_host(&l, &mut running, 15).await;
    let slots = l.c.store.slots(Some("a")).await.unwrap();
    assert!(slots.iter().all(|s| s.index != 3), "{slots:?}");
    assert!(!running.contains(&vm.id), "the VM is stopped on its host");
    assert_eq!(
        vms(&l).await.iter().find(|v| v.id == vm.id).unwrap().state,
        VmState::Stopped
    );
    assert_eq!(
        l.c.store.node(&vm.node).await.unwrap().unwrap().state,
        NodeState::Retired
    );
}

/// A takeover between queuing a slot's boot command and storing its id:
/// the node already carried the command out (reported it done and is going
/// down, its heartbeat still fresh). The new controller finds the slot
/// `booting` with no command and adopts that command instead of queuing a
/// second one; a boot command queued for the old boot anyway (the race the
/// binding closes) is never handed to the new boot: its hello closes it as
/// not carried out, and the slot goes on to ready.
#[tokio::test]
async fn a_takeover_mid_boot_never_boots_the_new_boot_again() {
    let l = lab(1).await;
    let node = l.c.store.nodes().await.unwrap()[0].id.clone();
    env(&l, "a", "img-a", |e| {
        e.desired = 1;
        e.boot = crate::model::BootMode::Cold;
    })
    .await;
    let mut booting = None;
    for _ in 0..12 {
        l.engine.pass().await.unwrap();
        agents(&l, &[]).await;
        l.clock.advance(100);
        let s = l.c.store.slots(Some("a")).await.unwrap()[0].clone();
        if s.step == SlotStep::Booting && s.command.is_some() {
            booting = Some(s);
            break;
        }
    }
    let slot = booting.expect("the slot reaches booting with its boot command");
    let first = slot.command.unwrap();
    let done = l.c.store.command(first).await.unwrap().unwrap();
    assert_eq!(done.command, CommandKind::Reprovision);
    assert_eq!(
        done.status,
        CommandStatus::Succeeded,
        "the agent reported it"
    );
    // The old controller died before storing the command's id.
    let mut lost = slot.clone();
    lost.command = None;
    assert!(l
        .c
        .store
        .write_slots(Fence(0), &[(lost, Expect::Any)])
        .await
        .unwrap());
    l.engine.pass().await.unwrap();
    let boots = |cmds: &[crate::model::QueuedCommand]| {
        cmds.iter()
            .filter(|c| matches!(c.command, CommandKind::Reprovision | CommandKind::Reboot))
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    let cmds = l.c.store.commands_of(&node, 100).await.unwrap();
    assert_eq!(
        boots(&cmds),
        vec![first],
        "no second boot command: {cmds:?}"
    );
    let s = l.c.store.slots(Some("a")).await.unwrap()[0].clone();
    assert_eq!((s.step, s.command), (SlotStep::Booting, Some(first)));
    // A boot command queued for the old boot after its last poll anyway.
    let stray =
        l.c.store
            .queue_command(&node, &CommandKind::Reboot)
            .await
            .unwrap();
    // The new boot (network boot: its script minted the token) says hello.
    l.c.store
        .set_next_token(&node, &crate::secret::digest("boot-2"))
        .await
        .unwrap();
    new_boot(&l.c, &node, "bootsrv.token=boot-2", "img-a").await;
    let boot = l.c.store.node_boot(&node).await.unwrap();
    let stray = l.c.store.command(stray).await.unwrap().unwrap();
    assert_eq!(stray.status, CommandStatus::Failed);
    assert!(
        stray.detail.starts_with("not carried out"),
        "{}",
        stray.detail
    );
    settle(&l, &[], 10).await;
    assert_eq!(ready_nodes(&l, "a").await, vec![node.clone()]);
    // Everything the new boot was handed is its own, and no boot command.
    let cmds = l.c.store.commands_of(&node, 100).await.unwrap();
    let handed: Vec<_> = cmds
        .iter()
        .filter(|c| c.status != CommandStatus::Queued && c.boot == boot)
        .collect();
    assert!(!handed.is_empty(), "{cmds:?}");
    assert!(
        boots(&cmds)
            .iter()
            .all(|id| cmds.iter().any(|c| c.id == *id && c.boot < boot)),
        "{cmds:?}"
    );
}
