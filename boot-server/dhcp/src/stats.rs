//! Counters the server exposes (atomics, read by metrics / tests).

use std::sync::atomic::{AtomicU64, Ordering};

/// DHCP server counters.
#[derive(Debug, Default)]
pub struct DhcpStats {
    pub received: AtomicU64,
    pub malformed_dropped: AtomicU64,
    pub ignored: AtomicU64,
    pub offers: AtomicU64,
    pub acks: AtomicU64,
    pub naks: AtomicU64,
    pub proxy_offers: AtomicU64,
    pub proxy_acks: AtomicU64,
    pub informs: AtomicU64,
    pub releases: AtomicU64,
    pub declines: AtomicU64,
    pub pool_exhausted: AtomicU64,
    /// Commits that failed (no ACK sent).
    pub commit_failures: AtomicU64,
    /// Every failed store operation (load, commit, remove, expire).
    pub store_errors: AtomicU64,
    /// DECLINEs from a MAC that does not hold the address (ignored).
    pub declines_ignored: AtomicU64,
    /// Full-mode requests dropped because the leases are not loaded yet.
    pub not_ready: AtomicU64,
    pub send_errors: AtomicU64,
}

impl DhcpStats {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    /// Read a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
