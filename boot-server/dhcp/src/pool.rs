//! In-memory address allocation for full mode: bindings (mirrors of durable
//! leases), short-lived offers, declined addresses, reservations. Never touches
//! the store itself; the handler commits what this module decides.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::types::{Lease, SubnetConfig};

/// How long an offered address is held for the client that was offered it.
pub(crate) const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long a declined address is kept out of the pool.
pub(crate) const DECLINE_HOLD: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Binding {
    subnet: usize,
    ip: Ipv4Addr,
    expires_at: SystemTime,
}

#[derive(Default)]
struct State {
    by_mac: HashMap<[u8; 6], Binding>,
    by_ip: HashMap<Ipv4Addr, [u8; 6]>,
    offers: HashMap<[u8; 6], (Ipv4Addr, Instant)>,
    offered_ip: HashMap<Ipv4Addr, ([u8; 6], Instant)>,
    declined: HashMap<Ipv4Addr, Instant>,
    cursor: Vec<u32>,
}

/// Why an address cannot be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not in this subnet, reserved for another client, bound to another, declined...
    NotAvailable,
}

/// Address pools of all subnets.
pub(crate) struct Pool {
    pub subnets: Vec<SubnetConfig>,
    reserved_ip: HashMap<Ipv4Addr, [u8; 6]>,
    reserved_mac: HashMap<([u8; 6], usize), Ipv4Addr>,
    state: Mutex<State>,
}

