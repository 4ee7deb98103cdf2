//! Real clients (nbdinfo, nbdcopy, qemu-img) against the server on loopback.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use boot_nbd::{AllowAllResolver, DiskStore, ExportResolver, ExportTarget};
use common::*;
use test_support::Need;

const SIZE: usize = 64 * 1024 * 1024;

fn setup() -> (tempfile::TempDir, Arc<DiskStore>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let base = random_file(&src, SIZE);
    let store = Arc::new(DiskStore::open(&dir.path().join("store")).unwrap());
    let info = store.create_base_from_file("deb", &src).unwrap();
    assert_eq!(info.size, SIZE as u64);
    (dir, store, base)
}

const TOOLS: &[Need] = &[
    Need::Tool("nbdinfo"),
    Need::Tool("nbdcopy"),
    Need::Tool("qemu-img"),
];

fn sha(path: &std::path::Path) -> String {
    run(Command::new("sha256sum").arg(path))
}

#[test]
fn nbdinfo_nbdcopy_qemu_img_roundtrip() {
    if !test_support::require("nbdinfo_nbdcopy_qemu_img_roundtrip", TOOLS) {
        return;
    }
    let (dir, store, base) = setup();
    store.create_overlay("node1", "deb").unwrap();
    let addr = start_server(store.clone(), Arc::new(AllowAllResolver(store.clone())));

    let info = run(Command::new("nbdinfo").arg(uri(addr, "deb")));
    assert!(info.contains("67108864"), "nbdinfo output: {info}");
    assert!(info.contains("is_read_only: true"), "{info}");
    let info = run(Command::new("nbdinfo").arg(uri(addr, "node1")));
    assert!(
        info.contains("67108864") && info.contains("can_multi_conn: true"),
        "{info}"
    );

    // Base export and empty overlay both read back as the base.
    for name in ["deb", "node1"] {
        let out = dir.path().join(format!("{name}.out"));
        run(Command::new("nbdcopy").arg(uri(addr, name)).arg(&out));
        assert!(
            std::fs::read(&out).unwrap() == base,
            "{name} differs from base"
        );
    }

    // Random file into the overlay and back out.
    let newf = dir.path().join("new.img");
    let new = random_file(&newf, SIZE);
    run(Command::new("nbdcopy").arg(&newf).arg(uri(addr, "node1")));
    let back = dir.path().join("back.img");
    run(Command::new("nbdcopy").arg(uri(addr, "node1")).arg(&back));
    assert!(
        std::fs::read(&back).unwrap() == new,
        "overlay round trip differs"
    );

    let qi = run(Command::new("qemu-img").arg("info").arg(uri(addr, "node1")));
    assert!(qi.contains("67108864 bytes"), "qemu-img info: {qi}");
    let conv = dir.path().join("conv.img");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(uri(addr, "node1"))
        .arg(&conv));
    assert!(
        std::fs::read(&conv).unwrap() == new,
        "qemu-img convert differs"
    );

    // Writing to the read-only base export is refused.
    let w = Command::new("nbdcopy")
        .arg(&newf)
        .arg(uri(addr, "deb"))
        .output()
        .unwrap();
    assert!(!w.status.success(), "write to base export must fail");
}

#[test]
fn overlays_are_isolated_from_each_other_and_the_base() {
    if !test_support::require("overlays_are_isolated_from_each_other_and_the_base", TOOLS) {
        return;
    }
    let (dir, store, base) = setup();
    let base_file = store.list_bases().unwrap()[0].path.clone();
    let before = sha(&base_file);
    store.create_overlay("a", "deb").unwrap();
    store.create_overlay("b", "deb").unwrap();
    let addr = start_server(store.clone(), Arc::new(AllowAllResolver(store.clone())));

    // Unaligned partial writes through A (copy-up of partial chunks).
    let mut a = Client::connect(addr, "a").unwrap();
    let patch: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
    for off in [0u64, 65_500, 1_000_001, SIZE as u64 - 100_000] {
        a.write(off, &patch);
    }
    a.flush();
    let mut expect = base.clone();
    for off in [0usize, 65_500, 1_000_001, SIZE - 100_000] {
        expect[off..off + patch.len()].copy_from_slice(&patch);
    }
    a.disconnect();

    let out_a = dir.path().join("a.out");
    let out_b = dir.path().join("b.out");
    run(Command::new("nbdcopy").arg(uri(addr, "a")).arg(&out_a));
    run(Command::new("nbdcopy").arg(uri(addr, "b")).arg(&out_b));
    assert!(
        std::fs::read(&out_a).unwrap() == expect,
        "A does not show its writes"
    );
    assert!(std::fs::read(&out_b).unwrap() == base, "B sees A's writes");
    assert_eq!(sha(&base_file), before, "base file changed");
    let infos = store.list_overlays().unwrap();
    assert!(infos.iter().any(|o| o.id == "a" && o.allocated_bytes > 0));
    assert!(infos.iter().any(|o| o.id == "b" && o.allocated_bytes == 0));
    assert!(
        store.delete_base("deb").is_err(),
        "delete_base must refuse while overlays use it"
    );
}

