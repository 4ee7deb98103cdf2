//! Environment bundles end to end against the in-memory store and real disk
//! stores in temporary directories: export on one control layer, import on
//! another; round trip, tampering, truncation, dry run, conflicts, rollback.

use super::*;
use crate::model::{
    Environment, Policy, Requirements, Schedule, ScheduleAction, Slot, SlotStep, TokenRole,
};
use crate::store::{Expect, Fence, MemoryStore};
use std::io::{Read, Write};
use std::net::Ipv4Addr;

struct Server {
    c: Arc<Control>,
    disks: Arc<boot_nbd::DiskStore>,
    dir: tempfile::TempDir,
}

fn server(kernel: &[u8]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("lab")).unwrap();
    std::fs::write(images.join("lab/k"), kernel).unwrap();
    std::fs::write(images.join("lab/i"), b"initrd").unwrap();
    let mut config = Config {
        images_dir: images,
        state_dir: dir.path().join("state"),
        server_ip: Some(Ipv4Addr::new(10, 0, 0, 1)),
        ..Default::default()
    };
    config.nbd.enabled = true;
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let config = Arc::new(config);
    let disks = Arc::new(boot_nbd::DiskStore::open(&config.disks_dir()).unwrap());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let events = EventHub::start(store.clone(), 1000);
    let plan = Arc::new(BootPlan::new(store.clone(), config.clone(), events.clone()).unwrap());
    let files = Arc::new(ImageFiles::new(&config.images_dir));
    let c = Arc::new(Control::new(
        store,
        config,
        plan,
        events,
        files,
        Some(disks.clone()),
        None,
    ));
    Server { c, disks, dir }
}

const MB: u64 = 1 << 20;

/// Server 1 with environment alpha: image, a 4 MiB base with data, two
/// slots with written overlays, a policy, a schedule, hooks, an operator token.
async fn source() -> Server {
    let s = server(b"kernel");
    s.c.add_image(
        "name = \"lab\"\nkind = \"linux\"\nkernel = \"lab/k\"\ninitrd = \"lab/i\"\n".into(),
    )
    .await
    .unwrap();
    let raw = s.dir.path().join("base.raw");
    let mut f = std::fs::File::create(&raw).unwrap();
    let mut content = vec![0u8; (4 * MB) as usize];
    for (i, b) in content.iter_mut().enumerate().take(MB as usize) {
        *b = (i * 7 % 251) as u8;
    }
    f.write_all(&content).unwrap();
    drop(f);
    s.c.add_base("b1".into(), raw).await.unwrap();
    let env = Environment {
        name: "alpha".into(),
        image: "lab".into(),
        disk_base: Some("b1".into()),
        min: 1,
        desired: 2,
        max: 4,
        priority: 7,
        hostname_pattern: "{env}-n{slot}".into(),
        addresses: Some("10.0.0.50-10.0.0.53".parse().unwrap()),
        schedules: vec![Schedule {
            cron: "0 0 6 * * *".into(),
            action: ScheduleAction::Scale(3),
        }],
        policy: Some(Policy {
            add_above: 0.9,
            ..Default::default()
        }),
        requirements: Requirements {
            min_cpus: Some(1),
            ..Default::default()
        },
        config: [("role".to_string(), "db".to_string())].into(),
        active: false,
        ..Default::default()
    };
    s.c.create_env(env.clone()).await.unwrap();
    let mut writes = Vec::new();
    for i in 0..2u32 {
        let id = env.overlay(i).unwrap();
        s.c.create_overlay(id.clone(), "b1".into()).await.unwrap();
        let ov = s.disks.open_overlay(&id).unwrap();
        ov.write_at(format!("slot {i} data").as_bytes(), 3 * MB + 100, false)
            .unwrap();
        ov.write_at(&[0xAB; 70_000], 512 * 1024, false).unwrap();
        ov.zero_at(0, 64 * 1024, false, false).unwrap();
        ov.flush().unwrap();
        let mut slot = new_slot(&env, i);
        slot.node = Some(format!("node-old{i}"));
        slot.config = [("shard".to_string(), i.to_string())].into();
        slot.step = SlotStep::Vacant;
        writes.push((slot, Expect::Any));
    }
    // The nodes of the source are not in this store: keep them off the slots
    // (write_slots checks nothing about nodes in memory, but stay honest).
    for (s, _) in &mut writes {
        s.node = None;
    }
    s.c.store
        .write_slots(Fence::default(), &writes)
        .await
        .unwrap();
    s.c.create_token("ops", TokenRole::Operator, vec!["alpha".into()], "test")
        .await
        .unwrap();
    s.c.create_token("viewer", TokenRole::ReadOnly, vec![], "test")
        .await
        .unwrap();
    s
}

