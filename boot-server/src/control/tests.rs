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
