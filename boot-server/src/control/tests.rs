//! Plan and control decisions against the in-memory store: no SQLite, no sockets.

use super::*;
use crate::model::{now_ms, Lease, MacAddr, NodeState, Selector};
use crate::plan::ScriptHints;
use crate::store::{Enrolment, MemoryStore};
use std::net::{IpAddr, Ipv4Addr};

fn setup(trust: bool) -> (Arc<Control>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("lab")).unwrap();
    std::fs::write(images.join("lab/k"), b"kernel").unwrap();
    std::fs::write(images.join("lab/i"), b"initrd").unwrap();
    let config = Arc::new(Config {
        images_dir: images,
        state_dir: dir.path().join("state"),
        server_ip: Some(Ipv4Addr::new(10, 0, 0, 1)),
        trust_boot_network: trust,
        dhcp: crate::config::DhcpConfig {
            subnets: vec![toml::from_str(
                "network = \"10.0.0.0/24\"\nrange = [\"10.0.0.100\", \"10.0.0.200\"]",
            )
            .unwrap()],
            ..Default::default()
        },
        ..Default::default()
    });
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let events = EventHub::start(store.clone(), 1000);
    let plan = Arc::new(BootPlan::new(store.clone(), config.clone(), events.clone()).unwrap());
    let files = Arc::new(ImageFiles::new(&config.images_dir));
    let c = Arc::new(Control::new(store, config, plan, events, files, None, None));
    (c, dir)
}

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

fn token(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("bootsrv.token="))
}

async fn lab_image(c: &Control) {
    c.add_image(
        "name = \"lab\"\nkind = \"linux\"\nkernel = \"lab/k\"\ninitrd = \"lab/i\"\n".into(),
    )
    .await
    .unwrap();
    c.set_default_image(Some("lab".into())).await.unwrap();
}

