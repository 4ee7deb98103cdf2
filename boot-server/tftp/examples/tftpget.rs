//! Minimal TFTP download client with RFC 7440 windowsize, for the benchmark
//! `qemu-tests/bench/tftp.sh` (curl and atftp have no windowsize option).
//!
//! `tftpget [--blksize N] [--windowsize N] HOST:PORT FILE OUT`
//!
//! Asks for blksize/windowsize/tsize; uses what the OACK grants (a server
//! without RFC 7440 leaves windowsize out: then lock-step). ACKs every
//! window's last block, the last block of the file, and on a gap the last
//! block received in order (RFC 7440 §4); on a 1 s silence it re-sends its
//! last ACK. Prints one line: `bytes=N secs=S mb_per_s=R blksize=B windowsize=W`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

fn main() -> anyhow::Result<()> {
    let mut blksize: u16 = 1468;
    let mut windowsize: u16 = 1;
    let mut pos = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--blksize" => blksize = args.next().context("--blksize N")?.parse()?,
            "--windowsize" => windowsize = args.next().context("--windowsize N")?.parse()?,
            _ => pos.push(a),
        }
    }
    let [server, file, out] = pos.as_slice() else {
        bail!("usage: tftpget [--blksize N] [--windowsize N] HOST:PORT FILE OUT");
    };
    let server: SocketAddr = server.to_socket_addrs()?.next().context("server address")?;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(out).context("output file")?);

    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut req = vec![0u8, 1];
    for s in [
        file.as_str(),
        "octet",
        "blksize",
        &blksize.to_string(),
        "windowsize",
        &windowsize.to_string(),
        "tsize",
        "0",
    ] {
        req.extend_from_slice(s.as_bytes());
        req.push(0);
    }
    let started = Instant::now();
    sock.send_to(&req, server)?;

    let mut buf = vec![0u8; 65536];
    // Until the OACK (or DATA 1) arrives: lock-step, default block size.
    let (mut bs, mut win) = (512usize, 1u16);
    let (n, peer) = recv(&sock, &mut buf).context("no answer to the request")?;
    sock.connect(peer)?;
    let mut pending: Option<usize> = None;
    match op(&buf[..n]) {
        6 => {
            for pair in buf[2..n].split(|&b| b == 0).collect::<Vec<_>>().chunks(2) {
                if let [k, v] = pair {
                    let v: usize = std::str::from_utf8(v)?.parse().unwrap_or(0);
                    match std::str::from_utf8(k)?.to_ascii_lowercase().as_str() {
                        "blksize" => bs = v,
                        "windowsize" => win = v.max(1) as u16,
                        _ => {}
                    }
                }
            }
            sock.send(&ack(0))?;
        }
        3 => pending = Some(n),
        5 => bail!("server error: {}", String::from_utf8_lossy(&buf[4..n])),
        o => bail!("unexpected opcode {o}"),
    }

    let mut last_ack: u16 = 0;
    let mut expected: u16 = 1;
    let mut in_window = 0u16;
    let mut bytes = 0u64;
    loop {
        let n = match pending.take() {
            Some(n) => n,
            None => match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if started.elapsed() > Duration::from_secs(600) {
                        bail!("gave up");
                    }
                    sock.send(&ack(last_ack))?;
                    in_window = 0;
                    continue;
                }
                Err(e) => return Err(e.into()),
            },
        };
        match op(&buf[..n]) {
            3 if n >= 4 => {}
            5 => bail!("server error: {}", String::from_utf8_lossy(&buf[4..n])),
            _ => continue,
        }
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if block != expected {
            // Gap or duplicate: tell the server where we are (once per window).
            if block.wrapping_sub(expected) < 0x8000 && in_window != u16::MAX {
                sock.send(&ack(last_ack))?;
                in_window = u16::MAX;
            }
            continue;
        }
        out.write_all(&buf[4..n])?;
        bytes += (n - 4) as u64;
        let last = n - 4 < bs;
        in_window = if in_window == u16::MAX {
            1
        } else {
            in_window + 1
        };
        if last || in_window >= win {
            sock.send(&ack(block))?;
            last_ack = block;
            in_window = 0;
        } else {
            last_ack = block;
        }
        expected = expected.wrapping_add(1);
        if last {
            break;
        }
    }
    out.flush()?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bytes={bytes} secs={secs:.3} mb_per_s={:.1} blksize={bs} windowsize={win}",
        bytes as f64 / secs / 1e6
    );
    Ok(())
}

fn recv(sock: &UdpSocket, buf: &mut [u8]) -> anyhow::Result<(usize, SocketAddr)> {
    for _ in 0..5 {
        match sock.recv_from(buf) {
            Ok(x) => return Ok(x),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    bail!("timed out")
}

fn op(p: &[u8]) -> u16 {
    if p.len() < 2 {
        0
    } else {
        u16::from_be_bytes([p[0], p[1]])
    }
}

fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, 4, b[0], b[1]]
}
