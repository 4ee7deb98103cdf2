//! Socket side of the DHCP server: binds port 67 (and the PXE port 4011) with
//! SO_BROADCAST / SO_REUSEADDR / SO_BINDTODEVICE, hands every datagram to the
//! [`Handler`] (concurrently, so durable commits can batch), sends replies,
//! runs lease expiry, and (re)tries loading the leases with backoff until the
//! store answers: a failing store never stops the server.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{info, warn};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

use crate::batch::{send_batch, RecvBatch, RECV_BATCH};
use crate::handler::{Handler, Ingress, Outgoing};
use crate::reservations::Reservations;
use crate::stats::DhcpStats;
use crate::types::{BootAdvisor, DhcpConfig, LeaseStore, Mode};

/// Requests in flight per socket at most (back-pressure under floods).
const MAX_IN_FLIGHT: usize = 8192;
/// Datagrams taken in between two yields to the runtime.
const YIELD_EVERY: usize = 256;
/// How often expired leases are swept.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(30);
/// First and longest wait between lease-load attempts.
const LOAD_RETRY_MIN: Duration = Duration::from_millis(500);
const LOAD_RETRY_MAX: Duration = Duration::from_secs(30);

/// The DHCPv4 server.
pub struct DhcpServer {
    handler: Arc<Handler>,
    dhcp: Arc<UdpSocket>,
    pxe: Option<Arc<UdpSocket>>,
    coalesce: Duration,
}

/// What the integrator may do to a running server (cheap to clone).
#[derive(Clone)]
pub struct DhcpControl {
    handler: Arc<Handler>,
}

impl DhcpControl {
    /// The live reservation table.
    pub fn reservations(&self) -> Arc<Reservations> {
        self.handler.reservations()
    }

    /// Take `ip` from the client holding it: its lease is removed from the
    /// store, then from memory. Use it before moving a reserved address to
    /// a new MAC (the new holder gets the address only once it is free).
    /// Returns the MAC that held it.
    pub async fn free_address(&self, ip: Ipv4Addr) -> anyhow::Result<Option<[u8; 6]>> {
        self.handler.free_address(ip).await
    }

    /// Whether the leases are loaded (full mode answers only then).
    pub fn is_loaded(&self) -> bool {
        self.handler.is_loaded()
    }
}

/// A UDP socket bound to 0.0.0.0:`port`, optionally to a device.
fn udp_socket(port: u16, interface: Option<&str>) -> anyhow::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).context("socket")?;
    s.set_reuse_address(true).context("SO_REUSEADDR")?;
    s.set_broadcast(true).context("SO_BROADCAST")?;
    // Large buffers so bursts are not dropped while tasks run.
    // SO_RCVBUFFORCE/SO_SNDBUFFORCE (root) go past net.core.[rw]mem_max.
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(&s, sockopt::RcvBufForce, &(8 << 20)).is_err() {
        let _ = s.set_recv_buffer_size(8 << 20);
    }
    if setsockopt(&s, sockopt::SndBufForce, &(8 << 20)).is_err() {
        let _ = s.set_send_buffer_size(8 << 20);
    }
    if let Some(dev) = interface {
        s.bind_device(Some(dev.as_bytes()))
            .with_context(|| format!("SO_BINDTODEVICE {dev}"))?;
    }
    s.set_nonblocking(true)?;
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    s.bind(&addr.into())
        .with_context(|| format!("binding UDP port {port}"))?;
    UdpSocket::from_std(s.into()).context("registering socket with tokio")
}

impl DhcpServer {
    /// Bind the sockets and load durable leases.
    pub async fn bind(
        config: DhcpConfig,
        advisor: Arc<dyn BootAdvisor>,
        leases: Arc<dyn LeaseStore>,
    ) -> anyhow::Result<Self> {
        let iface = config.interface.clone();
        let dhcp = Arc::new(udp_socket(config.listen_port, iface.as_deref())?);
        let pxe = if config.proxy_port != 0 {
            Some(Arc::new(udp_socket(config.proxy_port, iface.as_deref())?))
        } else {
            None
        };
        let mode = config.mode;
        let coalesce = config.coalesce;
        let handler = Arc::new(Handler::new(config, advisor, leases));
        if mode == Mode::Full {
            // One attempt now; on failure `run` keeps retrying and full mode
            // answers nothing until the leases are loaded.
            match handler.load().await {
                Ok(n) => info!(?mode, leases = n, interface = ?iface, "DHCP server bound"),
                Err(e) => {
                    warn!(?mode, interface = ?iface, "DHCP server bound, leases not loaded yet (retrying): {e:#}")
                }
            }
        } else {
            info!(?mode, interface = ?iface, "DHCP server bound");
        }
        Ok(DhcpServer {
            handler,
            dhcp,
            pxe,
            coalesce,
        })
    }

