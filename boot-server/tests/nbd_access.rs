//! NBD access policy through the real binary and real nbdinfo/nbdcopy: a node's
//! export opens only from the node's leased address; the admin name opens anything;
//! unknown names are refused.

mod common;
use common::*;
use std::process::Command;

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
    if Command::new("nbdinfo").arg("--version").output().is_err() {
        eprintln!("SKIP: nbdinfo not installed");
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
        !nbdinfo(&format!("nbd://{nbd}/{export}")).0,
        "no lease yet: the node's export must be refused"
    );

    // Give the node a lease on 127.0.0.1 (as DHCP would), then its export opens from there.
    let db = s.path().join("state/state.db");
    let st = Command::new("sqlite3")
        .arg(&db)
        .arg("INSERT INTO leases(mac, ip, expires_at_ms) VALUES ('52:54:00:00:00:31', '127.0.0.1', 99999999999999)")
        .status()
        .expect("sqlite3");
    assert!(st.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The export table is refreshed every second.
    while !nbdinfo(&format!("nbd://{nbd}/{export}")).0 {
        assert!(
            std::time::Instant::now() < deadline,
            "node export never opened from its leased address"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
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
}
