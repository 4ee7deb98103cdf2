//! DHCP leases (table `leases`): an address belongs to at most one MAC while
//! its lease lives; a lease is never silently taken from its holder.

use super::nodes::node_where;
use super::SqliteStore;
use crate::model::{now_ms, Lease, MacAddr, Node};
use crate::store::{LeaseStore, Refused, Result};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};
use std::net::Ipv4Addr;

const LEASE_COLS: &str = "mac, ip, expires_at_ms, hostname, client_id";

type RawLease = (String, String, i64, Option<String>, Option<Vec<u8>>);

fn lease_from_row(r: &Row) -> rusqlite::Result<RawLease> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_lease(t: RawLease) -> Result<Lease> {
    Ok(Lease {
        mac: t.0.parse().context("stored lease MAC")?,
        ip: t.1.parse().context("stored lease address")?,
        expires_at_ms: t.2,
        hostname: t.3,
        client_id: t.4,
    })
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn leases(&self) -> Result<Vec<Lease>> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {LEASE_COLS} FROM leases ORDER BY ip"))?;
            let rows = st.query_map([], lease_from_row)?;
            rows.map(|r| to_lease(r?)).collect()
        })
        .await
    }

    async fn put_lease(&self, l: &Lease) -> Result<()> {
        let l = l.clone();
        self.write(move |c| {
            let (ip, mac) = (l.ip.to_string(), l.mac.to_string());
            // Cached statements: a DHCP ACK waits on this write.
            let holder: Option<(String, i64)> = c
                .prepare_cached("SELECT mac, expires_at_ms FROM leases WHERE ip = ?1 AND mac <> ?2")?
                .query_row(params![ip, mac], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((holder, expires)) = holder {
                if expires > now_ms() {
                    return Err(Refused::AddressHeld {
                        ip: l.ip,
                        holder: holder.parse().unwrap_or_default(),
                    }
                    .into());
                }
                // The other client's lease has expired: the address is free.
                c.execute("DELETE FROM leases WHERE ip = ?1 AND mac = ?2", params![ip, holder])?;
            }
            c.prepare_cached(
                "INSERT INTO leases(mac, ip, expires_at_ms, hostname, client_id) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, expires_at_ms = excluded.expires_at_ms, hostname = excluded.hostname, client_id = excluded.client_id",
            )?
            .execute(params![mac, ip, l.expires_at_ms, l.hostname, l.client_id])?;
            Ok(())
        })
        .await
    }

    async fn remove_lease(&self, mac: MacAddr, ip: Ipv4Addr) -> Result<bool> {
        Ok(self
            .exec(
                "DELETE FROM leases WHERE mac = ?1 AND ip = ?2",
                vec![mac.to_string().into(), ip.to_string().into()],
            )
            .await?
            > 0)
    }

    async fn expire_lease(&self, mac: MacAddr, ip: Ipv4Addr, expires_at_ms: i64) -> Result<bool> {
        let (mac, ip) = (mac.to_string(), ip.to_string());
        self.write(move |c| {
            c.execute(
                "DELETE FROM leases WHERE mac = ?1 AND ip = ?2 AND expires_at_ms <= ?3",
                params![mac, ip, expires_at_ms],
            )?;
            let left: i64 = c.query_row(
                "SELECT COUNT(*) FROM leases WHERE mac = ?1 AND ip = ?2",
                params![mac, ip],
                |r| r.get(0),
            )?;
            Ok(left == 0)
        })
        .await
    }

    async fn lease_of(&self, mac: MacAddr) -> Result<Option<Lease>> {
        let mac = mac.to_string();
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {LEASE_COLS} FROM leases WHERE mac = ?1 AND expires_at_ms > ?2"),
                params![mac, now_ms()],
                lease_from_row,
            )
            .optional()?
            .map(to_lease)
            .transpose()
        })
        .await
    }

    async fn node_by_lease_ip(&self, ip: Ipv4Addr) -> Result<Option<Node>> {
        let ip = ip.to_string();
        self.read(move |c| {
            let mac: Option<String> = c
                .query_row(
                    "SELECT mac FROM leases WHERE ip = ?1 AND expires_at_ms > ?2",
                    params![ip, now_ms()],
                    |r| r.get(0),
                )
                .optional()?;
            match mac {
                Some(m) => node_where(c, "mac = ?1", &m),
                // Proxy/relay mode: no lease here, the observed address says.
                None => node_where(c, "observed_ip = ?1", &ip),
            }
        })
        .await
    }
}
