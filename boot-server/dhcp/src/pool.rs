//! In-memory address allocation for full mode: bindings (mirrors of durable
//! leases), short-lived offers, declined addresses, reservations. Never touches
//! the store itself; the handler commits what this module decides.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::reservations::{ReservationTable, Reservations};
use crate::types::{Lease, SubnetConfig};

/// How long an offered address is held for the client that was offered it.
pub(crate) const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long a declined address is kept out of the pool.
pub(crate) const DECLINE_HOLD: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    subnet: usize,
    ip: Ipv4Addr,
    expires_at: SystemTime,
}

/// Who holds an address in memory, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    mac: [u8; 6],
    expires_at: SystemTime,
}

/// Invariant: `by_mac[m] == b` implies `by_ip[b.ip] == Holder { m, b.expires_at }`.
/// `by_ip` may hold more: the previous address of a client whose move to a
/// new address is being committed stays held until the commit settles.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct State {
    by_mac: HashMap<[u8; 6], Binding>,
    by_ip: HashMap<Ipv4Addr, Holder>,
    offers: HashMap<[u8; 6], (Ipv4Addr, Instant)>,
    offered_ip: HashMap<Ipv4Addr, ([u8; 6], Instant)>,
    declined: HashMap<Ipv4Addr, Instant>,
    cursor: Vec<u32>,
}

/// What [`Pool::bind`] changed, so that a failed commit can put the pool
/// back exactly as it was ([`Pool::restore`]) and a successful one can drop
/// the client's previous address ([`Pool::settle`]).
#[derive(Debug)]
pub(crate) struct BindUndo {
    mac: [u8; 6],
    new: Binding,
    prev_binding: Option<Binding>,
    /// The holder of `new.ip` before (this MAC's older expiry, or another
    /// MAC's expired binding), with that MAC's binding if bind removed it.
    prev_holder: Option<(Holder, Option<Binding>)>,
    prev_offer: Option<(Ipv4Addr, Instant)>,
}

/// An expired binding found by [`Pool::expired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub expires_at: SystemTime,
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
    reservations: Arc<Reservations>,
    state: Mutex<State>,
}

impl Pool {
    pub fn new(subnets: Vec<SubnetConfig>, reservations: Arc<Reservations>) -> Self {
        let state = State {
            cursor: subnets.iter().map(|s| u32::from(s.range.0)).collect(),
            ..State::default()
        };
        Pool {
            subnets,
            reservations,
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
            if let Some(old) = st.by_mac.insert(
                l.mac,
                Binding {
                    subnet,
                    ip: l.ip,
                    expires_at: l.expires_at,
                },
            ) {
                if st.by_ip.get(&old.ip).is_some_and(|h| h.mac == l.mac) {
                    st.by_ip.remove(&old.ip);
                }
            }
            st.by_ip.insert(
                l.ip,
                Holder {
                    mac: l.mac,
                    expires_at: l.expires_at,
                },
            );
        }
    }

    /// The address this client should have in `subnet`: its fixed address
    /// (from the advisor), else its reservation, when inside the subnet.
    pub fn wanted(&self, subnet: usize, mac: [u8; 6], fixed: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let s = &self.subnets[subnet];
        fixed
            .filter(|ip| s.contains(*ip))
            .or_else(|| self.reservations.ip_of(mac).filter(|ip| s.contains(*ip)))
    }

