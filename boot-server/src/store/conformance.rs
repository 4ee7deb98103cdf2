//! The store's conformance suite: one body per semantic the traits promise,
//! run against every backend (SQLite, memory, PostgreSQL) by
//! [`conformance_tests!`]. Backend-only matters (SQLite's group commit,
//! upgrade from round 1, file modes; PostgreSQL's controller lease across
//! two handles) stay with their backend.
//!
//! PostgreSQL runs where `BOOT_TEST_PG_URL` names a server
//! (`qemu-tests/lib/test-postgres.sh start` prints one); each test works in
//! a schema of its own, dropped and re-created at its start, so tests run
//! in parallel. Without the variable, or with the server unreachable, the
//! PostgreSQL tests are skipped (`SKIP:`), and fail under CI.

use crate::model::{
    now_ms, BootImage, CommandStatus, EventKind, ImageKind, Lease, LoadSample, MacAddr,
    Reservation, Selector, Sighting, Slot, SlotStep,
};
use crate::store::{Expect, Fence, NewEvent, PgStore, Refused, Store};
use std::sync::Arc;

pub(crate) fn mac(i: u32) -> MacAddr {
    MacAddr([2, 0, 0, 0, (i >> 8) as u8, (i & 0xff) as u8])
}

pub(crate) fn lease(m: MacAddr, ip: [u8; 4], ttl_ms: i64) -> Lease {
    Lease {
        mac: m,
        ip: ip.into(),
        expires_at_ms: now_ms() + ttl_ms,
        hostname: None,
        client_id: None,
    }
}

fn slot(env: &str, index: u32, node: Option<&str>, step: SlotStep) -> Slot {
    Slot {
        environment: env.into(),
        index,
        node: node.map(str::to_string),
        step,
        ..Default::default()
    }
}

fn image(name: &str) -> BootImage {
    BootImage {
        name: name.into(),
        version: "1".into(),
        kind: ImageKind::Linux,
        kernel: Some("k".into()),
        initrd: None,
        cmdline: String::new(),
        archs: vec![],
        san_url: None,
        disk_transport: Default::default(),
        checksum: None,
        size_bytes: 0,
        files: vec![],
    }
}

fn is_address_held(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<Refused>(),
        Some(Refused::AddressHeld { .. })
    )
}

/// A PostgreSQL store in a fresh schema named after `test`, or `None` (the
/// test is reported skipped; under CI it fails) when no server is configured
/// or reachable.
pub(crate) async fn pg_store(test: &str) -> Option<PgStore> {
    let Ok(url) = std::env::var("BOOT_TEST_PG_URL") else {
        test_support::skip(
            test,
            "BOOT_TEST_PG_URL is not set (qemu-tests/lib/test-postgres.sh start prints one)",
        );
        return None;
    };
    // Unreachable: skipped; reachable but failing: a bug, the test fails.
    if let Err(e) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        test_support::skip(test, &format!("PostgreSQL at {url} is unreachable: {e}"));
        return None;
    }
    Some(fresh_schema(&url, &pg_schema(test)).await.unwrap())
}

/// The schema of test `test` (at most 63 bytes, lower case).
pub(crate) fn pg_schema(test: &str) -> String {
    let tail = test.rsplit("::").next().unwrap_or(test);
    let short: String = tail
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let digest = crate::secret::digest(test);
    format!("t_{short}_{}", &digest[..8])
}

async fn fresh_schema(url: &str, schema: &str) -> anyhow::Result<PgStore> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await?;
    drop(client);
    let _ = task.await;
    PgStore::connect_in_schema(url, schema).await
}

/// Runs each named body (an `async fn(&dyn Store)` of this module) against
/// every backend: `sqlite::NAME`, `memory::NAME`, `postgres::NAME`.
macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let s = std::sync::Arc::new(crate::store::SqliteStore::open(dir.path()).unwrap());
                    super::$name(s).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(std::sync::Arc::new(crate::store::MemoryStore::new())).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let test = concat!("store::conformance::postgres::", stringify!($name));
                    let Some(s) = super::pg_store(test).await else { return };
                    super::$name(std::sync::Arc::new(s)).await;
                }
            )*
        }
    };
}

