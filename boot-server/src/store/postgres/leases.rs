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
