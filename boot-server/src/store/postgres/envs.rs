//! Environments, slots and load samples (tables `environments`, `slots`,
//! `load_samples`). A node holds at most one slot: a unique index on
//! `slots.node` enforces it, whatever the engine believes.
//!
//! Every slot write (and an environment's deletion) first locks the
//! controller row (`controller`, see [`super::controller`]): slot writes run
//! one at a time, their compare-and-set sees no concurrent writer, and a
//! write fenced with a token older than the row's (a controller that lost
//! its lease) is refused ([`Refused::Fenced`]) — a takeover, which updates
//! that row, is ordered before or after each slot write, never inside one.

use super::{json_col, unique_violation, PgStore};
use crate::model::{Environment, LoadSample, Slot, SlotStep};
use crate::store::{EnvStore, Expect, Fence, Refused, Result};
use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Transaction};

/// Locks the controller row for this transaction; returns its fence.
async fn lock_slots(tx: &Transaction<'_>) -> Result<u64> {
    let fence: i64 = tx
        .query_one("SELECT fence FROM controller WHERE id = 1 FOR UPDATE", &[])
        .await
        .context("locking the slots")?
        .get(0);
    Ok(fence as u64)
}

async fn stored_step(tx: &Transaction<'_>, env: &str, idx: u32) -> Result<SlotStep> {
    let step = tx
        .query_opt(
            "SELECT step FROM slots WHERE environment = $1 AND idx = $2",
            &[&env, &(idx as i64)],
        )
        .await?;
    Ok(step
        .and_then(|r| SlotStep::parse(r.get(0)))
        .unwrap_or(SlotStep::Vacant))
}

#[async_trait]
impl EnvStore for PgStore {
    async fn put_environment(&self, env: &Environment) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO environments(name, body) VALUES ($1, $2)
                 ON CONFLICT(name) DO UPDATE SET body = excluded.body",
                &[&env.name, &serde_json::to_string(env)?],
            )
            .await?;
        Ok(())
    }

    async fn environment(&self, name: &str) -> Result<Option<Environment>> {
        let body: Option<String> = self
            .client()
            .await?
            .query_opt("SELECT body FROM environments WHERE name = $1", &[&name])
            .await?
            .map(|r| r.get(0));
        Ok(json_col(body))
    }

    async fn environments(&self) -> Result<Vec<Environment>> {
        let rows = self
            .client()
            .await?
            .query("SELECT body FROM environments ORDER BY name", &[])
            .await?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get(0)).context("stored environment"))
            .collect()
    }

    async fn delete_environment(&self, name: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_slots(&tx).await?;
        let held: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM slots WHERE environment = $1 AND node IS NOT NULL",
                &[&name],
            )
            .await?
            .get(0);
        if held > 0 {
            return Err(Refused::Conflict(format!(
                "environment {name} still holds {held} node(s); deactivate it and wait until its slots are vacant"
            ))
            .into());
        }
        if tx
            .execute("DELETE FROM environments WHERE name = $1", &[&name])
            .await?
            == 0
        {
            return Err(Refused::NotFound(format!("no environment {name}")).into());
        }
        tx.execute("DELETE FROM slots WHERE environment = $1", &[&name])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn slots(&self, env: Option<&str>) -> Result<Vec<Slot>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT body FROM slots WHERE $1::TEXT IS NULL OR environment = $1 ORDER BY environment, idx",
                &[&env],
            )
            .await?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get(0)).context("stored slot"))
            .collect()
    }

    async fn write_slots(&self, fence: Fence, writes: &[(Slot, Expect)]) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let current = lock_slots(&tx).await?;
        // Fence 0 is an unfenced write (an admin change, guarded by its
        // expectation); an engine's fence must not be older than the lease's.
        if fence.0 != 0 && fence.0 < current {
            return Err(Refused::Fenced {
                fence: fence.0,
                current,
            }
            .into());
        }
        for (slot, expect) in writes {
            if let Expect::Step(want) = expect {
                if stored_step(&tx, &slot.environment, slot.index).await? != *want {
                    return Ok(false);
                }
            }
        }
        // Clear the node column of every written slot first, so that a node
        // moving between two slots of one write does not trip the unique
        // index half-way.
        for (slot, _) in writes {
            tx.execute(
                "UPDATE slots SET node = NULL WHERE environment = $1 AND idx = $2",
                &[&slot.environment, &(slot.index as i64)],
            )
            .await?;
        }
        for (slot, _) in writes {
            if let Some(node) = &slot.node {
                let other = tx
                    .query_opt(
                        "SELECT environment, idx FROM slots WHERE node = $1",
                        &[node],
                    )
                    .await?;
                if let Some(o) = other {
                    return Err(Refused::Conflict(format!(
                        "node {node} already holds slot {} of {}",
                        o.get::<_, i64>(1),
                        o.get::<_, &str>(0)
                    ))
                    .into());
                }
            }
            let put = tx
                .execute(
                    "INSERT INTO slots(environment, idx, node, step, body) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT(environment, idx) DO UPDATE SET node = excluded.node, step = excluded.step, body = excluded.body",
                    &[
                        &slot.environment,
                        &(slot.index as i64),
                        &slot.node,
                        &slot.step.as_str(),
                        &serde_json::to_string(slot)?,
                    ],
                )
                .await;
            if let Err(e) = put {
                let e = anyhow::Error::from(e);
                if unique_violation(&e).as_deref() == Some("slots_node") {
                    return Err(Refused::Conflict(format!(
                        "node {} already holds a slot",
                        slot.node.as_deref().unwrap_or("?")
                    ))
                    .into());
                }
                return Err(e);
            }
        }
        tx.commit().await.context("committing the slot write")?;
        Ok(true)
    }

    async fn delete_slot(&self, fence: Fence, env: &str, index: u32) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let current = lock_slots(&tx).await?;
        if fence.0 != 0 && fence.0 < current {
            return Err(Refused::Fenced {
                fence: fence.0,
                current,
            }
            .into());
        }
        let n = tx
            .execute(
                "DELETE FROM slots WHERE environment = $1 AND idx = $2 AND node IS NULL AND step = 'vacant'",
                &[&env, &(index as i64)],
            )
            .await?;
        tx.commit().await.context("committing the slot deletion")?;
        Ok(n > 0)
    }

    async fn append_load(&self, s: &LoadSample) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO load_samples(at_ms, node, environment, body) VALUES ($1, $2, $3, $4)",
                &[
                    &s.at_ms,
                    &s.node,
                    &s.environment,
                    &serde_json::to_string(s)?,
                ],
            )
            .await?;
        Ok(())
    }

    async fn load_history(&self, env: &str, since_ms: i64) -> Result<Vec<LoadSample>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT body FROM load_samples WHERE environment = $1 AND at_ms >= $2 ORDER BY at_ms, id",
                &[&env, &since_ms],
            )
            .await?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get(0)).context("stored load sample"))
            .collect()
    }

    async fn prune_load(&self, before_ms: i64) -> Result<u64> {
        Ok(self
            .client()
            .await?
            .execute("DELETE FROM load_samples WHERE at_ms < $1", &[&before_ms])
            .await?)
    }

    async fn downsample_load(&self, before_ms: i64, bucket_ms: i64) -> Result<u64> {
        let bucket = bucket_ms.max(1);
        Ok(self
            .client()
            .await?
            .execute(
                "DELETE FROM load_samples WHERE at_ms < $1 AND id NOT IN (
                     SELECT MIN(id) FROM load_samples WHERE at_ms < $1
                     GROUP BY node, at_ms / $2)",
                &[&before_ms, &bucket],
            )
            .await?)
    }
}
