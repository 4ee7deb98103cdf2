//! Admission control: how many transfers may run at once, in total and per
//! client address. TFTP is unauthenticated, so without a per-address bound one
//! client (or one flooding script) could take every transfer slot and lock
//! everyone else out until its transfers time out.
//!
//! A [`Permit`] holds one slot and gives it back when dropped (also when its
//! transfer thread panics).

use std::collections::HashMap;
use std::net::IpAddr;
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
}

/// One admitted transfer; its slot is freed on drop.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    client: IpAddr,
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
        if st.total >= self.max_total {
            return Err(Refusal::ServerFull);
        }
        let n = st.per_client.entry(client).or_insert(0);
        if *n >= self.max_per_client {
            return Err(Refusal::ClientFull);
        }
        *n += 1;
        st.total += 1;
        Ok(Permit {
            admission: self.clone(),
            client,
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
        let _a2 = adm.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(adm.admit(ip("10.0.0.1")).unwrap_err(), Refusal::ClientFull);
        // IPv4-mapped IPv6 is the same client.
        assert_eq!(
            adm.admit(ip("::ffff:10.0.0.1")).unwrap_err(),
            Refusal::ClientFull
        );
        let _b1 = adm.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(adm.admit(ip("10.0.0.3")).unwrap_err(), Refusal::ServerFull);
        drop(a1);
        assert_eq!(adm.running(ip("10.0.0.1")), (2, 1));
        let _a3 = adm.admit(ip("10.0.0.1")).unwrap();
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
