//! Admin API (`/api/*` outside `/api/agent`), guarded by the admin token
//! (`Authorization: Bearer <token>`): nodes, images, assignments, leases,
//! events, and commands to a node's agent.

use super::{AppState, HttpError};
use crate::store::{format_mac, parse_mac, Selector};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use boot_proto::CommandKind;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{id}", get(node))
        .route("/api/nodes/{id}/commands", post(queue_command))
        .route("/api/commands/{id}", get(command))
        .route("/api/images", get(images))
        .route("/api/assignments", get(assignments).put(assign))
        .route("/api/default-image", put(default_image))
        .route("/api/leases", get(leases))
        .route("/api/events", get(events))
}

fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), HttpError> {
    let given = headers
        .get(boot_proto::ADMIN_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), s.admin_token.as_bytes()) {
        Ok(())
    } else {
        Err(HttpError(
            StatusCode::UNAUTHORIZED,
            "admin token required".into(),
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn nodes(State(s): State<Arc<AppState>>, h: HeaderMap) -> Result<Response, HttpError> {
    authorize(&s, &h)?;
    Ok(Json(s.store.nodes().await?).into_response())
}

async fn node(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    authorize(&s, &h)?;
    match s.store.node(&id).await? {
        Some(n) => Ok(Json(n).into_response()),
        None => Err(HttpError(StatusCode::NOT_FOUND, format!("no node {id}"))),
    }
}

async fn queue_command(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(kind): Json<CommandKind>,
) -> Result<Response, HttpError> {
    authorize(&s, &h)?;
    if s.store.node(&id).await?.is_none() {
        return Err(HttpError(StatusCode::NOT_FOUND, format!("no node {id}")));
    }
    let cid = s.store.queue_command(&id, &kind).await?;
    s.store
        .record_event(
            Some(&id),
            "command-queued",
            json!({ "id": cid, "command": kind }),
        )
        .await?;
    s.commands.wake(&id);
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": cid }))).into_response())
}

async fn command(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, HttpError> {
    authorize(&s, &h)?;
    match s.store.command(id).await? {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(HttpError(StatusCode::NOT_FOUND, format!("no command {id}"))),
    }
}

async fn images(State(s): State<Arc<AppState>>, h: HeaderMap) -> Result<Response, HttpError> {
    authorize(&s, &h)?;
    Ok(Json(s.store.images().await?).into_response())
}

async fn assignments(State(s): State<Arc<AppState>>, h: HeaderMap) -> Result<Response, HttpError> {
    authorize(&s, &h)?;
    let list: Vec<_> = s
        .store
        .assignments()
        .await?
        .into_iter()
        .map(|(sel, image)| json!({ "selector": sel, "image": image }))
        .collect();
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
struct AssignBody {
    mac: Option<String>,
    uuid: Option<String>,
    /// None removes the assignment.
    image: Option<String>,
}

async fn assign(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Json(b): Json<AssignBody>,
) -> Result<StatusCode, HttpError> {
    authorize(&s, &h)?;
    let selector = match (b.mac, b.uuid) {
        (Some(m), None) => Selector::Mac(format_mac(parse_mac(&m).ok_or_else(|| {
            HttpError(StatusCode::BAD_REQUEST, format!("not a MAC address: {m}"))
        })?)),
        (None, Some(u)) => Selector::Uuid(u.to_ascii_lowercase()),
        _ => {
            return Err(HttpError(
                StatusCode::BAD_REQUEST,
                "give exactly one of mac, uuid".into(),
            ))
        }
    };
    s.store
        .assign(&selector, b.image.as_deref())
        .await
        .map_err(|e| HttpError(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    s.store
        .record_event(
            None,
            "assigned",
            json!({ "selector": selector, "image": b.image }),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct DefaultBody {
    image: Option<String>,
}

async fn default_image(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Json(b): Json<DefaultBody>,
) -> Result<StatusCode, HttpError> {
    authorize(&s, &h)?;
    s.store
        .set_default_image(b.image.as_deref())
        .await
        .map_err(|e| HttpError(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    s.store
        .record_event(None, "default-image", json!({ "image": b.image }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn leases(State(s): State<Arc<AppState>>, h: HeaderMap) -> Result<Response, HttpError> {
    authorize(&s, &h)?;
    Ok(Json(s.store.leases().await?).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<i64>,
    node: Option<String>,
    limit: Option<u32>,
}

async fn events(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, HttpError> {
    authorize(&s, &h)?;
    let list = s
        .store
        .events(
            q.after.unwrap_or(0),
            q.node.as_deref(),
            q.limit.unwrap_or(500).min(10_000),
        )
        .await?;
    Ok(Json(list).into_response())
}
