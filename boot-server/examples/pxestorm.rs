//! PXE boot-storm client for `qemu-tests/bench/storm.sh`: N simulated BIOS PXE
//! clients started at once, each going through what a PXE ROM + iPXE does on the
//! wire, against whatever DHCP/TFTP/HTTP servers answer on the link:
//!
//! 1. DHCP DORA as a PXE ROM (option 60 `PXEClient:Arch:00000:UNDI:002001`,
//!    93 = 0, 94, 97, distinct MAC, broadcast flag) -> address, next-server, loader;
//! 2. TFTP of the loader from the leased address, blksize 1468, lock-step;
//! 3. DHCP DORA again as iPXE (77 `iPXE`, 175) -> the boot script's URL;
//! 4. HTTP (one kept-alive connection from the leased address, as iPXE): the
//!    script, then the `kernel` and `initrd` URLs it names.
//!
//! The leased addresses must be local to the client's network namespace (the
//! bench routes the DHCP pool to `lo`), so each client binds its own source
//! address once leased. All DHCP traffic shares one socket on port 68, replies
//! are told apart by transaction id. Retransmissions as iPXE (1, 2, 4, 8 s);
//! a NAK restarts discovery (a server that does not reserve what it offered
//! NAKs the loser of two clients offered the same address).
//!
//! `pxestorm -n N [--mac-byte B] [--timeout S]` prints one line per failure
//! (`FAIL client=I phase=P: reason`) and a summary line:
//! `clients=N ok=K failed=F all_secs=S p50_secs=A p99_secs=B phases_p50 dhcp=… tftp=…
//! ipxe_dhcp=… http=… bytes=… client_cpu_secs=C` (user + system CPU of this process).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use boot_dhcp::dhcproto::v4::{
    DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use boot_dhcp::dhcproto::{Decodable, Decoder, Encodable};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::mpsc;

/// Clients waiting for DHCP replies, by transaction id.
type Waiters = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>>;

/// iPXE-like DHCP retransmission: waits of 1, 2, 4, 8 s, then the phase fails.
const DHCP_WAITS: [u64; 4] = [1, 2, 4, 8];
const BLKSIZE: usize = 1468;
/// DISCOVERs started again after a NAK before the client gives up (iPXE has no
/// limit but its overall timeout; this stays well inside the bench's).
const NAK_RESTARTS: usize = 1000;

#[derive(Default, Clone, Copy)]
struct Phases {
    dhcp: f64,
    tftp: f64,
    ipxe_dhcp: f64,
    http: f64,
    bytes: u64,
}

fn main() -> Result<()> {
    let mut n = 5usize;
    let mut mac_byte = 0u8;
    let mut timeout = 300u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-n" => n = args.next().context("-n N")?.parse()?,
            "--mac-byte" => mac_byte = args.next().context("--mac-byte B")?.parse()?,
            "--timeout" => timeout = args.next().context("--timeout S")?.parse()?,
            _ => bail!("usage: pxestorm -n N [--mac-byte B] [--timeout S]"),
        }
    }
    tokio::runtime::Runtime::new()?.block_on(run(n, mac_byte, Duration::from_secs(timeout)))
}

