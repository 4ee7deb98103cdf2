//! Admin REST routes of API tokens: create (the secret is in the answer,
//! once), list, revoke. Admin tokens only (see [`super::auth`]); mounted by
//! [`super::admin::routes`] inside its authorisation layer.

use super::auth::Principal;
use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};
use crate::control::NewToken;
use crate::model::{ApiToken, TokenRole};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};

/// The OpenAPI description of the token routes.
#[derive(OpenApi)]
#[openapi(paths(list, create, revoke))]
pub struct TokensApi;

/// The token routes (without state; authorised by the caller's layer).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/tokens", get(list).post(create))
        .route("/api/tokens/{name}", delete(revoke))
}

type ApiResult = Result<Response, ApiError>;

/// A token to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// Unique name (1-64 letters, digits, `-`, `_`, `.`); the audit log records it.
    name: String,
    /// What it may do.
    role: TokenRole,
    /// For an operator token (and only for one): the environments it may operate.
    #[serde(default)]
    environments: Vec<String>,
}

/// Every API token (without secrets; the bootstrap admin token is not listed).
#[utoipa::path(get, operation_id = "token_list", path = "/api/tokens", tag = "tokens",
    responses((status = 200, description = "Every token", body = [ApiToken])))]
async fn list(State(s): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(s.control.tokens().await?).into_response())
}

/// Creates a token; the answer holds its secret, which is not kept and
/// cannot be shown again.
#[utoipa::path(post, operation_id = "token_create", path = "/api/tokens", tag = "tokens", request_body = TokenBody,
    responses((status = 201, description = "The token and its secret", body = NewToken)))]
async fn create(
    State(s): State<Arc<AppState>>,
    Extension(by): Extension<Principal>,
    ApiJson(b): ApiJson<TokenBody>,
) -> ApiResult {
    let t = s
        .control
        .create_token(&b.name, b.role, b.environments, &by.name)
        .await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

/// Revokes a token: requests carrying it get 401 from now on.
#[utoipa::path(delete, operation_id = "token_revoke", path = "/api/tokens/{name}", tag = "tokens",
    params(("name" = String, Path, description = "Token name")),
    responses((status = 204, description = "Revoked")))]
async fn revoke(
    State(s): State<Arc<AppState>>,
    Extension(by): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult {
    s.control.revoke_token(&name, &by.name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
