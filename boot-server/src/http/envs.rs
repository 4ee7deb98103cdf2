//! Admin REST routes of the engine: environments (create, change, delete,
//! activate, scale, add/remove/quarantine a node, policy, history) and
//! slots. Thin calls into the [`Control`](crate::control::Control) layer;
//! bodies are parsed here so that malformed JSON gets the API's one error
//! shape (`400 {"code": "bad_request", ...}`) and misspelt fields are
//! refused rather than ignored. Mounted by [`super::admin::routes`] inside
//! its authorisation layer.

use super::{ApiError, AppState};
use crate::control::ErrorKind;
use crate::model::{Environment, Policy};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

type ApiResult = Result<Response, ApiError>;

fn ok<T: serde::Serialize>(v: T) -> ApiResult {
    Ok(Json(v).into_response())
}

/// The engine's admin routes (without state; authorised by the caller's layer).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/environments", get(list).post(create))
        .route(
            "/api/environments/{name}",
            get(show).patch(change).delete(remove),
        )
        .route("/api/environments/{name}/activate", post(activate))
        .route("/api/environments/{name}/deactivate", post(deactivate))
        .route("/api/environments/{name}/scale", post(scale))
        .route("/api/environments/{name}/add-node", post(add_node))
        .route("/api/environments/{name}/remove-node", post(remove_node))
        .route("/api/environments/{name}/quarantine", post(quarantine))
        .route("/api/environments/{name}/policy", put(policy))
        .route("/api/environments/{name}/history", get(history))
        .route("/api/slots", get(slots))
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::BadRequest, m)
}

/// Parses a JSON body into `T`, answering 400 in the API's shape.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("the request needs a JSON body"));
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("request body: {e}")))
}

/// Fields an environment body may carry: the environment's own, plus the
/// read-only ones `GET` adds (so a fetched environment can be sent back).
fn check_env_fields(body: &Value) -> Result<(), ApiError> {
    let Value::Object(fields) = body else {
        return Err(bad("send a JSON object of environment fields"));
    };
    let known = serde_json::to_value(Environment::default()).unwrap_or_default();
    let unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| known.get(k).is_none() && !matches!(*k, "slots" | "holding" | "target"))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(bad(format!(
            "unknown environment field(s): {}",
            unknown.join(", ")
        )))
    }
}

/// Removes the read-only fields of a fetched environment from a body.
fn strip_view_fields(body: &mut Value) {
    if let Value::Object(m) = body {
        for k in ["slots", "holding", "target"] {
            m.remove(k);
        }
    }
}

async fn list(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(s.control.environments().await?)
}

async fn create(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let mut v: Value = parse(&body)?;
    check_env_fields(&v)?;
    if !v.get("name").is_some_and(Value::is_string) {
        return Err(bad("an environment needs a name (\"name\": \"web\")"));
    }
    strip_view_fields(&mut v);
    let env: Environment =
        serde_json::from_value(v).map_err(|e| bad(format!("environment fields: {e}")))?;
    let view = s.control.create_env(env).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn show(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult {
    ok(s.control.environment(&name).await?)
}

async fn change(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let mut patch: Value = parse(&body)?;
    check_env_fields(&patch)?;
    strip_view_fields(&mut patch);
    ok(s.control.update_env(&name, patch).await?)
}

async fn remove(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult {
    s.control.delete_env(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn activate(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult {
    ok(s.control.set_env_active(&name, true).await?)
}

async fn deactivate(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult {
    ok(s.control.set_env_active(&name, false).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    nodes: u32,
}

async fn scale(State(s): State<Arc<AppState>>, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let b: ScaleBody = parse(&body)?;
    ok(s.control.scale_env(&name, b.nodes).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    /// Node id or MAC.
    node: String,
}

async fn add_node(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let b: NodeBody = parse(&body)?;
    ok(s.control.env_add_node(&name, &b.node).await?)
}

async fn remove_node(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let b: NodeBody = parse(&body)?;
    ok(s.control.env_remove_node(&name, &b.node).await?)
}

async fn quarantine(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let b: NodeBody = parse(&body)?;
    ok(s.control.env_quarantine(&name, &b.node).await?)
}

/// A policy body: `null` clears; unknown fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    #[serde(default = "default_metric")]
    metric: String,
    add_above: f64,
    remove_below: f64,
    window_secs: u64,
}

fn default_metric() -> String {
    Policy::default().metric
}

async fn policy(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let b: Option<PolicyBody> = parse(&body)?;
    let p = b.map(|b| Policy {
        metric: b.metric,
        add_above: b.add_above,
        remove_below: b.remove_below,
        window_secs: b.window_secs,
    });
    ok(s.control.set_policy(&name, p).await?)
}

#[derive(Deserialize)]
struct HistoryQuery {
    /// Parsed here so that a bad number gets the API's error shape.
    since_ms: Option<String>,
}

async fn history(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult {
    let since = match q.since_ms.as_deref() {
        None | Some("") => 0,
        Some(t) => t
            .parse::<i64>()
            .map_err(|_| bad(format!("since_ms={t}: give milliseconds since the epoch")))?,
    };
    ok(s.control.env_history(&name, since).await?)
}

#[derive(Deserialize)]
struct SlotsQuery {
    environment: Option<String>,
}

async fn slots(State(s): State<Arc<AppState>>, Query(q): Query<SlotsQuery>) -> ApiResult {
    ok(s.control.slots(q.environment.as_deref()).await?)
}
