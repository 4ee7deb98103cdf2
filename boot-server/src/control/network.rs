//! DHCP-facing operations: leases (read) and reservations.

use super::{Control, Error, Result};
use crate::model::{EventKind, Lease, MacAddr, Reservation};
use serde_json::json;

impl Control {
    /// Every lease.
    pub async fn leases(&self) -> Result<Vec<Lease>> {
        Ok(self.store.leases().await?)
    }

    /// Every reservation.
    pub async fn reservations(&self) -> Result<Vec<Reservation>> {
        Ok(self.store.reservations().await?)
    }

    /// Adds or moves a reservation. When another MAC holds a lease on the
    /// address, that lease is released first (an explicit control
    /// operation: DHCP itself never takes an address from its holder).
    pub async fn put_reservation(&self, r: Reservation) -> Result<()> {
        let subnets = &self.config.dhcp.subnets;
        let inside = |cidr: &str| {
            crate::config::parse_cidr(cidr).is_ok_and(|(net, len)| {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                u32::from(net) & mask == u32::from(r.ip) & mask
            })
        };
        if !subnets.is_empty() && !subnets.iter().any(|s| inside(&s.network)) {
            let list: Vec<&str> = subnets.iter().map(|s| s.network.as_str()).collect();
            return Err(Error::bad_request(format!(
                "{} is in none of the DHCP subnets ({})",
                r.ip,
                list.join(", ")
            )));
        }
        if let Some(h) = &r.hostname {
            let ok = !h.is_empty()
                && h.len() <= 63
                && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !h.starts_with('-');
            if !ok {
                return Err(Error::bad_request(format!("not a host name: {h:?}")));
            }
        }
        let holder = self
            .store
            .leases()
            .await?
            .into_iter()
            .find(|l| l.ip == r.ip && l.mac != r.mac);
        self.store.put_reservation(&r).await?;
        self.push_reservations().await?;
        if let Some(l) = holder {
            match self.dhcp_link() {
                Some(d) => d.free_address(l.ip).await?,
                None => {
                    self.store.remove_lease(l.mac, l.ip).await?;
                }
            }
            tracing::info!(ip = %l.ip, from = %l.mac, to = %r.mac, "released the old holder's lease for a reservation");
        }
        self.events.emit(
            Some(r.mac.node_id()),
            EventKind::ReservationSet,
            json!({ "mac": r.mac, "ip": r.ip, "hostname": r.hostname }),
        );
        Ok(())
    }

    /// Removes the reservation of a MAC.
    pub async fn remove_reservation(&self, mac: MacAddr) -> Result<()> {
        if !self.store.remove_reservation(mac).await? {
            return Err(Error::not_found(format!("no reservation for {mac}")));
        }
        self.events.emit(
            Some(mac.node_id()),
            EventKind::ReservationRemoved,
            json!({ "mac": mac }),
        );
        self.push_reservations().await
    }

    /// Sends the current table to the DHCP server.
    pub async fn push_reservations(&self) -> Result<()> {
        let table = self.store.reservations().await?;
        if let Some(d) = self.dhcp_link() {
            d.set_reservations(&table);
        }
        Ok(())
    }
}
