//! iSCSI through the real binary (`[iscsi] enabled = true`) and real initiators
//! (libiscsi's iscsi-ls / iscsi-inq, QEMU's iSCSI driver): an attached overlay is a
//! target reachable only from its node's leased address with the node's CHAP
//! credentials, reads byte-identical to the overlay, refuses a wrong secret, and a
//! `disk detach` cuts an open session and refuses new logins. The admin (CHAP user
//! `admin`, the admin token as secret) reaches every target from any address and reads
//! what NBD's admin export reads.

mod common;
use common::*;
use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use test_support::Need;

const MAC: &str = "52:54:00:00:00:41";

fn set_lease(db: &std::path::Path, ip: &str) {
    // The running server writes too: wait for its lock.
    let st = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(format!(
            "INSERT OR REPLACE INTO leases(mac, ip, expires_at_ms) VALUES ('{MAC}', '{ip}', 99999999999999)"
        ))
        .status()
        .expect("sqlite3");
    assert!(st.success());
}

/// Polls `f` (the export table refreshes every second) for up to 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("run initiator tool")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The word after `key` in `out`.
fn field(out: &str, key: &str) -> String {
    out.split_whitespace()
        .skip_while(|w| *w != key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {out:?}"))
        .to_string()
}

/// The `iscsi=` address in the server's ready line.
fn portal_of(s: &Server) -> String {
    let ready = s
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("boot-server ready:"))
        .cloned()
        .unwrap();
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("iscsi="))
        .map(|a| {
            a.trim_end_matches(|c: char| !c.is_ascii_digit())
                .to_string()
        })
        .unwrap_or_else(|| panic!("no iscsi= in {ready}"))
}

/// `s` without terminal colour sequences (ESC [ ... m).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn qemu_has_iscsi() -> bool {
    let out = output(Command::new("qemu-img").arg("--help"));
    String::from_utf8_lossy(&out.stdout).contains("iscsi")
}

/// Whether qemu-img has its iscsi driver; else `name` is skipped (a
/// failure under CI).
fn qemu_can_iscsi(name: &str) -> bool {
    qemu_has_iscsi()
        || !test_support::skip(
            name,
            "qemu-img has no iscsi driver (install qemu-block-extra)",
        )
}

/// A server with iSCSI on loopback, overlay ov1 of a 4 MiB random base `b`
/// attached to node MAC: the server, the base's bytes, the iSCSI portal and
/// `disk attach`'s output.
fn attached_overlay_server() -> (Server, Vec<u8>, String, String) {
    let (dir, config) = Server::prepare("[iscsi]\nenabled = true\nlisten = \"127.0.0.1:0\"\n");
    let base = dir.path().join("base.raw");
    let data = random_bytes(4 << 20);
    std::fs::write(&base, &data).unwrap();
    let s = Server::start_in(dir, config);
    let portal = portal_of(&s);
    s.cli(&["disk", "add-base", "b", base.to_str().unwrap()]);
    s.cli(&["disk", "create", "ov1", "--base", "b"]);
    s.cli(&["node", "add", "--mac", MAC]);
    let out = s.cli(&["disk", "attach", "ov1", "--node", MAC]);
    (s, data, portal, out)
}

