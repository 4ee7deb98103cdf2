//! One read transfer, from the accepted request to the last ACK, run on a
//! dedicated thread with its own connected ephemeral UDP socket (a new
//! TID per RFC 1350; the kernel drops datagrams from any other peer).
//!
//! Retransmission happens only on timeout, never on a duplicate ACK (that
//! would be the Sorcerer's Apprentice bug). With an RFC 7440 window, a new
//! ACK for block `k` slides the window to start at `k + 1` (for a partial ACK
//! that means resending the rest), and a timeout resends the window from the
//! last acknowledged block + 1. Block numbers wrap from 65535 to 0.
//!
//! A connected socket means datagrams from other peers never reach the
//! transfer (the kernel drops them) instead of getting ERROR 5.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::admission::{Permit, Refusal};
use crate::negotiate::negotiate;
use crate::packet::{
    encode_error, error_code, parse_client_packet, write_data_header, ClientPacket, Mode, Request,
    RequestKind,
};
use crate::path::tftp_code;
use crate::source::Source;
use crate::spin::{SpinSlots, Spinner};
use crate::stats::TftpStats;
use crate::{TftpConfig, TransferObserver};
use boot_fs::resolve_pinned;

/// Longest single blocking wait, so a stopped server's transfers end promptly.
const POLL_SLICE: Duration = Duration::from_millis(200);

/// Everything a transfer needs from the server.
#[derive(Clone)]
pub(crate) struct Shared {
    pub config: Arc<TftpConfig>,
    pub observer: Arc<dyn TransferObserver>,
    pub stats: Arc<TftpStats>,
    pub stop: Arc<AtomicBool>,
    pub spin_slots: Arc<SpinSlots>,
}

/// How a transfer ended, before it is reported.
enum Outcome {
    Done(u64),
    Probe,
    Failed(u64, String),
}

/// Serves one request end to end and reports it to the observer and stats.
pub(crate) fn serve(
    shared: &Shared,
    permit: &Permit,
    local_ip: IpAddr,
    peer: SocketAddr,
    req: Request,
) {
    let sock = match open_socket(local_ip, peer) {
        Ok(s) => s,
        Err(e) => {
            warn!(%peer, file = %req.filename, "tftp: cannot open transfer socket: {e}");
            TftpStats::inc(&shared.stats.errors);
            shared
                .observer
                .finished(peer, &req.filename, 0, Err(format!("transfer socket: {e}")));
            return;
        }
    };
    let outcome = run(shared, permit, &sock, peer, &req);
    let stats = &shared.stats;
    match outcome {
        Outcome::Done(bytes) => {
            TftpStats::inc(&stats.completed);
            shared.observer.finished(peer, &req.filename, bytes, Ok(()));
        }
        Outcome::Probe => {
            TftpStats::inc(&stats.size_probes);
            debug!(%peer, file = %req.filename, "tftp: client ended after OACK (size probe)");
            shared.observer.finished(peer, &req.filename, 0, Ok(()));
        }
        Outcome::Failed(bytes, msg) => {
            TftpStats::inc(&stats.errors);
            shared
                .observer
                .finished(peer, &req.filename, bytes, Err(msg));
        }
    }
}

fn open_socket(local_ip: IpAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
    sock.connect(peer)?;
    sock.set_read_timeout(Some(POLL_SLICE))?;
    Ok(sock)
}

/// Sends an ERROR packet and builds the failed outcome.
fn refuse(sock: &UdpSocket, peer: SocketAddr, file: &str, code: u16, msg: String) -> Outcome {
    info!(%peer, %file, code, "tftp: refused: {msg}");
    let _ = sock.send(&encode_error(code, &msg));
    Outcome::Failed(0, format!("error {code}: {msg}"))
}

