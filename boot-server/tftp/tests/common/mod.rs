//! Shared helpers of the loopback integration tests: a server on an
//! ephemeral port, an observer that reports to a channel, random files.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
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

// ---- A raw in-test client, for what no Debian client does. ----

pub fn request(op: u16, parts: &[&str]) -> Vec<u8> {
    let mut p = op.to_be_bytes().to_vec();
    for s in parts {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

pub fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, 4, b[0], b[1]]
}

/// A client socket with a receive timeout; returns (socket, first packet, transfer peer).
pub fn client(server: SocketAddr, req: &[u8]) -> (UdpSocket, Vec<u8>, SocketAddr) {
    client_from("127.0.0.1", server, req)
}

/// Like [`client`], from a chosen loopback address (all of 127/8 is local).
pub fn client_from(ip: &str, server: SocketAddr, req: &[u8]) -> (UdpSocket, Vec<u8>, SocketAddr) {
    let sock = UdpSocket::bind((ip, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.send_to(req, server).unwrap();
    let (pkt, from) = recv(&sock);
    assert_ne!(from, server, "reply must come from a new transfer port");
    (sock, pkt, from)
}

/// ERROR packet -> (code, message); panics on anything else.
pub fn error_of(p: &[u8]) -> (u16, String) {
    assert_eq!(
        opcode(p),
        5,
        "expected ERROR, got {:?}",
        &p[..p.len().min(40)]
    );
    let msg = p[4..].split(|&b| b == 0).next().unwrap_or_default();
    (block_no(p), String::from_utf8_lossy(msg).into_owned())
}

pub fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70000];
    let (n, from) = sock.recv_from(&mut buf).expect("packet from server");
    buf.truncate(n);
    (buf, from)
}

pub fn opcode(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[0], p[1]])
}

pub fn block_no(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[2], p[3]])
}

/// OACK body -> lower-case (name, value) pairs.
pub fn oack_options(p: &[u8]) -> Vec<(String, String)> {
    assert_eq!(opcode(p), 6, "expected OACK, got {p:?}");
    let fields: Vec<String> = p[2..]
        .split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| String::from_utf8(f.to_vec()).unwrap())
        .collect();
    fields
        .chunks(2)
        .map(|c| (c[0].to_lowercase(), c[1].clone()))
        .collect()
}
