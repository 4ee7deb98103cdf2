//! DHCP leases (table `leases`). The database makes a double lease
//! impossible whichever server writes: the MAC is the primary key (one
//! lease per MAC) and the address has a unique constraint (one MAC per
//! address). A live lease is never taken from its holder; an expired one is
//! deleted and replaced in the same transaction.

use super::nodes::node_where;
use super::{unique_violation, PgStore};
use crate::model::{now_ms, Lease, MacAddr, Node};
use crate::store::{LeaseStore, Refused, Result};
use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use std::net::Ipv4Addr;
use tokio_postgres::Row;

const LEASE_COLS: &str = "mac, ip, expires_at_ms, hostname, client_id";

fn to_lease(r: &Row) -> Result<Lease> {
    Ok(Lease {
        mac: r.get::<_, &str>(0).parse().context("stored lease MAC")?,
        ip: r
            .get::<_, &str>(1)
            .parse()
            .context("stored lease address")?,
        expires_at_ms: r.get(2),
        hostname: r.get(3),
        client_id: r.get(4),
    })
}

impl PgStore {
    /// One attempt at storing `l`: `Ok(None)` when stored, `Ok(Some(()))`
    /// when the address's unique constraint refused it.
    async fn try_put_lease(&self, l: &Lease) -> Result<Option<()>> {
        let (ip, mac) = (l.ip.to_string(), l.mac.to_string());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Another client's expired lease on the address frees it.
        tx.execute(
            "DELETE FROM leases WHERE ip = $1 AND mac <> $2 AND expires_at_ms <= $3",
            &[&ip, &mac, &now_ms()],
        )
        .await?;
        let put = tx
            .execute(
                "INSERT INTO leases(mac, ip, expires_at_ms, hostname, client_id) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, expires_at_ms = excluded.expires_at_ms, hostname = excluded.hostname, client_id = excluded.client_id",
                &[&mac, &ip, &l.expires_at_ms, &l.hostname, &l.client_id],
            )
            .await;
        match put {
            Ok(_) => {
                tx.commit().await.context("committing the lease")?;
                Ok(None)
            }
            Err(e) => {
                let e = anyhow::Error::from(e);
                if unique_violation(&e).as_deref() == Some("leases_ip_unique") {
                    return Ok(Some(()));
                }
                Err(e)
            }
        }
    }
}

