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
//! Needs `target/release/boot-server` (`cargo build --release -p boot-server`);
//! `BOOT_SERVER_BIN` overrides the path, `NODE_AGENT_BIN` the agent binary.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::Need;

/// Top-level config lines the lead's "tokens only for the DHCP-seen address"
/// rule needs on loopback. Empty until the server knows the key (unknown keys
/// are rejected); after that merge set it to "trust_boot_network = true\n".
const TRUST_BOOT_NETWORK: &str = "trust_boot_network = true\n";

/// The whole server configuration; @DIR@ and @PORT@ are filled in.
const CONFIG: &str = r#"state_dir = "@DIR@/state"
images_dir = "@DIR@/images"
default_image = "lab"

[http]
listen = "127.0.0.1:@PORT@"

[tftp]
enabled = false

[nbd]
enabled = false

[dhcp]
mode = "off"

[agent]
heartbeat_interval_secs = 1
heartbeat_timeout_secs = 30
"#;

const MAC: &str = "52:54:00:a6:00:01";
const NODE: &str = "node-525400a60001";

fn boot_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BOOT_SERVER_BIN") {
        return p.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release/boot-server")
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's stderr, echoed and collected.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn follow(&self, who: &'static str, r: impl std::io::Read + Send + 'static) {
        let me = self.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                eprintln!("{who}: {l}");
                me.0.lock().unwrap().push(l);
            }
        });
    }
    fn count(&self, pat: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    }
}

/// Polls `f` every 50 ms until it is true or `limit` passes.
fn await_true(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Lab {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    server: Option<Kill>,
    server_log: Log,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("images/lab");
        std::fs::create_dir_all(&img).unwrap();
        std::fs::write(img.join("vmlinuz"), vec![0x4d; 70_000]).unwrap();
        std::fs::write(img.join("initrd.img"), vec![0x1f; 30_000]).unwrap();
        std::fs::write(
            img.join("image.toml"),
            "name = \"lab\"\nversion = \"1\"\nkind = \"linux\"\nkernel = \"lab/vmlinuz\"\n\
             initrd = \"lab/initrd.img\"\ncmdline = \"console=ttyS0\"\n",
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("boot-server.toml");
        let text = format!("{TRUST_BOOT_NETWORK}{CONFIG}")
            .replace("@DIR@", dir.path().to_str().unwrap())
            .replace("@PORT@", &port.to_string());
        std::fs::write(&config, text).unwrap();
        Lab {
            dir,
            config,
            port,
            server: None,
            server_log: Log::default(),
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start_server(&mut self) {
        let mut child = std::process::Command::new(boot_server_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start boot-server");
        let before = self.server_log.count("boot-server ready:");
        self.server_log
            .follow("server", child.stderr.take().unwrap());
        self.server = Some(Kill(child));
        await_true("boot-server ready", Duration::from_secs(30), || {
            self.server_log.count("boot-server ready:") > before
        });
    }

    fn stop_server(&mut self) {
        self.server.take();
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/admin.token"))
            .expect("state_dir/admin.token")
            .trim()
            .to_string()
    }

    fn admin_get(&self, path: &str) -> serde_json::Value {
        let r = minreq::get(format!("{}{path}", self.base()))
            .with_header("authorization", format!("Bearer {}", self.admin_token()))
            .with_timeout(10)
            .send()
            .unwrap();
        assert_eq!(
            r.status_code,
            200,
            "GET {path}: {}",
            r.as_str().unwrap_or("")
        );
        serde_json::from_slice(r.as_bytes()).unwrap()
    }

    /// Queues a command for the node; returns its id.
    fn queue(&self, kind: serde_json::Value) -> u64 {
        let r = minreq::post(format!("{}/api/nodes/{NODE}/commands", self.base()))
            .with_header("authorization", format!("Bearer {}", self.admin_token()))
            .with_json(&kind)
            .unwrap()
            .with_timeout(10)
            .send()
            .unwrap();
        assert_eq!(r.status_code, 202, "queue: {}", r.as_str().unwrap_or(""));
        let v: serde_json::Value = serde_json::from_slice(r.as_bytes()).unwrap();
        v["id"].as_u64().unwrap()
    }

    /// Waits for command `id` to reach a final status on the server.
    fn final_status(&self, id: u64, limit: Duration) -> (String, String) {
        let mut last = serde_json::Value::Null;
        await_true(&format!("command {id} final"), limit, || {
            last = self.admin_get(&format!("/api/commands/{id}"));
            matches!(last["status"].as_str(), Some("succeeded" | "failed"))
        });
        (
            last["status"].as_str().unwrap().to_string(),
            last["detail"].as_str().unwrap_or("").to_string(),
        )
    }

    fn hellos(&self) -> usize {
        let ev = self.admin_get(&format!("/api/events?node={NODE}&limit=10000"));
        ev.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "agent-ready")
            .count()
    }
}

fn start_agent(args: &[&str], log: &Log) -> Kill {
    let bin =
        std::env::var("NODE_AGENT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_node-agent").into());
    let mut child = std::process::Command::new(&bin)
        .args(args)
        .args(["--poll-wait", "1", "--dry-run"])
        .env("NODE_AGENT_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    log.follow("agent", child.stderr.take().unwrap());
    Kill(child)
}

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
    let mut lab = Lab::new();
    lab.start_server();

    // The node's boot script: its kernel command line carries the token.
    let script = minreq::get(format!("{}/ipxe/{MAC}", lab.base()))
        .with_timeout(10)
        .send()
        .unwrap();
    assert_eq!(script.status_code, 200);
    let script = script.as_str().unwrap().to_string();
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bootsrv.token="))
        .unwrap_or_else(|| panic!("no bootsrv.token= in {script}"))
        .to_string();
    let kernel_line = script
        .lines()
        .find(|l| l.contains("bootsrv.token="))
        .unwrap();
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
        detail.contains("kernel 70000 B, initrd 30000 B"),
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