    /// Whether `ip` may be granted to `mac` in `subnet` (`fixed`: the
    /// client's fixed address, allowed outside the dynamic range).
    fn available(
        &self,
        st: &State,
        table: &ReservationTable,
        subnet: usize,
        mac: [u8; 6],
        ip: Ipv4Addr,
        fixed: Option<Ipv4Addr>,
    ) -> bool {
        let s = &self.subnets[subnet];
        if !s.contains(ip) || ip == s.network || ip == s.broadcast() {
            return false;
        }
        match table.holder_of(ip) {
            Some(m) if m != mac => return false,
            Some(_) => {}
            None if !s.in_range(ip) && fixed != Some(ip) => return false,
            None => {}
        }
        let now = Instant::now();
        if st.declined.get(&ip).is_some_and(|until| *until > now) {
            return false;
        }
        if let Some(h) = st.by_ip.get(&ip) {
            if h.mac != mac && h.expires_at > SystemTime::now() {
                return false;
            }
        }
        if let Some((owner, at)) = st.offered_ip.get(&ip) {
            if *owner != mac && now.duration_since(*at) < OFFER_HOLD {
                return false;
            }
        }
        true
    }

    /// Whether `ip` may be granted to `mac` in `subnet`.
    pub fn is_available(
        &self,
        subnet: usize,
        mac: [u8; 6],
        ip: Ipv4Addr,
        fixed: Option<Ipv4Addr>,
    ) -> bool {
        let st = self.lock();
        let table = self.reservations.read();
        self.available(&st, &table, subnet, mac, ip, fixed)
    }

    /// Whether `mac` holds `ip` (a binding, live or expired).
    pub fn holds(&self, mac: [u8; 6], ip: Ipv4Addr) -> bool {
        self.lock().by_mac.get(&mac).is_some_and(|b| b.ip == ip)
    }

    /// The client holding `ip` in memory, if any.
    pub fn holder_of(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.lock().by_ip.get(&ip).map(|h| h.mac)
    }