async fn run(n: usize, mac_byte: u8, timeout: Duration) -> Result<()> {
    let sock = dhcp_socket().context("DHCP client socket on :68")?;
    let waiters: Waiters = Arc::default();
    tokio::spawn(dispatch(sock.clone(), waiters.clone()));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (sock, waiters) = (sock.clone(), waiters.clone());
        let mac = [
            0x02,
            0x53,
            mac_byte,
            (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8,
        ];
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = tokio::time::timeout(timeout, client(i, mac, sock, waiters)).await;
            let r = r.unwrap_or_else(|_| Err(anyhow!("phase=timeout: not done in {timeout:?}")));
            (r, t0.elapsed().as_secs_f64())
        }));
    }
    let (mut times, mut phases, mut failed) = (Vec::new(), Vec::new(), 0usize);
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await? {
            (Ok(p), secs) => {
                times.push(secs);
                phases.push(p);
            }
            (Err(e), _) => {
                failed += 1;
                println!("FAIL client={i} {e:#}");
            }
        }
    }
    let all = started.elapsed().as_secs_f64();
    let pick = |f: fn(&Phases) -> f64| pct(&mut phases.iter().map(f).collect::<Vec<_>>(), 50.0);
    let bytes: u64 = phases.iter().map(|p| p.bytes).sum();
    println!(
        "clients={n} ok={} failed={failed} all_secs={all:.3} p50_secs={:.3} p99_secs={:.3} \
         phases_p50 dhcp={:.3} tftp={:.3} ipxe_dhcp={:.3} http={:.3} bytes={bytes} client_cpu_secs={:.2}",
        times.len(),
        pct(&mut times.clone(), 50.0),
        pct(&mut times, 99.0),
        pick(|p| p.dhcp),
        pick(|p| p.tftp),
        pick(|p| p.ipxe_dhcp),
        pick(|p| p.http),
        test_support::process_cpu_secs(),
    );
    Ok(())
}

/// Nearest-rank percentile; 0 for no samples.
fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn dhcp_socket() -> Result<Arc<UdpSocket>> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    // A storm's worth of replies may arrive while the dispatcher is busy.
    s.set_recv_buffer_size(8 << 20)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
    Ok(Arc::new(UdpSocket::from_std(s.into())?))
}

/// Hands every DHCP reply to the client waiting for its transaction id.
async fn dispatch(sock: Arc<UdpSocket>, waiters: Waiters) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((len, _)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(m) = Message::decode(&mut Decoder::new(&buf[..len])) else {
            continue;
        };
        if m.opcode() != Opcode::BootReply {
            continue;
        }
        let tx = waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&m.xid())
            .cloned();
        if let Some(tx) = tx {
            let _ = tx.send(m);
        }
    }
}

async fn client(i: usize, mac: [u8; 6], sock: Arc<UdpSocket>, waiters: Waiters) -> Result<Phases> {
    let mut p = Phases::default();
    let t = Instant::now();
    let xid = 0x5000_0000 | i as u32;
    let (tx, mut rx) = mpsc::unbounded_channel();
    waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(xid, tx);
    let lease = dora(&sock, &mut rx, xid, mac, false)
        .await
        .context("phase=dhcp")?;
    p.dhcp = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let next = if lease.siaddr.is_unspecified() {
        lease.server
    } else {
        lease.siaddr
    };
    p.bytes += tftp_get(lease.ip, next, &lease.file)
        .await
        .context("phase=tftp")?;
    p.tftp = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let xid2 = xid | 0x0800_0000;
    let (tx, mut rx) = mpsc::unbounded_channel();
    waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(xid2, tx);
    let ipxe = dora(&sock, &mut rx, xid2, mac, true)
        .await
        .context("phase=ipxe-dhcp")?;
    {
        let mut w = waiters.lock().unwrap_or_else(|e| e.into_inner());
        w.remove(&xid);
        w.remove(&xid2);
    }
    p.ipxe_dhcp = t.elapsed().as_secs_f64();
    if ipxe.ip != lease.ip {
        bail!(
            "phase=ipxe-dhcp: address changed from {} to {}",
            lease.ip,
            ipxe.ip
        );
    }

    let t = Instant::now();
    p.bytes += http_boot(ipxe.ip, &ipxe.file).await.context("phase=http")?;
    p.http = t.elapsed().as_secs_f64();
    Ok(p)
}

struct Lease {
    ip: Ipv4Addr,
    server: Ipv4Addr,
    siaddr: Ipv4Addr,
    file: String,
}

