//! Failover hosts (table `hosts`: the host as JSON, keyed by name, with the
//! SHA-256 of its secret) and their VMs (table `vms`: the VM as JSON, keyed
//! by id). Schema version 5.

use super::SqliteStore;
use crate::model::{Host, Vm};
use crate::store::{HostStore, Refused, Result};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl HostStore for SqliteStore {
    async fn add_host(&self, host: &Host, digest: &str) -> Result<()> {
        let body = serde_json::to_string(host).context("encoding a host")?;
        let (name, digest) = (host.name.clone(), digest.to_string());
        self.write(move |c| {
            let taken: bool = c.query_row(
                "SELECT COUNT(*) > 0 FROM hosts WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )?;
            if taken {
                return Err(Refused::Conflict(format!(
                    "a host named {name:?} exists; remove it first or pick another name"
                ))
                .into());
            }
            c.execute(
                "INSERT INTO hosts(name, digest, body) VALUES (?1, ?2, ?3)",
                params![name, digest, body],
            )?;
            Ok(())
        })
        .await
    }

    async fn hosts(&self) -> Result<Vec<Host>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT body FROM hosts ORDER BY name")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_str(&row?).context("stored host")?);
            }
            Ok(out)
        })
        .await
    }

    async fn host_by_digest(&self, digest: &str) -> Result<Option<Host>> {
        let digest = digest.to_string();
        self.read(move |c| {
            let body: Option<String> = c
                .query_row(
                    "SELECT body FROM hosts WHERE digest = ?1",
                    params![digest],
                    |r| r.get(0),
                )
                .optional()?;
            body.map(|b| serde_json::from_str(&b).context("stored host"))
                .transpose()
        })
        .await
    }

    async fn update_host(&self, host: &Host) -> Result<bool> {
        let body = serde_json::to_string(host).context("encoding a host")?;
        Ok(self
            .exec(
                "UPDATE hosts SET body = ?2 WHERE name = ?1",
                vec![host.name.clone().into(), body.into()],
            )
            .await?
            > 0)
    }

    async fn remove_host(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.write(move |c| {
            c.execute("DELETE FROM vms WHERE host = ?1", params![name])?;
            Ok(c.execute("DELETE FROM hosts WHERE name = ?1", params![name])? > 0)
        })
        .await
    }

    async fn put_vm(&self, vm: &Vm) -> Result<()> {
        let body = serde_json::to_string(vm).context("encoding a VM")?;
        self.exec(
            "INSERT INTO vms(id, host, body) VALUES (?1, ?2, ?3) \
             ON CONFLICT(id) DO UPDATE SET host = excluded.host, body = excluded.body",
            vec![vm.id.clone().into(), vm.host.clone().into(), body.into()],
        )
        .await
        .map(|_| ())
    }

    async fn vms(&self) -> Result<Vec<Vm>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT body FROM vms ORDER BY id")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_str(&row?).context("stored VM")?);
            }
            Ok(out)
        })
        .await
    }
}
