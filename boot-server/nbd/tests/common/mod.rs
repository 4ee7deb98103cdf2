//! Test helpers: in-process server, server subprocess, and a minimal blocking NBD client
//! (fixed newstyle + GO, simple replies) for what the stock tools cannot do (pipelining,
//! malformed input, explicit FLUSH before SIGKILL).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use boot_nbd::{DiskStore, ExportResolver, NbdHandle, NbdLimits, NbdServer};
use rand::RngCore;

pub fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    std::fs::write(path, &v).unwrap();
    v
}

/// Runs a server in a background thread with its own runtime; returns its address.
pub fn start_server(store: Arc<DiskStore>, resolver: Arc<dyn ExportResolver>) -> SocketAddr {
    start_server_with(store, resolver, NbdLimits::default()).0
}

/// `start_server` with limits; also returns the server's handle.
pub fn start_server_with(
    store: Arc<DiskStore>,
    resolver: Arc<dyn ExportResolver>,
    limits: NbdLimits,
) -> (SocketAddr, NbdHandle) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let s = NbdServer::bind_with_limits(
                "127.0.0.1:0".parse().unwrap(),
                store,
                resolver,
                limits,
            )
            .await
            .unwrap();
            tx.send((s.local_addr(), s.handle())).unwrap();
            s.run().await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// Runs a command, panicking with its output on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn uri(addr: SocketAddr, name: &str) -> String {
    format!("nbd://{addr}/{name}")
}

pub fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("nbd-serve")
}

/// The example server as a child process; killed on drop.
pub struct ServerProc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServerProc {
    pub fn start(root: &Path, listen: &str) -> ServerProc {
        let mut child = Command::new(example_bin())
            .args(["--root", root.to_str().unwrap(), "--listen", listen])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run examples/nbd-serve (built by cargo test)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected server output {line:?}"))
            .parse()
            .unwrap();
        ServerProc { child, addr }
    }

    pub fn kill9(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Minimal blocking client (simple replies only).
pub struct Client {
    pub s: TcpStream,
    pub size: u64,
    pub flags: u16,
    /// cookie -> expected read length
    pending: HashMap<u64, u32>,
    next: u64,
}

fn be32(s: &mut TcpStream) -> u32 {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    u32::from_be_bytes(b)
}

fn be64(s: &mut TcpStream) -> u64 {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).unwrap();
    u64::from_be_bytes(b)
}

impl Client {
    /// Connects and negotiates `name` with NBD_OPT_GO. Err(reply type) on refusal.
    pub fn connect(addr: SocketAddr, name: &str) -> Result<Client, u32> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut o = Vec::new();
        o.extend_from_slice(b"IHAVEOPT");
        o.extend_from_slice(&7u32.to_be_bytes());
        o.extend_from_slice(&((4 + name.len() + 2) as u32).to_be_bytes());
        o.extend_from_slice(&(name.len() as u32).to_be_bytes());
        o.extend_from_slice(name.as_bytes());
        o.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&o).unwrap();
        let (mut size, mut flags) = (0, 0);
        loop {
            assert_eq!(be64(&mut s), 0x3e889045565a9);
            assert_eq!(be32(&mut s), 7);
            let rtype = be32(&mut s);
            let len = be32(&mut s) as usize;
            let mut p = vec![0u8; len];
            s.read_exact(&mut p).unwrap();
            match rtype {
                1 => break,
                3 if p[..2] == [0, 0] => {
                    size = u64::from_be_bytes(p[2..10].try_into().unwrap());
                    flags = u16::from_be_bytes(p[10..12].try_into().unwrap());
                }
                3 => {}
                e => return Err(e),
            }
        }
        Ok(Client {
            s,
            size,
            flags,
            pending: HashMap::new(),
            next: 1,
        })
    }

    /// Sends a request without waiting; returns its cookie.
    pub fn send(&mut self, cmd: u16, flags: u16, off: u64, len: u32, payload: &[u8]) -> u64 {
        let cookie = self.next;
        self.next += 1;
        let mut h = Vec::with_capacity(28 + payload.len());
        h.extend_from_slice(&0x25609513u32.to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&cmd.to_be_bytes());
        h.extend_from_slice(&cookie.to_be_bytes());
        h.extend_from_slice(&off.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(payload);
        self.s.write_all(&h).unwrap();
        self.pending
            .insert(cookie, if cmd == CMD_READ { len } else { 0 });
        cookie
    }

    /// Receives one reply: (cookie, error, data).
    pub fn recv(&mut self) -> (u64, u32, Vec<u8>) {
        assert_eq!(be32(&mut self.s), 0x67446698, "simple reply magic");
        let err = be32(&mut self.s);
        let cookie = be64(&mut self.s);
        let len = self
            .pending
            .remove(&cookie)
            .expect("reply for a cookie we sent");
        let mut d = Vec::new();
        if err == 0 && len > 0 {
            d = vec![0u8; len as usize];
            self.s.read_exact(&mut d).unwrap();
        }
        (cookie, err, d)
    }

    pub fn call(
        &mut self,
        cmd: u16,
        flags: u16,
        off: u64,
        len: u32,
        payload: &[u8],
    ) -> (u32, Vec<u8>) {
        let c = self.send(cmd, flags, off, len, payload);
        let (rc, err, d) = self.recv();
        assert_eq!(rc, c);
        (err, d)
    }

    pub fn read(&mut self, off: u64, len: u32) -> Vec<u8> {
        let (e, d) = self.call(CMD_READ, 0, off, len, &[]);
        assert_eq!(e, 0, "read error");
        d
    }

    pub fn write(&mut self, off: u64, data: &[u8]) {
        let (e, _) = self.call(CMD_WRITE, 0, off, data.len() as u32, data);
        assert_eq!(e, 0, "write error");
    }

    pub fn flush(&mut self) {
        let (e, _) = self.call(CMD_FLUSH, 0, 0, 0, &[]);
        assert_eq!(e, 0, "flush error");
    }

    pub fn disconnect(mut self) {
        self.send(CMD_DISC, 0, 0, 0, &[]);
        let mut rest = Vec::new();
        let _ = self.s.read_to_end(&mut rest);
    }
}
