//! End-to-end test of the agent binary against the real `boot-server` binary
//! on loopback (DHCP, TFTP and NBD off): the token comes from the boot script
//! the server mints for the node's MAC (`GET /ipxe/<mac>`), commands are
//! queued through the admin API and their results read back from it.
//!
//! Covers: 401 recovery by re-reading the credentials file (the agent starts
//! with a stale token), command execution and results, the agent saying hello
//! again after a server restart, and a result produced while the server is
//! down surviving an agent restart (at-least-once delivery through the
//! persisted outbox).
//!
//! Needs `target/release/boot-server` (see `common`).

mod common;

use common::{await_true, boot_server_bin, start_agent, Lab, Log};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use test_support::Need;

const MAC: &str = "52:54:00:a6:00:01";

#[test]
fn agent_against_real_server_recovers_and_delivers_results() {
    let bin = boot_server_bin();
    let bin_s = bin.display().to_string();
    if !test_support::require(
        "agent_against_real_server_recovers_and_delivers_results",
        &[Need::Path(&bin_s)],
    ) {
        return;
    }
    let mut lab = Lab::new(MAC);
    lab.start_server();

    // The node's boot script: its kernel command line carries the token.
    let (kernel_line, token) = lab.kernel_line();
    let kernel_line = kernel_line.as_str();
    let dir = lab.dir.path().to_path_buf();
    // The node booted with an older token: the server answers 401 until the
    // credentials file has the current one.
    let cmdline = dir.join("cmdline");
    std::fs::write(
        &cmdline,
        kernel_line.replace(&token, "stale-token-from-an-older-boot"),
    )
    .unwrap();
    assert!(
        kernel_line.contains(&format!("bootsrv.server={}", lab.base())),
        "{kernel_line}"
    );
    let creds = dir.join("run/credentials");
    let state = dir.join("run");
    let hooks = dir.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let flag = dir.join("app-healthy");
    for (name, body) in [
        ("start", "#!/bin/sh\nexec sleep 60\n".to_string()),
        // Healthy only once the test creates the flag file.
        ("health", format!("#!/bin/sh\ntest -e {}\n", flag.display())),
    ] {
        let p = hooks.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let efi = dir.join("efivars");
    std::fs::create_dir(&efi).unwrap();
    let args_owned = [
        "--cmdline-file".to_string(),
        cmdline.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--credentials-file".into(),
        creds.display().to_string(),
        "--hooks-dir".into(),
        hooks.display().to_string(),
        "--efivars-dir".into(),
        efi.display().to_string(),
    ];
    let args: Vec<&str> = args_owned.iter().map(String::as_str).collect();
    let log = Log::default();
    let mut agent = start_agent(&args, &log);

    // 1. 401 recovery: rejected again and again (never gives up) ...
    await_true("repeated 401s", Duration::from_secs(20), || {
        log.count("token rejected") >= 3
    });
    assert_eq!(lab.hellos(), 0);
    assert!(agent.0.try_wait().unwrap().is_none(), "agent gave up");
    // ... until the credentials file carries the current token.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(&creds, format!("bootsrv.token={token}\n")).unwrap();
    await_true(
        "hello after new credentials",
        Duration::from_secs(20),
        || lab.hellos() >= 1,
    );
    assert_eq!(log.count("stale-token"), 0, "a token must never be logged");
    assert_eq!(log.count(&token), 0, "a token must never be logged");

    // 2. Commands through the admin API reach the agent; results come back.
    let kexec = lab.queue(serde_json::json!({
        "kind": "kexec",
        "kernel_url": format!("{}/images/lab/vmlinuz", lab.base()),
        "initrd_url": format!("{}/images/lab/initrd.img", lab.base()),
        "cmdline": "console=ttyS0",
    }));
    let attach = lab.queue(serde_json::json!({
        "kind": "attach-disk", "export": "x", "host": "127.0.0.1", "port": 1, "mount": null
    }));
    let (st, detail) = lab.final_status(kexec, Duration::from_secs(30));
    assert_eq!(st, "succeeded", "{detail}");
    assert!(
        detail.contains("kernel 70000 B (download), initrd 30000 B (download)"),
        "{detail}"
    );
    let (st, detail) = lab.final_status(attach, Duration::from_secs(30));
    assert_eq!(st, "failed", "{detail}");
    assert!(detail.contains("connect"), "{detail}");

    // 3. Server restart: the agent says hello again and takes new commands.
    let before = lab.hellos();
    lab.stop_server();
    await_true(
        "agent notices the server is gone",
        Duration::from_secs(20),
        || log.count("hello failed") >= 1,
    );
    lab.start_server();
    await_true(
        "hello after server restart",
        Duration::from_secs(30),
        || lab.hellos() > before,
    );
    let reboot = lab.queue(serde_json::json!({ "kind": "reboot" }));
    let (st, detail) = lab.final_status(reboot, Duration::from_secs(30));
    assert_eq!(st, "succeeded", "{detail}");

    // 4. A result produced while the server is down survives an agent restart.
    let start = lab.queue(serde_json::json!({ "kind": "start-app", "timeout_secs": 60 }));
    await_true(
        "start-app running on the agent",
        Duration::from_secs(30),
        || lab.admin_get(&format!("/api/commands/{start}"))["status"] == "started",
    );
    lab.stop_server();
    std::fs::write(&flag, "").unwrap();
    // The agent keeps the result (on disk, in its per-boot state dir) until acknowledged.
    await_true(
        "start-app result pending on disk",
        Duration::from_secs(30),
        || {
            let rec: serde_json::Value = std::fs::read(state.join("results.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            rec["pending"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|r| r["id"] == start && r["status"] == "succeeded")
            })
        },
    );
    drop(agent);
    // Same boot (same state dir), new agent process; then the server returns.
    agent = start_agent(&args, &log);
    lab.start_server();
    let (st, detail) = lab.final_status(start, Duration::from_secs(60));
    assert_eq!(st, "succeeded", "{detail}");
    assert!(agent.0.try_wait().unwrap().is_none(), "agent exited");
}
