//! Runs tests/qemu-smoke.sh (real kernel NBD over netlink + reconnect, mount,
//! kexec, OVMF efivarfs/BootNext) in QEMU guests. It boots VMs and builds the
//! static agent (minutes), so it is `#[ignore]`d in `cargo test` and reported
//! as ignored, never as passed; run it with
//! `node-agent/tests/qemu-smoke.sh` (the one command; `qemu-tests/test-all.sh`
//! can call it) or `cargo test --release -p node-agent --test qemu_smoke -- --ignored`.
//! `NODE_AGENT_QEMU_SMOKE=/path/to/static/node-agent` skips the build.

#[test]
#[ignore = "boots QEMU guests for minutes: node-agent/tests/qemu-smoke.sh"]
fn qemu_smoke() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qemu-smoke.sh");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(script);
    if let Ok(bin) = std::env::var("NODE_AGENT_QEMU_SMOKE") {
        cmd.arg(bin);
    }
    let st = cmd.status().expect("run qemu-smoke.sh");
    assert!(st.success(), "qemu smoke failed: {st}");
}