conformance_tests!(
    a_live_lease_is_never_taken_from_its_holder,
    concurrent_claims_of_one_address_lease_it_once,
    concurrent_leases_of_distinct_addresses_are_all_stored,
    expiry_does_not_remove_a_renewed_lease,
    a_failing_write_does_not_undo_its_neighbours,
    images_in_use_cannot_be_removed,
    slots_hold_a_node_once_and_move_atomically,
    only_a_vacant_slot_is_deleted,
    an_environment_holding_nodes_is_not_deleted,
    load_history_downsamples,
    nodes_move_through_their_states_and_tokens,
    commands_are_delivered_at_least_once_and_never_reopened,
    commands_are_bound_to_the_boot_they_were_queued_for,
    events_append_in_order_and_prune,
    reservations_hold_one_address_per_mac,
    disks_attach_and_detach,
    each_overlay_has_one_serving_server,
    disk_requests_are_taken_once_by_their_server,
    hosts_and_their_vms,
);

async fn hosts_and_their_vms(s: Arc<dyn Store>) {
    use crate::model::{Host, HostCapacity, HostState, Vm, VmState};
    let host = |name: &str| Host {
        name: name.into(),
        state: HostState::New,
        capacity: None,
        last_seen_ms: None,
        down_since_ms: None,
        agent_version: None,
        created_ms: 1,
        created_by: "test".into(),
        fingerprint: "abcd".into(),
    };
    s.add_host(&host("h1"), "digest-1").await.unwrap();
    s.add_host(&host("h2"), "digest-2").await.unwrap();
    // A name is enrolled once; so is a secret.
    let err = s.add_host(&host("h1"), "digest-3").await.unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Refused>(), Some(Refused::Conflict(_))),
        "{err:#}"
    );
    assert!(s.add_host(&host("h3"), "digest-1").await.is_err());
    let names: Vec<String> = s
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(names, ["h1", "h2"]);
    assert_eq!(
        s.host_by_digest("digest-2").await.unwrap().map(|h| h.name),
        Some("h2".into())
    );
    assert!(s.host_by_digest("nope").await.unwrap().is_none());
    // Updates change the body, never the secret.
    let mut h = host("h1");
    h.state = HostState::Up;
    h.last_seen_ms = Some(5);
    h.capacity = Some(HostCapacity {
        cpus: 8,
        memory_bytes: 1 << 34,
        reserve: 2,
        kvm: true,
    });
    assert!(s.update_host(&h).await.unwrap());
    assert_eq!(s.host_by_digest("digest-1").await.unwrap(), Some(h.clone()));
    assert!(!s.update_host(&host("nope")).await.unwrap());
    // VMs: put adds or replaces.
    let vm = |id: &str, host: &str| Vm {
        id: id.into(),
        host: host.into(),
        mac: "02:b5:00:00:00:01".into(),
        node: "node-02b500000001".into(),
        cpus: 1,
        memory_mb: 384,
        firmware: "bios".into(),
        environment: "web".into(),
        slot: 1,
        stands_in_for: Some("node-1".into()),
        state: VmState::Requested,
        requested_ms: 10,
        started_ms: None,
        ended_ms: None,
        detail: String::new(),
    };
    s.put_vm(&vm("vm-1", "h1")).await.unwrap();
    s.put_vm(&vm("vm-2", "h2")).await.unwrap();
    let mut running = vm("vm-1", "h1");
    running.state = VmState::Running;
    running.started_ms = Some(20);
    s.put_vm(&running).await.unwrap();
    assert_eq!(s.vms().await.unwrap(), vec![running, vm("vm-2", "h2")]);
    // Removing a host removes its VM records.
    assert!(s.remove_host("h1").await.unwrap());
    assert!(!s.remove_host("h1").await.unwrap());
    assert_eq!(s.vms().await.unwrap(), vec![vm("vm-2", "h2")]);
    assert!(s.host_by_digest("digest-1").await.unwrap().is_none());
}