#[test]
fn attached_overlay_is_a_chap_target_of_its_node_until_detached() {
    let name = "attached_overlay_is_a_chap_target";
    if !test_support::require(
        name,
        &[
            Need::Tool("iscsi-ls"),
            Need::Tool("iscsi-inq"),
            Need::Tool("qemu-img"),
            Need::Tool("qemu-io"),
            Need::Tool("stdbuf"),
            Need::Tool("sqlite3"),
        ],
    ) {
        return;
    }
    if !qemu_can_iscsi(name) {
        return;
    }
    let (s, data, portal, out) = attached_overlay_server();
    assert!(portal.starts_with("127.0.0.1:"), "{portal}");
    let iqn = field(&out, "target");
    let user = field(&out, "chap-user");
    let secret = field(&out, "chap-secret");
    assert_eq!(iqn, "iqn.2026-12.boot-server:ov1", "{out}");
    assert_eq!(user, "node-525400000041", "{out}");
    assert!(secret.len() >= 12, "{out}");
    let discovery = |cred: &str| format!("iscsi://{cred}@{portal}");
    let lun = |cred: &str| format!("iscsi://{cred}@{portal}/{iqn}/0");
    let good = format!("{user}%{secret}");
    let ls = |cred: &str| {
        text(&output(
            Command::new("iscsi-ls").arg("-s").arg(discovery(cred)),
        ))
    };
    let inq = |cred: &str| {
        output(Command::new("iscsi-inq").arg(lun(cred)))
            .status
            .success()
    };

    // No lease yet: the node has no address, so the target is offered to nobody.
    assert!(!ls(&good).contains(&iqn), "target listed before the lease");
    assert!(!inq(&good), "login worked before the node had an address");

    // Leased on 127.0.0.1 (as DHCP would): the node's credentials list and open it.
    set_lease(&s.path().join("state/state.db"), "127.0.0.1");
    eventually("the node's target never appeared in discovery", || {
        let out = ls(&good);
        out.contains(&format!("Target:{iqn} Portal:{portal}")) && out.contains("Lun:0")
    });
    let copy = s.path().join("copy.raw");
    let o = output(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(lun(&good))
            .arg(&copy),
    );
    assert!(o.status.success(), "qemu-img convert: {}", text(&o));
    assert!(
        std::fs::read(&copy).unwrap() == data,
        "iSCSI read of the overlay differs from its content"
    );

    // A wrong secret, a wrong user, and no credentials are refused.
    assert!(
        !inq(&format!("{user}%wrong-secret-0123456789")),
        "wrong secret accepted"
    );
    assert!(!inq(&format!("node-other%{secret}")), "wrong user accepted");
    assert!(
        !output(Command::new("iscsi-inq").arg(format!("iscsi://{portal}/{iqn}/0")))
            .status
            .success(),
        "login without CHAP accepted"
    );
    let listing = ls(&format!("{user}%wrong-secret-0123456789"));
    assert!(
        !listing.contains("Lun:0"),
        "LUNs shown with a wrong secret: {listing}"
    );

    // An open session (qemu-io reads, then sleeps with the session open) ...
    let mut child = Command::new("stdbuf")
        .args([
            "-o0",
            "qemu-io",
            "-f",
            "raw",
            "-c",
            "read 0 4096",
            "-c",
            "sleep 5000",
        ])
        .args(["-c", "read 0 4096"])
        .arg(lun(&good))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("first read");
    assert!(first.contains("read 4096/4096 bytes"), "{first}");
    // ... is cut by the detach, which counts it.
    let out = s.cli(&["disk", "detach", "ov1"]);
    assert!(out.contains("1 open connection(s) closed"), "{out}");
    // libiscsi tries to log in again and is refused, so the second read (due after
    // the 5 s sleep) never completes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => after.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !after.iter().any(|l| l.contains("read 4096/4096")),
        "a read completed after the detach: {after:?}"
    );
    // New logins are refused and discovery no longer lists it.
    assert!(!inq(&good), "login worked after the detach");
    assert!(!ls(&good).contains(&iqn), "target listed after the detach");

    // The CHAP secret never reaches the log.
    let log = s.log.lock().unwrap().join("\n");
    assert!(!log.contains(&secret), "CHAP secret logged:\n{log}");
    assert!(log.contains("iSCSI access to overlay revoked"), "{log}");
}

