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

/// The configured loaders are served by name through a symlink out of
/// `loaders_dir` (Debian's `ipxe.efi` → `/boot/ipxe.efi`), over HTTP and TFTP;
/// any other link out of it is still refused.
#[test]
fn configured_loaders_follow_their_symlink_other_names_do_not() {
    let (dir, config) = Server::prepare("loaders_dir = \"loaders\"");
    let loaders = dir.path().join("loaders");
    let boot = dir.path().join("boot");
    std::fs::create_dir_all(&loaders).unwrap();
    std::fs::create_dir_all(&boot).unwrap();
    let efi = random_bytes(70_001);
    std::fs::write(boot.join("ipxe.efi"), &efi).unwrap();
    std::fs::write(boot.join("secret"), b"outside").unwrap();
    symlink(boot.join("ipxe.efi"), loaders.join("ipxe.efi")).unwrap();
    symlink(boot.join("secret"), loaders.join("other.efi")).unwrap();
    let s = Server::start_in(dir, config);

    let (code, body) = curl(&[&s.url("/loaders/ipxe.efi")]);
    assert_eq!(code, 200, "configured loader over HTTP");
    assert!(body == efi, "HTTP loader bytes differ");
    let tftp = format!("tftp://{}/ipxe.efi", s.tftp.as_deref().unwrap());
    let (code, body) = curl(&["--tftp-blksize", "1468", &tftp]);
    assert_eq!(code, 0, "configured loader over TFTP");
    assert!(body == efi, "TFTP loader bytes differ");

    let (code, body) = curl(&[&s.url("/loaders/other.efi")]);
    assert_eq!(
        code, 404,
        "a link out of loaders_dir that is not a configured loader"
    );
    assert!(!String::from_utf8_lossy(&body).contains("outside"));
    let tftp = format!("tftp://{}/other.efi", s.tftp.as_deref().unwrap());
    let (_, body) = curl(&[&tftp]);
    assert!(
        !String::from_utf8_lossy(&body).contains("outside"),
        "TFTP leaked"
    );
}

fn token_of(script: &str) -> Option<String> {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bootsrv.token="))
        .map(str::to_string)
}

const HELLO: &str = r#"{"protocol_version":2,"agent_version":"t","inventory":{"nics":[],"cpus":1,"memory_bytes":1,"firmware":"bios"}}"#;
const HEARTBEAT: &str =
    r#"{"load1":0.1,"cpu_busy":0.0,"mem_total_bytes":1,"mem_available_bytes":1,"uptime_ms":5}"#;

