//! The agent API over TLS (`[agent] tls_listen`), end to end with the real
//! `boot-server` and agent binaries on loopback: the node's boot script
//! points the agent at `https://` and pins the server certificate's SHA-256
//! (`bootsrv.tlspin`); the agent says hello and heart-beats over it; the
//! plain listener refuses the agent API (no token in the clear); an agent
//! pinning another certificate never gets through.
//!
//! Needs `target/release/boot-server` (see `common`).

mod common;

use common::{await_true, boot_server_bin, start_agent, Lab, Log};
use std::time::Duration;
use test_support::Need;

const MAC: &str = "52:54:00:a6:00:07";

#[test]
fn agents_talk_tls_to_the_pinned_certificate_only() {
    let bin = boot_server_bin();
    let bin_s = bin.display().to_string();
    let need = [Need::Path(&bin_s), Need::Tool("openssl")];
    if !test_support::require("agents_talk_tls_to_the_pinned_certificate_only", &need) {
        return;
    }
    let mut lab = Lab::with_config(MAC, "tls_listen = \"127.0.0.1:0\"\n");
    lab.start_server();
    let (line, _token) = lab.kernel_line();
    let word = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {line}"))
            .to_string()
    };
    let server = word("bootsrv.server");
    let pin = word("bootsrv.tlspin");
    assert!(server.starts_with("https://127.0.0.1:"), "{server}");

    // The pin is the certificate the server made, as openssl computes it.
    let cert = lab.dir.path().join("state/tls/admin-cert.pem");
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let openssl_fp: String = text
        .split('=')
        .nth(1)
        .unwrap_or("")
        .trim()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(openssl_fp, pin, "{text}");

    // The plain listener refuses the agent API before reading any token.
    let plain = ureq::post(&format!("{}/api/agent/hello", lab.base()))
        .set("x-node-token", "anything")
        .send_string("{}");
    match plain {
        Err(ureq::Error::Status(403, r)) => {
            let body = r.into_string().unwrap();
            assert!(body.contains("served over TLS"), "{body}");
        }
        other => panic!("plain agent API answered {other:?}"),
    }

    // An agent pinning another certificate gets nowhere.
    let dir = lab.dir.path().to_path_buf();
    let cmdline = dir.join("cmdline-wrong-pin");
    std::fs::write(&cmdline, line.replace(&pin, &"0".repeat(64))).unwrap();
    let wrong_log = Log::default();
    let wrong_run = dir.join("run-wrong");
    let wrong = start_agent(
        &[
            "--cmdline-file",
            cmdline.to_str().unwrap(),
            "--state-dir",
            wrong_run.to_str().unwrap(),
            "--hostname-file",
            dir.join("hostname-wrong").to_str().unwrap(),
        ],
        &wrong_log,
    );
    await_true(
        "the wrong-pin agent reports the mismatch",
        Duration::from_secs(20),
        || wrong_log.count("not the pinned") > 0,
    );
    drop(wrong);
    assert_eq!(lab.hellos(), 0, "no hello got through with the wrong pin");

    // The agent with the script's pin says hello and heart-beats over TLS.
    let cmdline = dir.join("cmdline");
    std::fs::write(&cmdline, &line).unwrap();
    let log = Log::default();
    let run = dir.join("run");
    let _agent = start_agent(
        &[
            "--cmdline-file",
            cmdline.to_str().unwrap(),
            "--state-dir",
            run.to_str().unwrap(),
            "--hostname-file",
            dir.join("hostname").to_str().unwrap(),
        ],
        &log,
    );
    await_true("hello over TLS", Duration::from_secs(20), || {
        lab.hellos() >= 1
    });
    let first = lab.node()["last_heartbeat_ms"].as_u64().unwrap_or(0);
    await_true("heartbeats over TLS", Duration::from_secs(20), || {
        lab.node()["last_heartbeat_ms"].as_u64().unwrap_or(0) > first
    });
    assert_eq!(log.count("not the pinned"), 0);
}
