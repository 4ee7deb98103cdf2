#![no_main]
//! Fuzzes the TFTP request parser and the path resolver on whatever file name
//! it yields (against a temporary root holding one file and one symlink that
//! points out of the root). Neither may panic, and a resolved path must stay
//! inside the root.
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tftp-fuzz-root-{}", std::process::id()));
        let root = dir.join("root");
        let _ = std::fs::create_dir_all(root.join("sub"));
        let _ = std::fs::write(root.join("sub/file"), b"x");
        let _ = std::fs::write(dir.join("secret"), b"s");
        let _ = std::os::unix::fs::symlink("../secret", root.join("out"));
        root.canonicalize().expect("fuzz root")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = boot_tftp::parse_request(data) {
        let root = root();
        if let Ok(p) = boot_fs::resolve_path(std::slice::from_ref(root), &req.filename) {
            assert!(p.starts_with(root), "escaped the root: {p:?}");
        }
    }
});
