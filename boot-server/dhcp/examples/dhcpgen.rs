//! Open-loop DHCP load generator for `qemu-tests/bench/dhcp.sh` (`GEN=dhcpgen`).
//!
//! It acts as a relay, like `perfdhcp -l`: it binds its address's port 67,
//! puts that address in giaddr, sends DISCOVERs at a fixed rate from
//! `--clients` MACs in turn, answers every OFFER with a REQUEST (same xid,
//! options 50 and 54), and counts ACKs. At the end it prints perfdhcp's
//! statistics blocks (`sent packets`, `received packets`, `drops`, delays), so
//! the bench reads both generators alike.
//!
//! Why it exists: on this 2-core machine one perfdhcp offers 17-23k DISCOVER/s
//! at most, two together about 22k, so a server twice as fast as Kea cannot be
//! shown with it. This one builds each packet by patching a template, reads
//! replies at fixed offsets, and sends and receives in batches
//! (`sendmmsg`/`recvmmsg`), leaving more of the machine to the server under
//! test. The packets are written by hand on purpose: an encoder and decoder
//! per packet (dhcproto's) is what makes a generator the bottleneck.
//!
//! ```text
//! dhcpgen --local 10.9.0.2 --server 10.9.0.1 --rate 30000 --secs 10 \
//!         --clients 50000 [--mac-base 0] [--drain-ms 2000]
//! ```

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use boot_dhcp::batch::{send_batch, RecvBatch, RECV_BATCH};

/// DISCOVERs queued per round at most (the rest go next round).
const SEND_BURST: usize = 256;

struct Args {
    local: Ipv4Addr,
    server: Ipv4Addr,
    rate: f64,
    secs: f64,
    clients: u32,
    mac_base: u8,
    drain: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        local: Ipv4Addr::UNSPECIFIED,
        server: Ipv4Addr::UNSPECIFIED,
        rate: 1000.0,
        secs: 10.0,
        clients: 1000,
        mac_base: 0,
        drain: Duration::from_secs(2),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--local" => a.local = v.parse()?,
            "--server" => a.server = v.parse()?,
            "--rate" => a.rate = v.parse()?,
            "--secs" => a.secs = v.parse()?,
            "--clients" => a.clients = v.parse()?,
            "--mac-base" => a.mac_base = v.parse()?,
            "--drain-ms" => a.drain = Duration::from_millis(v.parse()?),
            _ => bail!("unknown option {k}"),
        }
    }
    if a.local.is_unspecified() || a.server.is_unspecified() || a.clients == 0 {
        bail!("usage: dhcpgen --local IP --server IP [--rate N] [--secs S] [--clients N] [--mac-base B] [--drain-ms MS]");
    }
    Ok(a)
}

/// BOOTP header (236 bytes) + magic cookie, relayed by `giaddr`.
fn header(xid: u32, mac: [u8; 6], giaddr: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[3] = 1; // hops: one relay
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[24..28].copy_from_slice(&giaddr.octets());
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p
}

fn discover(xid: u32, mac: [u8; 6], giaddr: Ipv4Addr) -> Vec<u8> {
    let mut p = header(xid, mac, giaddr);
    p.extend_from_slice(&[53, 1, 1, 55, 4, 1, 3, 6, 15, 255]);
    p
}

fn request(xid: u32, mac: [u8; 6], giaddr: Ipv4Addr, ip: [u8; 4], server: [u8; 4]) -> Vec<u8> {
    let mut p = header(xid, mac, giaddr);
    p.extend_from_slice(&[53, 1, 3, 50, 4]);
    p.extend_from_slice(&ip);
    p.extend_from_slice(&[54, 4]);
    p.extend_from_slice(&server);
    p.extend_from_slice(&[55, 4, 1, 3, 6, 15, 255]);
    p
}

