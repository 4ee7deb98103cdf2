//! NBD access policy through the real binary and real nbdinfo/nbdcopy: a node's
//! export opens only from the node's current (leased) address; the admin name opens
//! anything; unknown names are refused; refusals never log the admin token or a node's
//! export name, only fingerprints.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::process::Command;
use test_support::Need;

fn fingerprint(s: &str) -> String {
    Sha256::digest(s.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn set_lease(db: &std::path::Path, ip: &str) {
    // The running server writes too: wait for its lock instead of failing
    // at once with "database is locked".
    let st = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(format!(
            "INSERT OR REPLACE INTO leases(mac, ip, expires_at_ms) VALUES ('52:54:00:00:00:31', '{ip}', 99999999999999)"
        ))
        .status()
        .expect("sqlite3");
    assert!(st.success());
}

/// Polls `f` (the export table refreshes every second) for up to 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn node_exports_follow_the_lease_and_admin_opens_all() {
    if !test_support::require(
        "node_exports_follow_the_lease_and_admin_opens_all",
        &[
            Need::Tool("nbdinfo"),
            Need::Tool("nbdcopy"),
            Need::Tool("sqlite3"),
        ],
    ) {
        return;
    }
    let (dir, config) = Server::prepare("");
    write_image(&dir.path().join("images"), "lab", &[]);
    let base = dir.path().join("base.raw");
    let data = random_bytes(4 << 20);
    std::fs::write(&base, &data).unwrap();
    let s = Server::start_in(dir, config);
    let nbd = s.nbd.clone().expect("nbd address");
    s.cli(&["default-image", "lab"]);
    s.cli(&["disk", "add-base", "b", base.to_str().unwrap()]);
    s.cli(&["disk", "create", "ov1", "--base", "b"]);
    s.cli(&["node", "add", "--mac", "52:54:00:00:00:31"]);
    let out = s.cli(&["disk", "attach", "ov1", "--node", "52:54:00:00:00:31"]);
    let export = out
        .split_whitespace()
        .skip_while(|w| *w != "export")
        .nth(1)
        .unwrap()
        .trim_end_matches(';')
        .to_string();
    assert!(export.starts_with("ov1.") && export.len() > 20, "{export}");

    let admin = s.admin_token();
    let (ok, size) = nbdinfo(&format!("nbd://{nbd}/admin:{admin}:ov1"));
    assert!(ok, "admin name must open the overlay");
    assert_eq!(size, (4 << 20).to_string());
    assert!(
        !nbdinfo(&format!("nbd://{nbd}/ov1")).0,
        "a bare overlay id must be refused"
    );
    assert!(
        !nbdinfo(&format!("nbd://{nbd}/admin:wrong:ov1")).0,
        "a wrong admin token must be refused"
    );
    assert!(
        !nbdinfo(&format!("nbd://{nbd}/admin:{admin}:nosuchdisk")).0,
        "an unknown name behind the admin token must be refused"
    );
    assert!(
        !nbdinfo(&format!("nbd://{nbd}/{export}")).0,
        "no lease yet: the node's export must be refused"
    );
    assert!(
        !nbdinfo(&format!("nbd://{nbd}/{export}x")).0,
        "a wrong secret must be refused"
    );

    // Give the node a lease on 127.0.0.1 (as DHCP would), then its export opens from there.
    let db = s.path().join("state/state.db");
    set_lease(&db, "127.0.0.1");
    eventually("node export never opened from its leased address", || {
        nbdinfo(&format!("nbd://{nbd}/{export}")).0
    });
    // Byte-identical read of the base through the node's overlay.
    let out = s.path().join("copy.raw");
    let st = Command::new("nbdcopy")
        .arg(format!("nbd://{nbd}/{export}"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        std::fs::read(&out).unwrap() == data,
        "overlay read differs from base"
    );
    let list = s.cli(&["disk", "list"]);
    assert!(
        list.contains("ov1") && list.contains("node-525400000031"),
        "{list}"
    );

    // The node moves to another address: its export no longer opens from the old one.
    set_lease(&db, "127.0.0.2");
    eventually("export still opens from the node's former address", || {
        !nbdinfo(&format!("nbd://{nbd}/{export}")).0
    });

    // Secrets never reach the log; the refusals are logged with fingerprints.
    let log = s.log.lock().unwrap().join("\n");
    let secret = export.rsplit_once('.').unwrap().1;
    assert!(!log.contains(&admin), "admin token logged:\n{log}");
    assert!(
        !log.contains(secret),
        "a node's export secret logged:\n{log}"
    );
    assert!(
        log.contains(&fingerprint(&export)),
        "the wrong-address refusal should name the export by fingerprint:\n{log}"
    );
    assert!(
        log.contains(&fingerprint(&admin)),
        "the refused admin open should show the token's fingerprint:\n{log}"
    );
}

/// Hardening item 10: disk operations run in the server, so an overlay a
/// client has open cannot be deleted behind its back.
#[test]
fn an_open_overlay_cannot_be_deleted() {
    let (dir, config) = Server::prepare("");
    let base = dir.path().join("base.raw");
    std::fs::write(&base, random_bytes(1 << 20)).unwrap();
    let s = Server::start_in(dir, config);
    let nbd = s.nbd.clone().expect("nbd address");
    s.cli(&["disk", "add-base", "b", base.to_str().unwrap()]);
    s.cli(&["disk", "create", "ov2", "--base", "b"]);
    let conn = nbd_open(&nbd, &format!("admin:{}:ov2", s.admin_token()));
    let out = std::process::Command::new(bin())
        .args([
            "--config",
            s.config.to_str().unwrap(),
            "disk",
            "delete",
            "ov2",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("in use"),
        "delete of an open overlay: {err}"
    );
    assert!(s.cli(&["disk", "list"]).contains("ov2"));
    drop(conn);
    // Once the client is gone the delete goes through.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = std::process::Command::new(bin())
            .args([
                "--config",
                s.config.to_str().unwrap(),
                "disk",
                "delete",
                "ov2",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!s.cli(&["disk", "list"]).contains("ov2"));
}

/// Hardening item 4: detaching a disk closes its open connections at once
/// (the fencing failover needs), and its export name stops working.
#[test]
fn detach_cuts_open_connections() {
    if !test_support::require("detach_cuts_open_connections", &[Need::Tool("sqlite3")]) {
        return;
    }
    let (dir, config) = Server::prepare("");
    let base = dir.path().join("base.raw");
    std::fs::write(&base, random_bytes(1 << 20)).unwrap();
    let s = Server::start_in(dir, config);
    let nbd = s.nbd.clone().expect("nbd address");
    s.cli(&["disk", "add-base", "b", base.to_str().unwrap()]);
    s.cli(&["disk", "create", "ov3", "--base", "b"]);
    s.cli(&["node", "add", "--mac", "52:54:00:00:00:31"]);
    let out = s.cli(&["disk", "attach", "ov3", "--node", "52:54:00:00:00:31"]);
    let export = out.split_whitespace().last().unwrap().to_string();
    set_lease(&s.path().join("state/state.db"), "127.0.0.1");
    let mut conn = None;
    eventually("node export never opened", || {
        conn = std::panic::catch_unwind(|| nbd_open(&nbd, &export)).ok();
        conn.is_some()
    });
    let mut conn = conn.unwrap();
    let out = s.cli(&["disk", "detach", "ov3"]);
    assert!(out.contains("1 open connection(s) closed"), "{out}");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    let n = std::io::Read::read(&mut conn, &mut buf);
    assert!(
        matches!(n, Ok(0))
            || n.is_err() && !matches!(&n, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "connection still open after detach: {n:?}"
    );
    assert!(
        !nbdinfo(&format!("nbd://{nbd}/{export}")).0,
        "detached export still opens"
    );
}
