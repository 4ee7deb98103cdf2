//! Image kind `sanboot` through the real binary: a node whose image is a sanboot image
//! gets an iPXE script that sanboots its attached overlay's iSCSI target with its CHAP
//! login (and the target's reverse login for mutual CHAP); the login goes only to the
//! node's own address, and libiscsi's initiator logs in with exactly what the script
//! says (mutual CHAP, a wrong reverse secret refused). A sanboot image with a fixed
//! `san_url` boots that shared URL without credentials. A Linux image with
//! `disk_transport = "iscsi"` hands the node's agent the same login on the kernel
//! command line (`bootsrv.root=iscsi:...`).

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};
use test_support::Need;

const MAC: &str = "52:54:00:00:00:51";

fn script_from(s: &Server, from: &str, path: &str) -> String {
    let (code, body) = curl(&["--interface", from, &s.url(path)]);
    assert_eq!(code, 200);
    String::from_utf8(body).unwrap()
}

/// The argument of the iPXE `set NAME VALUE` line in `script`.
fn setting(script: &str, name: &str) -> Option<String> {
    script.lines().find_map(|l| {
        l.strip_prefix(&format!("set {name} "))
            .map(|v| v.trim().to_string())
    })
}

/// The word after `key` in `out`.
fn field(out: &str, key: &str) -> String {
    out.split_whitespace()
        .skip_while(|w| *w != key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {out:?}"))
        .to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_manifest(images: &std::path::Path, name: &str, extra: &str) {
    let d = images.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("image.toml"),
        format!("name = \"{name}\"\nversion = \"1\"\nkind = \"sanboot\"\n{extra}"),
    )
    .unwrap();
}

/// iscsi-inq with mutual CHAP: the initiator's login from the URL, the target's
/// expected reverse login from libiscsi's environment variables.
fn inq(url: &str, reverse_user: &str, reverse_secret: &str) -> bool {
    Command::new("iscsi-inq")
        .arg(url)
        .env("LIBISCSI_CHAP_TARGET_USERNAME", reverse_user)
        .env("LIBISCSI_CHAP_TARGET_PASSWORD", reverse_secret)
        .output()
        .expect("iscsi-inq")
        .status
        .success()
}

#[test]
fn sanboot_script_logs_in_to_the_nodes_overlay_only_from_its_address() {
    let name = "sanboot_script_logs_in_to_the_nodes_overlay";
    if !test_support::require(name, &[Need::Tool("iscsi-inq"), Need::Tool("curl")]) {
        return;
    }
    let port = free_port();
    let (dir, config) = Server::prepare(&format!(
        "[iscsi]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let images = dir.path().join("images");
    write_manifest(&images, "disk", "archs = [\"bios\", \"uefi-x64\"]\n");
    write_manifest(
        &images,
        "fixed",
        "san_url = \"iscsi:192.0.2.9::::iqn.2000-01.example:shared\"\n",
    );
    let base = dir.path().join("base.raw");
    std::fs::write(&base, random_bytes(1 << 20)).unwrap();
    write_image(&images, "rootiscsi", &[]);
    let m = images.join("rootiscsi/image.toml");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, format!("{text}disk_transport = \"iscsi\"\n")).unwrap();
    let s = Server::start_in(dir, config);
    s.cli(&["default-image", "disk"]);
    s.cli(&["node", "add", "--mac", MAC]);

    // No overlay attached: nothing to sanboot, a wait script that says why.
    let script = script_from(&s, "127.0.0.1", &format!("/ipxe/{MAC}"));
    assert!(!script.contains("sanboot iscsi:"), "{script}");
    assert!(
        script.contains("none is attached") && script.contains("disk attach"),
        "{script}"
    );

    s.cli(&["disk", "add-base", "b", base.to_str().unwrap()]);
    s.cli(&["disk", "create", "ov1", "--base", "b"]);
    let out = s.cli(&["disk", "attach", "ov1", "--node", MAC]);
    let iqn = field(&out, "target");
    let secret = field(&out, "chap-secret");
    let reverse = field(&out, "reverse-secret");
    assert_eq!(iqn, "iqn.2026-12.boot-server:ov1", "{out}");
    assert_eq!(field(&out, "reverse-user"), iqn, "{out}");
    assert_ne!(secret, reverse, "{out}");

    // The node's own address (bound at its first fetch): the sanboot line and the
    // login disk attach printed, for both directions.
    let script = script_from(
        &s,
        "127.0.0.1",
        &format!("/ipxe/{MAC}?platform=pcbios&buildarch=i386"),
    );
    let url = format!("iscsi:127.0.0.1::{port}::{iqn}");
    assert!(
        script
            .lines()
            .any(|l| l.trim() == format!("sanboot {url} || goto failed")),
        "{script}"
    );
    assert_eq!(
        setting(&script, "username").as_deref(),
        Some("node-525400000051"),
        "{script}"
    );
    assert_eq!(
        setting(&script, "password"),
        Some(secret.clone()),
        "{script}"
    );
    assert_eq!(setting(&script, "reverse-username"), Some(iqn.clone()));
    assert_eq!(setting(&script, "reverse-password"), Some(reverse.clone()));
    assert!(
        script.find("set password").unwrap() < script.find("sanboot iscsi:").unwrap(),
        "credentials must be set before sanboot: {script}"
    );

    // Another address asks for the same node's script: no login in it.
    let stolen = script_from(&s, "127.0.0.2", &format!("/ipxe/{MAC}"));
    assert!(
        !stolen.contains(&secret) && !stolen.contains(&reverse),
        "login handed to another address: {stolen}"
    );
    assert!(!stolen.contains("sanboot"), "{stolen}");

    // The script's login works with a real initiator from the node's address, mutual
    // CHAP included (the export table refreshes every second: poll) ...
    let lun = format!("iscsi://node-525400000051%{secret}@127.0.0.1:{port}/{iqn}/0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !inq(&lun, &iqn, &reverse) {
        assert!(
            Instant::now() < deadline,
            "the script's login never worked (mutual CHAP)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // ... and an initiator expecting another target secret refuses the target.
    assert!(
        !inq(&lun, &iqn, "0123456789abcdef0123456789abcdef"),
        "the target proved itself with the wrong reverse secret"
    );

    // A sanboot image with a fixed SAN URL (a shared disk): that URL, no
    // credentials, even for a node with a disk of its own.
    s.cli(&["assign", "--mac", MAC, "fixed"]);
    let script = script_from(&s, "127.0.0.1", &format!("/ipxe/{MAC}"));
    assert!(
        script.contains("sanboot iscsi:192.0.2.9::::iqn.2000-01.example:shared || goto failed"),
        "{script}"
    );
    assert!(!script.contains("set password"), "{script}");

    // A Linux image whose root disk goes over iSCSI: the kernel command line names
    // the portal, the node's login (mutual) and the target, for the agent's login.
    s.cli(&["assign", "--mac", MAC, "rootiscsi"]);
    let script = script_from(&s, "127.0.0.1", &format!("/ipxe/{MAC}"));
    let root =
        format!("bootsrv.root=iscsi:127.0.0.1:{port}:node-525400000051:{secret}:{reverse}:{iqn}");
    assert!(
        script.split_whitespace().any(|w| w == root),
        "no {root} in {script}"
    );

    // The secrets never reach the log.
    let log = s.log.lock().unwrap().join("\n");
    assert!(!log.contains(&secret), "CHAP secret logged");
    assert!(!log.contains(&reverse), "reverse CHAP secret logged");
}
