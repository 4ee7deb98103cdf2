//! The HTTP side of the boot chain against the real binary and real curl:
//! per-node scripts from the image table, files with Content-Length, HEAD and
//! Range, paths that cannot escape, and agent tokens bound to node and boot.

mod common;
use common::*;
use std::os::unix::fs::symlink;

#[test]
fn range_head_and_escape_rules() {
    let (dir, config) = Server::prepare("");
    let images = dir.path().join("images");
    let data = random_bytes(1_000_003);
    std::fs::write(images.join("disk.raw"), &data).unwrap();
    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    symlink(dir.path().join("secret"), images.join("link-out")).unwrap();
    let s = Server::start_in(dir, config);
    let url = s.url("/images/disk.raw");

    let (code, body) = curl(&[&url]);
    assert_eq!((code, body.len()), (200, data.len()));
    assert!(body == data, "full body differs");

    for (range, start, end) in [
        ("0-0", 0, 0),
        ("100-199", 100, 199),
        ("999990-", 999_990, 1_000_002),
        ("-7", 999_996, 1_000_002),
    ] {
        let (code, body) = curl(&["-r", range, &url]);
        assert_eq!(code, 206, "range {range}");
        assert_eq!(body, data[start..=end].to_vec(), "range {range} bytes");
    }
    let (code, _) = curl(&["-r", "1000003-", &url]);
    assert_eq!(code, 416);

    let head = std::process::Command::new("curl")
        .args(["-sI", &url])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(head.contains("content-length: 1000003"), "{head}");
    assert!(head.contains("accept-ranges: bytes"), "{head}");

    for bad in [
        "/images/../boot-server.toml",
        "/images/%2e%2e/boot-server.toml",
        "/images/link-out",
        "/images/..%2fsecret",
        "/images/a%00b",
    ] {
        let (code, body) = curl(&["--path-as-is", &s.url(bad)]);
        assert!(code == 404 || code == 400, "{bad} gave {code}");
        assert!(
            !String::from_utf8_lossy(&body).contains("outside"),
            "{bad} leaked"
        );
    }
}

