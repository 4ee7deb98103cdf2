//! Admin REST routes of the engine: environments (create, change, delete,
//! activate, scale, add/remove/quarantine a node, policy, history) and
//! slots. Thin calls into the [`Control`](crate::control::Control) layer;
//! bodies are parsed here so that malformed JSON gets the API's one error
//! shape (`400 {"code": "bad_request", ...}`) and misspelt fields are
//! refused rather than ignored. Mounted by [`super::admin::routes`] inside
//! its authorisation layer; described for OpenAPI by [`EnvsApi`].

use super::extract::{parse, ApiPath, ApiQuery};
use super::{ApiError, AppState};
use crate::control::{CloneReport, EnvHistory, EnvView, ErrorKind};
use crate::model::{Environment, Node, Policy, Slot};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};

/// The OpenAPI description of the engine's routes.
#[derive(OpenApi)]
#[openapi(paths(
    list,
    create,
    show,
    change,
    remove,
    activate,
    deactivate,
    scale,
    add_node,
    remove_node,
    clone,
    quarantine,
    policy,
    history,
    slots
))]
pub struct EnvsApi;

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
        .route("/api/environments/{name}/clone", post(clone))
        .route("/api/environments/{name}/quarantine", post(quarantine))
        .route("/api/environments/{name}/policy", put(policy))
        .route("/api/environments/{name}/history", get(history))
        .route("/api/slots", get(slots))
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::BadRequest, m)
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

/// The environment named in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct EnvName {
    /// Environment name.
    name: String,
}

/// A new environment: its name, and any other environment field.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
struct EnvCreate {
    /// Environment name.
    name: String,
    #[schema(inline)]
    #[serde(flatten)]
    rest: Environment,
}

/// Every environment with its slots.
#[utoipa::path(get, operation_id = "env_list", path = "/api/environments", tag = "environments",
    responses((status = 200, description = "Every environment", body = [EnvView])))]
async fn list(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(s.control.environments().await?)
}

/// Creates an environment (`name` required; the other fields default).
#[utoipa::path(post, operation_id = "env_create", path = "/api/environments", tag = "environments", request_body = EnvCreate,
    responses((status = 201, description = "The environment", body = EnvView)))]
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

/// One environment with its slots.
#[utoipa::path(get, operation_id = "env_show", path = "/api/environments/{name}", tag = "environments", params(EnvName),
    responses((status = 200, description = "The environment", body = EnvView)))]
async fn show(State(s): State<Arc<AppState>>, ApiPath(name): ApiPath<String>) -> ApiResult {
    ok(s.control.environment(&name).await?)
}

/// Changes an environment: the fields given replace the stored ones.
#[utoipa::path(patch, operation_id = "env_change", path = "/api/environments/{name}", tag = "environments", params(EnvName),
    request_body = Environment,
    responses((status = 200, description = "The environment as changed", body = EnvView)))]
async fn change(
    State(s): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> ApiResult {
    let mut patch: Value = parse(&body)?;
    check_env_fields(&patch)?;
    strip_view_fields(&mut patch);
    ok(s.control.update_env(&name, patch).await?)
}

/// Deletes an environment (its nodes are released first).
#[utoipa::path(delete, operation_id = "env_remove", path = "/api/environments/{name}", tag = "environments", params(EnvName),
    responses((status = 204, description = "Deleted")))]
async fn remove(State(s): State<Arc<AppState>>, ApiPath(name): ApiPath<String>) -> ApiResult {
    s.control.delete_env(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Activates an environment: the engine fills its slots.
#[utoipa::path(post, operation_id = "env_activate", path = "/api/environments/{name}/activate", tag = "environments", params(EnvName),
    responses((status = 200, description = "The environment", body = EnvView)))]
async fn activate(State(s): State<Arc<AppState>>, ApiPath(name): ApiPath<String>) -> ApiResult {
    ok(s.control.set_env_active(&name, true).await?)
}

/// Deactivates an environment: the engine releases its nodes.
#[utoipa::path(post, operation_id = "env_deactivate", path = "/api/environments/{name}/deactivate", tag = "environments", params(EnvName),
    responses((status = 200, description = "The environment", body = EnvView)))]
async fn deactivate(State(s): State<Arc<AppState>>, ApiPath(name): ApiPath<String>) -> ApiResult {
    ok(s.control.set_env_active(&name, false).await?)
}

/// How many nodes an environment wants.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    /// Desired node count.
    nodes: u32,
}

/// Sets the number of nodes an environment wants (within min..max).
#[utoipa::path(post, operation_id = "env_scale", path = "/api/environments/{name}/scale", tag = "environments", params(EnvName),
    request_body = ScaleBody,
    responses((status = 200, description = "The environment", body = EnvView)))]
async fn scale(
    State(s): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> ApiResult {
    let b: ScaleBody = parse(&body)?;
    ok(s.control.scale_env(&name, b.nodes).await?)
}

/// A node, by id or MAC.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    /// Node id or MAC.
    node: String,
}

/// Moves a given pool node into the environment (a new slot).
#[utoipa::path(post, operation_id = "env_add_node", path = "/api/environments/{name}/add-node", tag = "environments", params(EnvName),
    request_body = NodeBody,
    responses((status = 200, description = "The slot the node goes to", body = Slot)))]
