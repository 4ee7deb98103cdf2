//! Revocation (fencing a detached disk): every open connection to an overlay is cut at
//! once, a handshake that resolved before the revocation cannot complete, and a client
//! cannot reopen once the resolver stops resolving the name. Real clients too: nbdcopy
//! copying from the overlay fails.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use boot_nbd::{DiskStore, ExportResolver, ExportTarget, NbdHandle, NbdLimits};
use common::*;
use test_support::Need;

const SIZE: usize = 16 * 1024 * 1024;

/// Resolves "node" to overlay "node" while allowed; can hold a resolution until released.
struct Switch {
    allowed: AtomicBool,
    hold: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl ExportResolver for Switch {
    fn resolve(&self, name: &str, _peer: SocketAddr) -> Option<ExportTarget> {
        if name != "node" || !self.allowed.load(Ordering::SeqCst) {
            return None;
        }
        if let Some((entered, release)) = self.hold.lock().unwrap().take() {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
        Some(ExportTarget::Overlay("node".into()))
    }
}

fn setup(size: usize) -> (tempfile::TempDir, Arc<Switch>, SocketAddr, NbdHandle) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    random_file(&src, size);
    let store = Arc::new(DiskStore::open(&dir.path().join("store")).unwrap());
    store.create_base_from_file("deb", &src).unwrap();
    store.create_overlay("node", "deb").unwrap();
    let sw = Arc::new(Switch {
        allowed: AtomicBool::new(true),
        hold: Mutex::new(None),
    });
    let (addr, handle) = start_server_with(store, sw.clone(), NbdLimits::default());
    (dir, sw, addr, handle)
}

/// Detaching = stop resolving, then revoke.
fn detach(sw: &Switch, h: &NbdHandle) -> usize {
    sw.allowed.store(false, Ordering::SeqCst);
    h.revoke("node")
}

#[test]
fn revoke_cuts_open_connections_at_once_and_they_cannot_reopen() {
    let (_dir, sw, addr, h) = setup(SIZE);
    let mut c1 = Client::connect(addr, "node").unwrap();
    let mut c2 = Client::connect(addr, "node").unwrap();
    c1.write(0, &[1u8; 4096]);
    assert_eq!(c2.read(0, 16), vec![1u8; 16]);
    assert_eq!(h.connections_to("node"), 2);

    let t0 = Instant::now();
    assert_eq!(detach(&sw, &h), 2, "both connections cut");
    // The client sees its connection end: a request gets no reply, just EOF.
    c1.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c1.send(CMD_READ, 0, 0, 512, &[]);
    let mut b = [0u8; 16];
    let n = c1.s.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "revoked connection still answered");
    assert!(t0.elapsed() < Duration::from_secs(2), "not cut at once");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(
        rt.block_on(h.wait_closed("node", Duration::from_secs(5))),
        "revoked connections did not end"
    );
    assert_eq!(h.connections_to("node"), 0);
    assert!(
        Client::connect(addr, "node").is_err(),
        "reopened after revoke"
    );
    drop(c2);
}

#[test]
fn handshake_resolved_before_revoke_is_refused() {
    let (_dir, sw, addr, h) = setup(1 << 20);
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    *sw.hold.lock().unwrap() = Some((entered_tx, release_rx));
    let t = std::thread::spawn(move || Client::connect(addr, "node").map(|_| ()));
    // The resolver has said yes, the export is not open yet: now detach.
    entered_rx.recv().unwrap();
    assert_eq!(detach(&sw, &h), 0);
    release_tx.send(()).unwrap();
    assert!(
        t.join().unwrap().is_err(),
        "a handshake that resolved before the revocation opened the disk"
    );
    assert_eq!(h.connections_to("node"), 0);
}

#[test]
fn nbdcopy_reading_a_revoked_overlay_fails() {
    if !test_support::require(
        "nbdcopy_reading_a_revoked_overlay_fails",
        &[Need::Tool("nbdcopy"), Need::Tool("nbdinfo")],
    ) {
        return;
    }
    let size = 128 * 1024 * 1024;
    let (_dir, sw, addr, h) = setup(size);
    // nbdcopy writes into a pipe we read: it stalls while we do not.
    let mut child = Command::new("nbdcopy")
        .args(["--synchronous", "--request-size=65536"])
        .arg(uri(addr, "node"))
        .arg("-")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = vec![0u8; 1 << 20];
    out.read_exact(&mut first).unwrap();
    assert_eq!(h.connections_to("node"), 1, "nbdcopy is connected");
    assert_eq!(detach(&sw, &h), 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(h.wait_closed("node", Duration::from_secs(5))));
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    let st = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !st.success() && first.len() + rest.len() < size,
        "nbdcopy finished the copy of a revoked overlay ({st}, {err})"
    );
    // And it cannot start over.
    let st = Command::new("nbdinfo")
        .arg(uri(addr, "node"))
        .output()
        .unwrap();
    assert!(!st.status.success(), "nbdinfo reopened a revoked overlay");
}
