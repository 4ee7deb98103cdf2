//! Shared by the integration tests: the real `boot-server` binary on
//! loopback (DHCP, TFTP and NBD off) with its admin API, and the agent
//! binary started against it with its stderr collected.
//!
//! Needs `target/release/boot-server` (`cargo build --release -p boot-server`);
//! `BOOT_SERVER_BIN` overrides the path, `NODE_AGENT_BIN` the agent binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

pub fn boot_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BOOT_SERVER_BIN") {
        return p.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release/boot-server")
}

pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's stderr, echoed and collected.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn follow(&self, who: &'static str, r: impl std::io::Read + Send + 'static) {
        let me = self.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                eprintln!("{who}: {l}");
                me.0.lock().unwrap().push(l);
            }
        });
    }
    pub fn count(&self, pat: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    }
}

/// Polls `f` every 50 ms until it is true or `limit` passes.
pub fn await_true(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub server: Option<Kill>,
    pub server_log: Log,
    /// The node's MAC and the id the server gives it.
    pub mac: String,
    pub node: String,
}

impl Lab {
    /// A lab for the node with `mac` (`52:54:00:..`).
    pub fn new(mac: &str) -> Lab {
        Lab::with_config(mac, "")
    }

    /// A lab whose server config ends with `extra` (TOML lines, which land in
    /// its last table, `[agent]`, unless they open another).
    pub fn with_config(mac: &str, extra: &str) -> Lab {
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
        let text = format!("{TRUST_BOOT_NETWORK}{CONFIG}{extra}")
            .replace("@DIR@", dir.path().to_str().unwrap())
            .replace("@PORT@", &port.to_string());
        std::fs::write(&config, text).unwrap();
        Lab {
            dir,
            config,
            port,
            server: None,
            server_log: Log::default(),
            mac: mac.to_string(),
            node: format!("node-{}", mac.replace(':', "")),
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn start_server(&mut self) {
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

    pub fn stop_server(&mut self) {
        self.server.take();
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/admin.token"))
            .expect("state_dir/admin.token")
            .trim()
            .to_string()
    }

    pub fn admin_get(&self, path: &str) -> serde_json::Value {
        let r = ureq::get(&format!("{}{path}", self.base()))
            .set("authorization", &format!("Bearer {}", self.admin_token()))
            .timeout(Duration::from_secs(10))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        serde_json::from_str(&r.into_string().unwrap()).unwrap()
    }

    /// Queues a command for the node; returns its id.
    pub fn queue(&self, kind: serde_json::Value) -> u64 {
        let r = ureq::post(&format!("{}/api/nodes/{}/commands", self.base(), self.node))
            .set("authorization", &format!("Bearer {}", self.admin_token()))
            .set("content-type", "application/json")
            .timeout(Duration::from_secs(10))
            .send_string(&kind.to_string())
            .unwrap_or_else(|e| panic!("queue: {e}"));
        assert_eq!(r.status(), 202);
        let v: serde_json::Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
        v["id"].as_u64().unwrap()
    }

    /// Waits for command `id` to reach a final status on the server.
    pub fn final_status(&self, id: u64, limit: Duration) -> (String, String) {
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

    /// The kernel command line of the node's boot script (it carries the
    /// server URL and the node's token) and the token.
    pub fn kernel_line(&self) -> (String, String) {
        let script = ureq::get(&format!("{}/ipxe/{}", self.base(), self.mac))
            .timeout(Duration::from_secs(10))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let token = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("bootsrv.token="))
            .unwrap_or_else(|| panic!("no bootsrv.token= in {script}"))
            .to_string();
        let line = script
            .lines()
            .find(|l| l.contains("bootsrv.token="))
            .unwrap()
            .to_string();
        (line, token)
    }

    /// The node as the admin API shows it.
    pub fn node(&self) -> serde_json::Value {
        self.admin_get(&format!("/api/nodes/{}", self.node))
    }

    pub fn hellos(&self) -> usize {
        let ev = self.admin_get(&format!("/api/events?node={}&limit=10000", self.node));
        ev.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "agent-ready")
            .count()
    }
}

pub fn start_agent(args: &[&str], log: &Log) -> Kill {
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