#[test]
fn admin_credential_reaches_every_target_from_any_address() {
    let name = "admin_credential_reaches_every_target";
    if !test_support::require(
        name,
        &[
            Need::Tool("iscsi-ls"),
            Need::Tool("iscsi-inq"),
            Need::Tool("qemu-img"),
            Need::Tool("qemu-io"),
            Need::Tool("nbdcopy"),
            Need::Tool("sqlite3"),
        ],
    ) {
        return;
    }
    if !qemu_can_iscsi(name) {
        return;
    }
    let (s, mut data, portal, out) = attached_overlay_server();
    let nbd = s.nbd.clone().expect("nbd address");
    let token = s.admin_token();
    let iqn = field(&out, "target");
    let user = field(&out, "chap-user");
    let secret = field(&out, "chap-secret");
    // The node is leased elsewhere: its target is reachable only from 10.77.0.5, and
    // every initiator here connects from 127.0.0.1.
    set_lease(&s.path().join("state/state.db"), "10.77.0.5");

    // Write through NBD's admin export, so the iSCSI read below must see it.
    let nbd_url = format!("nbd://{nbd}/admin:{token}:ov1");
    let o = output(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 0x5a 1048576 65536"])
            .arg(&nbd_url),
    );
    assert!(o.status.success(), "qemu-io write over NBD: {}", text(&o));
    data[1 << 20..(1 << 20) + 65536].fill(0x5a);

    let admin = format!("admin%{token}");
    let lun = |cred: &str| format!("iscsi://{cred}@{portal}/{iqn}/0");
    let inq = |cred: &str| {
        output(Command::new("iscsi-inq").arg(lun(cred)))
            .status
            .success()
    };
    // The table refreshes every second: wait for the target to follow the lease.
    eventually("the admin never listed the node's target", || {
        let o = output(
            Command::new("iscsi-ls")
                .arg("-s")
                .arg(format!("iscsi://{admin}@{portal}")),
        );
        text(&o).contains(&format!("Target:{iqn} Portal:{portal}")) && text(&o).contains("Lun:0")
    });
    assert!(inq(&admin), "admin login from another address refused");
    // The node's own credentials do not work from an address that is not the node's,
    // nor does a wrong admin token or no credential at all.
    assert!(
        !inq(&format!("{user}%{secret}")),
        "node login from 127.0.0.1 accepted"
    );
    assert!(
        !inq("admin%0123456789abcdef0123456789abcdef"),
        "wrong admin token accepted"
    );
    assert!(
        !output(Command::new("iscsi-inq").arg(format!("iscsi://{portal}/{iqn}/0")))
            .status
            .success(),
        "login without CHAP accepted"
    );
    let o = output(
        Command::new("iscsi-ls")
            .arg("-s")
            .arg(format!("iscsi://{user}%{secret}@{portal}")),
    );
    assert!(
        !text(&o).contains(&iqn),
        "a non-admin saw the target from elsewhere: {}",
        text(&o)
    );
    // Mutual CHAP: the target answers the admin with the derived reverse secret.
    let reverse = boot_server::iscsi::admin_reverse_secret(&token);
    let mutual = |rev: &str| {
        output(
            Command::new("iscsi-inq")
                .env("LIBISCSI_CHAP_TARGET_USERNAME", "boot-server")
                .env("LIBISCSI_CHAP_TARGET_PASSWORD", rev)
                .arg(lun(&admin)),
        )
        .status
        .success()
    };
    assert!(mutual(&reverse), "admin mutual CHAP refused");
    assert!(
        !mutual("0123456789abcdef0123"),
        "a wrong reverse secret was accepted"
    );

    // qemu-img reads through iSCSI what NBD reads: the base plus the NBD write.
    let via_iscsi = s.path().join("iscsi.raw");
    let o = output(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(lun(&admin))
            .arg(&via_iscsi),
    );
    assert!(o.status.success(), "qemu-img convert: {}", text(&o));
    let via_nbd = s.path().join("nbd.raw");
    let o = output(Command::new("nbdcopy").arg(&nbd_url).arg(&via_nbd));
    assert!(o.status.success(), "nbdcopy: {}", text(&o));
    let iscsi_bytes = std::fs::read(&via_iscsi).unwrap();
    assert!(
        iscsi_bytes == data,
        "iSCSI admin read differs from the overlay's content"
    );
    assert!(
        iscsi_bytes == std::fs::read(&via_nbd).unwrap(),
        "iSCSI and NBD reads differ"
    );

    // Neither the admin token nor the node's secret reaches the log.
    let log = s.log.lock().unwrap().join("\n");
    assert!(!log.contains(&token), "admin token logged");
    assert!(!log.contains(&secret), "CHAP secret logged");
    assert!(!log.contains(&reverse), "reverse secret logged");
    let plain = strip_ansi(&log);
    assert!(
        plain.contains("chap_user=\"admin\" admin=true"),
        "no admin login logged:\n{plain}"
    );
}
