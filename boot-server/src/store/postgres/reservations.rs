//! DHCP reservations (table `reservations`): one address per MAC (primary
//! key), one MAC per address (unique constraint).

use super::{unique_violation, PgStore};
use crate::model::{MacAddr, Reservation};
use crate::store::{Refused, ReservationStore, Result};
use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::GenericClient;

#[async_trait]
impl ReservationStore for PgStore {
    async fn reservations(&self) -> Result<Vec<Reservation>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT mac, ip, hostname FROM reservations ORDER BY ip",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Reservation {
                    mac: r
                        .get::<_, &str>(0)
                        .parse()
                        .context("stored reservation MAC")?,
                    ip: r
                        .get::<_, &str>(1)
                        .parse()
                        .context("stored reservation address")?,
                    hostname: r.get(2),
                })
            })
            .collect()
    }

    async fn put_reservation(&self, r: &Reservation) -> Result<()> {
        let (mac, ip) = (r.mac.to_string(), r.ip.to_string());
        let put = self
            .client()
            .await?
            .execute(
                "INSERT INTO reservations(mac, ip, hostname) VALUES ($1, $2, $3)
                 ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, hostname = excluded.hostname",
                &[&mac, &ip, &r.hostname],
            )
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = anyhow::Error::from(e);
                if unique_violation(&e).is_some() {
                    let other: Option<String> = self
                        .client()
                        .await?
                        .query_opt(
                            "SELECT mac FROM reservations WHERE ip = $1 AND mac <> $2",
                            &[&ip, &mac],
                        )
                        .await?
                        .map(|row| row.get(0));
                    return Err(Refused::Conflict(format!(
                        "address {} is reserved for {}",
                        r.ip,
                        other.as_deref().unwrap_or("another MAC")
                    ))
                    .into());
                }
                Err(e)
            }
        }
    }

    async fn remove_reservation(&self, mac: MacAddr) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute(
                "DELETE FROM reservations WHERE mac = $1",
                &[&mac.to_string()],
            )
            .await?
            > 0)
    }
}
