//! The request listener: receives RRQ/WRQ packets on the server port, drops and
//! counts malformed ones, and hands each request to its own transfer (see
//! [`crate::transfer`]) on a dedicated thread (not tokio's blocking pool, so
//! many slow TFTP clients can never starve the host's `spawn_blocking` users;
//! [`crate::TftpConfig::max_transfers`] bounds the thread count).
//!
//! Admission ([`crate::admission`]) bounds the transfers per client address
//! and in total (a full server first evicts the oldest transfer whose client
//! never ACKed); a request over a limit gets an immediate ERROR 0 from a fresh
//! port (never silence, so a real client fails fast and can retry). Such
//! refusals are counted in [`TftpStats::refused_busy`] and logged at most once
//! a second, and are deliberately *not* reported to the observer: a flood would
//! otherwise become a flood of audit-log writes.
//!
//! A retransmitted RRQ (client impatient before our first reply) starts a
//! second transfer; the client keeps the first TID and answers the other with
//! ERROR 5, which ends it. Requests are deliberately not de-duplicated by peer
//! address: EDK2 may reuse its port for the real RRQ right after the tsize
//! probe, and dropping that would cost the client a 3 s retry.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Refusal};
use crate::packet::{error_code, parse_request};
use crate::spin::SpinSlots;
use crate::stats::TftpStats;
use crate::transfer::{self, Shared};
use crate::{TftpConfig, TransferObserver};

/// A bound TFTP server; [`TftpServer::run`] serves until its future is dropped.
pub struct TftpServer {
    socket: UdpSocket,
    local_addr: SocketAddr,
    shared: Shared,
}

/// Sets the stop flag when `run` ends or its task is dropped, so running
/// transfers end within a fraction of a second.
struct StopOnDrop(Arc<AtomicBool>);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Decrements the active-transfer gauge when a transfer ends (even on panic).
struct ActiveGuard(Arc<TftpStats>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Receive buffer asked for the request socket (the kernel caps it at
/// `net.core.rmem_max`). The default (~208 KiB) holds only a few hundred
/// requests: a burst of requests from one flooding client would fill it and
/// other clients' requests would be dropped before admission could refuse
/// the flood.
pub const REQUEST_RCVBUF: usize = 4 * 1024 * 1024;

fn bind_request_socket(listen: SocketAddr) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .context("creating UDP socket")?;
    if let Err(e) = sock.set_recv_buffer_size(REQUEST_RCVBUF) {
        warn!("tftp: cannot enlarge the request socket's receive buffer: {e}");
    }
    sock.set_nonblocking(true).context("non-blocking mode")?;
    sock.bind(&listen.into()).context("bind")?;
    let got = sock.recv_buffer_size().unwrap_or(0);
    debug!(got, "tftp: request socket receive buffer");
    UdpSocket::from_std(sock.into()).context("registering with tokio")
}

/// Logs refused requests at most once per second (a flood must not become a
/// flood of log lines).
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn note(&mut self, peer: SocketAddr, file: &str, refusal: Refusal) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        warn!(%peer, %file, suppressed = self.suppressed, "tftp: refused: {}", refusal.message());
        self.last = Some(now);
        self.suppressed = 0;
    }
}

impl TftpServer {
    /// Binds the request socket (`config.listen`; port 0 picks a free port).
    pub async fn bind(
        config: TftpConfig,
        observer: Arc<dyn TransferObserver>,
    ) -> anyhow::Result<Self> {
        let socket = bind_request_socket(config.listen)
            .with_context(|| format!("binding TFTP socket {}", config.listen))?;
        let local_addr = socket.local_addr().context("TFTP socket address")?;
        if config.roots.is_empty() {
            warn!("tftp: no root directories configured; every request will fail");
        }
        Ok(TftpServer {
            socket,
            local_addr,
            shared: Shared {
                config: Arc::new(config),
                observer,
                stats: Arc::new(TftpStats::default()),
                stop: Arc::new(AtomicBool::new(false)),
                spin_slots: Arc::new(SpinSlots::for_this_machine()),
            },
        })
    }

    /// The bound address of the request socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<TftpStats> {
        self.shared.stats.clone()
    }

    /// Serves requests until the task is dropped or aborted.
    pub async fn run(self) -> anyhow::Result<()> {
        let _stop = StopOnDrop(self.shared.stop.clone());
        let local_ip: IpAddr = self.local_addr.ip();
        let stats = self.shared.stats.clone();
        info!(addr = %self.local_addr, roots = ?self.shared.config.roots, "tftp: serving");
        let config = &self.shared.config;
        let admission = Admission::new(config.max_transfers, config.max_transfers_per_client);
        let mut refusals = RefusalLog::default();
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, peer) = match self.socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors and the like are per-datagram; keep serving.
                    debug!("tftp: recv_from: {e}");
                    continue;
                }
            };
            let req = match parse_request(&buf[..n]) {
                Ok(r) => r,
                Err(e) => {
                    TftpStats::inc(&stats.malformed_dropped);
                    debug!(%peer, "tftp: dropped malformed request: {e}");
                    continue;
                }
            };
            TftpStats::inc(&stats.requests);
            let permit = match admission.admit(peer.ip()) {
                Ok(p) => p,
                Err(refusal) => {
                    TftpStats::inc(&stats.refused_busy);
                    refusals.note(peer, &req.filename, refusal);
                    transfer::send_error_from_new_socket(
                        local_ip,
                        peer,
                        error_code::NOT_DEFINED,
                        refusal.message(),
                    );
                    continue;
                }
            };
            stats.active.fetch_add(1, Ordering::Relaxed);
            let shared = self.shared.clone();
            let guard = ActiveGuard(stats.clone());
            let spawned = std::thread::Builder::new()
                .name("tftp-transfer".into())
                .spawn(move || {
                    let _active = guard;
                    transfer::serve(&shared, &permit, local_ip, peer, req);
                    drop(permit);
                });
            if let Err(e) = spawned {
                TftpStats::inc(&stats.errors);
                warn!(%peer, "tftp: cannot start a transfer thread: {e}");
            }
        }
    }
}
