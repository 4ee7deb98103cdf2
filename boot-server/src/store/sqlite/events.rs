//! The event log (table `events`), bounded by pruning the oldest rows.

use super::{json_col, SqliteStore};
use crate::model::{Event, EventKind};
use crate::store::{EventStore, NewEvent, Result};
use async_trait::async_trait;
use rusqlite::params;

#[async_trait]
impl EventStore for SqliteStore {
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<Event>> {
        self.write(move |c| {
            let mut out = Vec::with_capacity(events.len());
            let mut st = c.prepare_cached(
                "INSERT INTO events(at_ms, node, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in events {
                st.execute(params![
                    e.at_ms,
                    e.node,
                    e.kind.as_str(),
                    e.detail.to_string()
                ])?;
                out.push(Event {
                    id: c.last_insert_rowid(),
                    at_ms: e.at_ms,
                    node: e.node,
                    kind: e.kind,
                    detail: e.detail,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn events(&self, after_id: i64, node: Option<&str>, limit: u32) -> Result<Vec<Event>> {
        let node = node.map(str::to_string);
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id, at_ms, node, kind, detail FROM events WHERE id > ?1 AND (?2 IS NULL OR node = ?2) ORDER BY id LIMIT ?3",
            )?;
            let rows = st.query_map(params![after_id, node, limit], |r| {
                Ok(Event {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    node: r.get(2)?,
                    kind: EventKind::parse(&r.get::<_, String>(3)?),
                    detail: json_col(r.get(4)?).unwrap_or(serde_json::Value::Null),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn last_event_id(&self) -> Result<i64> {
        self.read(|c| Ok(c.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?))
            .await
    }

    async fn prune_events(&self, keep: u64) -> Result<u64> {
        self.write(move |c| {
            let max: i64 =
                c.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?;
            let cutoff = max - keep as i64;
            if cutoff <= 0 {
                return Ok(0);
            }
            Ok(c.execute("DELETE FROM events WHERE id <= ?1", params![cutoff])? as u64)
        })
        .await
    }
}
