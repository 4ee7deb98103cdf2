//! DHCP reservations (table `reservations`): one address per MAC, one MAC per address.

use super::SqliteStore;
use crate::model::{MacAddr, Reservation};
use crate::store::{Refused, ReservationStore, Result};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl ReservationStore for SqliteStore {
    async fn reservations(&self) -> Result<Vec<Reservation>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT mac, ip, hostname FROM reservations ORDER BY ip")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (mac, ip, hostname) = row?;
                out.push(Reservation {
                    mac: mac.parse().context("stored reservation MAC")?,
                    ip: ip.parse().context("stored reservation address")?,
                    hostname,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn put_reservation(&self, r: &Reservation) -> Result<()> {
        let r = r.clone();
        self.write(move |c| {
            let other: Option<String> = c
                .query_row(
                    "SELECT mac FROM reservations WHERE ip = ?1 AND mac <> ?2",
                    params![r.ip.to_string(), r.mac.to_string()],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(o) = other {
                return Err(
                    Refused::Conflict(format!("address {} is reserved for {o}", r.ip)).into(),
                );
            }
            c.execute(
                "INSERT INTO reservations(mac, ip, hostname) VALUES (?1, ?2, ?3)
                 ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, hostname = excluded.hostname",
                params![r.mac.to_string(), r.ip.to_string(), r.hostname],
            )?;
            Ok(())
        })
        .await
    }

    async fn remove_reservation(&self, mac: MacAddr) -> Result<bool> {
        Ok(self
            .exec(
                "DELETE FROM reservations WHERE mac = ?1",
                vec![mac.to_string().into()],
            )
            .await?
            > 0)
    }
}
