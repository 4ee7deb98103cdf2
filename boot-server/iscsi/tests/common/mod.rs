//! Test helpers: a disk store with a random base and an overlay, the target running
//! in-process, command runners, and a minimal blocking initiator (login without
//! authentication, READ 10) for what the stock tools cannot do (binding a source
//! address, watching a session being cut).
#![allow(dead_code)]

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use boot_disk::DiskStore;
use boot_iscsi::pdu::{encode_text, op, parse_text, read_pdu, Digests, Pdu};
use boot_iscsi::{DiskRef, IscsiHandle, IscsiLimits, IscsiServer, TargetConfig};
use rand::RngCore;

pub const OVERLAY_IQN: &str = "iqn.2026-12.test.boot:node";
pub const BASE_IQN: &str = "iqn.2026-12.test.boot:base";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Arc<DiskStore>,
    pub base: Vec<u8>,
    pub addr: SocketAddr,
    pub handle: IscsiHandle,
}

impl Fixture {
    /// A store with base "deb" (`size` random bytes) and overlay "node" on it, served
    /// as OVERLAY_IQN (read-write) and BASE_IQN (read-only) to any address.
    pub fn new(size: usize) -> Fixture {
        Self::with_limits(size, IscsiLimits::default())
    }

    pub fn with_limits(size: usize, limits: IscsiLimits) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let mut base = vec![0u8; size];
        rand::thread_rng().fill_bytes(&mut base);
        std::fs::write(&src, &base).unwrap();
        let store = Arc::new(DiskStore::open(&dir.path().join("store")).unwrap());
        store.create_base_from_file("deb", &src).unwrap();
        store.create_overlay("node", "deb").unwrap();
        let (addr, handle) = start_server(store.clone(), limits);
        for (iqn, disk) in [
            (OVERLAY_IQN, DiskRef::Overlay("node".into())),
            (BASE_IQN, DiskRef::Base("deb".into())),
        ] {
            handle
                .add_target(
                    iqn,
                    TargetConfig {
                        disk,
                        allowed_initiator: None,
                        chap: None,
                    },
                )
                .unwrap();
        }
        Fixture {
            dir,
            store,
            base,
            addr,
            handle,
        }
    }

    pub fn url(&self, iqn: &str) -> String {
        format!("iscsi://{}/{iqn}/0", self.addr)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs a server in a background thread with its own runtime.
pub fn start_server(store: Arc<DiskStore>, limits: IscsiLimits) -> (SocketAddr, IscsiHandle) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let s = IscsiServer::bind("127.0.0.1:0".parse().unwrap(), store, limits)
                .await
                .unwrap();
            tx.send((s.local_addr(), s.handle())).unwrap();
            s.run().await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// Runs a command and returns its output (whatever the exit status).
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// Runs a command, panicking with its output on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn read_file(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Minimal initiator: one normal session, no authentication, no digests.
pub struct Client {
    pub s: TcpStream,
    cmd_sn: u32,
    stat_sn: u32,
    itt: u32,
}

impl Client {
    /// Logs in to `target` from source address `from` (any loopback address works on
    /// Linux). Err(status class/detail) when the target refuses the login.
    pub fn login(addr: SocketAddr, from: Option<IpAddr>, target: &str) -> Result<Client, u16> {
        let s = match from {
            Some(ip) => connect_from(ip, addr),
            None => TcpStream::connect(addr).unwrap(),
        };
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut c = Client {
            s,
            cmd_sn: 1,
            stat_sn: 0,
            itt: 1,
        };
        let mut p = Pdu::new(op::LOGIN);
        p.bhs[0] |= 0x40;
        p.bhs[1] = 0x80 | (1 << 2) | 3;
        p.bhs[8..14].copy_from_slice(&[0x80, 0x12, 0x34, 0x56, 0, 1]);
        p.set_u32(16, c.itt);
        p.set_u32(24, c.cmd_sn);
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        p.data = encode_text(&[
            kv("InitiatorName", "iqn.2026-12.test:client"),
            kv("TargetName", target),
            kv("SessionType", "Normal"),
            kv("HeaderDigest", "None"),
            kv("DataDigest", "None"),
            kv("MaxRecvDataSegmentLength", "65536"),
        ]);
        c.s.write_all(&p.encode(Digests::default())).unwrap();
        let r = read_pdu(&mut c.s, Digests::default(), 1 << 20).map_err(|_| 0xffffu16)?;
        assert_eq!(r.opcode(), op::LOGIN_RESP);
        let status = u16::from_be_bytes([r.bhs[36], r.bhs[37]]);
        if status != 0 {
            return Err(status);
        }
        assert_eq!(r.bhs[1] & 0x83, 0x83, "transit to full feature phase");
        parse_text(&r.data).unwrap();
        c.stat_sn = r.u32_at(24).wrapping_add(1);
        Ok(c)
    }

    /// READ 10 of `blocks` 512-byte blocks at `lba`; Err on a dropped connection.
    pub fn read10(&mut self, lba: u32, blocks: u16) -> std::io::Result<Vec<u8>> {
        self.itt += 1;
        let len = u32::from(blocks) * 512;
        let mut p = Pdu::new(op::SCSI_CMD);
        p.bhs[1] = 0xc0;
        p.set_u32(16, self.itt);
        p.set_u32(20, len);
        p.set_u32(24, self.cmd_sn);
        p.set_u32(28, self.stat_sn);
        self.cmd_sn += 1;
        p.bhs[32] = 0x28;
        p.bhs[34..38].copy_from_slice(&lba.to_be_bytes());
        p.bhs[39..41].copy_from_slice(&blocks.to_be_bytes());
        self.s.write_all(&p.encode(Digests::default()))?;
        let mut data = vec![0u8; len as usize];
        loop {
            let r = read_pdu(&mut self.s, Digests::default(), 1 << 20)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            match r.opcode() {
                op::DATA_IN => {
                    let off = r.u32_at(40) as usize;
                    data[off..off + r.data.len()].copy_from_slice(&r.data);
                    if r.bhs[1] & 0x01 != 0 {
                        assert_eq!(r.bhs[3], 0, "status");
                        self.stat_sn = r.u32_at(24).wrapping_add(1);
                        return Ok(data);
                    }
                }
                op::SCSI_RESP => {
                    self.stat_sn = r.u32_at(24).wrapping_add(1);
                    if r.bhs[3] != 0 {
                        return Err(std::io::Error::other(format!("status {}", r.bhs[3])));
                    }
                    return Ok(data);
                }
                o => return Err(std::io::Error::other(format!("unexpected opcode {o:#x}"))),
            }
        }
    }
}

fn connect_from(ip: IpAddr, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}
