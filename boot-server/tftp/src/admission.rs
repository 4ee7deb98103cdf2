//! Admission control: how many transfers may run at once, in total and per
//! client address. TFTP is unauthenticated, so without a per-address bound one
//! client (or one flooding script) could take every transfer slot and lock
//! everyone else out until its transfers time out.
//!
//! A [`Permit`] holds one slot and gives it back when dropped (also when its
//! transfer thread panics).
//!
//! When every slot is taken, a new request evicts the oldest transfer whose
//! client has not acknowledged anything yet ([`Permit::confirm`] not called):
//! requests from forged or silent addresses never ACK, so a flood spread over
//! many addresses cannot keep a real client out for the seconds its
//! retransmissions would last. A transfer that has been acknowledged once is
//! never evicted. The evicted transfer sees [`Permit::evicted`], tells its
//! client "server busy" and ends within its next poll slice; until then the
//! running count may exceed the total limit (by at most that limit).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every transfer slot of the server is taken.
    ServerFull,
    /// This client address already runs its maximum number of transfers.
    ClientFull,
}

impl Refusal {
    /// Text of the TFTP ERROR packet sent back to the client.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::ServerFull => "server busy: too many transfers, retry later",
            Refusal::ClientFull => "too many transfers from your address, retry later",
        }
    }
}

/// Counts of running transfers.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_client: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
    /// Admitted transfers, oldest first, that may still be unconfirmed
    /// (pruned lazily).
    unconfirmed: VecDeque<Arc<Slot>>,
}

#[derive(Debug, Default)]
struct Slot {
    confirmed: AtomicBool,
    evicted: AtomicBool,
}

impl Slot {
    fn evictable(self: &Arc<Self>) -> bool {
        // strong_count 1: only the queue holds it, the transfer has ended.
        !self.confirmed.load(Ordering::Relaxed)
            && !self.evicted.load(Ordering::Relaxed)
            && Arc::strong_count(self) > 1
    }
}

/// One admitted transfer; its slot is freed on drop.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    client: IpAddr,
    slot: Arc<Slot>,
}

impl Permit {
    /// The client acknowledged something: this transfer is never evicted.
    pub fn confirm(&self) {
        self.slot.confirmed.store(true, Ordering::Relaxed);
    }

    /// Whether a newer request took this transfer's slot.
    pub fn evicted(&self) -> bool {
        self.slot.evicted.load(Ordering::Relaxed)
    }
}

impl Admission {
    /// Limits below 1 are raised to 1.
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_total: max_total.max(1),
            max_per_client: max_per_client.max(1),
            state: Mutex::new(State::default()),
        })
    }

    /// Takes a slot for a transfer to `client`, or says why not.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Permit, Refusal> {
        let client = client.to_canonical();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.per_client.get(&client).copied().unwrap_or(0) >= self.max_per_client {
            return Err(Refusal::ClientFull);
        }
        if st.total >= self.max_total {
            let victim = loop {
                match st.unconfirmed.pop_front() {
                    Some(s) if s.evictable() => break Some(s),
                    Some(_) => {}
                    None => break None,
                }
            };
            match victim {
                Some(s) => s.evicted.store(true, Ordering::Relaxed),
                None => return Err(Refusal::ServerFull),
            }
        }
        *st.per_client.entry(client).or_insert(0) += 1;
        st.total += 1;
        if st.unconfirmed.len() >= 2 * self.max_total {
            st.unconfirmed.retain(|s| s.evictable());
        }
        let slot = Arc::new(Slot::default());
        st.unconfirmed.push_back(slot.clone());
        Ok(Permit {
            admission: self.clone(),
            client,
            slot,
        })
    }

    /// Transfers running now (total, and for `client`).
    pub fn running(&self, client: IpAddr) -> (usize, usize) {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = st
            .per_client
            .get(&client.to_canonical())
            .copied()
            .unwrap_or(0);
        (st.total, mine)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self
            .admission
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                st.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_client_and_total_limits() {
        let adm = Admission::new(3, 2);
        let a1 = adm.admit(ip("10.0.0.1")).unwrap();
        let a2 = adm.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(adm.admit(ip("10.0.0.1")).unwrap_err(), Refusal::ClientFull);
        // IPv4-mapped IPv6 is the same client.
        assert_eq!(
            adm.admit(ip("::ffff:10.0.0.1")).unwrap_err(),
            Refusal::ClientFull
        );
        let b1 = adm.admit(ip("10.0.0.2")).unwrap();
        // Confirmed transfers are never evicted: the server is full.
        for p in [&a1, &a2, &b1] {
            p.confirm();
        }
        assert_eq!(adm.admit(ip("10.0.0.3")).unwrap_err(), Refusal::ServerFull);
        drop(a1);
        assert_eq!(adm.running(ip("10.0.0.1")), (2, 1));
        let _a3 = adm.admit(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn full_server_evicts_oldest_unconfirmed_only() {
        let adm = Admission::new(3, 8);
        let old = adm.admit(ip("10.0.0.1")).unwrap();
        let live = adm.admit(ip("10.0.0.2")).unwrap();
        live.confirm();
        let young = adm.admit(ip("10.0.0.3")).unwrap();
        // Full: the oldest unconfirmed (not the confirmed one) is evicted.
        let new = adm.admit(ip("10.0.0.4")).unwrap();
        assert!(old.evicted() && !live.evicted() && !young.evicted());
        let newer = adm.admit(ip("10.0.0.5")).unwrap();
        assert!(young.evicted());
        // Only confirmed or already evicted transfers left (plus the two new
        // ones, unconfirmed): those two go next, then nothing.
        new.confirm();
        newer.confirm();
        assert_eq!(adm.admit(ip("10.0.0.6")).unwrap_err(), Refusal::ServerFull);
        // Evicted transfers still count until their threads end.
        assert_eq!(adm.running(ip("10.0.0.1")).0, 5);
        drop((old, young));
        assert_eq!(adm.running(ip("10.0.0.1")).0, 3);
    }

    #[test]
    fn released_slots_leave_no_entries() {
        let adm = Admission::new(10, 10);
        let p = adm.admit(ip("10.0.0.9")).unwrap();
        drop(p);
        assert!(adm.state.lock().unwrap().per_client.is_empty());
        assert_eq!(adm.running(ip("10.0.0.9")), (0, 0));
    }
}
