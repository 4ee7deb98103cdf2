//! The event log (table `events`), bounded by pruning the oldest rows. Ids
//! come from an identity column; several servers append concurrently.

use super::{json_col, PgStore};
use crate::model::{Event, EventKind};
use crate::store::{EventStore, NewEvent, Result};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;

#[async_trait]
impl EventStore for PgStore {
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<Event>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let st = tx
            .prepare_cached(
                "INSERT INTO events(at_ms, node, kind, detail) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .await?;
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let id: i64 = tx
                .query_one(
                    &st,
                    &[&e.at_ms, &e.node, &e.kind.as_str(), &e.detail.to_string()],
                )
                .await?
                .get(0);
            out.push(Event {
                id,
                at_ms: e.at_ms,
                node: e.node,
                kind: e.kind,
                detail: e.detail,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn events(&self, after_id: i64, node: Option<&str>, limit: u32) -> Result<Vec<Event>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, at_ms, node, kind, detail FROM events WHERE id > $1 AND ($2::TEXT IS NULL OR node = $2) ORDER BY id LIMIT $3",
                &[&after_id, &node, &(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Event {
                id: r.get(0),
                at_ms: r.get(1),
                node: r.get(2),
                kind: EventKind::parse(r.get(3)),
                detail: json_col(r.get(4)).unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }

    async fn last_event_id(&self) -> Result<i64> {
        Ok(self
            .client()
            .await?
            .query_one("SELECT COALESCE(MAX(id), 0) FROM events", &[])
            .await?
            .get(0))
    }

    async fn prune_events(&self, keep: u64) -> Result<u64> {
        let c = self.client().await?;
        let max: i64 = c
            .query_one("SELECT COALESCE(MAX(id), 0) FROM events", &[])
            .await?
            .get(0);
        let cutoff = max - keep as i64;
        if cutoff <= 0 {
            return Ok(0);
        }
        Ok(c.execute("DELETE FROM events WHERE id <= $1", &[&cutoff])
            .await?)
    }
}