async fn a_live_lease_is_never_taken_from_its_holder(store: Arc<dyn Store>) {
    store
        .put_lease(&lease(mac(1), [10, 0, 0, 1], 60_000))
        .await
        .unwrap();
    let err = store
        .put_lease(&lease(mac(2), [10, 0, 0, 1], 60_000))
        .await
        .unwrap_err();
    assert!(is_address_held(&err), "{err:#}");
    let leases = store.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].mac, mac(1));
    // A MAC has one lease: moving it to another address frees the old one.
    store
        .put_lease(&lease(mac(1), [10, 0, 0, 2], 60_000))
        .await
        .unwrap();
    store
        .put_lease(&lease(mac(2), [10, 0, 0, 1], 60_000))
        .await
        .unwrap();
    assert_eq!(store.leases().await.unwrap().len(), 2);
    assert_eq!(
        store.lease_of(mac(1)).await.unwrap().unwrap().ip,
        std::net::Ipv4Addr::new(10, 0, 0, 2)
    );
    // Once the holder's lease has expired, the address is free again.
    store
        .put_lease(&lease(mac(3), [10, 0, 0, 3], -1))
        .await
        .unwrap();
    assert!(store.lease_of(mac(3)).await.unwrap().is_none());
    store
        .put_lease(&lease(mac(4), [10, 0, 0, 3], 60_000))
        .await
        .unwrap();
    assert!(store
        .leases()
        .await
        .unwrap()
        .iter()
        .all(|l| l.mac != mac(3)));
    // Release.
    assert!(store
        .remove_lease(mac(4), [10, 0, 0, 3].into())
        .await
        .unwrap());
    assert!(!store
        .remove_lease(mac(4), [10, 0, 0, 3].into())
        .await
        .unwrap());
}

async fn concurrent_claims_of_one_address_lease_it_once(store: Arc<dyn Store>) {
    // Many clients (or servers) ask for one address at once: one wins, every
    // other one is refused with the holder named.
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.put_lease(&lease(mac(i), [10, 0, 9, 9], 60_000)).await
        }));
    }
    let (mut won, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(e) if is_address_held(&e) => refused += 1,
            Err(e) => panic!("neither stored nor refused: {e:#}"),
        }
    }
    assert_eq!((won, refused), (1, 31));
    let leases = store.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
}

async fn concurrent_leases_of_distinct_addresses_are_all_stored(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put_lease(&lease(
                    mac(i),
                    [10, 1, (i >> 8) as u8, (i & 0xff) as u8],
                    60_000,
                ))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(store.leases().await.unwrap().len(), 200);
}

async fn expiry_does_not_remove_a_renewed_lease(store: Arc<dyn Store>) {
    let old = lease(mac(1), [10, 0, 0, 1], -1);
    store.put_lease(&old).await.unwrap();
    let renewed = lease(mac(1), [10, 0, 0, 1], 60_000);
    store.put_lease(&renewed).await.unwrap();
    assert!(!store
        .expire_lease(old.mac, old.ip, old.expires_at_ms)
        .await
        .unwrap());
    assert_eq!(store.leases().await.unwrap().len(), 1);
    assert!(store
        .expire_lease(renewed.mac, renewed.ip, renewed.expires_at_ms)
        .await
        .unwrap());
    assert!(store.leases().await.unwrap().is_empty());
}

async fn a_failing_write_does_not_undo_its_neighbours(store: Arc<dyn Store>) {
    let (l1, l2) = (
        lease(mac(1), [10, 0, 0, 1], 60_000),
        lease(mac(2), [10, 0, 0, 2], 60_000),
    );
    let sel = Selector::Mac(mac(1));
    let (a, b, c) = tokio::join!(
        store.put_lease(&l1),
        store.assign(&sel, Some("missing")),
        store.put_lease(&l2)
    );
    a.unwrap();
    let err = b.unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Refused>(), Some(Refused::NotFound(_))),
        "{err:#}"
    );
    assert!(
        err.to_string().contains("no image named missing"),
        "{err:#}"
    );
    c.unwrap();
    assert_eq!(store.leases().await.unwrap().len(), 2);
    assert!(store.assignment(&sel).await.unwrap().is_none());
}