impl Pool {
    pub fn new(subnets: Vec<SubnetConfig>) -> Self {
        let mut reserved_ip = HashMap::new();
        let mut reserved_mac = HashMap::new();
        for (i, s) in subnets.iter().enumerate() {
            for (mac, ip) in &s.reservations {
                reserved_ip.insert(*ip, *mac);
                reserved_mac.insert((*mac, i), *ip);
            }
        }
        let state = State {
            cursor: subnets.iter().map(|s| u32::from(s.range.0)).collect(),
            ..State::default()
        };
        Pool {
            subnets,
            reserved_ip,
            reserved_mac,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent in a
        // way that matters more than losing the server: recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subnet index for a client: by giaddr when relayed, else the subnet of
    /// `local` (our address on the link), else the first subnet.
    pub fn select_subnet(&self, giaddr: Ipv4Addr, local: Ipv4Addr) -> Option<usize> {
        if giaddr != Ipv4Addr::UNSPECIFIED {
            return self.subnets.iter().position(|s| s.contains(giaddr));
        }
        self.subnets
            .iter()
            .position(|s| s.contains(local))
            .or(if self.subnets.is_empty() {
                None
            } else {
                Some(0)
            })
    }

    /// Subnet index containing `ip`.
    pub fn subnet_of(&self, ip: Ipv4Addr) -> Option<usize> {
        self.subnets.iter().position(|s| s.contains(ip))
    }

    /// Restore bindings from the store at start-up.
    pub fn load(&self, leases: &[Lease]) {
        let mut st = self.lock();
        for l in leases {
            let Some(subnet) = self.subnet_of(l.ip) else {
                continue;
            };
            st.by_ip.insert(l.ip, l.mac);
            st.by_mac.insert(
                l.mac,
                Binding {
                    subnet,
                    ip: l.ip,
                    expires_at: l.expires_at,
                },
            );
        }
    }

    fn available(&self, st: &State, subnet: usize, mac: [u8; 6], ip: Ipv4Addr) -> bool {
        let s = &self.subnets[subnet];
        if !s.contains(ip) || ip == s.network || ip == s.broadcast() {
            return false;
        }
        match self.reserved_ip.get(&ip) {
            Some(m) if *m != mac => return false,
            Some(_) => {}
            None if !s.in_range(ip) => return false,
            None => {}
        }
        let now = Instant::now();
        if let Some(until) = st.declined.get(&ip) {
            if *until > now {
                return false;
            }
        }
        if let Some(owner) = st.by_ip.get(&ip) {
            if *owner != mac {
                let live = st
                    .by_mac
                    .get(owner)
                    .is_some_and(|b| b.ip == ip && b.expires_at > SystemTime::now());
                if live {
                    return false;
                }
            }
        }
        if let Some((owner, at)) = st.offered_ip.get(&ip) {
            if *owner != mac && now.duration_since(*at) < OFFER_HOLD {
                return false;
            }
        }
        true
    }

    #[allow(dead_code)]
    /// Whether `ip` may be granted to `mac` in `subnet`.
    pub fn is_available(&self, subnet: usize, mac: [u8; 6], ip: Ipv4Addr) -> bool {
        let st = self.lock();
        self.available(&st, subnet, mac, ip)
    }

    #[allow(dead_code)]
    /// The address currently bound to `mac`, if any (and in `subnet`).
    pub fn bound_ip(&self, subnet: usize, mac: [u8; 6]) -> Option<Ipv4Addr> {
        let st = self.lock();
        st.by_mac
            .get(&mac)
            .filter(|b| b.subnet == subnet)
            .map(|b| b.ip)
    }

    /// Pick an address for a DISCOVER and hold it for the client.
    pub fn offer(
        &self,
        subnet: usize,
        mac: [u8; 6],
        requested: Option<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        let mut st = self.lock();
        let mut candidates: Vec<Ipv4Addr> = Vec::with_capacity(4);
        if let Some(ip) = self.reserved_mac.get(&(mac, subnet)) {
            candidates.push(*ip);
        }
        if let Some(b) = st.by_mac.get(&mac) {
            if b.subnet == subnet {
                candidates.push(b.ip);
            }
        }
        if let Some((ip, _)) = st.offers.get(&mac) {
            candidates.push(*ip);
        }
        if let Some(ip) = requested {
            candidates.push(ip);
        }
        let mut chosen = candidates
            .into_iter()
            .find(|ip| self.available(&st, subnet, mac, *ip));
        if chosen.is_none() {
            chosen = self.scan_free(&mut st, subnet, mac);
        }
        let ip = chosen?;
        let now = Instant::now();
        if let Some((old, _)) = st.offers.insert(mac, (ip, now)) {
            if old != ip {
                st.offered_ip.remove(&old);
            }
        }
        st.offered_ip.insert(ip, (mac, now));
        Some(ip)
    }

    fn scan_free(&self, st: &mut State, subnet: usize, mac: [u8; 6]) -> Option<Ipv4Addr> {
        let s = &self.subnets[subnet];
        let lo = u32::from(s.range.0);
        let hi = u32::from(s.range.1);
        if hi < lo {
            return None;
        }
        let size = (hi - lo) as u64 + 1;
        let mut cur = st.cursor[subnet].clamp(lo, hi);
        for _ in 0..size {
            let ip = Ipv4Addr::from(cur);
            cur = if cur >= hi { lo } else { cur + 1 };
            if self.available(st, subnet, mac, ip) && !self.reserved_ip.contains_key(&ip) {
                st.cursor[subnet] = cur;
                return Some(ip);
            }
        }
        None
    }

    /// Record a binding in memory (before the durable commit, so that no
    /// concurrent request can take the address). Returns the binding it
    /// replaced for this MAC (another address), to be removed from the store.
    pub fn bind(
        &self,
        subnet: usize,
        mac: [u8; 6],
        ip: Ipv4Addr,
        expires_at: SystemTime,
    ) -> Result<Option<Ipv4Addr>, Refusal> {
        let mut st = self.lock();
        if !self.available(&st, subnet, mac, ip) {
            return Err(Refusal::NotAvailable);
        }
        let previous = st.by_mac.insert(
            mac,
            Binding {
                subnet,
                ip,
                expires_at,
            },
        );
        if let Some(prev_owner) = st.by_ip.insert(ip, mac) {
            if prev_owner != mac {
                // an expired binding of another client: forget it
                if st.by_mac.get(&prev_owner).is_some_and(|b| b.ip == ip) {
                    st.by_mac.remove(&prev_owner);
                }
            }
        }
        if let Some((off, _)) = st.offers.remove(&mac) {
            st.offered_ip.remove(&off);
        }
        let old = previous.map(|b| b.ip).filter(|old| *old != ip);
        if let Some(old) = old {
            if st.by_ip.get(&old) == Some(&mac) {
                st.by_ip.remove(&old);
            }
        }
        Ok(old)
    }

    /// Forget a binding (RELEASE, failed commit, expiry). True if it existed.
    pub fn unbind(&self, mac: [u8; 6], ip: Ipv4Addr) -> bool {
        let mut st = self.lock();
        let had = st.by_mac.get(&mac).is_some_and(|b| b.ip == ip);
        if had {
            st.by_mac.remove(&mac);
        }
        if st.by_ip.get(&ip) == Some(&mac) {
            st.by_ip.remove(&ip);
        }
        had
    }

    /// Drop the offer made to `mac` (client chose another server).
    pub fn drop_offer(&self, mac: [u8; 6]) {
        let mut st = self.lock();
        if let Some((ip, _)) = st.offers.remove(&mac) {
            st.offered_ip.remove(&ip);
        }
    }

    /// Mark an address bad for a while (DECLINE).
    pub fn decline(&self, mac: [u8; 6], ip: Ipv4Addr) {
        self.unbind(mac, ip);
        let mut st = self.lock();
        st.declined.insert(ip, Instant::now() + DECLINE_HOLD);
        if let Some((off, _)) = st.offers.remove(&mac) {
            st.offered_ip.remove(&off);
        }
    }

    /// Remove expired bindings, stale offers and declines; returns the expired
    /// bindings (to remove from the store).
    pub fn expire(&self, now: SystemTime) -> Vec<([u8; 6], Ipv4Addr)> {
        let mut st = self.lock();
        let expired: Vec<([u8; 6], Ipv4Addr)> = st
            .by_mac
            .iter()
            .filter(|(_, b)| b.expires_at <= now)
            .map(|(m, b)| (*m, b.ip))
            .collect();
        for (mac, ip) in &expired {
            st.by_mac.remove(mac);
            if st.by_ip.get(ip) == Some(mac) {
                st.by_ip.remove(ip);
            }
        }
        let inow = Instant::now();
        st.offers
            .retain(|_, (_, at)| inow.duration_since(*at) < OFFER_HOLD);
        st.offered_ip
            .retain(|_, (_, at)| inow.duration_since(*at) < OFFER_HOLD);
        st.declined.retain(|_, until| *until > inow);
        expired
    }
}