fn request(mtype: MessageType, xid: u32, mac: [u8; 6], ipxe: bool) -> Message {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new(u, u, u, u, &mac);
    m.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_flags(Flags::default().set_broadcast());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(mtype));
    o.insert(DhcpOption::MaxMessageSize(1472));
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::BootfileName,
        OptionCode::TFTPServerName,
        OptionCode::ClassIdentifier,
        OptionCode::VendorExtensions,
    ]));
    o.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    o.insert(DhcpOption::ClientSystemArchitecture(0u16.into()));
    o.insert(DhcpOption::Unknown(UnknownOption::new(
        OptionCode::from(94u8),
        vec![1, 2, 1],
    )));
    let mut guid = vec![0u8; 11];
    guid.extend_from_slice(&mac);
    o.insert(DhcpOption::ClientMachineIdentifier(guid));
    if ipxe {
        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        // 175: iPXE feature flags (HTTP, TFTP) and version.
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(175u8),
            vec![0x13, 1, 1, 0x15, 1, 1, 0xeb, 3, 1, 0, 0],
        )));
    }
    m
}

/// DISCOVER -> OFFER -> REQUEST -> ACK, with retransmissions; a NAK sends the
/// client back to DISCOVER (as iPXE and PXE ROMs do), at most [`NAK_RESTARTS`] times.
async fn dora(
    sock: &UdpSocket,
    rx: &mut mpsc::UnboundedReceiver<Message>,
    xid: u32,
    mac: [u8; 6],
    ipxe: bool,
) -> Result<Lease> {
    let bcast = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
    let discover = request(MessageType::Discover, xid, mac, ipxe).to_vec()?;
    for _ in 0..=NAK_RESTARTS {
        let offer = exchange(sock, rx, &discover, bcast, MessageType::Offer)
            .await
            .context("no OFFER")?
            .context("NAK to DISCOVER")?;
        let server = match offer.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => bail!("OFFER without server identifier"),
        };
        let mut req = request(MessageType::Request, xid, mac, ipxe);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        req.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        let Some(ack) = exchange(sock, rx, &req.to_vec()?, bcast, MessageType::Ack)
            .await
            .context("no ACK")?
        else {
            continue;
        };
        let file = match ack.opts().get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(f)) => f.clone(),
            _ => ack.fname().unwrap_or_default().to_vec(),
        };
        let file = String::from_utf8_lossy(&file)
            .trim_end_matches('\0')
            .to_string();
        if file.is_empty() {
            bail!("ACK without a boot file name");
        }
        return Ok(Lease {
            ip: ack.yiaddr(),
            server,
            siaddr: ack.siaddr(),
            file,
        });
    }
    bail!("NAK after {NAK_RESTARTS} restarts")
}

/// Sends `packet` until a reply of type `want` arrives; `None` for a NAK.
async fn exchange(
    sock: &UdpSocket,
    rx: &mut mpsc::UnboundedReceiver<Message>,
    packet: &[u8],
    to: SocketAddr,
    want: MessageType,
) -> Result<Option<Message>> {
    for wait in DHCP_WAITS {
        sock.send_to(packet, to).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            match m.opts().get(OptionCode::MessageType) {
                Some(DhcpOption::MessageType(t)) if *t == want => return Ok(Some(m)),
                Some(DhcpOption::MessageType(MessageType::Nak)) => return Ok(None),
                _ => {}
            }
        }
    }
    bail!("no answer after {} tries", DHCP_WAITS.len())
}