async fn export(s: &Server, name: &str) -> Vec<u8> {
    let mut out = s.c.export_env(name, false).await.unwrap();
    let mut buf = Vec::new();
    while let Some(piece) = out.chunks.recv().await {
        buf.extend_from_slice(&piece.unwrap());
    }
    buf
}

fn whole_disk(d: &boot_nbd::DiskStore, id: &str) -> Vec<u8> {
    let ov = d.open_overlay(id).unwrap();
    let mut buf = vec![0u8; ov.size() as usize];
    ov.read_at(&mut buf, 0).unwrap();
    buf
}

/// Nothing of an import is left: no environment, image, disk, staging.
async fn nothing_created(t: &Server) {
    assert!(t.c.store.environments().await.unwrap().is_empty());
    assert!(t.c.store.slots(None).await.unwrap().is_empty());
    assert!(t.c.store.images().await.unwrap().is_empty());
    assert!(t.disks.list_bases().unwrap().is_empty());
    assert!(t.disks.list_overlays().unwrap().is_empty());
    assert!(!t.c.config.images_dir.join("uploaded").join("lab").exists());
    let staging = t.c.config.state_dir.join("import-staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staging left: {left:?}");
}

fn opts() -> ImportOptions {
    ImportOptions::default()
}

#[tokio::test]
async fn round_trip_carries_the_environment_disks_and_settings() {
    let s = source().await;
    let bundle = export(&s, "alpha").await;
    // No export snapshot is left behind on the source.
    let ids: Vec<String> = s
        .disks
        .list_overlays()
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(ids, vec!["alpha-slot0", "alpha-slot1"]);
    // The overlays are sparse in the bundle: far below two 4 MiB disks + base.
    assert!(bundle.len() < 600_000, "bundle is {} bytes", bundle.len());

    let t = server(b"other kernel");
    let mut o = opts();
    o.subnet = Some("10.9.8.0/24".into());
    let plan =
        t.c.import_env(std::io::Cursor::new(bundle.clone()), o)
            .await
            .unwrap();
    assert!(plan.created && plan.conflicts.is_empty(), "{plan:?}");
    assert_eq!(plan.addresses.as_deref(), Some("10.9.8.50-10.9.8.53"));
    assert_eq!(plan.tokens_to_create.len(), 1);
    assert_eq!(plan.tokens_to_create[0].token.name, "ops");
    assert!(plan.tokens_to_create[0]
        .command
        .contains("--role operator --env alpha"));

    let a = s.c.store.environment("alpha").await.unwrap().unwrap();
    let b = t.c.store.environment("alpha").await.unwrap().unwrap();
    assert!(!b.active);
    assert_eq!(a.policy, b.policy);
    assert_eq!(a.schedules, b.schedules);
    assert_eq!(a.hooks, b.hooks);
    assert_eq!(a.requirements, b.requirements);
    assert_eq!(a.config, b.config);
    assert_eq!(
        (a.min, a.desired, a.max, a.priority),
        (b.min, b.desired, b.max, b.priority)
    );
    let slots: Vec<Slot> = t.c.store.slots(Some("alpha")).await.unwrap();
    assert_eq!(slots.len(), 2);
    assert_eq!(slots[1].hostname, "alpha-n1");
    assert_eq!(slots[1].ip, Some(Ipv4Addr::new(10, 9, 8, 51)));
    assert_eq!(slots[1].config.get("shard").map(String::as_str), Some("1"));
    for i in 0..2 {
        let id = format!("alpha-slot{i}");
        assert!(
            whole_disk(&s.disks, &id) == whole_disk(&t.disks, &id),
            "disk {id} differs"
        );
    }
    // The image is recreated under uploaded/ with the source's files.
    let img = t.c.store.image("lab").await.unwrap().unwrap();
    assert_eq!(img.kernel.as_deref(), Some("uploaded/lab/k"));
    assert_eq!(
        std::fs::read(t.c.config.images_dir.join("uploaded/lab/k")).unwrap(),
        b"kernel"
    );
    // The base is the same content.
    assert_eq!(
        std::fs::read(t.disks.base_file("b1").unwrap()).unwrap(),
        std::fs::read(s.disks.base_file("b1").unwrap()).unwrap()
    );

    // A second import is refused; under another name it works and reuses
    // the image and base.
    let e =
        t.c.import_env(std::io::Cursor::new(bundle.clone()), opts())
            .await
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(e.message.contains("--as"), "{e}");
    let mut o = opts();
    o.as_name = Some("beta".into());
    o.subnet = Some("10.9.9.0/24".into());
    let plan =
        t.c.import_env(std::io::Cursor::new(bundle), o)
            .await
            .unwrap();
    assert_eq!(plan.images[0].action, "reuse");
    assert_eq!(plan.base.as_ref().unwrap().action, "reuse");
    assert_eq!(plan.slots[0].hostname, "beta-n0");
    assert_eq!(
        whole_disk(&t.disks, "beta-slot1"),
        whole_disk(&s.disks, "alpha-slot1")
    );
}

