//! The event log (table `events`), bounded by pruning the oldest rows. Ids
//! come from an identity column; several servers append concurrently, one
//! transaction at a time (see `append_events`), so ids commit in order, and
//! every append notifies the other servers' event hubs.

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
        // Appenders take turns until commit, so ids commit in increasing
        // order: a reader that sees event N has every event below N that
        // will ever exist, and `?after=N` replay never skips one that
        // commits later (with a bare identity column, a server that drew
        // id 9 could commit after another server's 10 had been read).
        tx.execute(
            "SELECT pg_advisory_xact_lock(7242015, hashtext(current_schema()))",
            &[],
        )
        .await?;
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
        super::notify::notify(&tx, "e").await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{pg_schema, pg_store};
    use std::collections::BTreeSet;
    use std::sync::Arc;

    fn ev(i: i64) -> NewEvent {
        NewEvent {
            at_ms: i,
            node: None,
            kind: EventKind::Unknown,
            detail: serde_json::json!({ "i": i }),
        }
    }

    /// Two servers append at once while a reader tails with `after`: the
    /// reader's cursor never passes an event that commits later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_tail_by_id_sees_every_event_of_concurrent_servers() {
        let test =
            "store::postgres::events::tests::a_tail_by_id_sees_every_event_of_concurrent_servers";
        let Some(a) = pg_store(test).await else {
            return;
        };
        let url = std::env::var("BOOT_TEST_PG_URL").unwrap();
        let b = PgStore::connect_in_schema(&url, &pg_schema(test))
            .await
            .unwrap();
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut writers = Vec::new();
        for s in [a.clone(), b.clone(), a.clone(), b.clone()] {
            writers.push(tokio::spawn(async move {
                for i in 0..50 {
                    s.append_events(vec![ev(i), ev(i)]).await.unwrap();
                }
            }));
        }
        let reader = b.clone();
        let tail = tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen = BTreeSet::new();
            while seen.len() < 400 {
                for e in reader.events(cursor, None, 1000).await.unwrap() {
                    cursor = e.id;
                    seen.insert(e.id);
                }
            }
            seen
        });
        for w in writers {
            w.await.unwrap();
        }
        let seen = tokio::time::timeout(std::time::Duration::from_secs(30), tail)
            .await
            .expect("the tail missed events (its cursor passed one committed later)")
            .unwrap();
        let stored: BTreeSet<i64> = a
            .events(0, None, 10_000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(seen, stored);
    }
}
