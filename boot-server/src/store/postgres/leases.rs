//! DHCP leases (table `leases`). The database makes a double lease
//! impossible whichever server writes: the MAC is the primary key (one
//! lease per MAC) and the address has a unique constraint (one MAC per
//! address). A live lease is never taken from its holder; an expired one is
//! deleted and replaced in the same transaction.

use super::nodes::node_where;
use super::PgStore;
use crate::model::{now_ms, Lease, MacAddr, Node};
use crate::store::{LeaseStore, Refused, Result};
use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use std::net::Ipv4Addr;
use tokio_postgres::Row;

/// [`PgStore::allocate_address`] shed the request: as many allocations as
/// the store runs at once were busy for the whole queue wait (an OFFER
/// promises nothing; the client asks again).
#[derive(Debug, thiserror::Error)]
#[error("the database is saturated: address allocation shed after waiting {0:?}")]
pub struct OffersBusy(pub std::time::Duration);

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
    /// One attempt at storing `l`, in one round trip (`boot_put_lease`,
    /// schema V9; the commit is durable): `Ok(None)` when stored,
    /// `Ok(Some(holder))` when another MAC's live lease holds the address
    /// (`holder` empty: it let go meanwhile, try again).
    async fn try_put_lease(&self, l: &Lease) -> Result<Option<String>> {
        let c = self.client().await?;
        let st = c
            .prepare_cached("SELECT boot_put_lease($1, $2, $3, $4, $5, $6)")
            .await?;
        let row = c
            .query_one(
                &st,
                &[
                    &l.mac.to_string(),
                    &l.ip.to_string(),
                    &l.expires_at_ms,
                    &l.hostname,
                    &l.client_id,
                    &now_ms(),
                ],
            )
            .await
            .with_context(|| format!("storing the lease of {} on {}", l.mac, l.ip))?;
        Ok(row.get(0))
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
    /// One round trip: the database's `boot_offer` (schema V9) does it all.
    /// At most [`super::OFFERS_AT_ONCE`] run at once; a call that waited
    /// [`super::OFFER_QUEUE_WAIT`] for its turn fails with [`OffersBusy`].
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
        let size = hi_n - lo_n + 1;
        let spread = i64::from(u32::from_be_bytes([mac.0[2], mac.0[3], mac.0[4], mac.0[5]]));
        let start = lo_n + spread % size;
        let prefer: Vec<i64> = prefer.iter().map(|p| u32::from(*p) as i64).collect();
        let _turn = match tokio::time::timeout(super::OFFER_QUEUE_WAIT, self.offers.acquire()).await
        {
            Ok(turn) => turn.context("the allocation gate closed")?,
            Err(_) => return Err(OffersBusy(super::OFFER_QUEUE_WAIT).into()),
        };
        let c = self.client().await?;
        let st = c
            .prepare_cached("SELECT boot_offer($1, $2, $3, $4, $5, $6, $7)")
            .await?;
        let row = c
            .query_one(
                &st,
                &[
                    &mac.to_string(),
                    &lo_n,
                    &hi_n,
                    &start,
                    &prefer,
                    &now_ms(),
                    &hold_until_ms,
                ],
            )
            .await
            .with_context(|| format!("allocating an address for {mac}"))?;
        Ok(row
            .get::<_, Option<i64>>(0)
            .map(|n| Ipv4Addr::from(n as u32)))
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
            match self.try_put_lease(l).await?.as_deref() {
                None => return Ok(()),
                Some("") => continue,
                Some(h) => {
                    return Err(Refused::AddressHeld {
                        ip: l.ip,
                        holder: h.parse().unwrap_or_default(),
                    }
                    .into())
                }
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

    /// An OFFER's hold commits without waiting for the disk; the setting
    /// ends with its transaction, so the ACK's commit on the same
    /// connection waits again (the lease is durable before the ACK).
    #[tokio::test]
    async fn only_the_offer_skips_the_disk_wait() {
        let test = "store::postgres::leases::allocate_tests::only_the_offer_skips_the_disk_wait";
        let Some(s) = pg_store(test).await else {
            return;
        };
        let c = s.client().await.unwrap();
        let show = "SHOW synchronous_commit";
        assert_eq!(
            c.query_one(show, &[]).await.unwrap().get::<_, &str>(0),
            "on"
        );
        let n: Option<i64> = c
            .query_one(
                "SELECT boot_offer('02:00:00:00:00:01', 10, 20, 12, '{}', $1, $2)",
                &[&now_ms(), &(now_ms() + 60_000)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, Some(12));
        assert_eq!(
            c.query_one(show, &[]).await.unwrap().get::<_, &str>(0),
            "on"
        );
        let held: Option<String> = c
            .query_one(
                "SELECT boot_put_lease('02:00:00:00:00:02', '0.0.0.12', $1, NULL, NULL, $2)",
                &[&(now_ms() + 60_000), &now_ms()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(held.as_deref(), Some("02:00:00:00:00:01"));
    }

    /// With every allocation turn taken, a DISCOVER is shed after the queue
    /// wait (no database work, no hold); once a turn frees, it is served.
    #[tokio::test]
    async fn a_saturated_store_sheds_offers_after_the_queue_wait() {
        let test = "store::postgres::leases::allocate_tests::a_saturated_store_sheds_offers_after_the_queue_wait";
        let Some(s) = pg_store(test).await else {
            return;
        };
        let range: (Ipv4Addr, Ipv4Addr) =
            ("10.7.0.0".parse().unwrap(), "10.7.0.9".parse().unwrap());
        let hold = now_ms() + 60_000;
        let turns = s
            .offers
            .acquire_many(super::super::OFFERS_AT_ONCE as u32)
            .await
            .unwrap();
        let t0 = std::time::Instant::now();
        let e = s
            .allocate_address(mac(1), range, &[], hold)
            .await
            .unwrap_err();
        assert!(e.is::<OffersBusy>(), "{e:#}");
        assert!(t0.elapsed() >= super::super::OFFER_QUEUE_WAIT);
        assert!(s.leases().await.unwrap().is_empty());
        drop(turns);
        assert!(s
            .allocate_address(mac(1), range, &[], hold)
            .await
            .unwrap()
            .is_some());
    }

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