async fn images_in_use_cannot_be_removed(store: Arc<dyn Store>) {
    store.put_image(&image("lab")).await.unwrap();
    store.put_image(&image("other")).await.unwrap();
    store.set_default_image(Some("lab")).await.unwrap();
    assert_eq!(store.default_image().await.unwrap().as_deref(), Some("lab"));
    let sel = Selector::Mac(mac(7));
    store.assign(&sel, Some("other")).await.unwrap();
    assert_eq!(
        store.assignments().await.unwrap(),
        vec![(sel.clone(), "other".to_string())]
    );
    for name in ["lab", "other"] {
        let err = store.remove_image(name).await.unwrap_err();
        assert!(
            matches!(err.downcast_ref::<Refused>(), Some(Refused::Conflict(_))),
            "{err:#}"
        );
    }
    store.set_default_image(None).await.unwrap();
    store.assign(&sel, None).await.unwrap();
    store.remove_image("lab").await.unwrap();
    store.remove_image("other").await.unwrap();
    assert!(store.images().await.unwrap().is_empty());
    let err = store.remove_image("lab").await.unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Refused>(), Some(Refused::NotFound(_))),
        "{err:#}"
    );
}

async fn slots_hold_a_node_once_and_move_atomically(s: Arc<dyn Store>) {
    let (n, new) = s
        .observe_node(&Sighting {
            mac: mac(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(new);
    let a0 = slot("a", 0, Some(&n.id), SlotStep::Pending);
    assert!(s
        .write_slots(
            Fence::default(),
            &[(a0.clone(), Expect::Step(SlotStep::Vacant))]
        )
        .await
        .unwrap());
    // A stale expectation writes nothing.
    assert!(!s
        .write_slots(
            Fence::default(),
            &[(a0.clone(), Expect::Step(SlotStep::Vacant))]
        )
        .await
        .unwrap());
    // A second slot for the node is refused, and nothing of that write stays.
    let b0 = slot("b", 0, Some(&n.id), SlotStep::Pending);
    let err = s
        .write_slots(Fence::default(), &[(b0.clone(), Expect::Any)])
        .await
        .unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Refused>(), Some(Refused::Conflict(_))),
        "{err:#}"
    );
    assert!(s.slots(Some("b")).await.unwrap().is_empty());
    // Moving it (preemption) is one write: vacate a0, claim b0.
    let vacant = slot("a", 0, None, SlotStep::Vacant);
    assert!(s
        .write_slots(
            Fence::default(),
            &[
                (b0, Expect::Step(SlotStep::Vacant)),
                (vacant, Expect::Step(SlotStep::Pending))
            ]
        )
        .await
        .unwrap());
    let node = s.node(&n.id).await.unwrap().unwrap();
    assert_eq!(
        (node.environment.as_deref(), node.slot),
        (Some("b"), Some(0))
    );
    let slots = s.slots(None).await.unwrap();
    assert_eq!(slots.len(), 2);
    assert_eq!(slots[1].node.as_deref(), Some(n.id.as_str()));
    assert_eq!(slots[1].step, SlotStep::Pending);
}

async fn only_a_vacant_slot_is_deleted(s: Arc<dyn Store>) {
    let (n, _) = s
        .observe_node(&Sighting {
            mac: mac(3),
            ..Default::default()
        })
        .await
        .unwrap();
    let held = slot("c", 1, Some(&n.id), SlotStep::Releasing);
    let mut clone = slot("c", 3, None, SlotStep::Vacant);
    clone.reidentify = true;
    assert!(s
        .write_slots(
            Fence::default(),
            &[(held, Expect::Any), (clone.clone(), Expect::Any)]
        )
        .await
        .unwrap());
    // The stored body keeps the clone fields.
    assert!(s.slots(Some("c")).await.unwrap()[1].reidentify);
    assert!(!s.delete_slot(Fence::default(), "c", 1).await.unwrap());
    assert!(!s.delete_slot(Fence::default(), "c", 7).await.unwrap());
    assert!(s.delete_slot(Fence::default(), "c", 3).await.unwrap());
    let left: Vec<u32> = s
        .slots(Some("c"))
        .await
        .unwrap()
        .iter()
        .map(|x| x.index)
        .collect();
    assert_eq!(left, vec![1]);
}

async fn an_environment_holding_nodes_is_not_deleted(s: Arc<dyn Store>) {
    let env = crate::model::Environment {
        name: "web".into(),
        ..Default::default()
    };
    s.put_environment(&env).await.unwrap();
    assert_eq!(s.environment("web").await.unwrap().unwrap().name, "web");
    let (n, _) = s
        .observe_node(&Sighting {
            mac: mac(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let held = slot("web", 0, Some(&n.id), SlotStep::Ready);
    assert!(s
        .write_slots(Fence::default(), &[(held, Expect::Any)])
        .await
        .unwrap());
    let err = s.delete_environment("web").await.unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Refused>(), Some(Refused::Conflict(_))),
        "{err:#}"
    );
    let vacant = slot("web", 0, None, SlotStep::Vacant);
    assert!(s
        .write_slots(Fence::default(), &[(vacant, Expect::Step(SlotStep::Ready))])
        .await
        .unwrap());
    s.delete_environment("web").await.unwrap();
    assert!(s.environments().await.unwrap().is_empty());
    assert!(s.slots(Some("web")).await.unwrap().is_empty());
    let err = s.delete_environment("web").await.unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Refused>(), Some(Refused::NotFound(_))),
        "{err:#}"
    );
}

