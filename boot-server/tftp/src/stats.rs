//! Counters of the TFTP server, shared with the boot server's metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters (except `active`), updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct TftpStats {
    /// Well-formed RRQ/WRQ packets received on the server port.
    pub requests: AtomicU64,
    /// Transfers whose last block was acknowledged.
    pub completed: AtomicU64,
    /// Requests refused (not found, access violation, write request)
    /// and transfers that failed (timeout, client error, I/O error).
    pub errors: AtomicU64,
    /// Packets dropped because they could not be parsed or were unexpected
    /// (on the server port or on a transfer socket).
    pub malformed_dropped: AtomicU64,
    /// DATA payload bytes sent, retransmissions included.
    pub bytes_sent: AtomicU64,
    /// Transfers ended by the client right after the OACK (size probes).
    pub size_probes: AtomicU64,
    /// Timeouts that led to a retransmission.
    pub retransmits: AtomicU64,
    /// Requests refused because the server or the client's address had
    /// reached its transfer limit (answered with ERROR 0).
    pub refused_busy: AtomicU64,
    /// Transfers currently running (a gauge).
    pub active: AtomicU64,
}

impl TftpStats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
