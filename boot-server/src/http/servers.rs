//! Admin REST routes of the server registry: list the servers sharing the
//! store, designate the preferred controller, forget a server that is gone.
//! Mounted by [`super::admin::routes`] inside its authorisation layer.

use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};
use crate::control::servers::ServerView;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};

/// The OpenAPI description of the server routes.
#[derive(OpenApi)]
#[openapi(paths(list, prefer, forget))]
pub struct ServersApi;

/// The server routes (without state; authorised by the caller's layer).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/servers", get(list))
        .route("/api/servers/preferred", put(prefer))
        .route("/api/servers/{name}", delete(forget))
}

type ApiResult = Result<Response, ApiError>;

/// The preferred controller to set.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PreferBody {
    /// A registered server that runs the engine; `null` clears the preference.
    name: Option<String>,
}

/// Every server sharing the store: role (controller, member, down),
/// segment, version, listen addresses, last heartbeat.
#[utoipa::path(get, operation_id = "server_list", path = "/api/servers", tag = "servers",
    responses((status = 200, description = "Every registered server", body = [ServerView])))]
async fn list(State(s): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(s.control.list_servers().await?).into_response())
}

/// Designates the preferred controller: it takes the controller lease
/// whenever it is up (the current controller steps down within a second).
#[utoipa::path(put, operation_id = "server_prefer", path = "/api/servers/preferred", tag = "servers",
    request_body = PreferBody,
    responses((status = 204, description = "Set")))]
async fn prefer(State(s): State<Arc<AppState>>, ApiJson(b): ApiJson<PreferBody>) -> ApiResult {
    s.control.prefer_server(b.name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Removes a down server from the registry.
#[utoipa::path(delete, operation_id = "server_forget", path = "/api/servers/{name}", tag = "servers",
    params(("name" = String, Path, description = "Server name")),
    responses((status = 204, description = "Forgotten")))]
async fn forget(State(s): State<Arc<AppState>>, ApiPath(name): ApiPath<String>) -> ApiResult {
    s.control.forget_server(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
