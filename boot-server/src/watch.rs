//! Failure detection: a node whose heartbeats stop is marked failed
//! (heartbeat watchdog), and so is a node holding a slot whose BMC or QEMU
//! monitor reads power off three readings in a row (power watch; the
//! second and third follow the first within a fraction of a second) — which
//! sees a dead machine in about a second instead of waiting out the heartbeat
//! timeout — and, where its environment asks for it, a node whose health hook
//! failed several heartbeats in a row or whose agent reports the application
//! failed ([`judge_heartbeat`]). Each environment tunes these
//! ([`Detection`]). Marking a node failed wakes the engine, which fences it
//! and fails its slot over. A failover host whose agent stops polling goes
//! down, and the nodes of the VMs it ran fail with it (host watchdog).

use crate::control::Control;
use crate::model::{now_ms, Detection, EventKind, Node, Transition};
use crate::power::PowerState;
use anyhow::Result;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Marks heart-beating nodes failed when their heartbeats stop. Store
/// errors are logged and retried at the next tick, never fatal.
pub async fn heartbeat_watchdog(control: Arc<Control>) -> Result<()> {
    let default_ms = (control.config.agent.heartbeat_timeout_secs * 1000) as i64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = now_ms();
        let (nodes, detections) = match (control.store.nodes().await, detections(&control).await) {
            (Ok(n), Ok(d)) => (n, d),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "watchdog could not list nodes");
                continue;
            }
        };
        for node in nodes {
            let Some(last) = node.last_heartbeat_ms else {
                continue;
            };
            let limit_ms = detection_of(&node, &detections)
                .and_then(|d| d.heartbeat_timeout_secs)
                .map_or(default_ms, |s| (s * 1000) as i64);
            if !node.state.heart_beating() || now - last <= limit_ms {
                continue;
            }
            let detail = json!({ "reason": "heartbeat timeout", "silent_ms": now - last });
            if let Err(e) = fail_node(&control, &node.id, detail).await {
                tracing::warn!(node = %node.id, error = %format!("{e:#}"), "watchdog could not mark the node failed")
            }
        }
    }
}

/// Each environment's detection settings, by name.
async fn detections(control: &Control) -> Result<HashMap<String, Detection>> {
    Ok(control
        .store
        .environments()
        .await?
        .into_iter()
        .map(|e| (e.name, e.detection))
        .collect())
}

/// The detection settings of the environment `node` serves, if any.
fn detection_of<'a>(node: &Node, all: &'a HashMap<String, Detection>) -> Option<&'a Detection> {
    node.environment.as_ref().and_then(|e| all.get(e))
}

/// Marks `node` failed (if it is not already), says why in a `node-failed`
/// event (`detail` plus the state change) and wakes the engine, which fences
/// it. Whether it changed anything.
pub async fn fail_node(
    control: &Control,
    node: &str,
    mut detail: serde_json::Value,
) -> Result<bool> {
    let Some((from, to)) = control
        .store
        .transition_node(node, Transition::Fail)
        .await?
    else {
        return Ok(false);
    };
    tracing::warn!(%node, reason = %detail["reason"], "node failed");
    detail["from"] = json!(from.as_str());
    detail["to"] = json!(to.as_str());
    control
        .events
        .emit(Some(node.to_string()), EventKind::NodeFailed, detail);
    control.wake_engine();
    Ok(true)
}

