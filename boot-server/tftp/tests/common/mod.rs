//! Shared helpers of the loopback integration tests: a server on an
//! ephemeral port, an observer that reports to a channel, random files.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use boot_tftp::{TftpConfig, TftpServer, TftpStats, TransferObserver};
use tokio::sync::mpsc;

/// What the observer saw.
#[derive(Debug, Clone)]
pub enum Seen {
    Started {
        path: String,
        size: u64,
    },
    Finished {
        path: String,
        bytes: u64,
        result: Result<(), String>,
    },
}

pub struct ChanObserver(pub mpsc::UnboundedSender<Seen>);
impl TransferObserver for ChanObserver {
    fn started(&self, _peer: SocketAddr, path: &str, size: u64) {
        let _ = self.0.send(Seen::Started {
            path: path.into(),
            size,
        });
    }
    fn finished(&self, _peer: SocketAddr, path: &str, bytes: u64, result: Result<(), String>) {
        let _ = self.0.send(Seen::Finished {
            path: path.into(),
            bytes,
            result,
        });
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<TftpStats>,
    pub events: mpsc::UnboundedReceiver<Seen>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(root: &Path, tweak: impl FnOnce(&mut TftpConfig)) -> TestServer {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let mut config = TftpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            roots: vec![root.to_path_buf()],
            ..TftpConfig::default()
        };
        tweak(&mut config);
        let (tx, events) = mpsc::unbounded_channel();
        let server = TftpServer::bind(config, Arc::new(ChanObserver(tx)))
            .await
            .unwrap();
        let addr = server.local_addr();
        let stats = server.stats();
        let task = tokio::spawn(server.run());
        TestServer {
            addr,
            stats,
            events,
            task,
        }
    }

    /// Next `Finished` event for `path` (skipping others), within 60 s.
    pub async fn finished(&mut self, path: &str) -> (u64, Result<(), String>) {
        let wait = async {
            loop {
                match self.events.recv().await.expect("observer channel closed") {
                    Seen::Finished {
                        path: p,
                        bytes,
                        result,
                    } if p == path => return (bytes, result),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("no finished event for {path}"))
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn write_random(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, random_bytes(len, seed)).unwrap();
    p
}

/// Polls `cond` every 5 ms until it holds, for at most 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Fails clearly when a real client binary is missing.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required for this test (apt-get install curl atftp)"
    );
}