async fn add_node(
    State(s): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> ApiResult {
    let b: NodeBody = parse(&body)?;
    ok(s.control.env_add_node(&name, &b.node).await?)
}

/// What leaves: a node (id or MAC) or a slot (index), and its disk's fate.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    /// Node id or MAC (or give `slot`).
    #[serde(default)]
    node: Option<String>,
    /// Slot index (or give `node`).
    #[serde(default)]
    slot: Option<u32>,
    /// Delete the slot's overlay too (else it is kept).
    #[serde(default)]
    delete_disk: bool,
}

/// Releases a node of the environment back to the pool. A clone's slot,
/// a slot named by index, or `delete_disk` take the slot away once its
/// node has left (its overlay kept unless `delete_disk`).
#[utoipa::path(post, operation_id = "env_remove_node", path = "/api/environments/{name}/remove-node", tag = "environments", params(EnvName),
    request_body = RemoveBody,
    responses((status = 200, description = "The slot it left", body = Slot)))]
async fn remove_node(
    State(s): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> ApiResult {
    let b: RemoveBody = parse(&body)?;
    ok(s.control
        .env_remove(&name, b.node.as_deref(), b.slot, b.delete_disk)
        .await?)
}

/// A live clone: the template slot, the new slot, whether a refusal of
/// the `prepare-clone` hook is overridden.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CloneBody {
    /// The (ready) slot to clone.
    slot: u32,
    /// The new slot's index (default: the lowest free one).
    #[serde(default)]
    into: Option<u32>,
    /// Go on when `prepare-clone` refuses.
    #[serde(default)]
    force: bool,
}

/// Clones a running slot into a new slot of the environment: the
/// template's `prepare-clone` hook, a freeze, a snapshot of its overlay,
/// thaw and `clone-done`; the new slot then boots from the snapshot with
/// its own identity. Answers once the snapshot is taken (or the clone
/// stopped: 409 with the reason, e.g. the hook's refusal).
#[utoipa::path(post, operation_id = "env_clone", path = "/api/environments/{name}/clone", tag = "environments", params(EnvName),
    request_body = CloneBody,
    responses((status = 200, description = "The clone's job and the new slot", body = CloneReport),
        (status = 409, description = "Refused or stopped (the reason says why)", body = super::openapi::ErrorBody)))]
async fn clone(
    State(s): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> ApiResult {
    let b: CloneBody = parse(&body)?;
    ok(s.control.env_clone(&name, b.slot, b.into, b.force).await?)
}

/// Takes a node of the environment out of service (its slot is refilled).
#[utoipa::path(post, operation_id = "env_quarantine", path = "/api/environments/{name}/quarantine", tag = "environments", params(EnvName),
    request_body = NodeBody,
    responses((status = 200, description = "The node, quarantined", body = Node)))]
async fn quarantine(
    State(s): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> ApiResult {
    let b: NodeBody = parse(&body)?;
    ok(s.control.env_quarantine(&name, &b.node).await?)
}

/// A policy body: `null` clears; unknown fields are refused.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    /// Load figure compared (default `cpu_busy`).
    #[serde(default = "default_metric")]
    metric: String,
    /// Add a node when the average stays above this.
    add_above: f64,
    /// Remove a node when the average stays below this.
    remove_below: f64,
    /// Averaging window in seconds.
    window_secs: u64,
}

fn default_metric() -> String {
    Policy::default().metric
}

/// Sets (or with `null` clears) the environment's load-driven scaling policy.
#[utoipa::path(put, operation_id = "env_policy", path = "/api/environments/{name}/policy", tag = "environments", params(EnvName),
    request_body(content = Option<PolicyBody>, description = "The policy, or null to clear it"),
    responses((status = 200, description = "The environment", body = EnvView)))]
async fn policy(
    State(s): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
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

/// From when.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// Only samples and decisions at or after this time (ms since the
    /// Unix epoch). Parsed here so that a bad number gets the API's error shape.
    #[param(value_type = Option<i64>)]
    since_ms: Option<String>,
}

/// The environment's load samples and the engine's decisions about it.
#[utoipa::path(get, operation_id = "env_history", path = "/api/environments/{name}/history", tag = "environments",
    params(EnvName, HistoryQuery),
    responses((status = 200, description = "Load and decisions", body = EnvHistory)))]
async fn history(
    State(s): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult {
    let since = match q.since_ms.as_deref() {
        None | Some("") => 0,
        Some(t) => t
            .parse::<i64>()
            .map_err(|_| bad(format!("since_ms={t}: give milliseconds since the epoch")))?,
    };
    ok(s.control.env_history(&name, since).await?)
}

/// Which environment.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SlotsQuery {
    /// Only this environment's slots.
    environment: Option<String>,
}

/// Slots of every environment, or of one.
#[utoipa::path(get, operation_id = "env_slots", path = "/api/slots", tag = "environments", params(SlotsQuery),
    responses((status = 200, description = "The slots", body = [Slot])))]
async fn slots(State(s): State<Arc<AppState>>, ApiQuery(q): ApiQuery<SlotsQuery>) -> ApiResult {
    ok(s.control.slots(q.environment.as_deref()).await?)
}
