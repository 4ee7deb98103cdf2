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
    let st = Command::new("sqlite3")
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

fn nbdinfo(url: &str) -> (bool, String) {
    let out = Command::new("nbdinfo")
        .arg("--size")
        .arg(url)
        .output()
        .expect("nbdinfo (libnbd-bin)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
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
    // The node exists once it has fetched a script.
    curl(&[&s.url("/ipxe/52:54:00:00:00:31")]);
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