    /// Pick an address for a DISCOVER and hold it for the client.
    pub fn offer(
        &self,
        subnet: usize,
        mac: [u8; 6],
        requested: Option<Ipv4Addr>,
        fixed: Option<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        let mut st = self.lock();
        let table = self.reservations.read();
        let s = &self.subnets[subnet];
        let mut candidates: Vec<Ipv4Addr> = Vec::with_capacity(5);
        candidates.extend(fixed.filter(|ip| s.contains(*ip)));
        candidates.extend(table.ip_of(mac).filter(|ip| s.contains(*ip)));
        if let Some(b) = st.by_mac.get(&mac) {
            if b.subnet == subnet {
                candidates.push(b.ip);
            }
        }
        if let Some((ip, _)) = st.offers.get(&mac) {
            candidates.push(*ip);
        }
        candidates.extend(requested);
        let mut chosen = candidates
            .into_iter()
            .find(|ip| self.available(&st, &table, subnet, mac, *ip, fixed));
        if chosen.is_none() {
            chosen = self.scan_free(&mut st, &table, subnet, mac);
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

    fn scan_free(
        &self,
        st: &mut State,
        table: &ReservationTable,
        subnet: usize,
        mac: [u8; 6],
    ) -> Option<Ipv4Addr> {
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
            if table.holder_of(ip).is_none() && self.available(st, table, subnet, mac, ip, None) {
                st.cursor[subnet] = cur;
                return Some(ip);
            }
        }
        None
    }

    /// Record a binding in memory before the durable commit, so that no
    /// concurrent request can take the address. The client's previous
    /// address stays held until [`Pool::settle`]; a failed commit calls
    /// [`Pool::restore`].
    pub fn bind(
        &self,
        subnet: usize,
        mac: [u8; 6],
        ip: Ipv4Addr,
        expires_at: SystemTime,
        fixed: Option<Ipv4Addr>,
    ) -> Result<BindUndo, Refusal> {
        let mut st = self.lock();
        {
            let table = self.reservations.read();
            if !self.available(&st, &table, subnet, mac, ip, fixed) {
                return Err(Refusal::NotAvailable);
            }
        }
        let new = Binding {
            subnet,
            ip,
            expires_at,
        };
        let prev_binding = st.by_mac.insert(mac, new);
        let prev_holder = st.by_ip.insert(ip, Holder { mac, expires_at }).map(|h| {
            // An expired binding of another client: it loses the address.
            let displaced = if h.mac != mac && st.by_mac.get(&h.mac).is_some_and(|b| b.ip == ip) {
                st.by_mac.remove(&h.mac)
            } else {
                None
            };
            (h, displaced)
        });
        let prev_offer = st.offers.remove(&mac);
        if let Some((off, _)) = prev_offer {
            if st.offered_ip.get(&off).is_some_and(|(m, _)| *m == mac) {
                st.offered_ip.remove(&off);
            }
        }
        Ok(BindUndo {
            mac,
            new,
            prev_binding,
            prev_holder,
            prev_offer,
        })
    }

    /// The commit of `undo`'s binding succeeded: release the client's
    /// previous address, if it moved. Returns that address (to remove from
    /// the store).
    pub fn settle(&self, undo: BindUndo) -> Option<Ipv4Addr> {
        let mut st = self.lock();
        let old = undo
            .prev_binding
            .map(|b| b.ip)
            .filter(|o| *o != undo.new.ip)?;
        let still_mine = st.by_ip.get(&old).is_some_and(|h| h.mac == undo.mac);
        let rebound = st.by_mac.get(&undo.mac).is_some_and(|b| b.ip == old);
        if still_mine && !rebound {
            st.by_ip.remove(&old);
        }
        Some(old)
    }

    /// The commit of `undo`'s binding failed: put the pool back as it was
    /// before [`Pool::bind`] (unless a later request of the same client
    /// replaced the binding meanwhile).
    pub fn restore(&self, undo: BindUndo) {
        let mut st = self.lock();
        let BindUndo {
            mac,
            new,
            prev_binding,
            prev_holder,
            prev_offer,
        } = undo;
        if st.by_mac.get(&mac) != Some(&new) {
            return;
        }
        st.by_mac.remove(&mac);
        if let Some(b) = prev_binding {
            st.by_mac.insert(mac, b);
        }
        let ours = Holder {
            mac,
            expires_at: new.expires_at,
        };
        if st.by_ip.get(&new.ip) == Some(&ours) {
            st.by_ip.remove(&new.ip);
            if let Some((h, displaced)) = prev_holder {
                st.by_ip.insert(new.ip, h);
                if let Some(b) = displaced {
                    st.by_mac.entry(h.mac).or_insert(b);
                }
            }
        }
        if let Some((ip, at)) = prev_offer {
            if !st.offers.contains_key(&mac) && !st.offered_ip.contains_key(&ip) {
                st.offers.insert(mac, (ip, at));
                st.offered_ip.insert(ip, (mac, at));
            }
        }
    }

    /// Forget `mac`'s binding on `ip` (after the store removed it). True if
    /// it existed.
    pub fn unbind(&self, mac: [u8; 6], ip: Ipv4Addr) -> bool {
        let mut st = self.lock();
        let had = st.by_mac.get(&mac).is_some_and(|b| b.ip == ip);
        if had {
            st.by_mac.remove(&mac);
        }
        if st.by_ip.get(&ip).is_some_and(|h| h.mac == mac) {
            st.by_ip.remove(&ip);
        }
        had
    }

    /// Forget an expired binding the store has just deleted, only if memory
    /// still holds that very binding (not one renewed meanwhile).
    pub fn unbind_expired(&self, e: &Expired) -> bool {
        let mut st = self.lock();
        let same = st
            .by_mac
            .get(&e.mac)
            .is_some_and(|b| b.ip == e.ip && b.expires_at == e.expires_at);
        if same {
            st.by_mac.remove(&e.mac);
        }
        let held = Holder {
            mac: e.mac,
            expires_at: e.expires_at,
        };
        if st.by_ip.get(&e.ip) == Some(&held) {
            st.by_ip.remove(&e.ip);
        }
        same
    }

    /// Drop the offer made to `mac` (client chose another server).
    pub fn drop_offer(&self, mac: [u8; 6]) {
        let mut st = self.lock();
        if let Some((ip, _)) = st.offers.remove(&mac) {
            st.offered_ip.remove(&ip);
        }
    }

    /// Keep `ip` out of the pool for a while (DECLINE by its holder).
    pub fn mark_declined(&self, mac: [u8; 6], ip: Ipv4Addr) {
        let mut st = self.lock();
        st.declined.insert(ip, Instant::now() + DECLINE_HOLD);
        if let Some((off, _)) = st.offers.remove(&mac) {
            st.offered_ip.remove(&off);
        }
    }

    /// Expired bindings (left in place: the store deletes first, then
    /// [`Pool::unbind_expired`]); prunes stale offers, declines and holds.
    pub fn expired(&self, now: SystemTime) -> Vec<Expired> {
        let mut st = self.lock();
        let expired: Vec<Expired> = st
            .by_mac
            .iter()
            .filter(|(_, b)| b.expires_at <= now)
            .map(|(m, b)| Expired {
                mac: *m,
                ip: b.ip,
                expires_at: b.expires_at,
            })
            .collect();
        let inow = Instant::now();
        st.offers
            .retain(|_, (_, at)| inow.duration_since(*at) < OFFER_HOLD);
        st.offered_ip
            .retain(|_, (_, at)| inow.duration_since(*at) < OFFER_HOLD);
        st.declined.retain(|_, until| *until > inow);
        expired
    }

    #[cfg(test)]
    fn snapshot(&self) -> State {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn pool() -> Pool {
        let s = SubnetConfig {
            network: Ipv4Addr::new(10, 9, 0, 0),
            prefix_len: 24,
            range: (Ipv4Addr::new(10, 9, 0, 100), Ipv4Addr::new(10, 9, 0, 109)),
            router: None,
            dns: vec![],
            domain: None,
            lease_time: Duration::from_secs(3600),
        };
        Pool::new(vec![s], Arc::new(Reservations::default()))
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 9, 0, n)
    }

    #[test]
    fn restore_after_failed_renewal_is_exact() {
        let p = pool();
        let later = SystemTime::now() + Duration::from_secs(3600);
        p.settle(p.bind(0, A, ip(100), later, None).unwrap());
        assert_eq!(p.offer(0, B, None, None), Some(ip(101)));
        let before = p.snapshot();
        // renewal of the same address, then a move to another one
        for target in [ip(100), ip(105)] {
            let undo = p
                .bind(0, A, target, later + Duration::from_secs(60), None)
                .unwrap();
            assert_ne!(p.snapshot(), before);
            p.restore(undo);
            assert_eq!(p.snapshot(), before, "restore after bind to {target}");
        }
        assert!(!p.is_available(0, B, ip(100), None), "A keeps its address");
    }

    #[test]
    fn restore_gives_an_expired_holder_its_binding_back() {
        let p = pool();
        let past = SystemTime::now() - Duration::from_secs(1);
        p.load(&[Lease {
            mac: A,
            ip: ip(100),
            expires_at: past,
            hostname: None,
            client_id: None,
        }]);
        let before = p.snapshot();
        let undo = p
            .bind(
                0,
                B,
                ip(100),
                SystemTime::now() + Duration::from_secs(60),
                None,
            )
            .unwrap();
        assert!(!p.holds(A, ip(100)));
        p.restore(undo);
        assert_eq!(p.snapshot(), before);
    }

    #[test]
    fn moving_client_keeps_old_address_until_settled() {
        let p = pool();
        let later = SystemTime::now() + Duration::from_secs(3600);
        p.settle(p.bind(0, A, ip(100), later, None).unwrap());
        let undo = p.bind(0, A, ip(103), later, None).unwrap();
        assert!(
            !p.is_available(0, B, ip(100), None),
            "old address held while the move is committed"
        );
        assert_eq!(p.settle(undo), Some(ip(100)));
        assert!(p.is_available(0, B, ip(100), None));
    }
}