fn run(
    shared: &Shared,
    permit: &Permit,
    sock: &UdpSocket,
    peer: SocketAddr,
    req: &Request,
) -> Outcome {
    let file = req.filename.as_str();
    if req.kind == RequestKind::Write {
        return refuse(
            sock,
            peer,
            file,
            error_code::ACCESS_VIOLATION,
            "write requests are not supported: this server is read-only".into(),
        );
    }
    if req.mode == Mode::Mail {
        return refuse(
            sock,
            peer,
            file,
            error_code::ILLEGAL_OPERATION,
            "mail mode is not supported".into(),
        );
    }
    let path = match resolve_pinned(&shared.config.pinned, &shared.config.roots, file) {
        Ok(p) => p,
        Err(e) => return refuse(sock, peer, file, tftp_code(&e), format!("{file}: {e}")),
    };
    let mut source = match Source::open(&path, req.mode) {
        Ok(s) => s,
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::PermissionDenied {
                error_code::ACCESS_VIOLATION
            } else {
                error_code::NOT_DEFINED
            };
            return refuse(sock, peer, file, code, format!("{file}: cannot read: {e}"));
        }
    };
    let neg = negotiate(&req.options, &shared.config, source.len());
    shared.observer.started(peer, file, source.len());
    debug!(%peer, %file, size = source.len(), blksize = neg.blksize, window = neg.windowsize, "tftp: transfer started");
    // Wake up often enough that a retransmission is at most ~20 % late.
    let slice = (neg.timeout / 5).clamp(Duration::from_millis(10), POLL_SLICE);
    if let Err(e) = sock.set_read_timeout(Some(slice)) {
        return Outcome::Failed(0, End::Io(e).describe(file, peer));
    }
    let started = Instant::now();
    let mut link = Link {
        sock,
        shared,
        permit,
        timeout: neg.timeout,
        retries: shared.config.retries,
        spinner: Spinner::new(shared.config.spin),
    };

    if let Some(oack) = &neg.oack {
        match link.send_until_acked(oack, 0) {
            Ok(()) => {}
            Err(End::ClientError(_, _)) => return Outcome::Probe,
            Err(end) => return Outcome::Failed(0, end.describe(file, peer)),
        }
    }

    let result = send_blocks(&mut link, &mut source, neg.blksize, neg.windowsize);
    match result {
        Ok(bytes) => {
            let secs = started.elapsed().as_secs_f64();
            info!(%peer, %file, bytes, secs, mb_per_s = bytes as f64 / secs.max(1e-9) / 1e6, "tftp: transfer complete");
            Outcome::Done(bytes)
        }
        Err((bytes, end)) => Outcome::Failed(bytes, end.describe(file, peer)),
    }
}

/// Why a transfer stopped early.
enum End {
    ClientError(u16, String),
    Timeout,
    Stopped,
    /// A newer request took the slot before this client ever ACKed.
    Evicted,
    Io(io::Error),
}

impl End {
    fn describe(&self, file: &str, peer: SocketAddr) -> String {
        let msg = match self {
            End::ClientError(code, m) => format!("client sent error {code}: {m}"),
            End::Timeout => "timed out waiting for the client's ACK".to_string(),
            End::Stopped => "server stopped".to_string(),
            End::Evicted => {
                "evicted: server full and the client had not acknowledged anything".to_string()
            }
            End::Io(e) => format!("I/O error: {e}"),
        };
        info!(%peer, %file, "tftp: transfer failed: {msg}");
        msg
    }
}

/// Events of interest while waiting on the transfer socket.
enum Event {
    Ack(u16),
    Deadline,
}

struct Link<'a> {
    sock: &'a UdpSocket,
    shared: &'a Shared,
    permit: &'a Permit,
    timeout: Duration,
    retries: u32,
    spinner: Spinner,
}

impl Link<'_> {
    /// Waits until an ACK arrives or `deadline` passes. Malformed packets are
    /// counted and skipped; a client ERROR ends the transfer.
    fn wait(&self, deadline: Instant, buf: &mut [u8]) -> Result<Event, End> {
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(End::Stopped);
            }
            if self.permit.evicted() {
                let _ = self.sock.send(&encode_error(
                    error_code::NOT_DEFINED,
                    Refusal::ServerFull.message(),
                ));
                return Err(End::Evicted);
            }
            if Instant::now() >= deadline {
                return Ok(Event::Deadline);
            }
            let received = match self.spinner.poll(&self.shared.spin_slots, self.sock, buf) {
                Some(r) => r,
                None => self.sock.recv(buf),
            };
            match received {
                Ok(n) => match parse_client_packet(&buf[..n]) {
                    Some(ClientPacket::Ack(b)) => {
                        self.permit.confirm();
                        return Ok(Event::Ack(b));
                    }
                    Some(ClientPacket::Error { code, message }) => {
                        return Err(End::ClientError(code, message.to_string()))
                    }
                    Some(ClientPacket::Other(_)) | None => {
                        TftpStats::inc(&self.shared.stats.malformed_dropped);
                    }
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(End::Io(e)),
            }
        }
    }

    fn send(&self, pkt: &[u8]) -> Result<(), End> {
        match self.sock.send(pkt) {
            Ok(_) => Ok(()),
            // A full socket buffer is like a lost packet: the timeout resends.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(End::Io(e)),
        }
    }

    /// Sends `lens.len()` packets laid out in `buf` every `stride` bytes (packet
    /// `i` is `buf[i * stride..][..lens[i]]`): one `send` for a single packet,
    /// else sendmmsg(2). Packets the socket buffer cannot take count as lost
    /// (the timeout resends them), like [`Link::send`].
    fn send_many(&self, buf: &[u8], stride: usize, lens: &[usize]) -> Result<(), End> {
        if lens.len() == 1 {
            return self.send(&buf[..lens[0]]);
        }
        let mut iovs: Vec<libc::iovec> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| libc::iovec {
                // sendmmsg only reads through these pointers.
                iov_base: buf[i * stride..i * stride + l].as_ptr() as *mut libc::c_void,
                iov_len: l,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is a plain C struct for which all-zero is a valid
                // value (no address: the socket is connected; no control data).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut sent = 0;
        while sent < msgs.len() {
            let rest = &mut msgs[sent..];
            // SAFETY: `rest` is a live slice of initialised mmsghdr whose iovecs
            // point into `buf` (borrowed for this call, bounds checked above);
            // the descriptor is open for the lifetime of `self.sock`.
            let n = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    // A full socket buffer is like a lost packet: the timeout resends.
                    io::ErrorKind::WouldBlock => return Ok(()),
                    _ => return Err(End::Io(e)),
                }
            }
            if n == 0 {
                return Ok(());
            }
            sent += n as usize;
        }
        Ok(())
    }

    /// Counts a timeout; fails once the retries are used up.
    fn on_timeout(&self, tries: &mut u32) -> Result<(), End> {
        *tries += 1;
        if *tries > self.retries {
            return Err(End::Timeout);
        }
        TftpStats::inc(&self.shared.stats.retransmits);
        Ok(())
    }

    /// Lock-step send of one packet (the OACK) until `block` is acknowledged.
    fn send_until_acked(&self, pkt: &[u8], block: u16) -> Result<(), End> {
        let mut buf = [0u8; 1024];
        let mut tries = 0;
        loop {
            self.send(pkt)?;
            let deadline = Instant::now() + self.timeout;
            loop {
                match self.wait(deadline, &mut buf)? {
                    Event::Ack(b) if b == block => return Ok(()),
                    Event::Ack(_) => {}
                    Event::Deadline => break,
                }
            }
            self.on_timeout(&mut tries)?;
        }
    }
}

