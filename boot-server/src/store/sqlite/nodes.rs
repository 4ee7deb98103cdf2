//! Nodes, their life-cycle states and agent token digests (table `nodes`).

use super::{json_col, SqliteStore};
use crate::model::{now_ms, HelloFacts, MacAddr, Node, NodeState, Sighting, Transition};
use crate::store::{Enrolment, NodeStore, Refused, Result};
use anyhow::anyhow;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::net::Ipv4Addr;

const NODE_COLS: &str = "id, mac, uuid, arch, state, first_seen_ms, last_seen_ms, last_heartbeat_ms, booted_image, inventory, heartbeat, enrolled, serial, labels, power, observed_ip, last_hello_ms, running_image, agent_protocol, slots.environment, slots.idx";
/// Nodes with the slot each holds.
const NODE_FROM: &str = "nodes LEFT JOIN slots ON slots.node = nodes.id";

fn node_from_row(r: &Row) -> rusqlite::Result<Node> {
    let state: String = r.get(4)?;
    let mac: String = r.get(1)?;
    let observed: Option<String> = r.get(15)?;
    Ok(Node {
        id: r.get(0)?,
        mac: mac.parse().unwrap_or_default(),
        uuid: r.get(2)?,
        arch: r.get(3)?,
        state: NodeState::parse(&state).unwrap_or(NodeState::Discovered),
        first_seen_ms: r.get(5)?,
        last_seen_ms: r.get(6)?,
        last_heartbeat_ms: r.get(7)?,
        booted_image: r.get(8)?,
        inventory: json_col(r.get(9)?),
        heartbeat: json_col(r.get(10)?),
        enrolled: r.get::<_, i64>(11)? != 0,
        serial: r.get(12)?,
        labels: json_col(r.get(13)?).unwrap_or_default(),
        power: r.get(14)?,
        observed_ip: observed.and_then(|s| s.parse().ok()),
        last_hello_ms: r.get(16)?,
        running_image: r.get(17)?,
        agent_protocol: r.get(18)?,
        environment: r.get(19)?,
        slot: r.get(20)?,
    })
}

pub(super) fn node_where(c: &Connection, clause: &str, arg: &str) -> Result<Option<Node>> {
    let sql = format!("SELECT {NODE_COLS} FROM {NODE_FROM} WHERE {clause}");
    Ok(c.query_row(&sql, params![arg], node_from_row).optional()?)
}

fn must_node(c: &Connection, id: &str) -> Result<Node> {
    node_where(c, "id = ?1", id)?.ok_or_else(|| Refused::NotFound(format!("no node {id}")).into())
}

/// Applies `t` to node `id` inside the caller's transaction.
fn transition(c: &Connection, id: &str, t: Transition) -> Result<Option<(NodeState, NodeState)>> {
    let before = must_node(c, id)?.state;
    let Some(after) = before.next(t) else {
        return Ok(None);
    };
    if after != before {
        c.execute(
            "UPDATE nodes SET state = ?2 WHERE id = ?1",
            params![id, after.as_str()],
        )?;
    }
    Ok(Some((before, after)))
}

fn insert_discovered(c: &Connection, mac: MacAddr, now: i64) -> Result<()> {
    c.execute(
        "INSERT INTO nodes(id, mac, state, first_seen_ms, last_seen_ms) VALUES (?1, ?2, 'discovered', ?3, ?3)",
        params![mac.node_id(), mac.to_string(), now],
    )?;
    Ok(())
}

#[async_trait]
impl NodeStore for SqliteStore {
    async fn observe_node(&self, s: &Sighting) -> Result<(Node, bool)> {
        let s = s.clone();
        self.write(move |c| {
            let now = now_ms();
            let mac = s.mac.to_string();
            let new = node_where(c, "mac = ?1", &mac)?.is_none();
            if new {
                insert_discovered(c, s.mac, now)?;
            }
            c.execute(
                "UPDATE nodes SET last_seen_ms = ?2, uuid = COALESCE(?3, uuid), arch = COALESCE(?4, arch), observed_ip = COALESCE(?5, observed_ip) WHERE mac = ?1",
                params![mac, now, s.uuid, s.arch, s.observed_ip.map(|i| i.to_string())],
            )?;
            let node = node_where(c, "mac = ?1", &mac)?.ok_or_else(|| anyhow!("node vanished"))?;
            Ok((node, new))
        })
        .await
    }