impl PgStore {
    /// Allocates an address of `lo..=hi` for `mac` from the database (several
    /// servers on one segment): its live lease if it has one in the range,
    /// else the first free address of `prefer`, else a free one (searched
    /// from a point derived from the MAC, so servers racing for different
    /// clients rarely try the same address), stored as a lease of `mac`
    /// until `hold_until_ms` (the offer). The unique address constraint
    /// settles races: a candidate another server took meanwhile is skipped.
    /// Addresses reserved for other MACs are never chosen. `None`: full.
    pub async fn allocate_address(
        &self,
        mac: MacAddr,
        (lo, hi): (Ipv4Addr, Ipv4Addr),
        prefer: &[Ipv4Addr],
        hold_until_ms: i64,
    ) -> Result<Option<Ipv4Addr>> {
        let (lo_n, hi_n) = (u32::from(lo) as i64, u32::from(hi) as i64);
        if hi_n < lo_n {
            return Ok(None);
        }
        let mac_s = mac.to_string();
        let now = now_ms();
        let c = self.client().await?;
        if let Some(r) = c
            .query_opt(
                "SELECT ip FROM leases WHERE mac = $1 AND expires_at_ms > $2",
                &[&mac_s, &now],
            )
            .await?
        {
            let ip: Ipv4Addr = r
                .get::<_, &str>(0)
                .parse()
                .context("stored lease address")?;
            let n = u32::from(ip) as i64;
            if (lo_n..=hi_n).contains(&n) || prefer.contains(&ip) {
                return Ok(Some(ip));
            }
        }
        let size = hi_n - lo_n + 1;
        let spread = i64::from(u32::from_be_bytes([mac.0[2], mac.0[3], mac.0[4], mac.0[5]]));
        let start = lo_n + spread % size;
        let free = "NOT EXISTS (SELECT 1 FROM leases l WHERE l.ip = host('0.0.0.0'::inet + g.n) AND l.mac <> $1 AND l.expires_at_ms > $2)
                    AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.ip = host('0.0.0.0'::inet + g.n) AND r.mac <> $1)";
        let mut candidates: Vec<Ipv4Addr> = Vec::new();
        for p in prefer {
            let n = u32::from(*p) as i64;
            let ok: bool = c
                .query_one(
                    format!("SELECT {free} FROM (SELECT $3::BIGINT AS n) g").as_str(),
                    &[&mac_s, &now, &n],
                )
                .await?
                .get(0);
            if ok {
                candidates.push(*p);
            }
        }
        drop(c);
        for ip in candidates {
            if self.try_candidates(mac, &[ip], hold_until_ms).await? {
                return Ok(Some(ip));
            }
        }
        // Windows of the range from `start` around to it again: each
        // query materialises at most WINDOW numbers (generate_series in
        // FROM is computed whole), and the first window nearly always has
        // a free address.
        const WINDOW: i64 = 512;
        let mut windows = Vec::new();
        let mut from = start;
        while from <= hi_n {
            let to = (from + WINDOW - 1).min(hi_n);
            windows.push((from, to));
            from = to + 1;
        }
        from = lo_n;
        while from < start {
            let to = (from + WINDOW - 1).min(start - 1);
            windows.push((from, to));
            from = to + 1;
        }
        for (from, to) in windows {
            let rows = self
                .client()
                .await?
                .query(
                    format!(
                        "SELECT g.n FROM generate_series($3::BIGINT, $4::BIGINT) g(n) WHERE {free} ORDER BY g.n LIMIT 16"
                    )
                    .as_str(),
                    &[&mac_s, &now, &from, &to],
                )
                .await?;
            let found: Vec<Ipv4Addr> = rows
                .iter()
                .map(|r| Ipv4Addr::from(r.get::<_, i64>(0) as u32))
                .collect();
            for ip in found {
                if self.try_candidates(mac, &[ip], hold_until_ms).await? {
                    return Ok(Some(ip));
                }
            }
        }
        Ok(None)
    }

    /// Holds the first of `ips` that is free for `mac` until `until_ms`;
    /// whether one was.
    async fn try_candidates(&self, mac: MacAddr, ips: &[Ipv4Addr], until_ms: i64) -> Result<bool> {
        for ip in ips {
            let hold = Lease {
                mac,
                ip: *ip,
                expires_at_ms: until_ms,
                hostname: None,
                client_id: None,
            };
            if self.try_put_lease(&hold).await?.is_none() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[async_trait]
impl LeaseStore for PgStore {
    async fn leases(&self) -> Result<Vec<Lease>> {
        let rows = self
            .client()
            .await?
            .query(
                format!("SELECT {LEASE_COLS} FROM leases ORDER BY ip").as_str(),
                &[],
            )
            .await?;
        rows.iter().map(to_lease).collect()
    }

    async fn put_lease(&self, l: &Lease) -> Result<()> {
        // The holder may let go between the refusal and the look-up: try again then.
        for _ in 0..3 {
            if self.try_put_lease(l).await?.is_none() {
                return Ok(());
            }
            let holder = self
                .client()
                .await?
                .query_opt(
                    "SELECT mac FROM leases WHERE ip = $1 AND mac <> $2",
                    &[&l.ip.to_string(), &l.mac.to_string()],
                )
                .await?;
            if let Some(h) = holder {
                return Err(Refused::AddressHeld {
                    ip: l.ip,
                    holder: h.get::<_, &str>(0).parse().unwrap_or_default(),
                }
                .into());
            }
        }
        anyhow::bail!("lease of {} on {} kept conflicting; try again", l.mac, l.ip)
    }

    async fn remove_lease(&self, mac: MacAddr, ip: Ipv4Addr) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute(
                "DELETE FROM leases WHERE mac = $1 AND ip = $2",
                &[&mac.to_string(), &ip.to_string()],
            )
            .await?
            > 0)
    }

    async fn expire_lease(&self, mac: MacAddr, ip: Ipv4Addr, expires_at_ms: i64) -> Result<bool> {
        let (mac, ip) = (mac.to_string(), ip.to_string());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM leases WHERE mac = $1 AND ip = $2 AND expires_at_ms <= $3",
            &[&mac, &ip, &expires_at_ms],
        )
        .await?;
        let left: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM leases WHERE mac = $1 AND ip = $2",
                &[&mac, &ip],
            )
            .await?
            .get(0);
        tx.commit().await?;
        Ok(left == 0)
    }

    async fn lease_of(&self, mac: MacAddr) -> Result<Option<Lease>> {
        self.client()
            .await?
            .query_opt(
                format!("SELECT {LEASE_COLS} FROM leases WHERE mac = $1 AND expires_at_ms > $2")
                    .as_str(),
                &[&mac.to_string(), &now_ms()],
            )
            .await?
            .as_ref()
            .map(to_lease)
            .transpose()
    }

    async fn node_by_lease_ip(&self, ip: Ipv4Addr) -> Result<Option<Node>> {
        let ip = ip.to_string();
        let c = self.client().await?;
        let mac: Option<String> = c
            .query_opt(
                "SELECT mac FROM leases WHERE ip = $1 AND expires_at_ms > $2",
                &[&ip, &now_ms()],
            )
            .await?
            .map(|r| r.get(0));
        match mac {
            Some(m) => node_where(&c, "mac = $1", &m).await,
            // Proxy/relay mode: no lease here, the observed address says.
            None => node_where(&c, "observed_ip = $1", &ip).await,
        }
    }
}