async fn load_history_downsamples(s: Arc<dyn Store>) {
    for i in 0..120 {
        s.append_load(&LoadSample {
            at_ms: i * 1000,
            node: "n1".into(),
            environment: "b".into(),
            load1: 1.0,
            cpu_busy: 0.5,
            busy: None,
            health: Default::default(),
        })
        .await
        .unwrap();
    }
    assert_eq!(s.downsample_load(60_000, 30_000).await.unwrap(), 58);
    assert_eq!(s.load_history("b", 0).await.unwrap().len(), 62);
    assert_eq!(s.load_history("b", 100_000).await.unwrap().len(), 20);
    assert_eq!(s.prune_load(100_000).await.unwrap(), 42);
    assert_eq!(s.load_history("b", 0).await.unwrap().len(), 20);
}

async fn nodes_move_through_their_states_and_tokens(s: Arc<dyn Store>) {
    use crate::model::{NodeState, Transition};
    let (n, new) = s
        .observe_node(&Sighting {
            mac: mac(3),
            arch: Some("x86_64".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(new);
    assert_eq!(n.state, NodeState::Discovered);
    let (again, new) = s
        .observe_node(&Sighting {
            mac: mac(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!new);
    assert_eq!(
        again.arch.as_deref(),
        Some("x86_64"),
        "a sighting keeps facts"
    );
    let enrolled = s
        .enrol_node(&crate::store::Enrolment {
            mac: mac(3),
            serial: Some("SN1".into()),
            labels: [("rack".to_string(), "r1".to_string())].into(),
            power: None,
        })
        .await
        .unwrap();
    assert!(enrolled.enrolled);
    assert_eq!(enrolled.labels.get("rack").map(String::as_str), Some("r1"));
    assert_eq!(s.node_by_mac(mac(3)).await.unwrap().unwrap().id, n.id);
    s.set_booted_image(&n.id, "lab").await.unwrap();
    assert_eq!(
        s.node(&n.id)
            .await
            .unwrap()
            .unwrap()
            .booted_image
            .as_deref(),
        Some("lab")
    );
    let err = s
        .set_node_state("node-missing", NodeState::Ready)
        .await
        .unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Refused>(), Some(Refused::NotFound(_))),
        "{err:#}"
    );
    assert!(s
        .transition_node("node-missing", Transition::Boot)
        .await
        .is_err());
    // Tokens: digests only; the next boot's token works beside the current
    // one until it is promoted.
    s.set_next_token(&n.id, "digest-1").await.unwrap();
    assert!(s.promote_token(&n.id, "digest-1").await.unwrap());
    s.set_next_token(&n.id, "digest-2").await.unwrap();
    let (cur, next) = s.node_by_token("digest-1").await.unwrap().unwrap();
    assert_eq!((cur.id.as_str(), next), (n.id.as_str(), false));
    let (_, next) = s.node_by_token("digest-2").await.unwrap().unwrap();
    assert!(next);
    assert!(!s.promote_token(&n.id, "digest-1").await.unwrap());
    assert!(s.promote_token(&n.id, "digest-2").await.unwrap());
    assert!(s.node_by_token("digest-1").await.unwrap().is_none());
    s.set_observed_ip(&n.id, Some([10, 0, 5, 5].into()))
        .await
        .unwrap();
    assert_eq!(
        s.node_by_lease_ip([10, 0, 5, 5].into())
            .await
            .unwrap()
            .unwrap()
            .id,
        n.id
    );
    assert_eq!(s.nodes().await.unwrap().len(), 1);
}

async fn commands_are_delivered_at_least_once_and_never_reopened(s: Arc<dyn Store>) {
    use boot_proto::CommandKind;
    let a = s.queue_command("n1", &CommandKind::Reboot).await.unwrap();
    let b = s.queue_command("n1", &CommandKind::Quiesce).await.unwrap();
    assert!(b > a);
    let taken = s.take_commands("n1", 0, 60_000).await.unwrap();
    assert_eq!(taken.iter().map(|c| c.id).collect::<Vec<_>>(), vec![a, b]);
    assert!(taken.iter().all(|c| c.status == CommandStatus::Delivered));
    // Not started yet, but not due for redelivery either.
    assert!(s.take_commands("n1", 0, 60_000).await.unwrap().is_empty());
    // Due: handed out again.
    assert_eq!(s.take_commands("n1", 0, -1).await.unwrap().len(), 2);
    assert!(s
        .update_command("n1", b, CommandStatus::Failed, "no")
        .await
        .unwrap());
    // A late report never moves a finished command back.
    assert!(s
        .update_command("n1", b, CommandStatus::Started, "")
        .await
        .unwrap());
    assert_eq!(
        s.command(b).await.unwrap().unwrap().status,
        CommandStatus::Failed
    );
    assert!(!s
        .update_command("n2", b, CommandStatus::Started, "")
        .await
        .unwrap());
    let newest = s.commands_of("n1", 1).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].id, b);
}

/// A command belongs to the boot it was queued for: a later boot's poll
/// never takes it, and the later boot's hello closes it with a detail that
/// says so (handed out: a reboot succeeded, anything else failed; never
/// handed out: failed, not carried out). An old boot's poll takes nothing
/// of the new boot's.
async fn commands_are_bound_to_the_boot_they_were_queued_for(s: Arc<dyn Store>) {
    use boot_proto::CommandKind;
    let (n, _) = s
        .observe_node(&Sighting {
            mac: mac(9),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = n.id.as_str();
    s.set_next_token(id, "boot-1").await.unwrap();
    // Its first boot, before its hello: no other boot to tell it from.
    assert_eq!(s.boot_of_token(id, "boot-1").await.unwrap(), Some(0));
    assert!(s.promote_token(id, "boot-1").await.unwrap());
    assert_eq!(s.node_boot(id).await.unwrap(), 1);
    assert_eq!(s.boot_of_token(id, "boot-1").await.unwrap(), Some(1));
    // Boot 1 takes a reboot and starts a stop; a kexec and a start are
    // queued after its last poll.
    let reboot = s.queue_command(id, &CommandKind::Reboot).await.unwrap();
    let stop = s
        .queue_command(id, &CommandKind::StopApp { timeout_secs: 5 })
        .await
        .unwrap();
    assert_eq!(s.command(reboot).await.unwrap().unwrap().boot, 1);
    assert_eq!(s.take_commands(id, 1, 0).await.unwrap().len(), 2);
    assert!(s
        .update_command(id, stop, CommandStatus::Started, "")
        .await
        .unwrap());
    let late_boot = s
        .queue_command(id, &CommandKind::Reprovision)
        .await
        .unwrap();
    let late_start = s
        .queue_command(id, &CommandKind::StartApp { timeout_secs: 5 })
        .await
        .unwrap();
    // Boot 2's token is minted (not yet promoted): boot 1 still polls.
    s.set_next_token(id, "boot-2").await.unwrap();
    assert_eq!(s.boot_of_token(id, "boot-2").await.unwrap(), None);
    // Boot 2 says hello: the counter advances, a poll as boot 1 takes nothing.
    assert!(s.promote_token(id, "boot-2").await.unwrap());
    assert_eq!(s.node_boot(id).await.unwrap(), 2);
    assert_eq!(s.boot_of_token(id, "boot-1").await.unwrap(), None);
    assert!(s.take_commands(id, 1, 0).await.unwrap().is_empty());
    // Not before the close either: boot 2's poll does not see boot 1's work.
    assert!(s.take_commands(id, 2, 0).await.unwrap().is_empty());
    let fresh = s.queue_command(id, &CommandKind::Quiesce).await.unwrap();
    assert_eq!(s.close_commands_of_previous_boot(id).await.unwrap(), 4);
    let get = |c: i64| {
        let s = s.clone();
        async move { s.command(c).await.unwrap().unwrap() }
    };
    let r = get(reboot).await;
    assert_eq!(r.status, CommandStatus::Succeeded, "{r:?}");
    assert!(r.detail.contains("booted again"), "{}", r.detail);
    let st = get(stop).await;
    assert_eq!(st.status, CommandStatus::Failed);
    assert!(
        st.detail.contains("boot 1") && st.detail.contains("before its agent reported"),
        "{}",
        st.detail
    );
    for c in [late_boot, late_start] {
        let c = get(c).await;
        assert_eq!(c.status, CommandStatus::Failed, "{c:?}");
        assert!(
            c.detail.starts_with("not carried out: queued for boot 1")
                && c.detail.contains("boot 2 said hello"),
            "{}",
            c.detail
        );
    }
    // Boot 2's own command is untouched and is what its poll takes.
    assert_eq!(get(fresh).await.status, CommandStatus::Queued);
    let taken = s.take_commands(id, 2, 0).await.unwrap();
    assert_eq!(taken.iter().map(|c| c.id).collect::<Vec<_>>(), vec![fresh]);
    // A second close finds nothing; a hello of the same boot closes nothing.
    assert_eq!(s.close_commands_of_previous_boot(id).await.unwrap(), 0);
    assert_eq!(get(fresh).await.status, CommandStatus::Delivered);
}

async fn events_append_in_order_and_prune(s: Arc<dyn Store>) {
    let new = |i: i64, node: Option<&str>| NewEvent {
        at_ms: i,
        node: node.map(str::to_string),
        kind: EventKind::NodeDiscovered,
        detail: serde_json::json!({ "i": i }),
    };
    let first = s
        .append_events(vec![new(1, Some("n1")), new(2, Some("n2")), new(3, None)])
        .await
        .unwrap();
    assert_eq!(first.len(), 3);
    assert!(first[0].id < first[1].id && first[1].id < first[2].id);
    let all = s.events(0, None, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].detail, serde_json::json!({ "i": 3 }));
    assert_eq!(s.events(0, Some("n2"), 100).await.unwrap().len(), 1);
    assert_eq!(
        s.events(first[0].id, None, 1).await.unwrap()[0].id,
        first[1].id
    );
    assert_eq!(s.prune_events(1).await.unwrap(), 2);
    assert_eq!(s.events(0, None, 100).await.unwrap().len(), 1);
}

async fn reservations_hold_one_address_per_mac(s: Arc<dyn Store>) {
    let r = |m: u32, ip: [u8; 4]| Reservation {
        mac: mac(m),
        ip: ip.into(),
        hostname: Some(format!("h{m}")),
    };
    s.put_reservation(&r(1, [10, 0, 0, 50])).await.unwrap();
    let err = s.put_reservation(&r(2, [10, 0, 0, 50])).await.unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Refused>(), Some(Refused::Conflict(_))),
        "{err:#}"
    );
    s.put_reservation(&r(1, [10, 0, 0, 51])).await.unwrap();
    s.put_reservation(&r(2, [10, 0, 0, 50])).await.unwrap();
    assert_eq!(s.reservations().await.unwrap().len(), 2);
    assert!(s.remove_reservation(mac(1)).await.unwrap());
    assert!(!s.remove_reservation(mac(1)).await.unwrap());
}

