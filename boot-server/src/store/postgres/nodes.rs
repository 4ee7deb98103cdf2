//! Nodes, their life-cycle states and agent token digests (table `nodes`).
//! A state transition reads and writes the node row under `FOR UPDATE`, so
//! two servers applying transitions to one node apply them one after the other.

use super::{json_col, PgStore};
use crate::model::{now_ms, HelloFacts, MacAddr, Node, NodeState, Sighting, Transition};
use crate::store::{Enrolment, NodeStore, Refused, Result};
use anyhow::anyhow;
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use std::net::Ipv4Addr;
use tokio_postgres::Row;

const NODE_COLS: &str = "id, mac, uuid, arch, state, first_seen_ms, last_seen_ms, last_heartbeat_ms, booted_image, inventory, heartbeat, enrolled, serial, labels, power, observed_ip, last_hello_ms, running_image, agent_protocol, slots.environment, slots.idx";
/// Nodes with the slot each holds.
const NODE_FROM: &str = "nodes LEFT JOIN slots ON slots.node = nodes.id";

fn node_from_row(r: &Row) -> Node {
    let state: &str = r.get(4);
    let mac: &str = r.get(1);
    let observed: Option<&str> = r.get(15);
    Node {
        id: r.get(0),
        mac: mac.parse().unwrap_or_default(),
        uuid: r.get(2),
        arch: r.get(3),
        state: NodeState::parse(state).unwrap_or(NodeState::Discovered),
        first_seen_ms: r.get(5),
        last_seen_ms: r.get(6),
        last_heartbeat_ms: r.get(7),
        booted_image: r.get(8),
        inventory: json_col(r.get(9)),
        heartbeat: json_col(r.get(10)),
        enrolled: r.get(11),
        serial: r.get(12),
        labels: json_col(r.get(13)).unwrap_or_default(),
        power: r.get(14),
        observed_ip: observed.and_then(|s| s.parse().ok()),
        last_hello_ms: r.get(16),
        running_image: r.get(17),
        agent_protocol: r.get::<_, Option<i64>>(18).map(|p| p as u32),
        environment: r.get(19),
        slot: r.get::<_, Option<i64>>(20).map(|i| i as u32),
    }
}

/// The node matching `clause` (with `$1` = `arg`).
pub(super) async fn node_where(
    c: &impl GenericClient,
    clause: &str,
    arg: &str,
) -> Result<Option<Node>> {
    let sql = format!("SELECT {NODE_COLS} FROM {NODE_FROM} WHERE {clause}");
    Ok(c.query_opt(sql.as_str(), &[&arg])
        .await?
        .as_ref()
        .map(node_from_row))
}

async fn must_node(c: &impl GenericClient, id: &str) -> Result<Node> {
    node_where(c, "id = $1", id)
        .await?
        .ok_or_else(|| Refused::NotFound(format!("no node {id}")).into())
}

/// Applies `t` to node `id` inside the caller's transaction.
async fn transition(
    c: &impl GenericClient,
    id: &str,
    t: Transition,
) -> Result<Option<(NodeState, NodeState)>> {
    let row = c
        .query_opt("SELECT state FROM nodes WHERE id = $1 FOR UPDATE", &[&id])
        .await?
        .ok_or_else(|| Refused::NotFound(format!("no node {id}")))?;
    let before = NodeState::parse(row.get(0)).unwrap_or(NodeState::Discovered);
    let Some(after) = before.next(t) else {
        return Ok(None);
    };
    if after != before {
        c.execute(
            "UPDATE nodes SET state = $2 WHERE id = $1",
            &[&id, &after.as_str()],
        )
        .await?;
    }
    Ok(Some((before, after)))
}

/// Creates the node of `mac` as discovered unless it exists; true if created.
async fn insert_discovered(c: &impl GenericClient, mac: MacAddr, now: i64) -> Result<bool> {
    Ok(c.execute(
        "INSERT INTO nodes(id, mac, state, first_seen_ms, last_seen_ms) VALUES ($1, $2, 'discovered', $3, $3) ON CONFLICT DO NOTHING",
        &[&mac.node_id(), &mac.to_string(), &now],
    )
    .await?
        > 0)
}

