//! Runs tests/qemu-smoke.sh (real kernel NBD over netlink + reconnect, mount,
//! kexec, OVMF efivarfs/BootNext) when NODE_AGENT_QEMU_SMOKE points at a
//! static release build of the agent. About 2 minutes under TCG.

#[test]
fn qemu_smoke() {
    let Ok(bin) = std::env::var("NODE_AGENT_QEMU_SMOKE") else {
        eprintln!(
            "skip: set NODE_AGENT_QEMU_SMOKE=/path/to/static/node-agent to boot the QEMU smoke test"
        );
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qemu-smoke.sh");
    let st = std::process::Command::new("bash")
        .arg(script)
        .arg(bin)
        .status()
        .expect("run qemu-smoke.sh");
    assert!(st.success(), "qemu smoke failed: {st}");
}
