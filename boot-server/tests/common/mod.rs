//! Test harness: runs the real `boot-server` binary on loopback with a
//! throw-away state and images directory, and waits for its ready line.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub http: String,
    pub tftp: Option<String>,
    pub nbd: Option<String>,
    pub config: PathBuf,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_boot-server")
}

impl Server {
    /// A fresh directory with `images/` and a config whose extra TOML is `extra`.
    pub fn prepare(extra: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        let config = dir.path().join("boot-server.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"state\"\nimages_dir = \"images\"\n{extra}\n[http]\nlisten = \"127.0.0.1:0\"\n[tftp]\nlisten = \"127.0.0.1:0\"\n[nbd]\nlisten = \"127.0.0.1:0\"\n"
            ),
        )
        .unwrap();
        (dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: PathBuf) -> Server {
        let mut child = Command::new(bin())
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start boot-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Logged before the ready line is announced: a test that reads the
                // log right after start finds it there.
                log2.lock().unwrap().push(line.clone());
                if line.contains("boot-server ready:") {
                    let _ = tx.send(line);
                }
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!("server never became ready; log: {:?}", log.lock().unwrap())
            });
        let field = |k: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .map(|s| {
                    s.trim_end_matches(|c: char| !c.is_ascii_digit())
                        .to_string()
                })
        };
        Server {
            child,
            http: field("http").expect("http address in ready line"),
            tftp: field("tftp"),
            nbd: field("nbd"),
            dir,
            config,
            log,
        }
    }

    pub fn start(extra: &str) -> Server {
        let (dir, config) = Self::prepare(extra);
        Self::start_in(dir, config)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Runs an admin CLI command against this server's state.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "boot-server {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn admin_token(&self) -> String {
        self.cli(&["admin-token"]).trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with `sh -c`; panics with its stderr when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces a test made, deleted when it ends (however it ends).
pub struct Netns(pub Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// curl with the given args; returns (status code, body bytes).
pub fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let body = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            body.path().to_str().unwrap(),
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
    (code, std::fs::read(body.path()).unwrap())
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// Writes a linux image (random kernel/initrd files + manifest) named `name`.
pub fn write_image(images: &Path, name: &str, archs: &[&str]) {
    let d = images.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("vmlinuz"), random_bytes(300_000)).unwrap();
    std::fs::write(d.join("initrd.img"), random_bytes(100_000)).unwrap();
    let archs: Vec<String> = archs.iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(
        d.join("image.toml"),
        format!(
            "name = \"{name}\"\nversion = \"1\"\nkind = \"linux\"\nkernel = \"{name}/vmlinuz\"\ninitrd = \"{name}/initrd.img\"\ncmdline = \"console=ttyS0 node={{node}}\"\narchs = [{}]\n",
            archs.join(", ")
        ),
    )
    .unwrap();
}

/// A fresh database `<prefix>_<pid>` on the PostgreSQL test cluster
/// (`BOOT_TEST_PG_URL`): its URL, a client, and its name (to drop it). `None`
/// after a skip (a failure under CI) when no cluster is set or reachable.
pub async fn fresh_database(
    test: &str,
    prefix: &str,
) -> Option<(String, tokio_postgres::Client, String)> {
    let Ok(url) = std::env::var("BOOT_TEST_PG_URL") else {
        test_support::skip(
            test,
            "BOOT_TEST_PG_URL is not set (qemu-tests/lib/test-postgres.sh start prints one)",
        );
        return None;
    };
    let (client, conn) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            test_support::skip(test, &format!("PostgreSQL at {url} is unreachable: {e}"));
            return None;
        }
    };
    tokio::spawn(conn);
    let db = format!("{prefix}_{}", std::process::id());
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
    Some((format!("{base}/{db}"), client, db))
}

/// Polls `f` every 100 ms until it gives `Some`, for at most `secs`.
pub fn wait_for<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `nbdinfo --size URL`: whether it opened, and what it printed.
pub fn nbdinfo(url: &str) -> (bool, String) {
    let out = std::process::Command::new("nbdinfo")
        .arg("--size")
        .arg(url)
        .output()
        .expect("nbdinfo (libnbd-bin)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Opens `name` over NBD (fixed newstyle + GO) and returns the connected
/// socket, left in transmission mode: the export stays open while it lives.
pub fn nbd_open(addr: &str, name: &str) -> std::net::TcpStream {
    use boot_proto::nbd::*;
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
    let mut opt = Vec::new();
    opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
    opt.extend_from_slice(&OPT_GO.to_be_bytes());
    opt.extend_from_slice(&((4 + name.len() + 2) as u32).to_be_bytes());
    opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
    opt.extend_from_slice(name.as_bytes());
    opt.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&opt).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        assert!(typ & (1 << 31) == 0, "GO {name} refused ({typ:#x})");
        if typ == REP_ACK {
            return s;
        }
    }
}