    async fn enrol_node(&self, e: &Enrolment) -> Result<Node> {
        let e = e.clone();
        self.write(move |c| {
            let mac = e.mac.to_string();
            if node_where(c, "mac = ?1", &mac)?.is_none() {
                insert_discovered(c, e.mac, now_ms())?;
            }
            let node = node_where(c, "mac = ?1", &mac)?.ok_or_else(|| anyhow!("node vanished"))?;
            let mut labels = node.labels.clone();
            labels.extend(e.labels.clone());
            c.execute(
                "UPDATE nodes SET enrolled = 1, serial = COALESCE(?2, serial), labels = ?3, power = COALESCE(?4, power) WHERE id = ?1",
                params![node.id, e.serial, serde_json::to_string(&labels)?, e.power],
            )?;
            transition(c, &node.id, Transition::Enrol)?;
            must_node(c, &node.id)
        })
        .await
    }

    async fn node(&self, id: &str) -> Result<Option<Node>> {
        let id = id.to_string();
        self.read(move |c| node_where(c, "id = ?1", &id)).await
    }

    async fn node_by_mac(&self, mac: MacAddr) -> Result<Option<Node>> {
        let mac = mac.to_string();
        self.read(move |c| node_where(c, "mac = ?1", &mac)).await
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {NODE_COLS} FROM {NODE_FROM} ORDER BY id"))?;
            let rows = st.query_map([], node_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn transition_node(
        &self,
        id: &str,
        t: Transition,
    ) -> Result<Option<(NodeState, NodeState)>> {
        let id = id.to_string();
        self.write(move |c| transition(c, &id, t)).await
    }

    async fn set_node_state(&self, id: &str, state: NodeState) -> Result<()> {
        let id = id.to_string();
        self.write(move |c| {
            if c.execute(
                "UPDATE nodes SET state = ?2 WHERE id = ?1",
                params![id, state.as_str()],
            )? == 0
            {
                return Err(Refused::NotFound(format!("no node {id}")).into());
            }
            Ok(())
        })
        .await
    }

    async fn set_booted_image(&self, id: &str, image: &str) -> Result<()> {
        let (id, image) = (id.to_string(), image.to_string());
        self.write(move |c| {
            c.execute(
                "UPDATE nodes SET booted_image = ?2 WHERE id = ?1",
                params![id, image],
            )?;
            transition(c, &id, Transition::Boot)?;
            Ok(())
        })
        .await
    }

    async fn record_hello(&self, id: &str, hello: &HelloFacts, serving: bool) -> Result<()> {
        let (id, inv) = (id.to_string(), hello.inventory.to_string());
        let (image, protocol) = (hello.image.clone(), hello.protocol);
        self.write(move |c| {
            let now = now_ms();
            c.execute(
                "UPDATE nodes SET inventory = ?2, last_heartbeat_ms = ?3, last_seen_ms = ?3, last_hello_ms = ?3, running_image = ?4, agent_protocol = ?5 WHERE id = ?1",
                params![id, inv, now, image, protocol],
            )?;
            transition(c, &id, Transition::AgentUp { serving })?;
            Ok(())
        })
        .await
    }

    async fn record_heartbeat(
        &self,
        id: &str,
        hb: &serde_json::Value,
        serving: bool,
    ) -> Result<Option<(NodeState, NodeState)>> {
        let (id, hb) = (id.to_string(), hb.to_string());
        self.write(move |c| {
            let now = now_ms();
            c.execute(
                "UPDATE nodes SET heartbeat = ?2, last_heartbeat_ms = ?3, last_seen_ms = ?3 WHERE id = ?1",
                params![id, hb, now],
            )?;
            transition(c, &id, Transition::Recover { serving })
        })
        .await
    }

    async fn set_observed_ip(&self, id: &str, ip: Option<Ipv4Addr>) -> Result<()> {
        self.exec(
            "UPDATE nodes SET observed_ip = ?2 WHERE id = ?1",
            vec![id.to_string().into(), ip.map(|i| i.to_string()).into()],
        )
        .await?;
        Ok(())
    }

    async fn set_next_token(&self, id: &str, token_sha256: &str) -> Result<()> {
        self.exec(
            "UPDATE nodes SET next_agent_token = ?2 WHERE id = ?1",
            vec![id.to_string().into(), token_sha256.to_string().into()],
        )
        .await?;
        Ok(())
    }

    async fn node_by_token(&self, token_sha256: &str) -> Result<Option<(Node, bool)>> {
        let t = token_sha256.to_string();
        self.read(move |c| {
            if let Some(n) = node_where(c, "agent_token = ?1", &t)? {
                return Ok(Some((n, false)));
            }
            Ok(node_where(c, "next_agent_token = ?1", &t)?.map(|n| (n, true)))
        })
        .await
    }

    async fn promote_token(&self, id: &str, token_sha256: &str) -> Result<bool> {
        Ok(self
            .exec(
                "UPDATE nodes SET agent_token = next_agent_token, next_agent_token = NULL, boot = boot + 1 WHERE id = ?1 AND next_agent_token = ?2",
                vec![id.to_string().into(), token_sha256.to_string().into()],
            )
            .await?
            > 0)
    }
}
