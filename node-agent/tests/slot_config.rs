//! The agent binary against the real `boot-server` binary on loopback:
//! a slot configuration queued through the admin API (raw `configure`
//! command) is installed in the agent's runtime dir, its health and busy
//! hooks show up in the heartbeats the server stores, the app runs with the
//! server's start hook and the local stop hook (the one the server left
//! out), an agent restart in the same boot keeps the slot, and
//! `unconfigure` removes it.
//!
//! Needs `target/release/boot-server` (see `common`).

mod common;

use common::{await_true, boot_server_bin, start_agent, Lab, Log};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use test_support::Need;

const MAC: &str = "52:54:00:a6:00:02";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Waits until the heartbeat the server stored for the node satisfies `f`.
fn await_heartbeat(lab: &Lab, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    await_true(what, Duration::from_secs(30), || {
        last = lab.node()["heartbeat"].clone();
        f(&last)
    });
    last
}

#[test]
fn configure_installs_hooks_whose_health_reaches_the_server() {
    let bin = boot_server_bin();
    let bin_s = bin.display().to_string();
    if !test_support::require(
        "configure_installs_hooks_whose_health_reaches_the_server",
        &[Need::Path(&bin_s), Need::Tool("sh")],
    ) {
        return;
    }
    let mut lab = Lab::new(MAC);
    lab.start_server();
    let (kernel_line, _token) = lab.kernel_line();
    let dir = lab.dir.path().to_path_buf();
    let cmdline = dir.join("cmdline");
    std::fs::write(&cmdline, &kernel_line).unwrap();
    let run = dir.join("run");
    let local = dir.join("hooks");
    std::fs::create_dir_all(&local).unwrap();
    // Only a local stop hook: the server's slot leaves stop out.
    let stopped = dir.join("local-stop-ran");
    let stop = local.join("stop");
    std::fs::write(
        &stop,
        format!(
            "#!/bin/sh\necho \"$SLOT_ENVIRONMENT/$SLOT_INDEX $ROLE\" > {}\n",
            stopped.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stop, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hostname = dir.join("hostname");
    let efi = dir.join("efivars");
    std::fs::create_dir(&efi).unwrap();
    let args_owned = [
        "--cmdline-file".to_string(),
        cmdline.display().to_string(),
        "--state-dir".into(),
        run.display().to_string(),
        "--hooks-dir".into(),
        local.display().to_string(),
        "--hostname-file".into(),
        hostname.display().to_string(),
        "--efivars-dir".into(),
        efi.display().to_string(),
    ];
    let args: Vec<&str> = args_owned.iter().map(String::as_str).collect();
    let log = Log::default();
    let mut agent = start_agent(&args, &log);
    await_true("hello", Duration::from_secs(20), || lab.hellos() >= 1);

    // No health or busy hook yet: heartbeats carry neither.
    let hb = await_heartbeat(&lab, "first heartbeat", |hb| hb.is_object());
    assert!(hb.get("health").is_none(), "{hb}");
    assert!(hb.get("busy").is_none(), "{hb}");

    let busy_flag = dir.join("busy-now");
    let slot = json!({
        "environment": "web",
        "slot": 2,
        "hostname": "web-2",
        "hooks": {
            "start": "exec sleep 60",
            "health": "echo \"env=$SLOT_ENVIRONMENT slot=$SLOT_INDEX\"\n\
                       echo \"role=$ROLE agent_pid=$PPID\" junk-token\n\
                       echo lat_ms=40",
            "busy": format!("#!/bin/sh\ntest -e {}\n", busy_flag.display()),
        },
        "config": { "ROLE": "front end's" },
    });
    let configure = json!({ "kind": "raw", "command": { "kind": "configure", "slot": slot } });
    let id = lab.queue(configure.clone());
    let (st, detail) = lab.final_status(id, Duration::from_secs(30));
    assert_eq!(st, "succeeded", "{detail}");
    assert!(detail.contains("slot web/2 installed"), "{detail}");
    assert!(
        detail.contains("server hooks [start, health, busy], local hooks [stop]"),
        "{detail}"
    );
    assert!(detail.contains("host name web-2"), "{detail}");

    // What was installed, where.
    let hooks = run.join("slot-hooks");
    assert_eq!(mode(&hooks), 0o700);
    for name in ["start", "health", "busy"] {
        assert_eq!(mode(&hooks.join(name)), 0o700, "{name}");
        let text = std::fs::read_to_string(hooks.join(name)).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "{name}: {text}");
    }
    assert!(!hooks.join("stop").exists());
    assert_eq!(std::fs::read_to_string(&hostname).unwrap(), "web-2\n");
    let env = run.join("slot.env");
    let sourced = std::process::Command::new("sh")
        .arg("-c")
        .arg(". \"$1\" && printf '%s|%s|%s|%s' \"$SLOT_ENVIRONMENT\" \"$SLOT_INDEX\" \"$SLOT_HOSTNAME\" \"$ROLE\"")
        .arg("sh")
        .arg(&env)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sourced.stdout),
        "web|2|web-2|front end's",
        "{sourced:?}"
    );

    // The health hook's pairs and the busy hook's answer reach the server.
    let pid = agent.0.id().to_string();
    let hb = await_heartbeat(&lab, "heartbeat with the slot's health", |hb| {
        hb["health"]["agent_pid"] == pid.as_str()
    });
    let health = &hb["health"];
    assert_eq!(health["env"], "web", "{hb}");
    assert_eq!(health["slot"], "2", "{hb}");
    assert_eq!(health["lat_ms"], "40", "{hb}");
    assert_eq!(health["health"], "ok", "{hb}");
    assert!(health.get("junk-token").is_none(), "{hb}");
    // The value has a space: the token after `role=front` is `end's`, junk.
    assert_eq!(health["role"], "front", "{hb}");
    assert_eq!(hb["busy"], false, "{hb}");
    std::fs::write(&busy_flag, "").unwrap();
    await_heartbeat(&lab, "busy", |hb| hb["busy"] == true);

    // The app: the server's start hook, the local stop hook, slot env in both.
    let start =
        lab.queue(json!({ "kind": "raw", "command": { "kind": "start-app", "timeout_secs": 20 } }));
    let (st, detail) = lab.final_status(start, Duration::from_secs(30));
    assert_eq!(st, "succeeded", "{detail}");
    assert!(detail.contains("health hook passed"), "{detail}");
    await_heartbeat(&lab, "app running", |hb| hb["app"] == "running");
    let stop =
        lab.queue(json!({ "kind": "raw", "command": { "kind": "stop-app", "timeout_secs": 5 } }));
    let (st, detail) = lab.final_status(stop, Duration::from_secs(30));
    assert_eq!(st, "succeeded", "{detail}");
    assert!(detail.contains("exited 0"), "{detail}");
    assert_eq!(
        std::fs::read_to_string(&stopped).unwrap(),
        "web/2 front end's\n"
    );

    // A new agent process in the same boot keeps the slot.
    drop(agent);
    let hellos = lab.hellos();
    agent = start_agent(&args, &log);
    await_true("hello after restart", Duration::from_secs(20), || {
        lab.hellos() > hellos
    });
    let pid = agent.0.id().to_string();
    let hb = await_heartbeat(&lab, "heartbeat from the restarted agent", |hb| {
        hb["health"]["agent_pid"] == pid.as_str()
    });
    assert_eq!(hb["health"]["env"], "web", "{hb}");
    assert_eq!(hb["health"]["role"], "front", "{hb}");

    // Delivered again (at least once): still fine.
    let again = lab.queue(configure);
    let (st, detail) = lab.final_status(again, Duration::from_secs(30));
    assert_eq!(st, "succeeded", "{detail}");

    // Unconfigure: the server's hooks and slot.env are gone, and so are the
    // heartbeat's health and busy (there is no local health or busy hook).
    let un = lab.queue(json!({ "kind": "raw", "command": { "kind": "unconfigure" } }));
    let (st, detail) = lab.final_status(un, Duration::from_secs(30));
    assert_eq!(st, "succeeded", "{detail}");
    assert!(detail.contains("slot web/2 removed"), "{detail}");
    assert!(!hooks.exists() && !env.exists());
    await_heartbeat(&lab, "heartbeat without slot health", |hb| {
        hb.get("health").is_none() && hb.get("busy").is_none()
    });
    let un = lab.queue(json!({ "kind": "raw", "command": { "kind": "unconfigure" } }));
    let (st, detail) = lab.final_status(un, Duration::from_secs(30));
    assert_eq!(st, "succeeded", "{detail}");
    assert!(detail.contains("no slot configuration"), "{detail}");
    assert!(agent.0.try_wait().unwrap().is_none(), "agent exited");
}