/// The tar stream inside a bundle, and a bundle made from one.
fn untar(bundle: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    zstd::Decoder::new(bundle)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}
fn retar(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 3).unwrap()
}

#[tokio::test]
async fn tampered_and_truncated_bundles_are_refused_and_leave_nothing() {
    let s = source().await;
    let bundle = export(&s, "alpha").await;
    let t = server(b"k");
    // Tamper with a byte of slot 1's overlay data ("slot 1 data" is in it).
    let mut tar = untar(&bundle);
    let at = tar
        .windows(11)
        .position(|w| w == b"slot 1 data")
        .expect("overlay data in the stream");
    tar[at] ^= 0x20;
    let e =
        t.c.import_env(std::io::Cursor::new(retar(&tar)), opts())
            .await
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(
        e.message.contains("disks/overlays/slot1.chunks") && e.message.contains("SHA-256"),
        "{e}"
    );
    nothing_created(&t).await;
    // A manifest edited to skip an entry: the stream's entry is unknown.
    let mut tar = untar(&bundle);
    let at = tar
        .windows(20)
        .position(|w| w == b"disks/base/b1.chunks")
        .unwrap();
    // Rename it in the manifest text only (the first occurrence is the manifest's).
    tar[at + 11] = b'X';
    let e =
        t.c.import_env(std::io::Cursor::new(retar(&tar)), opts())
            .await
            .unwrap_err();
    assert!(
        e.message.contains("not in its manifest") || e.message.contains("SHA-256"),
        "{e}"
    );
    nothing_created(&t).await;
    // Truncated: the compressed stream cut at 60 %, and the tar stream cut
    // inside the last entry (recompressed properly).
    let cut = &bundle[..bundle.len() * 6 / 10];
    let e =
        t.c.import_env(std::io::Cursor::new(cut.to_vec()), opts())
            .await
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("truncated"), "{e}");
    nothing_created(&t).await;
    let tar = untar(&bundle);
    let e =
        t.c.import_env(
            std::io::Cursor::new(retar(&tar[..tar.len() - 3000])),
            opts(),
        )
        .await
        .unwrap_err();
    assert!(
        e.message.contains("truncated") && e.message.contains("slot1"),
        "{e}"
    );
    nothing_created(&t).await;
    // Not a bundle at all.
    let e =
        t.c.import_env(std::io::Cursor::new(b"hello".to_vec()), opts())
            .await
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    nothing_created(&t).await;
}

