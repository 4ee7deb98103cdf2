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

/// Opens `name` over NBD (fixed newstyle + GO) and returns the connected
/// socket, left in transmission mode: the export stays open while it lives.
fn nbd_open(addr: &str, name: &str) -> std::net::TcpStream {
    use boot_proto::nbd::*;
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
    let mut opt = Vec::new();
    opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
    opt.extend_from_slice(&OPT_GO.to_be_bytes());
    opt.extend_from_slice(&((4 + name.len() + 2) as u32).to_be_bytes());
    opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
    opt.extend_from_slice(name.as_bytes());
    opt.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&opt).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        assert!(typ & (1 << 31) == 0, "GO {name} refused ({typ:#x})");
        if typ == REP_ACK {
            return s;
        }
    }
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