struct Deny;
impl ExportResolver for Deny {
    fn resolve(&self, name: &str, _peer: SocketAddr) -> Option<ExportTarget> {
        (name == "allowed").then(|| ExportTarget::Base("deb".into()))
    }
}

#[test]
fn denied_export_gives_clean_error() {
    if !test_support::require("denied_export_gives_clean_error", TOOLS) {
        return;
    }
    let (_dir, store, _base) = setup();
    let addr = start_server(store, Arc::new(Deny));
    let out = Command::new("nbdinfo")
        .arg(uri(addr, "deb"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nbdinfo must fail on a denied export"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No such file") || err.contains("access denied"),
        "{err}"
    );
    // Our own client sees NBD_REP_ERR_UNKNOWN.
    assert_eq!(Client::connect(addr, "deb").err(), Some((1 << 31) + 6));
    // The server still serves allowed names.
    let info = run(Command::new("nbdinfo").arg(uri(addr, "allowed")));
    assert!(info.contains("67108864"));
}

#[test]
fn snapshot_keeps_old_contents() {
    if !test_support::require("snapshot_keeps_old_contents", TOOLS) {
        return;
    }
    let (dir, store, base) = setup();
    store.create_overlay("node", "deb").unwrap();
    let addr = start_server(store.clone(), Arc::new(AllowAllResolver(store.clone())));
    let f1 = dir.path().join("v1.img");
    let v1 = random_file(&f1, 8 * 1024 * 1024);
    run(Command::new("nbdcopy").arg(&f1).arg(uri(addr, "node")));

    // Snapshot while a client holds the overlay open.
    let mut held = Client::connect(addr, "node").unwrap();
    let snap = store.snapshot_overlay("node", "node-snap").unwrap();
    assert_eq!(snap.origin.as_deref(), Some("node"));
    assert_eq!(snap.base, "deb");
    held.write(4096, &[0xAB; 70_000]);
    held.flush();
    held.disconnect();
    let f2 = dir.path().join("v2.img");
    let v2 = random_file(&f2, 8 * 1024 * 1024);
    run(Command::new("nbdcopy").arg(&f2).arg(uri(addr, "node")));

    let mut expect_snap = base.clone();
    expect_snap[..v1.len()].copy_from_slice(&v1);
    let mut expect_node = base.clone();
    expect_node[..v2.len()].copy_from_slice(&v2);
    let s_out = dir.path().join("snap.out");
    let n_out = dir.path().join("node.out");
    run(Command::new("nbdcopy")
        .arg(uri(addr, "node-snap"))
        .arg(&s_out));
    run(Command::new("nbdcopy").arg(uri(addr, "node")).arg(&n_out));
    assert!(
        std::fs::read(&s_out).unwrap() == expect_snap,
        "snapshot changed"
    );
    assert!(
        std::fs::read(&n_out).unwrap() == expect_node,
        "origin lost writes"
    );
    assert!(store.delete_overlay("nope").is_err());
}

#[test]
fn block_status_reports_zeroed_ranges() {
    if !test_support::require("block_status_reports_zeroed_ranges", TOOLS) {
        return;
    }
    let (_dir, store, _base) = setup();
    store.create_overlay("n", "deb").unwrap();
    let addr = start_server(store.clone(), Arc::new(AllowAllResolver(store)));
    let mut c = Client::connect(addr, "n").unwrap();
    assert_eq!(c.call(CMD_TRIM, 0, 1 << 20, 1 << 20, &[]).0, 0);
    c.disconnect();
    let map = run(Command::new("nbdinfo").arg("--map").arg(uri(addr, "n")));
    let lines: Vec<&str> = map.lines().collect();
    assert!(lines.len() == 3, "{map}");
    assert!(
        lines[1].contains("1048576") && lines[1].contains("hole,zero"),
        "{map}"
    );
}