#[test]
fn node_script_tokens_and_agent_api() {
    let (dir, config) = Server::prepare("");
    write_image(&dir.path().join("images"), "lab", &["bios", "uefi-x64"]);
    write_image(&dir.path().join("images"), "other", &[]);
    let s = Server::start_in(dir, config);

    // No default yet: the node is recorded and told to wait (no dead end).
    let (code, body) = curl(&[&s.url("/ipxe/52-54-00-00-00-01")]);
    let text = String::from_utf8(body).unwrap();
    assert_eq!(code, 200);
    assert!(
        text.starts_with("#!ipxe") && text.contains("no boot image assigned"),
        "{text}"
    );
    let nodes = s.cli(&["node", "list"]);
    assert!(
        nodes.contains("52:54:00:00:00:01") && nodes.contains("discovered"),
        "{nodes}"
    );

    s.cli(&["default-image", "lab"]);
    let (_, body) = curl(&[&s.url("/ipxe/52:54:00:00:00:01?platform=efi&buildarch=x86_64")]);
    let script = String::from_utf8(body).unwrap();
    assert!(
        script.contains(&format!(
            "kernel --name kernel {}",
            s.url("/images/lab/vmlinuz")
        )),
        "{script}"
    );
    assert!(
        script.contains("initrd=initrd "),
        "UEFI needs initrd=NAME: {script}"
    );
    assert!(script.contains("initrd --name initrd"), "{script}");
    assert!(
        script.contains("node=node-525400000001"),
        "cmdline template: {script}"
    );
    let token = |script: &str| {
        script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("bootsrv.token="))
            .unwrap()
            .to_string()
    };
    let old = token(&script);

    // A MAC assignment overrides the default.
    s.cli(&["assign", "--mac", "52:54:00:00:00:01", "other"]);
    let (_, body) = curl(&[&s.url("/ipxe/525400000001")]);
    let script = String::from_utf8(body).unwrap();
    assert!(script.contains("/images/other/vmlinuz"), "{script}");
    let new = token(&script);
    assert_ne!(old, new);

    let hello = r#"{"agent_version":"t","inventory":{"nics":[],"cpus":1,"memory_bytes":1,"firmware":"bios"}}"#;
    let post = |tok: &str, path: &str, body: &str| {
        curl(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            &format!("x-node-token: {tok}"),
            "-d",
            body,
            &s.url(path),
        ])
        .0
    };
    assert_eq!(
        post(&old, "/api/agent/hello", hello),
        401,
        "token of an older boot must be refused"
    );
    assert_eq!(post("forged", "/api/agent/hello", hello), 401);
    assert_eq!(post(&new, "/api/agent/hello", hello), 200);
    let shown = s.cli(&["node", "show", "52:54:00:00:00:01"]);
    assert!(shown.contains("\"ready\""), "{shown}");

    // Next boot (kexec or PXE): the running agent's token works until the new boot says hello.
    let (_, body) = curl(&[&s.url("/ipxe/525400000001")]);
    let next = token(&String::from_utf8(body).unwrap());
    let hb =
        r#"{"load1":0.1,"cpu_busy":0.0,"mem_total_bytes":1,"mem_available_bytes":1,"uptime_ms":5}"#;
    assert_eq!(post(&new, "/api/agent/heartbeat", hb), 204);
    assert_eq!(post(&next, "/api/agent/hello", hello), 200);
    assert_eq!(
        post(&new, "/api/agent/heartbeat", hb),
        401,
        "previous boot's token must stop working"
    );
    let new = next;

    // Commands: only the node's own token sees them; results for others' commands are refused.
    let (_, body) = curl(&[&s.url("/ipxe/52:54:00:00:00:02")]);
    let other_token = token(&String::from_utf8(body).unwrap());
    s.cli(&["node", "reboot", "52:54:00:00:00:01"]);
    let (code, body) = curl(&[
        "-H",
        &format!("x-node-token: {other_token}"),
        &s.url("/api/agent/commands?wait=0"),
    ]);
    assert_eq!(
        (code, String::from_utf8_lossy(&body).to_string()),
        (200, "[]".to_string())
    );
    let (code, body) = curl(&[
        "-H",
        &format!("x-node-token: {new}"),
        &s.url("/api/agent/commands?wait=5"),
    ]);
    let cmds: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 200);
    assert_eq!(cmds[0]["kind"], "reboot", "{cmds}");
    let id = cmds[0]["id"].as_u64().unwrap();
    let result = format!(r#"{{"id":{id},"status":"succeeded","detail":""}}"#);
    assert_eq!(post(&other_token, "/api/agent/results", &result), 404);
    assert_eq!(post(&new, "/api/agent/results", &result), 204);

    // Admin API needs the admin token.
    let (code, _) = curl(&[&s.url("/api/nodes")]);
    assert_eq!(code, 401);
    let (code, body) = curl(&[
        "-H",
        &format!("authorization: Bearer {}", s.admin_token()),
        &s.url("/api/nodes"),
    ]);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("node-525400000002"));
}

#[test]
fn long_poll_wakes_on_admin_command() {
    let (dir, config) = Server::prepare("");
    write_image(&dir.path().join("images"), "lab", &[]);
    let s = Server::start_in(dir, config);
    s.cli(&["default-image", "lab"]);
    let (_, body) = curl(&[&s.url("/ipxe/52:54:00:00:00:09")]);
    let script = String::from_utf8(body).unwrap();
    let tok = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bootsrv.token="))
        .unwrap()
        .to_string();
    let url = s.url("/api/agent/commands?wait=30");
    let waiter = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        let (code, body) = curl(&["-H", &format!("x-node-token: {tok}"), &url]);
        (code, body, t0.elapsed())
    });
    let admin = s.admin_token();
    // Queue through the admin API once the poll is parked (it returns only with a command).
    let (code, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &format!("authorization: Bearer {admin}"),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"kind":"reboot"}"#,
        &s.url("/api/nodes/node-525400000009/commands"),
    ]);
    assert_eq!(code, 202);
    let (code, body, took) = waiter.join().unwrap();
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("reboot"));
    assert!(
        took < std::time::Duration::from_secs(25),
        "long poll did not wake: {took:?}"
    );
}