/// POST as an agent from `from` (a loopback address); returns the status.
fn agent_post(s: &Server, from: &str, tok: &str, path: &str, body: &str) -> u16 {
    curl(&[
        "--interface",
        from,
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
}

fn script_from(s: &Server, from: &str, path: &str) -> String {
    let (code, body) = curl(&["--interface", from, &s.url(path)]);
    assert_eq!(code, 200);
    String::from_utf8(body).unwrap()
}

/// Hardening item 1: an unauthenticated script fetch cannot take a node over.
#[test]
fn boot_secrets_go_only_to_the_nodes_address() {
    let (dir, config) = Server::prepare("");
    write_image(&dir.path().join("images"), "lab", &["bios", "uefi-x64"]);
    write_image(&dir.path().join("images"), "other", &[]);
    let s = Server::start_in(dir, config);
    s.cli(&["default-image", "lab"]);

    // A MAC this server never saw in DHCP and nobody enrolled: recorded, no secrets.
    let text = script_from(&s, "127.0.0.1", "/ipxe/52-54-00-00-00-07");
    assert!(
        text.starts_with("#!ipxe") && token_of(&text).is_none(),
        "{text}"
    );
    assert!(text.contains("enrol it"), "{text}");
    let nodes = s.cli(&["node", "list"]);
    assert!(
        nodes.contains("52:54:00:00:00:07") && nodes.contains("discovered"),
        "{nodes}"
    );

    // Enrolled: the first fetch binds the node's address (no DHCP seen).
    s.cli(&[
        "node",
        "add",
        "--mac",
        "52:54:00:00:00:01",
        "--label",
        "rack=r1",
    ]);
    let script = script_from(
        &s,
        "127.0.0.1",
        "/ipxe/52:54:00:00:00:01?platform=efi&buildarch=x86_64",
    );
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
    assert!(
        script.contains("node=node-525400000001"),
        "cmdline template: {script}"
    );
    let first = token_of(&script).expect("token for the node's own address");

    // Another host asks for the same node's script: no token, no takeover,
    // and the token on the node's command line stays valid.
    let stolen = script_from(&s, "127.0.0.2", "/ipxe/52:54:00:00:00:01");
    assert!(
        token_of(&stolen).is_none(),
        "token handed to another address: {stolen}"
    );
    // Events are written in batches, off the request path: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s
        .cli(&["events", "--node", "52:54:00:00:00:01"])
        .contains("access-refused")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no access-refused event"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A hello with the right token from another address is refused too.
    assert_eq!(
        agent_post(&s, "127.0.0.2", &first, "/api/agent/hello", HELLO),
        403
    );
    assert_eq!(
        agent_post(&s, "127.0.0.1", "forged", "/api/agent/hello", HELLO),
        401
    );
    assert_eq!(
        agent_post(&s, "127.0.0.1", &first, "/api/agent/hello", HELLO),
        200
    );
    let shown = s.cli(&["node", "show", "52:54:00:00:00:01", "--json"]);
    assert!(
        shown.contains("\"idle\""),
        "up in no environment = idle: {shown}"
    );

    // Tokens are stored as digests only.
    let db = std::fs::read(s.path().join("state/state.db")).unwrap();
    let wal = std::fs::read(s.path().join("state/state.db-wal")).unwrap_or_default();
    for blob in [&db, &wal] {
        assert!(
            !blob.windows(first.len()).any(|w| w == first.as_bytes()),
            "plaintext token in the state files"
        );
    }

    // Next boot (kexec or PXE): a script fetch never revokes the running
    // agent's token; the next boot's token takes over at its hello.
    s.cli(&["assign", "--mac", "52:54:00:00:00:01", "other"]);
    let script = script_from(&s, "127.0.0.1", "/ipxe/525400000001");
    assert!(script.contains("/images/other/vmlinuz"), "{script}");
    let next = token_of(&script).unwrap();
    assert_ne!(first, next);
    assert_eq!(
        agent_post(&s, "127.0.0.1", &first, "/api/agent/heartbeat", HEARTBEAT),
        200,
        "a heartbeat's answer lists the servers"
    );
    assert_eq!(
        agent_post(&s, "127.0.0.1", &next, "/api/agent/hello", HELLO),
        200
    );
    assert_eq!(
        agent_post(&s, "127.0.0.1", &first, "/api/agent/heartbeat", HEARTBEAT),
        401,
        "previous boot's token must stop working"
    );
    let shown = s.cli(&["node", "show", "52:54:00:00:00:01", "--json"]);
    assert!(
        shown.contains("\"ready\""),
        "assigned node up = ready: {shown}"
    );

    // Commands: only the node's own token sees them; results for others' are refused.
    s.cli(&["node", "add", "--mac", "52:54:00:00:00:02"]);
    let other = token_of(&script_from(&s, "127.0.0.3", "/ipxe/52:54:00:00:00:02")).unwrap();
    s.cli(&["node", "reboot", "52:54:00:00:00:01"]);
    let (code, body) = curl(&[
        "-H",
        &format!("x-node-token: {other}"),
        &s.url("/api/agent/commands?wait=0"),
    ]);
    assert_eq!(
        (code, String::from_utf8_lossy(&body).to_string()),
        (200, "[]".to_string())
    );
    let (code, body) = curl(&[
        "-H",
        &format!("x-node-token: {next}"),
        &s.url("/api/agent/commands?wait=5"),
    ]);
    let cmds: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 200);
    assert_eq!(cmds[0]["kind"], "reboot", "{cmds}");
    // At least once: a delivery that was lost (no report yet) is handed out again.
    let (_, again) = curl(&[
        "-H",
        &format!("x-node-token: {next}"),
        &s.url("/api/agent/commands?wait=0"),
    ]);
    assert!(
        String::from_utf8_lossy(&again).contains("reboot"),
        "not redelivered"
    );
    let id = cmds[0]["id"].as_u64().unwrap();
    let result = format!(r#"{{"id":{id},"status":"succeeded","detail":""}}"#);
    assert_eq!(
        agent_post(&s, "127.0.0.3", &other, "/api/agent/results", &result),
        404
    );
    assert_eq!(
        agent_post(&s, "127.0.0.1", &next, "/api/agent/results", &result),
        204
    );
    let (_, after) = curl(&[
        "-H",
        &format!("x-node-token: {next}"),
        &s.url("/api/agent/commands?wait=0"),
    ]);
    assert_eq!(String::from_utf8_lossy(&after), "[]");

    // Admin API: 401 without the token, before the body is even parsed.
    let (code, _) = curl(&[&s.url("/api/nodes")]);
    assert_eq!(code, 401);
    let (code, _) = curl(&[
        "-X",
        "PUT",
        "-H",
        "content-type: application/json",
        "-d",
        "{not json",
        &s.url("/api/assignments"),
    ]);
    assert_eq!(code, 401, "authorise before parsing");
    let (code, body) = curl(&[
        "-H",
        &format!("authorization: Bearer {}", s.admin_token()),
        &s.url("/api/nodes"),
    ]);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("node-525400000002"));
}

/// A command queued through the CLI reaches a parked long poll at once
/// (the wake-up, not a re-read: the poll below would otherwise wait 30 s).
#[test]
fn cli_command_wakes_the_long_poll_at_once() {
    let (dir, config) = Server::prepare("trust_boot_network = true");
    write_image(&dir.path().join("images"), "lab", &[]);
    let s = Server::start_in(dir, config);
    s.cli(&["default-image", "lab"]);
    let tok = token_of(&script_from(&s, "127.0.0.1", "/ipxe/52:54:00:00:00:09")).unwrap();
    let url = s.url("/api/agent/commands?wait=30");
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tx.send(()).unwrap();
        let (code, body) = curl(&["-H", &format!("x-node-token: {tok}"), &url]);
        (code, body, std::time::Instant::now())
    });
    rx.recv().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300)); // let the poll park
    let before = std::time::Instant::now();
    s.cli(&["node", "reboot", "52:54:00:00:00:09"]);
    let cli_done = std::time::Instant::now();
    let (code, body, answered) = waiter.join().unwrap();
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("reboot"));
    let lag = answered.saturating_duration_since(cli_done);
    eprintln!(
        "CLI call {:?}; long poll answered {:?} after the CLI returned",
        cli_done - before,
        lag
    );
    assert!(
        answered <= cli_done + std::time::Duration::from_millis(50),
        "long poll woke {lag:?} after the CLI returned"
    );
}
