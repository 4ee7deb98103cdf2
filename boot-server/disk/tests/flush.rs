//! Flush durability when the disk fails: a failed data sync fails that flush and every
//! later one (and FUA writes) until the overlay is reopened, and the map never points at
//! data whose sync failed.

use boot_disk::DiskStore;

const SIZE: usize = 4 * 1024 * 1024;

fn store() -> (tempfile::TempDir, DiskStore, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let base: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
    std::fs::write(&src, &base).unwrap();
    let store = DiskStore::open(&dir.path().join("store")).unwrap();
    store.create_base_from_file("b", &src).unwrap();
    store.create_overlay("o", "b").unwrap();
    (dir, store, base)
}

#[test]
fn failed_data_sync_fails_every_later_flush_until_reopened() {
    let (dir, store, base) = store();
    let o = store.open_overlay("o").unwrap();
    o.write_at(&[1u8; 1000], 100, false).unwrap();
    o.flush().unwrap();

    o.write_at(&[7u8; 70_000], 1 << 20, false).unwrap();
    o.fail_next_data_syncs(1);
    assert!(
        o.flush().is_err(),
        "flush with a failing data sync must fail"
    );
    // The disk "works" again, but the lost writes are not on it: still an error.
    assert!(o.flush().is_err(), "a flush after a failed sync must fail");
    assert!(o.flush().is_err(), "and keep failing");
    assert!(
        o.write_at(&[9u8; 10], 3 << 20, true).is_err(),
        "a FUA write after a failed sync must fail"
    );
    assert!(o.sync_failed());
    // Reads still work and show the (cached) writes.
    let mut b = vec![0u8; 10];
    o.read_at(&mut b, 1 << 20).unwrap();
    assert_eq!(b, [7u8; 10]);
    drop(o);

    // Reopened: the map never recorded the chunks whose sync failed, so they read as
    // the base; the earlier flushed write survives; flushes work again.
    let store = DiskStore::open(&dir.path().join("store")).unwrap();
    let o = store.open_overlay("o").unwrap();
    let mut got = vec![0u8; SIZE];
    o.read_at(&mut got, 0).unwrap();
    let mut exp = base.clone();
    exp[100..1100].fill(1);
    assert!(got[100..1100] == exp[100..1100], "flushed write lost");
    assert!(
        got[1 << 20..(1 << 20) + 70_000] == base[1 << 20..(1 << 20) + 70_000],
        "chunks whose data sync failed must not be mapped to the overlay"
    );
    assert!(got[3 << 20..(3 << 20) + 10] == base[3 << 20..(3 << 20) + 10]);
    assert!(!o.sync_failed());
    o.write_at(&[5u8; 10], 0, true).unwrap();
    o.flush().unwrap();
}

#[test]
fn failed_sync_is_not_hidden_by_an_empty_flush() {
    // The old code took the dirty entries before syncing and lost them on error, so
    // the next flush had nothing to do and reported success.
    let (_dir, store, _) = store();
    let o = store.open_overlay("o").unwrap();
    o.write_at(&[3u8; 4096], 0, false).unwrap();
    o.fail_next_data_syncs(1);
    assert!(o.flush().is_err());
    assert!(o.flush().is_err(), "second flush reported success");
}
