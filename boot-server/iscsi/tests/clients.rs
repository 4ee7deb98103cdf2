//! Real initiators against the target: libiscsi's iscsi-ls (discovery), iscsi-inq,
//! iscsi-readcapacity16, and QEMU's iSCSI block driver (qemu-img convert, qemu-io
//! writes), with no authentication, CHAP one-way and mutual, and CRC32C header digests.

mod common;

use std::process::Command;

use boot_iscsi::{Chap, ChapSecret, DiskRef, TargetConfig};
use common::*;
use test_support::Need;

const SIZE: usize = 8 << 20;

#[test]
fn discovery_lists_only_targets_the_address_may_open() {
    if !test_support::require("discovery_lists_only", &[Need::Tool("iscsi-ls")]) {
        return;
    }
    let fx = Fixture::new(SIZE);
    fx.handle
        .add_target(
            "iqn.2026-12.test.boot:elsewhere",
            TargetConfig {
                disk: DiskRef::Overlay("node".into()),
                allowed_initiator: Some("10.255.0.9".parse().unwrap()),
                chap: None,
            },
        )
        .unwrap();
    let out = run(Command::new("iscsi-ls").arg(format!("iscsi://{}", fx.addr)));
    let portal = format!("Portal:{},1", fx.addr);
    assert!(
        out.contains(&format!("Target:{OVERLAY_IQN} {portal}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("Target:{BASE_IQN} {portal}")),
        "{out}"
    );
    assert!(!out.contains("elsewhere"), "hidden target listed: {out}");
    // And it cannot be opened from here either.
    let o = output(Command::new("iscsi-inq").arg(fx.url("iqn.2026-12.test.boot:elsewhere")));
    assert!(
        !o.status.success(),
        "login from a non-allowed address worked"
    );
}

#[test]
fn inquiry_and_capacity() {
    if !test_support::require(
        "inquiry_and_capacity",
        &[Need::Tool("iscsi-inq"), Need::Tool("iscsi-readcapacity16")],
    ) {
        return;
    }
    let fx = Fixture::new(SIZE);
    let out = run(Command::new("iscsi-inq").arg(fx.url(OVERLAY_IQN)));
    assert!(
        out.contains("Peripheral Device Type:DIRECT_ACCESS"),
        "{out}"
    );
    assert!(out.contains("Vendor:BOOTSRV"), "{out}");
    let out = run(Command::new("iscsi-inq")
        .args(["-e", "1", "-c", "128"])
        .arg(fx.url(OVERLAY_IQN)));
    assert!(out.contains("Unit Serial Number"), "{out}");
    let out = run(Command::new("iscsi-readcapacity16").arg(fx.url(OVERLAY_IQN)));
    let last = SIZE / 512 - 1;
    assert!(
        out.contains(&format!("RETURNED LOGICAL BLOCK ADDRESS:{last}\n")),
        "{out}"
    );
    assert!(out.contains("LOGICAL BLOCK LENGTH IN BYTES:512"), "{out}");
}

/// qemu-img with an iscsi:// URL (needs the qemu-block-extra iSCSI module).
fn qemu_has_iscsi() -> bool {
    let out = output(Command::new("qemu-img").arg("--help"));
    String::from_utf8_lossy(&out.stdout).contains("iscsi")
}

#[test]
fn qemu_img_convert_is_byte_identical_with_and_without_header_digest() {
    if !test_support::require(
        "qemu_img_convert_is_byte_identical",
        &[Need::Tool("qemu-img")],
    ) {
        return;
    }
    if !qemu_has_iscsi()
        && test_support::skip(
            "qemu_img_convert_is_byte_identical",
            "qemu-img has no iscsi driver (install qemu-block-extra)",
        )
    {
        return;
    }
    let fx = Fixture::new(SIZE);
    for (iqn, digest) in [(OVERLAY_IQN, false), (BASE_IQN, false), (OVERLAY_IQN, true)] {
        let out = fx.path("out.raw");
        let mut cmd = Command::new("qemu-img");
        cmd.args(["convert", "-O", "raw"]);
        if digest {
            cmd.args(["--image-opts", &digest_opts(&fx, iqn)]);
        } else {
            cmd.arg(fx.url(iqn));
        }
        run(cmd.arg(&out));
        assert!(
            read_file(&out) == fx.base,
            "{iqn} (digest {digest}): copy differs"
        );
        std::fs::remove_file(&out).unwrap();
    }
}

/// QEMU's iSCSI options for a session with CRC32C header digests.
fn digest_opts(fx: &Fixture, iqn: &str) -> String {
    format!(
        "driver=iscsi,transport=tcp,portal={},target={iqn},lun=0,header-digest=crc32c",
        fx.addr
    )
}

#[test]
fn header_digest_is_negotiated_and_used() {
    if !test_support::require("header_digest_is_negotiated", &[Need::Tool("qemu-io")]) {
        return;
    }
    if !qemu_has_iscsi()
        && test_support::skip(
            "header_digest_is_negotiated",
            "qemu-io has no iscsi driver (install qemu-block-extra)",
        )
    {
        return;
    }
    let fx = Fixture::new(SIZE);
    // qemu-io keeps its session open while we look at what was negotiated.
    let mut child = Command::new("qemu-io")
        .args([
            "-r",
            "-c",
            "read 0 4096",
            "-c",
            "sleep 3000",
            "--image-opts",
        ])
        .arg(digest_opts(&fx, BASE_IQN))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = None;
    while std::time::Instant::now() < deadline && seen.is_none() {
        seen = fx
            .handle
            .sessions()
            .into_iter()
            .find(|s| s.target.as_deref() == Some(BASE_IQN));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let s = seen.expect("qemu-io session");
    assert!(s.header_digest, "{s:?}");
    assert!(!s.data_digest, "{s:?}");
}

#[test]
fn a_write_lands_in_the_overlay_not_the_base_and_the_base_refuses_writes() {
    if !test_support::require("a_write_lands_in_the_overlay", &[Need::Tool("qemu-io")]) {
        return;
    }
    if !qemu_has_iscsi()
        && test_support::skip(
            "a_write_lands_in_the_overlay",
            "qemu-io has no iscsi driver (install qemu-block-extra)",
        )
    {
        return;
    }
    let fx = Fixture::new(SIZE);
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xab 1048576 65536",
        "-c",
        "flush",
        &fx.url(OVERLAY_IQN),
    ]));
    // Read back through iSCSI and from the store.
    let out = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "read -P 0xab 1048576 65536",
        &fx.url(OVERLAY_IQN),
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let ov = fx.store.open_overlay("node").unwrap();
    let mut buf = vec![0u8; 65536];
    ov.read_at(&mut buf, 1 << 20).unwrap();
    assert!(buf.iter().all(|b| *b == 0xab), "overlay lacks the write");
    assert_eq!(
        ov.allocated_bytes(),
        65536,
        "only the written chunk allocated"
    );
    let base_file = read_file(&fx.store.root().join("bases/deb.raw"));
    assert!(base_file == fx.base, "the base changed");

    // The base target is read-only: the write fails and nothing changes.
    let o = output(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xcd 0 4096",
        &fx.url(BASE_IQN),
    ]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // QEMU reads the write-protect bit from MODE SENSE and refuses to open read-write.
    assert!(
        !o.status.success() && text.contains("write protected"),
        "write to the base target not refused: {text}"
    );
    assert!(read_file(&fx.store.root().join("bases/deb.raw")) == fx.base);
}