#[tokio::test]
async fn secrets_follow_the_lease_and_enrolment() {
    let (c, _d) = setup(false);
    lab_image(&c).await;
    let here: IpAddr = Ipv4Addr::new(10, 0, 0, 150).into();
    let there: IpAddr = Ipv4Addr::new(10, 0, 0, 151).into();
    // Unknown node: recorded (bounded), no secrets.
    let s = c
        .plan
        .script(MAC, &ScriptHints::default(), here)
        .await
        .unwrap();
    assert!(token(&s.text).is_none(), "{}", s.text);
    // Leased to 10.0.0.150: only that address gets the token.
    c.store
        .put_lease(&Lease {
            mac: MAC,
            ip: Ipv4Addr::new(10, 0, 0, 150),
            expires_at_ms: now_ms() + 60_000,
            hostname: None,
            client_id: None,
        })
        .await
        .unwrap();
    let s = c
        .plan
        .script(MAC, &ScriptHints::default(), there)
        .await
        .unwrap();
    assert!(token(&s.text).is_none(), "token handed to another address");
    let s = c
        .plan
        .script(MAC, &ScriptHints::default(), here)
        .await
        .unwrap();
    assert!(token(&s.text).is_some());
    assert_eq!(s.node.unwrap().state, NodeState::Discovered);
    assert_eq!(
        c.store.node_by_mac(MAC).await.unwrap().unwrap().state,
        NodeState::Provisioning
    );

    // An enrolled node never seen in DHCP: the first fetch binds its address.
    let other = MacAddr([0x52, 0x54, 0, 0, 0, 2]);
    let n = c
        .enrol(Enrolment {
            mac: other,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(n.state, NodeState::Idle);
    assert!(token(
        &c.plan
            .script(other, &ScriptHints::default(), there)
            .await
            .unwrap()
            .text
    )
    .is_some());
    assert!(token(
        &c.plan
            .script(other, &ScriptHints::default(), here)
            .await
            .unwrap()
            .text
    )
    .is_none());
}

#[tokio::test]
async fn control_decisions() {
    let (c, _d) = setup(true);
    lab_image(&c).await;
    let n = c
        .enrol(Enrolment {
            mac: MAC,
            ..Default::default()
        })
        .await
        .unwrap();
    // Kexec assigns and queues a kexec with a fresh token on its command line.
    let id = c
        .command_node(
            &n.id,
            NodeCommand::Kexec {
                image: "lab".into(),
            },
        )
        .await
        .unwrap();
    let cmd = c.command(id).await.unwrap();
    match &cmd.command {
        boot_proto::CommandKind::Kexec { cmdline, .. } => assert!(token(cmdline).is_some()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.store
            .assignment(&Selector::Mac(MAC))
            .await
            .unwrap()
            .as_deref(),
        Some("lab")
    );
    assert!(c
        .command_node(
            &n.id,
            NodeCommand::Kexec {
                image: "nope".into()
            }
        )
        .await
        .is_err());
    // Quarantine and release follow the transition table.
    assert_eq!(
        c.set_node_state(&n.id, NodeState::Quarantined)
            .await
            .unwrap()
            .state,
        NodeState::Quarantined
    );
    assert_eq!(
        c.set_node_state(&n.id, NodeState::Idle)
            .await
            .unwrap()
            .state,
        NodeState::Idle
    );
    assert_eq!(
        c.set_node_state(&n.id, NodeState::Ready)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::BadRequest
    );
    // A reservation for an address another MAC holds releases that lease first.
    let holder = MacAddr([2, 0, 0, 0, 0, 9]);
    c.store
        .put_lease(&Lease {
            mac: holder,
            ip: Ipv4Addr::new(10, 0, 0, 120),
            expires_at_ms: now_ms() + 60_000,
            hostname: None,
            client_id: None,
        })
        .await
        .unwrap();
    c.put_reservation(Reservation {
        mac: MAC,
        ip: Ipv4Addr::new(10, 0, 0, 120),
        hostname: Some("slot-1".into()),
    })
    .await
    .unwrap();
    assert!(c.store.lease_of(holder).await.unwrap().is_none());
    let outside = c
        .put_reservation(Reservation {
            mac: MAC,
            ip: Ipv4Addr::new(192, 168, 1, 1),
            hostname: None,
        })
        .await
        .unwrap_err();
    assert_eq!(outside.kind, ErrorKind::BadRequest);
    // Images in use cannot be removed: a conflict, not an internal error.
    assert_eq!(
        c.remove_image("lab").await.unwrap_err().kind,
        ErrorKind::Conflict
    );
}

fn server(name: &str, holder: &str, role: crate::model::ServerRole) -> crate::model::ServerInfo {
    crate::model::ServerInfo {
        name: name.into(),
        holder: holder.into(),
        role,
        segment: "10.0.0.0/24".into(),
        version: "1".into(),
        listen: vec!["http=10.0.0.1:80".into()],
        started_ms: now_ms(),
    }
}

#[tokio::test]
async fn servers_register_and_only_an_engine_server_is_preferred() {
    use crate::model::ServerRole::{Controller, Member};
    let (c, _d) = setup(false);
    c.store
        .heartbeat_server(&server("s1", "s1:1:a", Controller))
        .await
        .unwrap();
    c.store
        .heartbeat_server(&server("s2", "", Member))
        .await
        .unwrap();
    let list = c.list_servers().await.unwrap();
    let roles: Vec<(&str, &str, bool)> = list
        .iter()
        .map(|s| (s.name.as_str(), s.role.as_str(), s.up))
        .collect();
    assert_eq!(
        roles,
        vec![("s1", "controller", true), ("s2", "member", true)]
    );
    assert_eq!(
        c.prefer_server(Some("nope".into())).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        c.prefer_server(Some("s2".into())).await.unwrap_err().kind,
        ErrorKind::Conflict
    );
    c.prefer_server(Some("s1".into())).await.unwrap();
    assert!(c.list_servers().await.unwrap()[0].preferred);
    // An up server is not forgotten.
    assert_eq!(
        c.forget_server("s2").await.unwrap_err().kind,
        ErrorKind::Conflict
    );
}

/// A control layer named `name` on `store` with its own disk store, like one
/// of several servers sharing a database (no sockets).
fn disk_server(name: &str, store: Arc<dyn Store>, dir: &std::path::Path) -> Arc<Control> {
    let mut config = Config {
        images_dir: dir.join("images"),
        state_dir: dir.join(format!("state-{name}")),
        server_ip: Some(Ipv4Addr::new(10, 0, 0, 1)),
        ..Default::default()
    };
    config.store.server_name = Some(name.into());
    let config = Arc::new(config);
    let events = EventHub::start(store.clone(), 1000);
    let plan = Arc::new(BootPlan::new(store.clone(), config.clone(), events.clone()).unwrap());
    let files = Arc::new(ImageFiles::new(&config.images_dir));
    let disks = Arc::new(boot_nbd::DiskStore::open(&dir.join(format!("disks-{name}"))).unwrap());
    Arc::new(Control::new(
        store,
        config,
        plan,
        events,
        files,
        Some(disks),
        None,
    ))
}

fn root_of(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("bootsrv.root="))
}

#[tokio::test]
async fn a_node_boots_its_disk_from_the_server_that_serves_it() {
    use crate::model::{OverlayRecord, ServerRole::Member};
    let (c, _d) = setup(true);
    lab_image(&c).await;
    let here: IpAddr = Ipv4Addr::new(10, 0, 0, 150).into();
    let me = c.server_name().to_string();
    c.plan
        .script(MAC, &ScriptHints::default(), here)
        .await
        .unwrap();
    let node = c.store.node_by_mac(MAC).await.unwrap().unwrap();
    c.store
        .attach_disk("ov1", &node.id, "ov1.s3cret")
        .await
        .unwrap();
    let mut srv1 = server("srv1", "", Member);
    srv1.listen = vec![
        "http=0.0.0.0:80".into(),
        "nbd-node=10.0.1.1:10999".into(),
        "iscsi-node=10.0.1.1:3261".into(),
    ];
    c.store.heartbeat_server(&srv1).await.unwrap();
    let record = |server: &str| OverlayRecord {
        overlay: "ov1".into(),
        server: server.into(),
        base: "b".into(),
        created_ms: 1,
    };
    let root = |c: Arc<Control>| async move {
        let s = c
            .plan
            .script(MAC, &ScriptHints::default(), here)
            .await
            .unwrap();
        root_of(&s.text).map(str::to_string)
    };
    // Unrecorded (a store from before the overlay table): this server's address.
    assert_eq!(
        root(c.clone()).await.as_deref(),
        Some("nbd:10.0.0.1:10809:ov1.s3cret")
    );
    // Served by srv1: its registered address, whichever server answers.
    c.store.record_overlay(&record("srv1")).await.unwrap();
    assert_eq!(
        root(c.clone()).await.as_deref(),
        Some("nbd:10.0.1.1:10999:ov1.s3cret")
    );
    assert_eq!(
        c.plan
            .disk_address("srv1", crate::model::DiskTransport::Iscsi)
            .await
            .unwrap(),
        Some("10.0.1.1:3261".parse().unwrap())
    );
    // Served here.
    c.store.record_overlay(&record(&me)).await.unwrap();
    assert_eq!(
        root(c.clone()).await.as_deref(),
        Some("nbd:10.0.0.1:10809:ov1.s3cret")
    );
    // Served by a server nobody registered: no address, so no root disk
    // (rather than pointing the node at a server that does not hold it).
    c.store.record_overlay(&record("gone")).await.unwrap();
    assert_eq!(root(c.clone()).await, None);
    // An overlay another server serves is listed with that server.
    c.store.record_overlay(&record("srv1")).await.unwrap();
    let listed = c.list_disks().await;
    // (No disk store in this setup: disks are off, so only the table is listed.)
    let listed = listed.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].server.as_deref(), Some("srv1"));
    assert_eq!(listed[0].node.as_deref(), Some(node.id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_operations_run_on_the_overlays_serving_server() {
    use crate::model::ServerRole::Member;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = disk_server("a", store.clone(), dir.path());
    let b = disk_server("b", store.clone(), dir.path());
    for s in ["a", "b"] {
        store
            .heartbeat_server(&server(s, "", Member))
            .await
            .unwrap();
    }
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
    a.add_base("b".into(), base.clone()).await.unwrap();
    b.add_base("b".into(), base).await.unwrap();
    let worker_a = tokio::spawn(crate::control::disks::run_disk_requests(a.clone()));

    // Created through A: held and served by A, listed by B with A's name.
    let v = a.create_overlay("ov1".into(), "b".into()).await.unwrap();
    assert_eq!(v.server.as_deref(), Some("a"));
    assert!(dir.path().join("disks-a").read_dir().is_ok());
    let on_b = b.list_disks().await.unwrap();
    let ov1 = on_b.iter().find(|d| d.name == "ov1").expect("B lists ov1");
    assert_eq!(ov1.server.as_deref(), Some("a"));
    // B cannot create another ov1 of its own.
    assert_eq!(
        b.create_overlay("ov1".into(), "b".into())
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Conflict
    );
    // A snapshot asked of B is taken on A (A's worker), served by A.
    let snap = b.snapshot("ov1".into(), "snap1".into()).await.unwrap();
    assert_eq!(snap.server.as_deref(), Some("a"));
    let on_a = a.list_disks().await.unwrap();
    let s1 = on_a
        .iter()
        .find(|d| d.name == "snap1")
        .expect("A holds snap1");
    assert_eq!(s1.kind, "snapshot");
    assert!(!b
        .on_disks(|d| d.list_overlays())
        .await
        .unwrap()
        .iter()
        .any(|o| o.id == "snap1"));
    // Attached through B (a row in the store); deleting through B is refused
    // on A while attached, then done on A once detached.
    let (node, export, _) = {
        let n = b
            .enrol(Enrolment {
                mac: MAC,
                ..Default::default()
            })
            .await
            .unwrap();
        b.attach_disk("snap1".into(), &n.id, false, None)
            .await
            .unwrap()
    };
    assert!(export.starts_with("snap1."));
    let att = store.disk_attachments().await.unwrap();
    assert_eq!(
        (att[0].node.as_str(), att[0].server.as_str()),
        (node.as_str(), "a")
    );
    let e = b.delete_disk("snap1".into(), false).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{}", e.message);
    // Fencing from B: the cut runs on A (no NBD server here: 0 cut).
    assert_eq!(
        b.cut_disk_and_wait("snap1", std::time::Duration::from_secs(1))
            .await
            .unwrap(),
        0
    );
    b.detach_disk("snap1").await.unwrap();
    b.delete_disk("snap1".into(), false).await.unwrap();
    assert!(!a
        .on_disks(|d| d.list_overlays())
        .await
        .unwrap()
        .iter()
        .any(|o| o.id == "snap1"));
    assert!(!store
        .overlays()
        .await
        .unwrap()
        .iter()
        .any(|o| o.overlay == "snap1"));

    // A gone from the registry (the memory store cannot age a heartbeat; a
    // down server takes the same refusal): B's requests fail at once, naming A.
    worker_a.abort();
    store.forget_server("a").await.unwrap();
    let e = b.delete_disk("ov1".into(), false).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("served by server a"), "{}", e.message);
}

#[tokio::test]
async fn a_single_server_adopts_every_overlay_it_holds() {
    use crate::model::OverlayRecord;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = disk_server("a", store.clone(), dir.path());
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![1u8; 1 << 20]).unwrap();
    a.add_base("b".into(), base).await.unwrap();
    for id in ["ov1", "ov2", "ov3"] {
        a.on_disks(move |d| d.create_overlay(id, "b"))
            .await
            .unwrap();
    }
    // ov1 unrecorded (a store from before schema 7), ov2 recorded under the
    // server's former name, ov3 already its own.
    let rec = |o: &str, s: &str| OverlayRecord {
        overlay: o.into(),
        server: s.into(),
        base: "b".into(),
        created_ms: 1,
    };
    store.record_overlay(&rec("ov2", "old-name")).await.unwrap();
    store.record_overlay(&rec("ov3", "a")).await.unwrap();
    // Shared store: only the unrecorded one is taken (ov2 may be another
    // server's file on shared storage).
    assert_eq!(a.adopt_local_overlays(false).await.unwrap(), 1);
    assert_eq!(a.overlay_server("ov1").await.unwrap().as_deref(), Some("a"));
    assert_eq!(
        a.overlay_server("ov2").await.unwrap().as_deref(),
        Some("old-name")
    );
    // The embedded store's one server holds every overlay it has.
    assert_eq!(a.adopt_local_overlays(true).await.unwrap(), 1);
    assert_eq!(a.overlay_server("ov2").await.unwrap().as_deref(), Some("a"));
    assert_eq!(a.adopt_local_overlays(true).await.unwrap(), 0);
}
