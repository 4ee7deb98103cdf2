//! Environments, slots and load samples (tables `environments`, `slots`,
//! `load_samples`). A node holds at most one slot: a unique index on
//! `slots.node` enforces it, whatever the engine believes.

use super::{json_col, SqliteStore};
use crate::model::{Environment, LoadSample, Slot, SlotStep};
use crate::store::{EnvStore, Expect, Fence, Refused, Result};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

fn stored_step(c: &Connection, env: &str, idx: u32) -> Result<SlotStep> {
    let step: Option<String> = c
        .query_row(
            "SELECT step FROM slots WHERE environment = ?1 AND idx = ?2",
            params![env, idx],
            |r| r.get(0),
        )
        .optional()?;
    Ok(step
        .and_then(|s| SlotStep::parse(&s))
        .unwrap_or(SlotStep::Vacant))
}

#[async_trait]
impl EnvStore for SqliteStore {
    async fn put_environment(&self, env: &Environment) -> Result<()> {
        let (name, body) = (env.name.clone(), serde_json::to_string(env)?);
        self.write(move |c| {
            c.execute(
                "INSERT INTO environments(name, body) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET body = excluded.body",
                params![name, body],
            )?;
            Ok(())
        })
        .await
    }

    async fn environment(&self, name: &str) -> Result<Option<Environment>> {
        let name = name.to_string();
        self.read(move |c| {
            let body: Option<String> = c
                .query_row(
                    "SELECT body FROM environments WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(json_col(body))
        })
        .await
    }

    async fn environments(&self) -> Result<Vec<Environment>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT body FROM environments ORDER BY name")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for body in rows {
                out.push(serde_json::from_str(&body?).context("stored environment")?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_environment(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.write(move |c| {
            let held: i64 = c.query_row(
                "SELECT COUNT(*) FROM slots WHERE environment = ?1 AND node IS NOT NULL",
                params![name],
                |r| r.get(0),
            )?;
            if held > 0 {
                return Err(Refused::Conflict(format!(
                    "environment {name} still holds {held} node(s); deactivate it and wait until its slots are vacant"
                ))
                .into());
            }
            if c.execute("DELETE FROM environments WHERE name = ?1", params![name])? == 0 {
                return Err(Refused::NotFound(format!("no environment {name}")).into());
            }
            c.execute("DELETE FROM slots WHERE environment = ?1", params![name])?;
            Ok(())
        })
        .await
    }

    async fn slots(&self, env: Option<&str>) -> Result<Vec<Slot>> {
        let env = env.map(str::to_string);
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT body FROM slots WHERE ?1 IS NULL OR environment = ?1 ORDER BY environment, idx",
            )?;
            let rows = st.query_map(params![env], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for body in rows {
                out.push(serde_json::from_str(&body?).context("stored slot")?);
            }
            Ok(out)
        })
        .await
    }

    async fn write_slots(&self, _fence: Fence, writes: &[(Slot, Expect)]) -> Result<bool> {
        let writes = writes.to_vec();
        self.write(move |c| {
            for (slot, expect) in &writes {
                if let Expect::Step(want) = expect {
                    if stored_step(c, &slot.environment, slot.index)? != *want {
                        return Ok(false);
                    }
                }
            }
            // Clear the node column of every written slot first, so that a
            // node moving between two slots of one write does not trip the
            // unique index half-way.
            for (slot, _) in &writes {
                c.execute(
                    "UPDATE slots SET node = NULL WHERE environment = ?1 AND idx = ?2",
                    params![slot.environment, slot.index],
                )?;
            }
            for (slot, _) in &writes {
                if let Some(node) = &slot.node {
                    let other: Option<(String, u32)> = c
                        .query_row(
                            "SELECT environment, idx FROM slots WHERE node = ?1",
                            params![node],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()?;
                    if let Some((e, i)) = other {
                        return Err(Refused::Conflict(format!(
                            "node {node} already holds slot {i} of {e}"
                        ))
                        .into());
                    }
                }
                c.execute(
                    "INSERT INTO slots(environment, idx, node, step, body) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(environment, idx) DO UPDATE SET node = excluded.node, step = excluded.step, body = excluded.body",
                    params![
                        slot.environment,
                        slot.index,
                        slot.node,
                        slot.step.as_str(),
                        serde_json::to_string(slot)?
                    ],
                )?;
            }
            Ok(true)
        })
        .await
    }

    async fn delete_slot(&self, _fence: Fence, env: &str, index: u32) -> Result<bool> {
        let env = env.to_string();
        self.write(move |c| {
            let n = c.execute(
                "DELETE FROM slots WHERE environment = ?1 AND idx = ?2 AND node IS NULL AND step = 'vacant'",
                params![env, index],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn append_load(&self, s: &LoadSample) -> Result<()> {
        let (at, node, env, body) = (
            s.at_ms,
            s.node.clone(),
            s.environment.clone(),
            serde_json::to_string(s)?,
        );
        self.write(move |c| {
            c.execute(
                "INSERT INTO load_samples(at_ms, node, environment, body) VALUES (?1, ?2, ?3, ?4)",
                params![at, node, env, body],
            )?;
            Ok(())
        })
        .await
    }

    async fn load_history(&self, env: &str, since_ms: i64) -> Result<Vec<LoadSample>> {
        let env = env.to_string();
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT body FROM load_samples WHERE environment = ?1 AND at_ms >= ?2 ORDER BY at_ms, id",
            )?;
            let rows = st.query_map(params![env, since_ms], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for body in rows {
                out.push(serde_json::from_str(&body?).context("stored load sample")?);
            }
            Ok(out)
        })
        .await
    }

    async fn prune_load(&self, before_ms: i64) -> Result<u64> {
        Ok(self
            .exec(
                "DELETE FROM load_samples WHERE at_ms < ?1",
                vec![before_ms.into()],
            )
            .await? as u64)
    }

    async fn downsample_load(&self, before_ms: i64, bucket_ms: i64) -> Result<u64> {
        let bucket = bucket_ms.max(1);
        Ok(self
            .write(move |c| {
                Ok(c.execute(
                    "DELETE FROM load_samples WHERE at_ms < ?1 AND id NOT IN (
                         SELECT MIN(id) FROM load_samples WHERE at_ms < ?1
                         GROUP BY node, at_ms / ?2)",
                    params![before_ms, bucket],
                )?)
            })
            .await? as u64)
    }
}