async fn disks_attach_and_detach(s: Arc<dyn Store>) {
    s.attach_disk("ov1", "n1", "exp-1").await.unwrap();
    s.attach_disk("ov1", "n2", "exp-2").await.unwrap();
    let all = s.disk_attachments().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].node.as_str(), all[0].export.as_str()),
        ("n2", "exp-2")
    );
    assert!(s.detach_disk("ov1").await.unwrap());
    assert!(!s.detach_disk("ov1").await.unwrap());
}

async fn each_overlay_has_one_serving_server(s: Arc<dyn Store>) {
    use crate::model::OverlayRecord;
    let rec = |overlay: &str, server: &str| OverlayRecord {
        overlay: overlay.into(),
        server: server.into(),
        base: "b".into(),
        created_ms: 7,
    };
    // An attachment of an overlay nobody recorded names no server.
    s.attach_disk("ov1", "n1", "exp-1").await.unwrap();
    assert_eq!(s.disk_attachments().await.unwrap()[0].server, "");
    s.record_overlay(&rec("ov1", "srv1")).await.unwrap();
    s.record_overlay(&rec("ov2", "srv2")).await.unwrap();
    let a = s.disk_attachments().await.unwrap();
    assert_eq!((a.len(), a[0].server.as_str()), (1, "srv1"));
    // Recording again replaces (one server per overlay); "if new" never does.
    s.record_overlay(&rec("ov1", "srv2")).await.unwrap();
    assert!(!s.record_overlay_if_new(&rec("ov1", "srv3")).await.unwrap());
    assert!(s.record_overlay_if_new(&rec("ov3", "srv3")).await.unwrap());
    let all = s.overlays().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|o| (o.overlay.as_str(), o.server.as_str()))
            .collect::<Vec<_>>(),
        [("ov1", "srv2"), ("ov2", "srv2"), ("ov3", "srv3")]
    );
    assert_eq!(all[0], rec("ov1", "srv2"));
    assert_eq!(s.disk_attachments().await.unwrap()[0].server, "srv2");
    // Detaching keeps the record (the overlay still lives on its server).
    assert!(s.detach_disk("ov1").await.unwrap());
    assert_eq!(s.overlays().await.unwrap().len(), 3);
    assert!(s.forget_overlay("ov1").await.unwrap());
    assert!(!s.forget_overlay("ov1").await.unwrap());
    assert_eq!(s.overlays().await.unwrap().len(), 2);
}

