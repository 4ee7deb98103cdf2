//! File modes of the store whatever the umask: directories 0700, overlay and snapshot
//! files 0600, bases 0400. (Own test binary: the umask is process-wide.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use boot_disk::DiskStore;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn store_files_are_private_even_with_umask_0() {
    // SAFETY: umask(2) has no memory effects.
    unsafe { libc::umask(0) };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o666)).unwrap();
    let root = dir.path().join("store");
    let store = DiskStore::open(&root).unwrap();
    let b = store.create_base_from_file("b", &src).unwrap();
    store.create_overlay("o", "b").unwrap();
    let o = store.open_overlay("o").unwrap();
    o.write_at(&[1u8; 10], 0, true).unwrap();
    drop(o);
    store.snapshot_overlay("o", "s").unwrap();

    for d in [
        root.clone(),
        root.join("bases"),
        root.join("overlays"),
        root.join("overlays/o"),
        root.join("overlays/s"),
    ] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    for f in ["o/data", "o/map", "s/data", "s/map"] {
        let p = root.join("overlays").join(f);
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    assert_eq!(mode(&b.path), 0o400, "base");
}