#[tokio::test]
async fn dry_run_plans_and_conflicts_create_nothing() {
    let s = source().await;
    let bundle = export(&s, "alpha").await;
    let t = server(b"k");
    let mut o = opts();
    o.dry_run = true;
    o.map_addresses = [(Ipv4Addr::new(10, 0, 0, 50), Ipv4Addr::new(192, 168, 5, 10))].into();
    let plan =
        t.c.import_env(std::io::Cursor::new(bundle.clone()), o)
            .await
            .unwrap();
    assert!(plan.dry_run && !plan.created);
    assert_eq!(plan.addresses.as_deref(), Some("192.168.5.10-192.168.5.13"));
    assert_eq!(plan.slots[1].ip, Some(Ipv4Addr::new(192, 168, 5, 11)));
    assert_eq!(plan.overlays.len(), 2);
    assert!(plan.conflicts.is_empty(), "{:?}", plan.conflicts);
    nothing_created(&t).await;
    // An address map that breaks the range is refused.
    let mut o = opts();
    o.map_addresses = [
        (Ipv4Addr::new(10, 0, 0, 50), Ipv4Addr::new(192, 168, 5, 10)),
        (Ipv4Addr::new(10, 0, 0, 51), Ipv4Addr::new(192, 168, 5, 99)),
    ]
    .into();
    let e =
        t.c.import_env(std::io::Cursor::new(bundle.clone()), o)
            .await
            .unwrap_err();
    assert!(e.message.contains("moves as one"), "{e}");
    nothing_created(&t).await;
    // Conflicts: an environment holding the same addresses, an unknown node.
    let other = Environment {
        name: "web".into(),
        image: "web".into(),
        max: 2,
        addresses: Some("10.0.0.52-10.0.0.53".parse().unwrap()),
        ..Default::default()
    };
    t.c.store.put_environment(&other).await.unwrap();
    let mut o = opts();
    o.map_nodes = [("slot0".to_string(), "node-nowhere".to_string())].into();
    o.dry_run = true;
    let plan =
        t.c.import_env(std::io::Cursor::new(bundle.clone()), o.clone())
            .await
            .unwrap();
    assert_eq!(plan.conflicts.len(), 2, "{:?}", plan.conflicts);
    o.dry_run = false;
    let e =
        t.c.import_env(std::io::Cursor::new(bundle), o)
            .await
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(
        e.message.contains("overlap") && e.message.contains("node-nowhere"),
        "{e}"
    );
    t.c.store.delete_environment("web").await.unwrap();
    nothing_created(&t).await;
}

#[tokio::test]
async fn a_failure_at_any_step_rolls_everything_back() {
    let s = source().await;
    let bundle = export(&s, "alpha").await;
    let t = server(b"k");
    for step in ["images", "base", "overlays", "environment", "slots"] {
        let mut o = opts();
        o.fail_after = Some(step.into());
        let e =
            t.c.import_env(std::io::Cursor::new(bundle.clone()), o)
                .await
                .unwrap_err();
        assert!(e.message.contains("rolled back"), "{step}: {e}");
        nothing_created(&t).await;
    }
    // And then it imports cleanly.
    let plan =
        t.c.import_env(std::io::Cursor::new(bundle), opts())
            .await
            .unwrap();
    assert!(plan.created);
}

#[tokio::test]
async fn an_import_cut_short_by_a_stop_is_undone_at_the_next_start() {
    let s = source().await;
    let bundle = export(&s, "alpha").await;
    let t = server(b"k");
    for step in ["images", "base", "overlays", "environment", "slots"] {
        let mut o = opts();
        o.crash_after = Some(step.into());
        t.c.import_env(std::io::Cursor::new(bundle.clone()), o)
            .await
            .unwrap_err();
        // What the import had made is still there, with its journal...
        assert!(!t.c.store.images().await.unwrap().is_empty(), "{step}");
        let staging = t.c.config.state_dir.join("import-staging");
        let journals: Vec<_> = std::fs::read_dir(&staging)
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("journal.json").exists())
            .collect();
        assert_eq!(journals.len(), 1, "{step}");
        // ...until the server starts again.
        assert_eq!(t.c.recover_imports().await.unwrap(), 1, "{step}");
        nothing_created(&t).await;
    }
    assert_eq!(t.c.recover_imports().await.unwrap(), 0);
    let plan =
        t.c.import_env(std::io::Cursor::new(bundle), opts())
            .await
            .unwrap();
    assert!(plan.created);
    // A finished import is never undone.
    assert_eq!(t.c.recover_imports().await.unwrap(), 0);
    assert_eq!(t.c.store.environments().await.unwrap().len(), 1);
}

#[tokio::test]
async fn mapped_nodes_become_the_slots_preferred_nodes() {
    let s = source().await;
    let bundle = export(&s, "alpha").await;
    let t = server(b"k");
    let n =
        t.c.store
            .enrol_node(&crate::store::Enrolment {
                mac: "52:54:00:00:00:09".parse().unwrap(),
                serial: None,
                labels: Default::default(),
                power: None,
            })
            .await
            .unwrap();
    let mut o = opts();
    o.map_nodes = [("slot1".to_string(), n.id.clone())].into();
    let plan =
        t.c.import_env(std::io::Cursor::new(bundle), o)
            .await
            .unwrap();
    assert_eq!(plan.slots[1].node.as_deref(), Some(n.id.as_str()));
    let slots = t.c.store.slots(Some("alpha")).await.unwrap();
    assert_eq!(slots[1].preferred_node.as_deref(), Some(n.id.as_str()));
    assert_eq!(slots[0].preferred_node, None);
}
