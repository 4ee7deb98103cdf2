//! The live reservation table (MAC -> fixed address): pushed by the
//! integrator whenever its own table changes ([`Reservations::replace`]),
//! read by the pool on every allocation, so a reserved address is never
//! handed to another client. One reservation per MAC and per address.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{RwLock, RwLockReadGuard};

use tracing::warn;

/// A fixed address for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The client's hardware address.
    pub mac: [u8; 6],
    /// The address it always gets.
    pub ip: Ipv4Addr,
    /// Option 12 for this client (unless the advisor gives one).
    pub hostname: Option<String>,
}

/// The table as the pool reads it.
#[derive(Debug, Default)]
pub(crate) struct ReservationTable {
    by_mac: HashMap<[u8; 6], Reservation>,
    by_ip: HashMap<Ipv4Addr, [u8; 6]>,
}

impl ReservationTable {
    /// The client an address is reserved for.
    pub fn holder_of(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.by_ip.get(&ip).copied()
    }
    /// The address reserved for a client.
    pub fn ip_of(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.by_mac.get(&mac).map(|r| r.ip)
    }
}

/// Shared handle on the reservation table ([`crate::DhcpServer::reservations`]).
#[derive(Debug, Default)]
pub struct Reservations {
    table: RwLock<ReservationTable>,
}

impl Reservations {
    /// A table with this initial content.
    pub fn new(initial: Vec<Reservation>) -> Self {
        let r = Reservations::default();
        r.replace(initial);
        r
    }

    /// Replace the whole table. When two entries name the same MAC or the
    /// same address, the later one wins (logged). Moving an address to a new
    /// MAC does not take it from the client that holds a lease on it: call
    /// [`crate::DhcpControl::free_address`] for that.
    pub fn replace(&self, list: Vec<Reservation>) {
        let mut t = ReservationTable::default();
        for r in list {
            if let Some(old) = t.by_ip.insert(r.ip, r.mac) {
                if old != r.mac {
                    warn!(ip = %r.ip, "address reserved twice; the later reservation wins");
                    t.by_mac.remove(&old);
                }
            }
            if let Some(old) = t.by_mac.insert(r.mac, r.clone()) {
                if old.ip != r.ip {
                    warn!(ip = %r.ip, old = %old.ip, "MAC reserved twice; the later reservation wins");
                    t.by_ip.remove(&old.ip);
                }
            }
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// The current table.
    pub fn list(&self) -> Vec<Reservation> {
        self.read().by_mac.values().cloned().collect()
    }

    /// The address reserved for `mac`.
    pub fn ip_of(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.read().ip_of(mac)
    }

    /// The hostname reserved with `mac`'s address.
    pub fn hostname_of(&self, mac: [u8; 6]) -> Option<String> {
        self.read()
            .by_mac
            .get(&mac)
            .and_then(|r| r.hostname.clone())
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, ReservationTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }
}
