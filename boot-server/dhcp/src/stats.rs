//! Counters the server exposes (atomics, read by metrics / tests).

use std::sync::atomic::{AtomicU64, Ordering};

/// DHCP server counters.
#[derive(Debug, Default)]
pub struct DhcpStats {
    /// Packets received on any DHCP socket.
    pub received: AtomicU64,
    /// Packets dropped because they did not decode.
    pub malformed_dropped: AtomicU64,
    /// Decoded packets left unanswered (not a request, no message type, or nothing to say for this client).
    pub ignored: AtomicU64,
    /// OFFERs sent (full mode).
    pub offers: AtomicU64,
    /// ACKs sent (full mode).
    pub acks: AtomicU64,
    /// NAKs sent.
    pub naks: AtomicU64,
    /// proxyDHCP OFFERs sent.
    pub proxy_offers: AtomicU64,
    /// proxyDHCP ACKs sent.
    pub proxy_acks: AtomicU64,
    /// INFORMs answered.
    pub informs: AtomicU64,
    /// RELEASEs processed.
    pub releases: AtomicU64,
    /// DECLINEs that marked an address bad.
    pub declines: AtomicU64,
    /// DISCOVERs left unanswered because the pool had no free address.
    pub pool_exhausted: AtomicU64,
    /// Commits that failed (no ACK sent).
    pub commit_failures: AtomicU64,
    /// Every failed store operation (load, commit, remove, expire).
    pub store_errors: AtomicU64,
    /// DECLINEs from a MAC that does not hold the address (ignored).
    pub declines_ignored: AtomicU64,
    /// DISCOVERs left unanswered because the shared store shed them
    /// ([`crate::StoreBusy`]: saturated; the client retries).
    pub store_busy: AtomicU64,
    /// Full-mode requests dropped because the leases are not loaded yet.
    pub not_ready: AtomicU64,
    /// Replies the socket failed to send.
    pub send_errors: AtomicU64,
    /// Bytes of every packet received (malformed ones included).
    pub bytes_received: AtomicU64,
    /// Bytes of the replies sent.
    pub bytes_sent: AtomicU64,
}

impl DhcpStats {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Read a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