/// A reply's xid, message type (option 53), yiaddr and server id (option 54).
fn parse_reply(p: &[u8]) -> Option<(u32, u8, [u8; 4], [u8; 4])> {
    if p.len() < 240 || p[0] != 2 || p[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let xid = u32::from_be_bytes(p[4..8].try_into().ok()?);
    let yiaddr: [u8; 4] = p[16..20].try_into().ok()?;
    let (mut mtype, mut server) = (0u8, [0u8; 4]);
    let mut i = 240;
    while i < p.len() {
        match p[i] {
            0 => i += 1,
            255 => break,
            code => {
                let len = *p.get(i + 1)? as usize;
                let v = p.get(i + 2..i + 2 + len)?;
                match (code, len) {
                    (53, 1) => mtype = v[0],
                    (54, 4) => server.copy_from_slice(v),
                    _ => {}
                }
                i += 2 + len;
            }
        }
    }
    Some((xid, mtype, yiaddr, server))
}

/// One exchange's timestamps (µs since start; 0 = not yet).
#[derive(Clone, Copy, Default)]
struct Exchange {
    discover_at: u64,
    offer_at: u64,
    request_at: u64,
    ack_at: u64,
}

#[derive(Default)]
struct Leg {
    sent: u64,
    received: u64,
    delays_us: Vec<u64>,
}

impl Leg {
    fn print(&self, name: &str) {
        println!("***Statistics for: {name}***");
        println!("sent packets: {}", self.sent);
        println!("received packets: {}", self.received);
        println!("drops: {}", self.sent.saturating_sub(self.received));
        let d = &self.delays_us;
        if let (Some(min), Some(max)) = (d.iter().min(), d.iter().max()) {
            let avg = d.iter().sum::<u64>() as f64 / d.len() as f64;
            for (what, us) in [("min", *min as f64), ("avg", avg), ("max", *max as f64)] {
                println!("{what} delay: {:.3} ms", us / 1000.0);
            }
        }
        println!();
    }
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let sock = UdpSocket::bind(SocketAddrV4::new(a.local, 67))
        .with_context(|| format!("binding {}:67", a.local))?;
    sock.set_nonblocking(true)?;
    {
        // Replies come in bursts (a group commit releases many ACKs at once).
        use nix::sys::socket::{setsockopt, sockopt};
        let _ = setsockopt(&sock, sockopt::RcvBufForce, &(16 << 20));
        let _ = setsockopt(&sock, sockopt::SndBufForce, &(16 << 20));
    }
    let fd = sock.as_raw_fd();
    let server = SocketAddrV4::new(a.server, 67);
    let total = (a.rate * a.secs) as u64;
    let mut ex = vec![Exchange::default(); total as usize];
    let (mut disc, mut req) = (Leg::default(), Leg::default());
    let mut queue: Vec<Vec<u8>> = Vec::new();
    let mut rx = RecvBatch::default();
    let mac_of = |k: u64| {
        let c = (k % a.clients as u64) as u32;
        [
            0x02,
            0x0c,
            a.mac_base,
            (c >> 16) as u8,
            (c >> 8) as u8,
            c as u8,
        ]
    };
    let start = Instant::now();
    let cpu0 = test_support::process_cpu_secs();
    let stop_sending = Duration::from_secs_f64(a.secs);
    let mut next = 0u64;
    loop {
        let now = start.elapsed();
        let us = now.as_micros() as u64 + 1;
        // DISCOVERs due by now (open loop: they go whatever came back).
        let due = if now < stop_sending {
            ((now.as_secs_f64() * a.rate) as u64).min(total)
        } else {
            total
        };
        while next < due && queue.len() < SEND_BURST {
            let xid = next as u32;
            queue.push(discover(xid, mac_of(next), a.local));
            ex[next as usize].discover_at = us;
            disc.sent += 1;
            next += 1;
        }
        let mut busy = false;
        if !queue.is_empty() {
            let packets: Vec<(&[u8], SocketAddrV4)> =
                queue.iter().map(|p| (&p[..], server)).collect();
            let (sent, err) = send_batch(fd, &packets);
            if let Some(e) = err {
                bail!("send: {e}");
            }
            queue.drain(..sent);
            busy |= sent > 0;
        }
        loop {
            let n = match rx.recv(fd, RECV_BATCH) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => bail!("recv: {e}"),
            };
            busy = true;
            for i in 0..n {
                let Some((d, _)) = rx.get(i) else { continue };
                let Some((xid, mtype, yiaddr, sid)) = parse_reply(d) else {
                    continue;
                };
                let Some(e) = ex.get_mut(xid as usize) else {
                    continue;
                };
                match mtype {
                    2 if e.offer_at == 0 => {
                        e.offer_at = us;
                        disc.received += 1;
                        disc.delays_us.push(us - e.discover_at);
                        queue.push(request(xid, mac_of(xid as u64), a.local, yiaddr, sid));
                        e.request_at = us;
                        req.sent += 1;
                    }
                    5 if e.request_at != 0 && e.ack_at == 0 => {
                        e.ack_at = us;
                        req.received += 1;
                        req.delays_us.push(us - e.request_at);
                    }
                    _ => {}
                }
            }
            if n < RECV_BATCH {
                break;
            }
        }
        let answered = disc.received == disc.sent && req.received == req.sent;
        if now >= stop_sending && next == total && queue.is_empty() && answered {
            break;
        }
        if now >= stop_sending + a.drain {
            break;
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    disc.print("DISCOVER-OFFER");
    req.print("REQUEST-ACK");
    println!(
        "generator CPU: {:.2} s for {} exchanges started",
        test_support::process_cpu_secs() - cpu0,
        disc.sent
    );
    Ok(())
}