#[cfg(test)]
mod allocate_tests {
    use super::*;
    use crate::model::Reservation;
    use crate::store::conformance::{mac, pg_schema, pg_store};
    use crate::store::ReservationStore;
    use std::collections::HashSet;
    use std::sync::Arc;

    /// Two servers allocate for 40 clients at once from one 32-address
    /// range: every address goes to one MAC, the reserved one to nobody
    /// else, and the 9 clients too many get `None`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_servers_never_allocate_one_address_twice() {
        let test =
            "store::postgres::leases::allocate_tests::two_servers_never_allocate_one_address_twice";
        let Some(a) = pg_store(test).await else {
            return;
        };
        let url = std::env::var("BOOT_TEST_PG_URL").unwrap();
        let b = PgStore::connect_in_schema(&url, &pg_schema(test))
            .await
            .unwrap();
        let reserved: Ipv4Addr = "10.7.0.5".parse().unwrap();
        a.put_reservation(&Reservation {
            mac: mac(999),
            ip: reserved,
            hostname: None,
        })
        .await
        .unwrap();
        let (a, b) = (Arc::new(a), Arc::new(b));
        let range: (Ipv4Addr, Ipv4Addr) =
            ("10.7.0.0".parse().unwrap(), "10.7.0.31".parse().unwrap());
        let hold = now_ms() + 60_000;
        let mut tasks = Vec::new();
        for i in 0..40u32 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                (
                    i,
                    s.allocate_address(mac(i), range, &[], hold).await.unwrap(),
                )
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        let ips: Vec<Ipv4Addr> = got.iter().filter_map(|(_, ip)| *ip).collect();
        let unique: HashSet<_> = ips.iter().collect();
        assert_eq!(ips.len(), 31, "{got:?}");
        assert_eq!(unique.len(), 31, "an address allocated twice: {got:?}");
        assert!(!unique.contains(&reserved));
        // The store agrees, and a client asking again gets its own address.
        let stored = a.leases().await.unwrap();
        assert_eq!(stored.len(), 31);
        let (i, ip) = got.iter().find(|(_, ip)| ip.is_some()).unwrap();
        assert_eq!(
            b.allocate_address(mac(*i), range, &[], hold).await.unwrap(),
            *ip
        );
        // The reservation's holder gets its address when it prefers it.
        let r = (reserved, reserved);
        assert_eq!(
            a.allocate_address(mac(999), r, &[reserved], hold)
                .await
                .unwrap(),
            Some(reserved)
        );
    }
}