fn chap_target(fx: &Fixture, mutual: bool) {
    fx.handle
        .add_target(
            OVERLAY_IQN,
            TargetConfig {
                disk: DiskRef::Overlay("node".into()),
                allowed_initiator: None,
                chap: Some(Chap {
                    initiator: ChapSecret {
                        user: "node7".into(),
                        secret: "s3cret-initiator".into(),
                    },
                    target: mutual.then(|| ChapSecret {
                        user: "bootsrv".into(),
                        secret: "s3cret-target-side".into(),
                    }),
                }),
            },
        )
        .unwrap();
}

fn inq(url: &str, env: &[(&str, &str)]) -> bool {
    let mut c = Command::new("iscsi-inq");
    c.arg(url);
    for (k, v) in env {
        c.env(k, v);
    }
    output(&mut c).status.success()
}

#[test]
fn chap_one_way_accepts_the_secret_and_refuses_others() {
    if !test_support::require("chap_one_way", &[Need::Tool("iscsi-inq")]) {
        return;
    }
    let fx = Fixture::new(SIZE);
    chap_target(&fx, false);
    let with = |cred: &str| format!("iscsi://{cred}@{}/{OVERLAY_IQN}/0", fx.addr);
    assert!(
        inq(&with("node7%s3cret-initiator"), &[]),
        "right secret refused"
    );
    assert!(
        !inq(&with("node7%wrong-secret-xx"), &[]),
        "wrong secret accepted"
    );
    assert!(
        !inq(&with("other%s3cret-initiator"), &[]),
        "wrong user accepted"
    );
    assert!(!inq(&fx.url(OVERLAY_IQN), &[]), "no credentials accepted");
    // The unauthenticated base target is unaffected.
    assert!(inq(&fx.url(BASE_IQN), &[]));
}