#[async_trait]
impl NodeStore for PgStore {
    async fn observe_node(&self, s: &Sighting) -> Result<(Node, bool)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = now_ms();
        let mac = s.mac.to_string();
        let new = insert_discovered(&tx, s.mac, now).await?;
        tx.execute(
            "UPDATE nodes SET last_seen_ms = $2, uuid = COALESCE($3, uuid), arch = COALESCE($4, arch), observed_ip = COALESCE($5, observed_ip) WHERE mac = $1",
            &[&mac, &now, &s.uuid, &s.arch, &s.observed_ip.map(|i| i.to_string())],
        )
        .await?;
        let node = node_where(&tx, "mac = $1", &mac)
            .await?
            .ok_or_else(|| anyhow!("node vanished"))?;
        tx.commit().await?;
        Ok((node, new))
    }

    async fn enrol_node(&self, e: &Enrolment) -> Result<Node> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mac = e.mac.to_string();
        insert_discovered(&tx, e.mac, now_ms()).await?;
        let row = tx
            .query_one(
                "SELECT id, labels FROM nodes WHERE mac = $1 FOR UPDATE",
                &[&mac],
            )
            .await?;
        let id: String = row.get(0);
        let mut merged: std::collections::BTreeMap<String, String> =
            json_col(row.get(1)).unwrap_or_default();
        merged.extend(e.labels.clone());
        tx.execute(
            "UPDATE nodes SET enrolled = TRUE, serial = COALESCE($2, serial), labels = $3, power = COALESCE($4, power) WHERE id = $1",
            &[&id, &e.serial, &serde_json::to_string(&merged)?, &e.power],
        )
        .await?;
        transition(&tx, &id, Transition::Enrol).await?;
        let node = must_node(&tx, &id).await?;
        tx.commit().await?;
        Ok(node)
    }

    async fn node(&self, id: &str) -> Result<Option<Node>> {
        node_where(&self.client().await?, "id = $1", id).await
    }

    async fn node_by_mac(&self, mac: MacAddr) -> Result<Option<Node>> {
        node_where(&self.client().await?, "mac = $1", &mac.to_string()).await
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        let rows = self
            .client()
            .await?
            .query(
                format!("SELECT {NODE_COLS} FROM {NODE_FROM} ORDER BY id").as_str(),
                &[],
            )
            .await?;
        Ok(rows.iter().map(node_from_row).collect())
    }

    async fn transition_node(
        &self,
        id: &str,
        t: Transition,
    ) -> Result<Option<(NodeState, NodeState)>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let out = transition(&tx, id, t).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn set_node_state(&self, id: &str, state: NodeState) -> Result<()> {
        if self
            .client()
            .await?
            .execute(
                "UPDATE nodes SET state = $2 WHERE id = $1",
                &[&id, &state.as_str()],
            )
            .await?
            == 0
        {
            return Err(Refused::NotFound(format!("no node {id}")).into());
        }
        Ok(())
    }

    async fn set_booted_image(&self, id: &str, image: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE nodes SET booted_image = $2 WHERE id = $1",
            &[&id, &image],
        )
        .await?;
        transition(&tx, id, Transition::Boot).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_hello(&self, id: &str, hello: &HelloFacts, serving: bool) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = now_ms();
        tx.execute(
            "UPDATE nodes SET inventory = $2, last_heartbeat_ms = $3, last_seen_ms = $3, last_hello_ms = $3, running_image = $4, agent_protocol = $5 WHERE id = $1",
            &[&id, &hello.inventory.to_string(), &now, &hello.image, &(hello.protocol as i64)],
        )
        .await?;
        transition(&tx, id, Transition::AgentUp { serving }).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_heartbeat(
        &self,
        id: &str,
        hb: &serde_json::Value,
        serving: bool,
    ) -> Result<Option<(NodeState, NodeState)>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = now_ms();
        tx.execute(
            "UPDATE nodes SET heartbeat = $2, last_heartbeat_ms = $3, last_seen_ms = $3 WHERE id = $1",
            &[&id, &hb.to_string(), &now],
        )
        .await?;
        let out = transition(&tx, id, Transition::Recover { serving }).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn set_observed_ip(&self, id: &str, ip: Option<Ipv4Addr>) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE nodes SET observed_ip = $2 WHERE id = $1",
                &[&id, &ip.map(|i| i.to_string())],
            )
            .await?;
        Ok(())
    }

    async fn set_next_token(&self, id: &str, token_sha256: &str) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE nodes SET next_agent_token = $2 WHERE id = $1",
                &[&id, &token_sha256],
            )
            .await?;
        Ok(())
    }

    async fn node_by_token(&self, token_sha256: &str) -> Result<Option<(Node, bool)>> {
        let c = self.client().await?;
        if let Some(n) = node_where(&c, "agent_token = $1", token_sha256).await? {
            return Ok(Some((n, false)));
        }
        Ok(node_where(&c, "next_agent_token = $1", token_sha256)
            .await?
            .map(|n| (n, true)))
    }

    async fn promote_token(&self, id: &str, token_sha256: &str) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute(
                "UPDATE nodes SET agent_token = next_agent_token, next_agent_token = NULL, boot = boot + 1 WHERE id = $1 AND next_agent_token = $2",
                &[&id, &token_sha256],
            )
            .await?
            > 0)
    }
}
