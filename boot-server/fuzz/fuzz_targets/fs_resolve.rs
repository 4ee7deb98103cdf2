#![no_main]
//! Fuzzes `boot_fs::resolve_path` with any file name a TFTP or HTTP client
//! could send (against a temporary root holding a file, a symlink inside the
//! root and one pointing out of it). It may not panic, and a resolved path
//! must be a file inside the root.
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fs-fuzz-root-{}", std::process::id()));
        let root = dir.join("root");
        let _ = std::fs::create_dir_all(root.join("sub"));
        let _ = std::fs::write(root.join("sub/file"), b"x");
        let _ = std::fs::write(dir.join("secret"), b"s");
        let _ = std::os::unix::fs::symlink("../secret", root.join("out"));
        let _ = std::os::unix::fs::symlink("sub/file", root.join("in"));
        root.canonicalize().expect("fuzz root")
    })
}

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    let root = root();
    if let Ok(p) = boot_fs::resolve_path(std::slice::from_ref(root), &name) {
        assert!(p.starts_with(root), "escaped the root: {p:?}");
        assert!(p.is_file(), "not a file: {p:?}");
    }
});