/// What a heartbeat of a node holding a slot says about its health, as its
/// environment's [`Detection`] asks: the agent reporting the application
/// failed, or the health hook failed in the last `health_failures`
/// heartbeats in a row (read back from the load samples the heartbeats
/// left, so a server restart forgets nothing), fails the node. Called after
/// the heartbeat is recorded; the node's slot must be ready (an
/// application still starting is not failing).
pub async fn judge_heartbeat(
    control: &Control,
    node: &Node,
    hb: &boot_proto::Heartbeat,
) -> Result<bool> {
    let health_failed = hb.health.get("health").is_some_and(|h| h == "failed");
    let app_failed = hb.app == boot_proto::AppState::Failed;
    let Some(env_name) = &node.environment else {
        return Ok(false);
    };
    if !health_failed && !app_failed {
        return Ok(false);
    }
    let Some(env) = control.store.environment(env_name).await? else {
        return Ok(false);
    };
    let d = &env.detection;
    let ready = control.store.slots(Some(env_name)).await?.iter().any(|s| {
        s.node.as_deref() == Some(node.id.as_str()) && s.step == crate::model::SlotStep::Ready
    });
    if !ready {
        return Ok(false);
    }
    if app_failed && d.app_failure {
        let detail = json!({ "reason": "application failed", "environment": env_name });
        return fail_node(control, &node.id, detail).await;
    }
    if !health_failed || d.health_failures == 0 {
        return Ok(false);
    }
    let n = d.health_failures as usize;
    // Enough history for n beats (twice the interval each, plus slack).
    let window_ms =
        (n as i64 + 2) * 2 * (control.config.agent.heartbeat_interval_secs as i64 * 1000) + 5_000;
    let mut mine: Vec<_> = control
        .store
        .load_history(env_name, now_ms() - window_ms)
        .await?
        .into_iter()
        .filter(|s| s.node == node.id)
        .collect();
    mine.sort_by_key(|s| s.at_ms);
    let failed_in_a_row = mine
        .iter()
        .rev()
        .take_while(|s| s.health.get("health").is_some_and(|h| h == "failed"))
        .count();
    if failed_in_a_row < n {
        return Ok(false);
    }
    let detail = json!({
        "reason": "health hook failed",
        "environment": env_name,
        "heartbeats_failed": failed_in_a_row,
        "health": hb.health,
    });
    fail_node(control, &node.id, detail).await
}

/// Reads, every `[power] poll_ms`, the power state of each heart-beating
/// node that holds a slot and has power control; one that reads off
/// [`OFF_READINGS`] times in a row (re-read every [`CONFIRM_AFTER`]) is
/// marked failed. A BMC that does not answer proves nothing.
pub async fn power_watch(control: Arc<Control>) -> Result<()> {
    let poll = control.config.power.poll_ms;
    if poll == 0 {
        return std::future::pending().await;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(poll.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut offs = HashMap::new();
    loop {
        // An off reading is confirmed at once rather than at the next
        // ticks: a dead machine is failed about a second after it died.
        if offs.is_empty() {
            tick.tick().await;
        } else {
            tokio::time::sleep(CONFIRM_AFTER).await;
        }
        if let Err(e) = power_round(&control, &mut offs).await {
            tracing::warn!(error = %format!("{e:#}"), "power watch round failed");
        }
    }
}

/// Off readings in a row before a node is marked failed: a monitor or BMC
/// that is briefly busy (QEMU serves one QMP client at a time) must not
/// fail a live node.
pub const OFF_READINGS: u32 = 3;

/// Pause before the next reading once a node read off (instead of the
/// `[power] poll_ms` tick), so that the [`OFF_READINGS`] come in well under
/// a second.
pub const CONFIRM_AFTER: Duration = Duration::from_millis(200);

/// One round of the power watch; the nodes it marked failed. `offs` counts
/// each node's off readings in a row across rounds.
pub async fn power_round(
    control: &Control,
    offs: &mut HashMap<String, u32>,
) -> Result<Vec<String>> {
    let detections = detections(control).await?;
    let watched: Vec<Node> = control
        .store
        .nodes()
        .await?
        .into_iter()
        .filter(|n| n.power.is_some() && n.state.heart_beating())
        .filter(|n| detection_of(n, &detections).is_some_and(|d| d.power_watch))
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
        if fail_node(control, &node.id, json!({ "reason": "power off" })).await? {
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
