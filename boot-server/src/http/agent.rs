//! Agent endpoints (`/api/agent/*`): hello, heartbeat, the long-poll command
//! channel and command results. Every call carries the per-node, per-boot
//! token minted into the boot script; it identifies the node, so a node can
//! only ever see and answer its own commands, and a token from an older boot
//! no longer works.

use super::{AppState, HttpError};
use crate::store::{Node, Store};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use boot_proto::{Command, CommandResult, Heartbeat, Hello, HelloReply, AGENT_TOKEN_HEADER};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/agent/hello", post(hello))
        .route("/api/agent/heartbeat", post(heartbeat))
        .route("/api/agent/commands", get(commands))
        .route("/api/agent/results", post(result))
}

/// The node a request's agent token belongs to (and whether the token is the
/// next boot's), or 401.
async fn authenticate_token(
    store: &Arc<dyn Store>,
    headers: &HeaderMap,
) -> Result<(Node, bool, String), HttpError> {
    let token = headers
        .get(AGENT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            HttpError(
                StatusCode::UNAUTHORIZED,
                format!("missing {AGENT_TOKEN_HEADER}"),
            )
        })?;
    let (node, next) = store.node_by_agent_token(token).await?.ok_or_else(|| {
        HttpError(
            StatusCode::UNAUTHORIZED,
            "unknown or stale node token".into(),
        )
    })?;
    Ok((node, next, token.to_string()))
}

async fn authenticate(store: &Arc<dyn Store>, headers: &HeaderMap) -> Result<Node, HttpError> {
    Ok(authenticate_token(store, headers).await?.0)
}

async fn hello(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(body): Json<Hello>,
) -> Result<Response, HttpError> {
    let (node, next_boot, token) = authenticate_token(&s.store, &headers).await?;
    if next_boot {
        // The new boot is up: the previous boot's token stops working now.
        s.store.promote_agent_token(&node.id, &token).await?;
    }
    let inventory = serde_json::to_value(&body.inventory).map_err(anyhow::Error::from)?;
    s.store.record_hello(&node.id, &inventory).await?;
    s.store
        .record_event(
            Some(&node.id),
            "agent-ready",
            json!({ "image": body.image, "uptime_ms": body.uptime_ms, "agent_version": body.agent_version }),
        )
        .await?;
    tracing::info!(node = %node.id, image = ?body.image, uptime_ms = ?body.uptime_ms, "agent ready");
    Ok(Json(HelloReply {
        node_id: node.id,
        heartbeat_interval_secs: s.config.agent.heartbeat_interval_secs,
    })
    .into_response())
}

async fn heartbeat(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(body): Json<Heartbeat>,
) -> Result<StatusCode, HttpError> {
    let node = authenticate(&s.store, &headers).await?;
    let value = serde_json::to_value(&body).map_err(anyhow::Error::from)?;
    let was_failed = node.state == crate::store::NodeState::Failed;
    s.store.record_heartbeat(&node.id, &value).await?;
    if was_failed {
        s.store
            .record_event(Some(&node.id), "node-recovered", json!({}))
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Wait {
    wait: Option<u64>,
}

/// Long poll: returns queued commands at once, else waits up to `wait`
/// seconds (max 60) for one.
async fn commands(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<Wait>,
) -> Result<Response, HttpError> {
    let node = authenticate(&s.store, &headers).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.unwrap_or(0).min(60));
    let wakeup = s.commands.for_node(&node.id);
    loop {
        // Register interest before looking, so a wake between the two is not lost.
        let notified = wakeup.notified();
        let queued = s.store.take_commands(&node.id).await?;
        if !queued.is_empty() {
            let out: Vec<Command> = queued
                .into_iter()
                .map(|c| Command {
                    id: c.id as u64,
                    kind: c.command,
                })
                .collect();
            return Ok(Json(out).into_response());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Json(Vec::<Command>::new()).into_response());
        }
        // Commands queued by another process (the CLI) have no wakeup: look again soon.
        let _ =
            tokio::time::timeout((deadline - now).min(Duration::from_millis(250)), notified).await;
    }
}

async fn result(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(body): Json<CommandResult>,
) -> Result<StatusCode, HttpError> {
    let node = authenticate(&s.store, &headers).await?;
    if !body.status.is_agent_report() {
        return Err(HttpError(
            StatusCode::BAD_REQUEST,
            format!("an agent cannot report {}", body.status.as_str()),
        ));
    }
    let status: &str = body.status.as_str();
    if !s
        .store
        .update_command(&node.id, body.id as i64, status, &body.detail)
        .await?
    {
        return Err(HttpError(
            StatusCode::NOT_FOUND,
            format!("no command {} for this node", body.id),
        ));
    }
    s.store
        .record_event(
            Some(&node.id),
            "command-result",
            json!({ "id": body.id, "status": status, "detail": body.detail }),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