/// RFC 1350 + 2347/2348 lock-step read at blksize 1468; returns the bytes read.
async fn tftp_get(local: Ipv4Addr, server: Ipv4Addr, file: &str) -> Result<u64> {
    let sock = UdpSocket::bind(SocketAddrV4::new(local, 0))
        .await
        .with_context(|| format!("bind {local}"))?;
    let mut rrq = vec![0u8, 1];
    for s in [file, "octet", "blksize", &BLKSIZE.to_string(), "tsize", "0"] {
        rrq.extend_from_slice(s.as_bytes());
        rrq.push(0);
    }
    let mut last = rrq;
    let mut dest = SocketAddr::from((server, 69));
    let mut peer: Option<SocketAddr> = None;
    let (mut expect, mut total, mut blksize) = (1u16, 0u64, 512usize);
    let mut buf = vec![0u8; 65536];
    let mut tries = 0;
    loop {
        sock.send_to(&last, dest).await?;
        let got = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await;
        let Ok(got) = got else {
            tries += 1;
            if tries > 5 {
                bail!("timed out at block {expect}");
            }
            continue;
        };
        let (len, from) = got?;
        if peer.is_some_and(|p| p != from) || len < 4 {
            continue;
        }
        peer = Some(from);
        dest = from;
        let pkt = &buf[..len];
        match u16::from_be_bytes([pkt[0], pkt[1]]) {
            6 => {
                // OACK: take the granted blksize, then ACK block 0.
                let fields: Vec<&[u8]> = pkt[2..].split(|b| *b == 0).collect();
                for kv in fields.chunks(2) {
                    if let [k, v] = kv {
                        if k.eq_ignore_ascii_case(b"blksize") {
                            blksize = std::str::from_utf8(v)?.parse()?;
                        }
                    }
                }
                last = vec![0, 4, 0, 0];
            }
            3 => {
                let block = u16::from_be_bytes([pkt[2], pkt[3]]);
                if block == expect {
                    let data = len - 4;
                    total += data as u64;
                    last = vec![0, 4, pkt[2], pkt[3]];
                    expect = expect.wrapping_add(1);
                    if data < blksize {
                        sock.send_to(&last, dest).await?;
                        return Ok(total);
                    }
                }
                tries = 0;
            }
            5 => bail!(
                "TFTP error: {}",
                String::from_utf8_lossy(&pkt[4..]).trim_end_matches('\0')
            ),
            op => bail!("unexpected TFTP opcode {op}"),
        }
    }
}

/// Fetches the script at `url` and the `kernel` / `initrd` URLs it names over
/// one kept-alive connection from `local`; returns the bytes read.
async fn http_boot(local: Ipv4Addr, url: &str) -> Result<u64> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("script URL {url}"))?;
    let host: Ipv4Addr = uri.host().context("URL host")?.parse()?;
    let port = uri.port_u16().unwrap_or(80);
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((local, 0)))?;
    let stream = sock.connect(SocketAddr::from((host, port))).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let script = get(&mut send, &uri, None).await.context("script")?;
    let text = String::from_utf8_lossy(&script.1).into_owned();
    let mut total = script.0;
    let mut fetched = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if !matches!(words.next(), Some("kernel" | "initrd")) {
            continue;
        }
        let Some(u) = words.find(|w| w.starts_with("http://")) else {
            continue;
        };
        let u: hyper::Uri = u.parse()?;
        if u.host() != uri.host() || u.port_u16().unwrap_or(80) != port {
            bail!("{u} is on another server");
        }
        total += get(&mut send, &u, Some(usize::MAX))
            .await
            .with_context(|| u.to_string())?
            .0;
        fetched += 1;
    }
    if fetched < 2 {
        bail!("script names {fetched} of kernel + initrd: {text}");
    }
    Ok(total)
}

/// One GET; returns the body's length and (unless `discard`) the body.
async fn get(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    uri: &hyper::Uri,
    discard: Option<usize>,
) -> Result<(u64, Vec<u8>)> {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = hyper::Request::get(path)
        .header(
            hyper::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(""),
        )
        .header(hyper::header::CONNECTION, "keep-alive")
        .body(Empty::<Bytes>::new())?;
    send.ready().await?;
    let res = send.send_request(req).await?;
    if !res.status().is_success() {
        bail!("HTTP {}", res.status());
    }
    let mut body = res.into_body();
    let (mut n, mut kept) = (0u64, Vec::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
            if discard.is_none() {
                kept.extend_from_slice(&data);
            }
        }
    }
    Ok((n, kept))
}
