//! Failover hosts over HTTP. Admin routes (`/api/hosts`: enrol — the secret
//! is in the answer, once — list, show, remove; `/api/nodes/{id}/repaired`),
//! mounted by [`super::admin::routes`] inside its authorisation layer; and
//! the host agents' poll (`/api/host/poll`), authenticated by the host's own
//! secret (`Authorization: Bearer <secret>`, resolved by its digest before
//! any body is read): the host's report in, the VMs to start or stop out,
//! held open up to `wait` seconds when there is nothing to do.

use super::auth::Principal;
use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};
use crate::control::{ErrorKind, HostView, NewHost};
use crate::model::{Host, Node};
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use boot_proto::host::{HostReply, HostReport};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{OpenApi, ToSchema};

/// The OpenAPI description of the admin host routes.
#[derive(OpenApi)]
#[openapi(paths(list, create, show, remove, repaired))]
pub struct HostsApi;

/// The admin host routes (without state; authorised by the caller's layer).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/hosts", get(list).post(create))
        .route("/api/hosts/{name}", get(show).delete(remove))
        .route("/api/nodes/{id}/repaired", post(repaired))
}

/// The host agents' route, authenticated by the host's secret.
pub fn agent_routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/host/poll", post(poll))
        .route_layer(middleware::from_fn_with_state(state, authenticate))
}

type ApiResult = Result<Response, ApiError>;

/// A host to enrol.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct HostBody {
    /// Unique name (1-64 letters, digits, `-`, `_`, `.`).
    name: String,
}

/// Every failover host with its VMs.
#[utoipa::path(get, operation_id = "host_list", path = "/api/hosts", tag = "hosts",
    responses((status = 200, description = "Every host", body = [HostView])))]
async fn list(State(s): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(s.control.hosts().await?).into_response())
}

/// Enrols a failover host; the answer holds its secret (for `node-agent
/// host --credential-file`), which is not kept and cannot be shown again.
#[utoipa::path(post, operation_id = "host_add", path = "/api/hosts", tag = "hosts", request_body = HostBody,
    responses((status = 201, description = "The host and its secret", body = NewHost)))]
async fn create(
    State(s): State<Arc<AppState>>,
    Extension(by): Extension<Principal>,
    ApiJson(b): ApiJson<HostBody>,
) -> ApiResult {
    let h = s.control.add_host(&b.name, &by.name).await?;
    Ok((StatusCode::CREATED, Json(h)).into_response())
}

/// One failover host with its VMs.
#[utoipa::path(get, operation_id = "host_show", path = "/api/hosts/{name}", tag = "hosts",
    params(("name" = String, Path, description = "Host name")),
    responses((status = 200, description = "The host", body = HostView)))]
async fn show(State(s): State<Arc<AppState>>, ApiPath(name): ApiPath<String>) -> ApiResult {
    Ok(Json(s.control.host(&name).await?).into_response())
}

/// Removes a failover host (refused while it runs VMs); its secret stops working.
#[utoipa::path(delete, operation_id = "host_remove", path = "/api/hosts/{name}", tag = "hosts",
    params(("name" = String, Path, description = "Host name")),
    responses((status = 204, description = "Removed")))]
async fn remove(
    State(s): State<Arc<AppState>>,
    Extension(by): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult {
    s.control.remove_host(&name, &by.name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Marks a failed node repaired: it leaves the failed state, and the slots
/// whose home it is move back to it (per their environment's failback policy).
#[utoipa::path(post, operation_id = "node_repaired", path = "/api/nodes/{id}/repaired", tag = "nodes",
    params(("id" = String, Path, description = "Node id or MAC")),
    responses((status = 200, description = "The node", body = Node)))]
async fn repaired(
    State(s): State<Arc<AppState>>,
    Extension(by): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    Ok(Json(s.control.node_repaired(&id, &by.name).await?).into_response())
}

/// Resolves the host secret to its host (401 before any body is read).
async fn authenticate(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let secret = req
        .headers()
        .get(boot_proto::host::HOST_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .map(str::to_string);
    let Some(secret) = secret else {
        return ApiError::new(
            ErrorKind::Unauthorized,
            "missing Authorization: Bearer <host secret>",
        )
        .into_response();
    };
    match s.control.host_by_secret(&secret).await {
        Ok(Some(host)) => {
            req.extensions_mut().insert(host);
            next.run(req).await
        }
        Ok(None) => ApiError::new(
            ErrorKind::Unauthorized,
            "unknown host secret (boot-server host add NAME issues one)",
        )
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
struct Wait {
    wait: Option<u64>,
}

/// A host's poll: answers at once when there is something to do, else
/// waits (at most `wait` seconds, capped below the host timeout) for a VM
/// to be asked of it.
async fn poll(
    State(s): State<Arc<AppState>>,
    Extension(host): Extension<Host>,
    Query(q): Query<Wait>,
    Json(report): Json<HostReport>,
) -> ApiResult {
    let c = &s.control;
    let timeout = c.config.agent.heartbeat_timeout_secs;
    let cap = (timeout / 2).max(1);
    let wait = q.wait.unwrap_or(0).min(cap);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let wakeup = c.host_wakeup(&host.name);
    loop {
        let notified = wakeup.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let commands = c.host_poll(&host, &report).await?;
        let done = tokio::time::Instant::now() >= deadline;
        if !commands.is_empty() || done {
            return Ok(Json(HostReply {
                host: host.name.clone(),
                commands,
                poll_secs: cap,
            })
            .into_response());
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            // Once more at the deadline (it also records the poll's time).
            continue;
        }
    }
}