async fn disk_requests_are_taken_once_by_their_server(s: Arc<dyn Store>) {
    use crate::model::{DiskOp, DiskRequestStatus};
    let op = |o: &str| DiskOp::Revoke {
        overlay: o.into(),
        wait_ms: Some(500),
    };
    let r1 = s.queue_disk_request("srv1", &op("ov1")).await.unwrap();
    let r2 = s
        .queue_disk_request("srv2", &DiskOp::Refresh)
        .await
        .unwrap();
    let r3 = s.queue_disk_request("srv1", &op("ov3")).await.unwrap();
    assert!(r1 < r3);
    let q = s.disk_request(r1).await.unwrap().unwrap();
    assert_eq!(
        (q.status, q.server.as_str()),
        (DiskRequestStatus::Queued, "srv1")
    );
    let taken = s.take_disk_requests("srv1").await.unwrap();
    assert_eq!(taken.iter().map(|r| r.id).collect::<Vec<_>>(), [r1, r3]);
    assert_eq!(taken[0].op, op("ov1"));
    assert!(taken.iter().all(|r| r.status == DiskRequestStatus::Taken));
    // Handed out once; other servers' requests are not taken.
    assert!(s.take_disk_requests("srv1").await.unwrap().is_empty());
    assert!(s.finish_disk_request(r1, true, "2").await.unwrap());
    assert!(s
        .finish_disk_request(r3, false, "no overlay ov3")
        .await
        .unwrap());
    // A finished request is never reopened.
    assert!(!s.finish_disk_request(r1, false, "late").await.unwrap());
    let d = s.disk_request(r1).await.unwrap().unwrap();
    assert_eq!(
        (d.status, d.result.as_str()),
        (DiskRequestStatus::Done, "2")
    );
    let f = s.disk_request(r3).await.unwrap().unwrap();
    assert_eq!(f.status, DiskRequestStatus::Failed);
    let other = s.take_disk_requests("srv2").await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!((other[0].id, &other[0].op), (r2, &DiskOp::Refresh));
    assert!(s.disk_request(9_999_999).await.unwrap().is_none());
}