    /// The live reservation table (push the integrator's table with
    /// [`Reservations::replace`]).
    pub fn reservations(&self) -> Arc<Reservations> {
        self.handler.reservations()
    }

    /// A control handle that outlives [`DhcpServer::run`]'s move.
    pub fn control(&self) -> DhcpControl {
        DhcpControl {
            handler: self.handler.clone(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> Arc<DhcpStats> {
        self.handler.stats()
    }

    /// Serve until an unrecoverable socket error.
    pub async fn run(self) -> anyhow::Result<()> {
        let expiry = {
            let h = self.handler.clone();
            tokio::spawn(async move {
                load_until_loaded(&h).await;
                let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
                loop {
                    tick.tick().await;
                    let n = h.expire().await;
                    if n > 0 {
                        info!(expired = n, "leases expired");
                    }
                }
            })
        };
        // Unconstrained: tokio's cooperative budget (128 operations per
        // poll of a task) would make every commit's completion look pending
        // once a few hundred requests share this task, and the task would
        // spin re-polling them. `serve` yields to the runtime by itself.
        let main = tokio::task::unconstrained(serve(
            self.handler.clone(),
            self.dhcp.clone(),
            Ingress::Dhcp,
            self.coalesce,
        ));
        let res = match self.pxe.clone() {
            Some(pxe) => {
                let p = tokio::task::unconstrained(serve(
                    self.handler.clone(),
                    pxe,
                    Ingress::Pxe,
                    self.coalesce,
                ));
                tokio::try_join!(main, p).map(|_| ())
            }
            None => main.await,
        };
        expiry.abort();
        res
    }
}

/// Retry loading the leases with exponential backoff until it works.
async fn load_until_loaded(h: &Handler) {
    let mut wait = LOAD_RETRY_MIN;
    while !h.is_loaded() {
        tokio::time::sleep(wait).await;
        match h.load().await {
            Ok(n) => info!(leases = n, "leases loaded: DHCP answering"),
            Err(e) => {
                warn!(retry_in = ?wait, "leases still not loaded: {e:#}");
                wait = (wait * 2).min(LOAD_RETRY_MAX);
            }
        }
    }
}

/// Receive, handle and answer on one socket, all in this one task: the
/// datagrams waiting on the socket are read in a row (`recvmmsg`, a batch
/// per call), their handlers run concurrently in this task (a REQUEST waits
/// for its durable commit while the next datagrams are handled, so
/// concurrent commits share one fsync), and the replies ready together
/// leave together (`sendmmsg`). No task per datagram: spawning, a semaphore
/// and hand-offs between worker threads cost more CPU than handling a
/// DISCOVER. Under load, wake-ups are moderated (see [`Moderation`]).
async fn serve(
    handler: Arc<Handler>,
    sock: Arc<UdpSocket>,
    ingress: Ingress,
    coalesce: Duration,
) -> anyhow::Result<()> {
    let fd = sock.as_raw_fd();
    let mut batch = RecvBatch::default();
    let mut ready: Vec<Outgoing> = Vec::new();
    let mut inflight = FuturesUnordered::new();
    let h = &*handler;
    let mut since_yield = 0usize;
    let mut moderation = Moderation::new(coalesce);
    loop {
        // Under a flood the socket never runs dry: let the runtime's other
        // tasks on this worker run now and then.
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        // Everything already queued on the socket, up to the in-flight bound
        // (back-pressure under floods: the rest waits in the socket buffer).
        while inflight.len() < MAX_IN_FLIGHT {
            let room = MAX_IN_FLIGHT - inflight.len();
            let n = match sock.try_io(Interest::READABLE, || batch.recv(fd, room)) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors surface here (ECONNREFUSED...): not fatal.
                    warn!("DHCP recv error: {e}");
                    break;
                }
            };
            for i in 0..n {
                match batch.get(i) {
                    Some((d, src)) => {
                        let packet = d.to_vec();
                        inflight.push(async move { h.handle(&packet, src, ingress).await });
                    }
                    None => {
                        DhcpStats::inc(&h.stats().received);
                        DhcpStats::inc(&h.stats().malformed_dropped);
                    }
                }
            }
            since_yield += n;
            if n < room.min(RECV_BATCH) {
                break; // the socket had no more: skip the call that says so
            }
        }
        // Replies that are ready now (DISCOVERs need no store: all of them).
        while let Some(Some(out)) = inflight.next().now_or_never() {
            ready.extend(out);
        }
        send_all(h, &sock, &mut ready).await;
        moderation.before_wait();
        tokio::select! {
            biased;
            Some(out) = inflight.next(), if !inflight.is_empty() => {
                ready.extend(out);
                // A group commit completes many REQUESTs at once.
                while let Some(Some(out)) = inflight.next().now_or_never() {
                    ready.extend(out);
                }
                send_all(h, &sock, &mut ready).await;
            }
            r = sock.readable(), if inflight.len() < MAX_IN_FLIGHT => {
                if let Err(e) = r {
                    warn!("DHCP socket: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Interrupt moderation in user space ([`crate::DEFAULT_COALESCE`]): when
/// the server comes back to wait less than `pause` after it last began to
/// wait (datagrams or commits keep waking it), it is busy, and it sleeps
/// `pause` first so that the next read takes a batch. It blocks the thread
/// on purpose: the server runs on a thread of its own, and an async timer
/// would wake the task for every commit completing meanwhile. Measured at
/// 16,000 exchanges/s: 20-21 µs of CPU per exchange with the sleep, 22-24 µs
/// with tokio's timer, 29 µs without moderation.
struct Moderation {
    pause: Duration,
    /// When the server last began to wait (`None`: never yet).
    wait_began: Option<std::time::Instant>,
}

impl Moderation {
    fn new(pause: Duration) -> Self {
        Moderation {
            pause,
            wait_began: None,
        }
    }

    /// Called right before the server waits for its socket or commits.
    fn before_wait(&mut self) {
        if self.pause.is_zero() {
            return;
        }
        if self.wait_began.is_some_and(|t| t.elapsed() < self.pause) {
            std::thread::sleep(self.pause);
        }
        self.wait_began = Some(std::time::Instant::now());
    }
}

/// Sends the replies in `ready` (one `sendmmsg` per batch; what a full send
/// buffer refuses waits for room) and empties it; failures are counted.
async fn send_all(h: &Handler, sock: &UdpSocket, ready: &mut Vec<Outgoing>) {
    let mut from = 0;
    while from < ready.len() {
        let rest: Vec<(&[u8], SocketAddrV4)> = ready[from..]
            .iter()
            .map(|o| (&o.packet[..], o.dest))
            .collect();
        let r = sock.try_io(Interest::WRITABLE, || {
            match send_batch(sock.as_raw_fd(), &rest) {
                (0, None) => Err(std::io::ErrorKind::WouldBlock.into()),
                r => Ok(r),
            }
        });
        let (sent, err) = match r {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(e) = sock.writable().await {
                    warn!("DHCP socket: {e}");
                    break;
                }
                continue;
            }
            Err(e) => (0, Some(e)),
        };
        for o in &ready[from..from + sent] {
            DhcpStats::add(&h.stats().bytes_sent, o.packet.len());
        }
        from += sent;
        if let Some(e) = err {
            // This reply cannot go (e.g. no route): count it, go on.
            DhcpStats::inc(&h.stats().send_errors);
            warn!(dest = %ready[from].dest, "sending DHCP reply: {e}");
            from += 1;
        }
    }
    ready.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn moderation_pauses_a_busy_server_and_never_an_idle_one() {
        let pause = Duration::from_millis(200);
        let mut m = Moderation::new(pause);
        let timed = |m: &mut Moderation| {
            let t = Instant::now();
            m.before_wait();
            t.elapsed()
        };
        assert!(timed(&mut m) < pause, "the first wait is not delayed");
        // Back to wait at once: busy, so it pauses.
        assert!(timed(&mut m) >= pause, "a busy server pauses");
        // The last wait lasted longer than the pause: idle, no pause.
        std::thread::sleep(pause + Duration::from_millis(50));
        assert!(timed(&mut m) < pause, "an idle server answers at once");
        // Off: never pauses.
        let mut off = Moderation::new(Duration::ZERO);
        for _ in 0..3 {
            assert!(timed(&mut off) < pause);
        }
    }
}
