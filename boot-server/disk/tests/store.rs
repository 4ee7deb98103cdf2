//! DiskStore administration: imports (raw and qcow2), name checks, delete rules.

use std::path::Path;
use std::process::Command;

use boot_disk::DiskStore;
use rand::RngCore;
use test_support::Need;

fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    std::fs::write(path, &v).unwrap();
    v
}

#[test]
fn qcow2_import_is_converted_to_raw() {
    if !test_support::require(
        "qcow2_import_is_converted_to_raw",
        &[Need::Tool("qemu-img")],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let data = random_file(&src, 3 * 1024 * 1024 + 4096);
    let store = DiskStore::open(&dir.path().join("store")).unwrap();
    let q = dir.path().join("src.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&src)
        .arg(&q)
        .status()
        .unwrap();
    assert!(st.success());
    let b = store.create_base_from_file("fromqcow", &q).unwrap();
    assert_eq!(b.size, data.len() as u64);
    assert!(
        std::fs::read(&b.path).unwrap() == data,
        "qcow2 import differs"
    );
}

#[test]
fn import_list_delete_rules() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let data = random_file(&src, 3 * 1024 * 1024 + 4096); // not a chunk multiple
    let store = DiskStore::open(&dir.path().join("store")).unwrap();
    for bad in ["", "../x", ".hidden", "a/b", "sp ace"] {
        assert!(
            store.create_base_from_file(bad, &src).is_err(),
            "{bad:?} accepted"
        );
        assert!(store.create_overlay(bad, "raw").is_err());
    }
    let b = store.create_base_from_file("raw", &src).unwrap();
    assert_eq!(std::fs::read(&b.path).unwrap(), data);
    assert!(
        store.create_base_from_file("raw", &src).is_err(),
        "duplicate base"
    );

    let names: Vec<String> = store
        .list_bases()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert!(names.contains(&"raw".to_string()));

    store.create_overlay("n1", "raw").unwrap();
    assert!(
        store.create_overlay("n1", "raw").is_err(),
        "duplicate overlay"
    );
    assert!(store.create_overlay("n2", "missing").is_err());
    let o = store.open_overlay("n1").unwrap();
    o.write_at(&[7u8; 100], data.len() as u64 - 50 - 100, false)
        .unwrap();
    let mut back = vec![0u8; 300];
    o.read_at(&mut back, data.len() as u64 - 300).unwrap();
    assert_eq!(&back[..150], &data[data.len() - 300..data.len() - 150]);
    assert_eq!(&back[150..250], &[7u8; 100]);
    assert_eq!(&back[250..], &data[data.len() - 50..]);
    assert!(store.delete_overlay("n1").is_err(), "deleted while open");
    assert!(store.delete_base("raw").is_err(), "deleted base in use");
    drop(o);
    let snap = store.snapshot_overlay("n1", "n1-s").unwrap();
    assert_eq!(snap.allocated_bytes, 65_536);
    assert_eq!(store.list_overlays().unwrap().len(), 2);
    store.delete_overlay("n1").unwrap();
    store.delete_overlay("n1-s").unwrap();
    assert!(store.list_overlays().unwrap().is_empty());
    store.delete_base("raw").unwrap();
    // Reopening the store finds what is left.
    let store = DiskStore::open(&dir.path().join("store")).unwrap();
    assert!(store.list_bases().unwrap().iter().all(|b| b.name != "raw"));
}