/// Sends all blocks with a sliding window; returns the bytes delivered.
fn send_blocks(
    link: &mut Link<'_>,
    source: &mut Source,
    blksize: usize,
    window: u16,
) -> Result<u64, (u64, End)> {
    let len = source.len();
    let last: u64 = len / blksize as u64 + 1;
    let window = u64::from(window.max(1));
    let window_bytes = (window as usize).saturating_mul(blksize);
    let mut pkt = vec![0u8; 4 + blksize];
    // Lengths of the packets of the window being sent.
    let mut lens: Vec<usize> = Vec::with_capacity(window.min(64) as usize);
    let mut rbuf = [0u8; 1024];
    // First unacknowledged block, and next block to send.
    let mut base: u64 = 1;
    let mut next: u64 = 1;
    let mut tries = 0u32;
    let delivered = |base: u64| ((base - 1) * blksize as u64).min(len);
    let stats = &link.shared.stats;
    loop {
        // Lay out every block the window allows back to back in `pkt` (one
        // `4 + blksize` slot each) and send them with one sendmmsg(2): a window
        // of W blocks costs one system call instead of W.
        lens.clear();
        while next < base + window && next <= last {
            let data = source
                .block(next, blksize, window_bytes)
                .map_err(|e| (delivered(base), End::Io(e)))?;
            let n = data.len();
            let slot = lens.len() * (4 + blksize);
            if pkt.len() < slot + 4 + blksize {
                pkt.resize(slot + 4 + blksize, 0);
            }
            pkt[slot + 4..slot + 4 + n].copy_from_slice(data);
            let hdr: &mut [u8; 4] = (&mut pkt[slot..slot + 4])
                .try_into()
                .expect("4-byte header");
            write_data_header(hdr, next as u16);
            lens.push(4 + n);
            next += 1;
        }
        if !lens.is_empty() {
            link.send_many(&pkt, 4 + blksize, &lens)
                .map_err(|e| (delivered(base), e))?;
            let bytes: usize = lens.iter().map(|l| l - 4).sum();
            stats
                .bytes_sent
                .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let deadline = Instant::now() + link.timeout;
        loop {
            match link.wait(deadline, &mut rbuf) {
                Ok(Event::Ack(wire)) => {
                    // Distance of the ACKed block from the last acknowledged one.
                    let dist = u64::from(wire.wrapping_sub((base - 1) as u16));
                    if dist == 0 || dist >= next - (base - 1) {
                        // Duplicate or stale ACK: ignored (no Sorcerer's Apprentice).
                        continue;
                    }
                    let acked = base - 1 + dist;
                    if acked == last {
                        return Ok(len);
                    }
                    base = acked + 1;
                    next = base;
                    tries = 0;
                    break;
                }
                Ok(Event::Deadline) => {
                    link.on_timeout(&mut tries)
                        .map_err(|e| (delivered(base), e))?;
                    next = base;
                    break;
                }
                Err(e) => return Err((delivered(base), e)),
            }
        }
    }
}

/// Sends ERROR `code` from a fresh ephemeral socket (used by the listener for
/// "server busy").
pub(crate) fn send_error_from_new_socket(local_ip: IpAddr, peer: SocketAddr, code: u16, msg: &str) {
    if let Ok(sock) = open_socket(local_ip, peer) {
        let _ = sock.send(&encode_error(code, msg));
    }
}
