//! Failure detection: a node whose heartbeats stop is marked failed
//! (heartbeat watchdog), and so is a node holding a slot whose BMC or QEMU
//! monitor reads power off three rounds in a row (power watch) — which sees a
//! dead machine within a few seconds instead of waiting out the heartbeat
//! timeout. Marking a
//! node failed wakes the engine, which fences it and fails its slot over.
//! A failover host whose agent stops polling goes down, and the nodes of
//! the VMs it ran fail with it (host watchdog).

use crate::control::Control;
use crate::model::{now_ms, EventKind, Node, Transition};
use crate::power::PowerState;
use anyhow::Result;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Marks heart-beating nodes failed when their heartbeats stop. Store
/// errors are logged and retried at the next tick, never fatal.
pub async fn heartbeat_watchdog(control: Arc<Control>) -> Result<()> {
    let limit_ms = (control.config.agent.heartbeat_timeout_secs * 1000) as i64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = now_ms();
        let nodes = match control.store.nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "watchdog could not list nodes");
                continue;
            }
        };
        for node in nodes {
            let Some(last) = node.last_heartbeat_ms else {
                continue;
            };
            if !node.state.heart_beating() || now - last <= limit_ms {
                continue;
            }
            match control
                .store
                .transition_node(&node.id, Transition::Fail)
                .await
            {
                Ok(Some((from, to))) => {
                    tracing::warn!(node = %node.id, silent_ms = now - last, "no heartbeat: node failed");
                    control.events.emit(
                        Some(node.id.clone()),
                        EventKind::NodeFailed,
                        json!({ "reason": "heartbeat timeout", "silent_ms": now - last, "from": from.as_str(), "to": to.as_str() }),
                    );
                    control.wake_engine();
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(node = %node.id, error = %format!("{e:#}"), "watchdog could not mark the node failed")
                }
            }
        }
    }
}

/// Reads, every `[power] poll_ms`, the power state of each heart-beating
/// node that holds a slot and has power control; one that reads off is
/// marked failed at once. A BMC that does not answer proves nothing.
pub async fn power_watch(control: Arc<Control>) -> Result<()> {
    let poll = control.config.power.poll_ms;
    if poll == 0 {
        return std::future::pending().await;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(poll.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut offs = HashMap::new();
    loop {
        tick.tick().await;
        if let Err(e) = power_round(&control, &mut offs).await {
            tracing::warn!(error = %format!("{e:#}"), "power watch round failed");
        }
    }
}

/// Off readings in a row before a node is marked failed: a monitor or BMC
/// that is briefly busy (QEMU serves one QMP client at a time) must not
/// fail a live node.
pub const OFF_READINGS: u32 = 3;

/// One round of the power watch; the nodes it marked failed. `offs` counts
/// each node's off readings in a row across rounds.
pub async fn power_round(
    control: &Control,
    offs: &mut HashMap<String, u32>,
) -> Result<Vec<String>> {
    let watched: Vec<Node> = control
        .store
        .nodes()
        .await?
        .into_iter()
        .filter(|n| n.power.is_some() && n.environment.is_some() && n.state.heart_beating())
        .collect();
    let reads = watched.iter().map(|n| control.power_state_of(n));
    let states = futures_util::future::join_all(reads).await;
    let mut failed = Vec::new();
    offs.retain(|id, _| watched.iter().any(|n| &n.id == id));
    for (node, state) in watched.iter().zip(states) {
        if state != Some(PowerState::Off) {
            offs.remove(&node.id);
            continue;
        }
        let seen = offs.entry(node.id.clone()).or_insert(0);
        *seen += 1;
        if *seen < OFF_READINGS {
            continue;
        }
        offs.remove(&node.id);
        if let Some((from, to)) = control
            .store
            .transition_node(&node.id, Transition::Fail)
            .await?
        {
            tracing::warn!(node = %node.id, "power reads off: node failed");
            control.events.emit(
                Some(node.id.clone()),
                EventKind::NodeFailed,
                json!({ "reason": "power off", "from": from.as_str(), "to": to.as_str() }),
            );
            control.wake_engine();
            failed.push(node.id.clone());
        }
    }
    Ok(failed)
}

/// Marks failover hosts down when their agent stops polling (the agent
/// heartbeat timeout): their VMs are lost and their nodes fail, so their
/// slots fail over again (to another host or a spare). Errors are logged
/// and retried at the next tick.
pub async fn host_watchdog(control: Arc<Control>) -> Result<()> {
    let limit_ms = (control.config.agent.heartbeat_timeout_secs * 1000) as i64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(e) = control.hosts_check(limit_ms).await {
            tracing::warn!(error = %e, "host watchdog round failed");
        }
    }
}
