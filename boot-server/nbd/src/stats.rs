//! Counters of the NBD server (relaxed atomics), read by the boot server's
//! metrics through [`crate::NbdHandle::stats`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters of one [`crate::NbdServer`].
#[derive(Debug, Default)]
pub struct NbdStats {
    /// Connections admitted.
    pub connections: AtomicU64,
    /// Connections closed at accept (over a connection limit).
    pub refused: AtomicU64,
    /// Connections whose handshake failed (bad magic or option, timeout, I/O).
    pub handshake_failures: AtomicU64,
    /// READ requests executed.
    pub reads: AtomicU64,
    /// WRITE requests executed.
    pub writes: AtomicU64,
    /// Other requests executed (FLUSH, TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS).
    pub other_requests: AtomicU64,
    /// Payload bytes sent in READ replies.
    pub bytes_read: AtomicU64,
    /// Payload bytes received in WRITE requests.
    pub bytes_written: AtomicU64,
    /// Requests answered with an error (refused as invalid, or an I/O error).
    pub errors: AtomicU64,
    /// Request headers that did not parse (the connection is closed).
    pub malformed: AtomicU64,
}

impl NbdStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
