//! Failover hosts (table `hosts`: the host as JSON, keyed by name, with the
//! SHA-256 of its secret; names and digests unique) and their VMs (table
//! `vms`: the VM as JSON, keyed by id). Schema version 5.

use super::{unique_violation, PgStore};
use crate::model::{Host, Vm};
use crate::store::{HostStore, Refused, Result};
use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::GenericClient;

#[async_trait]
impl HostStore for PgStore {
    async fn add_host(&self, host: &Host, digest: &str) -> Result<()> {
        let body = serde_json::to_string(host).context("encoding a host")?;
        let put = self
            .client()
            .await?
            .execute(
                "INSERT INTO hosts(name, digest, body) VALUES ($1, $2, $3)",
                &[&host.name, &digest, &body],
            )
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = anyhow::Error::from(e);
                if unique_violation(&e).is_some() {
                    return Err(Refused::Conflict(format!(
                        "a host named {:?} exists; remove it first or pick another name",
                        host.name
                    ))
                    .into());
                }
                Err(e)
            }
        }
    }

    async fn hosts(&self) -> Result<Vec<Host>> {
        let rows = self
            .client()
            .await?
            .query("SELECT body FROM hosts ORDER BY name", &[])
            .await?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).context("stored host"))
            .collect()
    }

    async fn host_by_digest(&self, digest: &str) -> Result<Option<Host>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT body FROM hosts WHERE digest = $1", &[&digest])
            .await?;
        row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).context("stored host"))
            .transpose()
    }

    async fn update_host(&self, host: &Host) -> Result<bool> {
        let body = serde_json::to_string(host).context("encoding a host")?;
        Ok(self
            .client()
            .await?
            .execute(
                "UPDATE hosts SET body = $2 WHERE name = $1",
                &[&host.name, &body],
            )
            .await?
            > 0)
    }

    async fn remove_host(&self, name: &str) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM vms WHERE host = $1", &[&name])
            .await?;
        let n = tx
            .execute("DELETE FROM hosts WHERE name = $1", &[&name])
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn put_vm(&self, vm: &Vm) -> Result<()> {
        let body = serde_json::to_string(vm).context("encoding a VM")?;
        self.client()
            .await?
            .execute(
                "INSERT INTO vms(id, host, body) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, body = EXCLUDED.body",
                &[&vm.id, &vm.host, &body],
            )
            .await?;
        Ok(())
    }

    async fn vms(&self) -> Result<Vec<Vm>> {
        let rows = self
            .client()
            .await?
            .query("SELECT body FROM vms ORDER BY id", &[])
            .await?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).context("stored VM"))
            .collect()
    }
}
