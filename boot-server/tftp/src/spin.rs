//! Bounded busy-polling of a transfer socket before it sleeps in `recv`.
//!
//! A lock-step transfer waits for one ACK per block. On a LAN that ACK comes back
//! within tens of microseconds, and putting the thread to sleep and waking it again
//! costs more than the wait itself: profiled here, two thirds of a transfer thread's
//! CPU time went to the sleep/wake path (`finish_task_switch`,
//! `_raw_spin_unlock_irqrestore`). Polling the socket for a short budget first
//! removes that cost from the round trip (`qemu-tests/bench/tftp.sh`, 64 MiB with
//! curl at blksize 1468 on loopback: 23 → 56 MB/s, at about the same CPU time per
//! MB: 16–17 ms with or without).
//!
//! Spinning must never cost more than it saves, so it is bounded three ways:
//! - a budget per wait ([`crate::TftpConfig::spin`], 0 turns it off);
//! - at most half the CPUs spin at once ([`SpinSlots`]); other transfers sleep as
//!   before, so a boot storm of hundreds of transfers spins no more than one does;
//! - a transfer whose client does not answer within the budget
//!   [`MISSES_BEFORE_BACKING_OFF`] times in a row (a slow client, a long path)
//!   sleeps through the next 16 waits, then 32, … up to 1,024 after each further
//!   miss, so a client that is never quick enough costs one budget per 1,024
//!   blocks; one quick answer restores spinning (a client that was only
//!   descheduled for a moment).

use std::cell::Cell;
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The default budget: an ACK on a LAN comes back well within it.
pub const DEFAULT_BUDGET: Duration = Duration::from_micros(50);

/// Consecutive budgets without a packet after which a transfer backs off.
pub const MISSES_BEFORE_BACKING_OFF: u32 = 4;

/// The longest back-off, in waits.
const MAX_SKIP: u32 = 1024;

/// How many transfers may spin at the same time.
#[derive(Debug)]
pub struct SpinSlots {
    max: usize,
    busy: AtomicUsize,
}

impl SpinSlots {
    /// At most `max` spinners at once.
    pub fn new(max: usize) -> Self {
        SpinSlots {
            max,
            busy: AtomicUsize::new(0),
        }
    }

    /// Half this machine's CPUs, at least one.
    pub fn for_this_machine() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        SpinSlots::new((cpus / 2).max(1))
    }

    fn take(&self) -> Option<SlotGuard<'_>> {
        self.busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b < self.max).then_some(b + 1)
            })
            .ok()
            .map(|_| SlotGuard(self))
    }
}

struct SlotGuard<'a>(&'a SpinSlots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One transfer's spinning state.
#[derive(Debug)]
pub struct Spinner {
    budget: Duration,
    /// Budgets in a row that ended without a packet.
    misses: Cell<u32>,
    /// Waits left to sleep through without spinning (the back-off).
    skip: Cell<u32>,
}

impl Spinner {
    /// Spins up to `budget` per wait (zero: never).
    pub fn new(budget: Duration) -> Self {
        Spinner {
            budget,
            misses: Cell::new(0),
            skip: Cell::new(0),
        }
    }

    /// Whether the next wait spins (if a slot is free); counts down a back-off.
    fn spins_now(&self) -> bool {
        if self.budget.is_zero() {
            return false;
        }
        match self.skip.get() {
            0 => true,
            n => {
                self.skip.set(n - 1);
                false
            }
        }
    }

    fn missed(&self) {
        let m = self.misses.get().saturating_add(1);
        self.misses.set(m);
        if m >= MISSES_BEFORE_BACKING_OFF {
            let doublings = (m - MISSES_BEFORE_BACKING_OFF).min(6);
            self.skip.set((16u32 << doublings).min(MAX_SKIP));
        }
    }

    /// Polls `sock` without blocking for up to the budget, if a slot is free.
    /// `Some` is what `recv` returned once a packet (or an error) arrived; `None`
    /// means nothing came and the caller sleeps in `recv` as usual.
    pub fn poll(
        &self,
        slots: &SpinSlots,
        sock: &UdpSocket,
        buf: &mut [u8],
    ) -> Option<io::Result<usize>> {
        if !self.spins_now() {
            return None;
        }
        let _slot = slots.take()?;
        let until = Instant::now() + self.budget;
        loop {
            match recv_now(sock, buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                got => {
                    self.misses.set(0);
                    return Some(got);
                }
            }
            if Instant::now() >= until {
                self.missed();
                return None;
            }
            std::hint::spin_loop();
        }
    }
}

/// `recv` with `MSG_DONTWAIT`: the socket stays in blocking mode for the sleep
/// that may follow, with no mode switch (two system calls) around each spin.
fn recv_now(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for the call.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        (a, b)
    }

    #[test]
    fn a_waiting_packet_is_taken_without_sleeping() {
        let (a, b) = pair();
        b.send(b"ack").unwrap();
        let slots = SpinSlots::new(1);
        let s = Spinner::new(Duration::from_millis(50));
        let mut buf = [0u8; 16];
        let got = s.poll(&slots, &a, &mut buf).expect("a packet").unwrap();
        assert_eq!(&buf[..got], b"ack");
    }

    #[test]
    fn a_silent_client_backs_off_and_one_quick_answer_restores_spinning() {
        let (a, b) = pair();
        let slots = SpinSlots::new(1);
        let s = Spinner::new(Duration::from_micros(200));
        let mut buf = [0u8; 16];
        for _ in 0..MISSES_BEFORE_BACKING_OFF {
            let t = Instant::now();
            assert!(s.poll(&slots, &a, &mut buf).is_none());
            assert!(t.elapsed() >= Duration::from_micros(200), "spun its budget");
        }
        // Backing off: the next 16 waits do not spin, even with a packet waiting.
        b.send(b"ack").unwrap();
        for _ in 0..16 {
            assert!(s.poll(&slots, &a, &mut buf).is_none());
        }
        assert!(
            s.poll(&slots, &a, &mut buf).is_some(),
            "spins again after the back-off"
        );
        // The quick answer reset the count: one more miss does not back off.
        assert!(s.poll(&slots, &a, &mut buf).is_none());
        b.send(b"ack").unwrap();
        assert!(s.poll(&slots, &a, &mut buf).is_some());
    }

    #[test]
    fn the_back_off_doubles_up_to_its_limit() {
        let s = Spinner::new(Duration::from_micros(1));
        for _ in 0..MISSES_BEFORE_BACKING_OFF {
            s.missed();
        }
        assert_eq!(s.skip.get(), 16);
        s.missed();
        assert_eq!(s.skip.get(), 32);
        for _ in 0..20 {
            s.missed();
        }
        assert_eq!(s.skip.get(), MAX_SKIP);
    }

    #[test]
    fn no_more_transfers_spin_than_there_are_slots() {
        let (a, b) = pair();
        b.send(b"ack").unwrap();
        let slots = SpinSlots::new(1);
        let held = slots.take().expect("the one slot");
        let s = Spinner::new(Duration::from_millis(50));
        let mut buf = [0u8; 16];
        assert!(
            s.poll(&slots, &a, &mut buf).is_none(),
            "no slot: sleep instead"
        );
        assert_eq!(s.misses.get(), 0, "a refused slot is not a miss");
        drop(held);
        assert!(s.poll(&slots, &a, &mut buf).is_some());
    }

    #[test]
    fn a_zero_budget_never_spins() {
        let (a, b) = pair();
        b.send(b"ack").unwrap();
        let s = Spinner::new(Duration::ZERO);
        assert!(s.poll(&SpinSlots::new(1), &a, &mut [0u8; 16]).is_none());
    }
}