#[test]
fn chap_mutual_proves_the_target_too() {
    if !test_support::require("chap_mutual", &[Need::Tool("iscsi-inq")]) {
        return;
    }
    let fx = Fixture::new(SIZE);
    chap_target(&fx, true);
    let url = format!("iscsi://node7%s3cret-initiator@{}/{OVERLAY_IQN}/0", fx.addr);
    let tgt = |secret: &'static str| {
        [
            ("LIBISCSI_CHAP_TARGET_USERNAME", "bootsrv"),
            ("LIBISCSI_CHAP_TARGET_PASSWORD", secret),
        ]
    };
    assert!(inq(&url, &tgt("s3cret-target-side")), "mutual CHAP failed");
    // libiscsi checks the target's answer: a target knowing another secret fails.
    assert!(
        !inq(&url, &tgt("not-the-target-secret")),
        "initiator accepted a wrong target response"
    );
    // One-way CHAP still works against a target configured for mutual.
    assert!(inq(&url, &[]));
}

#[test]
fn removing_the_target_cuts_a_real_initiator_mid_session() {
    use std::io::BufRead;
    if !test_support::require(
        "removing_the_target_cuts",
        &[Need::Tool("qemu-io"), Need::Tool("stdbuf")],
    ) {
        return;
    }
    if !qemu_has_iscsi()
        && test_support::skip(
            "removing_the_target_cuts",
            "qemu-io has no iscsi driver (install qemu-block-extra)",
        )
    {
        return;
    }
    let fx = Fixture::new(SIZE);
    // Unbuffered output, so each completed read is seen as it happens.
    let mut child = Command::new("stdbuf")
        .args([
            "-o0",
            "qemu-io",
            "-f",
            "raw",
            "-c",
            "read 0 4096",
            "-c",
            "sleep 1000",
            "-c",
            "read 0 4096",
            &fx.url(OVERLAY_IQN),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
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
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("first read");
    assert!(first.contains("read 4096/4096 bytes"), "{first}");
    // qemu-io now sleeps with its session open.
    assert_eq!(fx.handle.remove_target(OVERLAY_IQN), 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(
        fx.handle
            .wait_closed(OVERLAY_IQN, std::time::Duration::from_secs(5))
    ));
    // libiscsi keeps trying to log in again (refused: the target is gone), so the
    // second read must not complete; wait well past the sleep, then stop it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    let mut after = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => after.push(l),
            Err(_) => break, // timed out, or qemu-io gave up and exited
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !after.iter().any(|l| l.contains("read 4096/4096")),
        "a read completed after the target was removed: {after:?}"
    );
    assert_eq!(
        fx.handle.connections_to(OVERLAY_IQN),
        0,
        "it logged in again"
    );
}
