//! The HTTP service: per-node iPXE scripts, image and loader files, the agent
//! endpoints and the admin REST API. Handlers parse and answer; boot
//! decisions come from the [`BootPlan`](crate::plan::BootPlan), admin
//! operations from the [`Control`] layer; the web UI's files under `/ui/`. Every API error is one JSON shape:
//! `{"code": "not_found", "message": "..."}`.

pub mod admin;
pub mod agent;
pub mod auth;
pub mod bundles;
pub mod envs;
pub mod extract;
pub mod files;
pub mod hosts;
pub mod linger;
pub mod listener;
pub mod openapi;
pub mod servers;
pub mod stream;
pub mod tokens;
pub mod ui;

use crate::control::{Control, Error as ControlError, ErrorKind};
use crate::images::Integrity;
use crate::model::{EventKind, Firmware, MacAddr};
use crate::plan::ScriptHints;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// Shared by all handlers.
pub struct AppState {
    /// Every admin operation.
    pub control: Arc<Control>,
    /// The bootstrap admin token (the Unix socket needs none; API tokens are in the store).
    pub admin_token: String,
    /// Turns true when the server stops: long-lived responses (the event
    /// stream) end then, so that the listeners drain without waiting for them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Prometheus metrics (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Marks requests that came over the admin Unix socket (file permissions
/// are their authentication).
#[derive(Debug, Clone, Copy)]
pub struct ViaAdminSocket;

/// The node-facing router (scripts, files, agent API) plus the admin API.
pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new();
    if state.control.config.metrics.on_node_port {
        r = r.route("/metrics", get(metrics));
    }
    r.route("/boot.ipxe", get(chain_script))
        .route("/ipxe/{mac}", get(node_script))
        .route("/images/{*path}", get(image_file).head(image_file))
        .route(
            "/files/sha256/{digest}",
            get(file_by_digest).head(file_by_digest),
        )
        .route("/loaders/{*path}", get(loader_file).head(loader_file))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(if state.control.config.agent.tls_listen.is_some() {
            agent::refused_in_the_clear()
        } else {
            agent::routes(state.clone())
        })
        .merge(hosts::agent_routes(state.clone()))
        .merge(admin::routes(state.clone()))
        .merge(ui::routes())
        .layer(axum::middleware::from_fn_with_state(
            (state.metrics.clone(), "node"),
            crate::metrics::http::count,
        ))
        .with_state(state)
}

/// The agent API alone, for its TLS listener (`[agent] tls_listen`).
pub fn agent_tls_router(state: Arc<AppState>) -> Router {
    agent::routes(state.clone())
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::middleware::from_fn_with_state(
            (state.metrics.clone(), "agent-tls"),
            crate::metrics::http::count,
        ))
        .with_state(state)
}

/// The admin API alone, for the Unix socket (and an admin-only listener).
pub fn admin_router(state: Arc<AppState>, via_socket: bool) -> Router {
    let r = admin::routes(state.clone())
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(ui::routes())
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            (state.metrics.clone(), "admin"),
            crate::metrics::http::count,
        ))
        .with_state(state);
    if via_socket {
        r.layer(Extension(ViaAdminSocket))
    } else {
        r
    }
}

/// Prometheus scrape: state gauges read now, counters as they stand.
async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let text = s.metrics.render(&s.control).await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// An API error: status + `{"code", "message"}`.
#[derive(Debug)]
pub struct ApiError(pub ControlError);

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError(ControlError::new(kind, message))
    }
}

/// HTTP status of an error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            status_of(self.0.kind),
            Json(json!({ "code": self.0.kind, "message": self.0.message })),
        )
            .into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        ApiError(e)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError(ControlError::from(e))
    }
}

/// Errors on unauthenticated routes: logged in full, answered without
/// internal detail.
fn public_error(e: anyhow::Error) -> Response {
    tracing::error!(error = %format!("{e:#}"), "request failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily unavailable, retry\n",
    )
        .into_response()
}

async fn chain_script(State(s): State<Arc<AppState>>) -> Response {
    match s.control.plan.chain_script() {
        Ok(t) => ipxe(t),
        Err(e) => public_error(e),
    }
}

#[derive(Deserialize, Default)]
struct ScriptQuery {
    uuid: Option<String>,
    platform: Option<String>,
    buildarch: Option<String>,
}

async fn node_script(
    State(s): State<Arc<AppState>>,
    Path(mac): Path<String>,
    Query(q): Query<ScriptQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return (StatusCode::BAD_REQUEST, "not a MAC address\n").into_response();
    };
    let hints = ScriptHints {
        // iPXE expands an unset ${uuid} to an empty string.
        uuid: q.uuid.filter(|u| !u.is_empty() && u.len() <= 64),
        firmware: q
            .platform
            .as_deref()
            .and_then(|p| Firmware::from_ipxe(p, q.buildarch.as_deref().unwrap_or(""))),
    };
    match s.control.plan.script(mac, &hints, peer.ip()).await {
        Ok(script) => {
            tracing::info!(%mac, image = ?script.image, "served boot script");
            ipxe(script.text)
        }
        Err(e) => public_error(e),
    }
}

fn ipxe(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn image_file(
    State(s): State<Arc<AppState>>,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let c = &s.control;
    let files = c.image_files.clone();
    let p = path.clone();
    let integrity = tokio::task::spawn_blocking(move || files.check(&p))
        .await
        .unwrap_or(Integrity::Unlisted);
    if let Integrity::Changed { image, reason } = integrity {
        tracing::error!(%path, %image, %reason, "image file changed since it was added: not serving it");
        c.events.emit(
            None,
            EventKind::ImageCorrupt,
            json!({ "image": image, "path": path, "reason": reason }),
        );
        return (
            StatusCode::CONFLICT,
            "image file does not match its manifest\n",
        )
            .into_response();
    }
    let response = files::serve(
        &boot_fs::Pinned::default(),
        std::slice::from_ref(&c.config.images_dir),
        &path,
        &method,
        &headers,
    )
    .await;
    // Whole-file fetches only: HTTP SAN boot reads a disk in many small ranges.
    if method == Method::GET && response.status() == StatusCode::OK {
        // Timeline: which node fetched which file, when (attributed by lease).
        let (store, events) = (c.store.clone(), c.events.clone());
        tokio::spawn(async move {
            if let std::net::IpAddr::V4(ip) = peer.ip() {
                if let Ok(Some(node)) = store.node_by_lease_ip(ip).await {
                    events.emit(
                        Some(node.id),
                        EventKind::HttpFile,
                        json!({ "path": path, "peer": ip }),
                    );
                }
            }
        });
    }
    response
}

/// An image file by its recorded SHA-256 (what other servers pull,
/// crate::imagesync): served only while it still matches that digest.
async fn file_by_digest(
    State(s): State<Arc<AppState>>,
    Path(digest): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let c = &s.control;
    let digest = digest.to_ascii_lowercase();
    let Some(rel) = c.image_files.path_by_digest(&digest) else {
        return (StatusCode::NOT_FOUND, "no image file has this SHA-256\n").into_response();
    };
    let files = c.image_files.clone();
    let p = rel.clone();
    let integrity = tokio::task::spawn_blocking(move || files.check(&p))
        .await
        .unwrap_or(Integrity::Unlisted);
    if let Integrity::Changed { image, reason } = integrity {
        tracing::error!(path = %rel, %image, %reason, "image file changed since it was added: not serving it to a peer");
        return (
            StatusCode::CONFLICT,
            "image file does not match its manifest\n",
        )
            .into_response();
    }
    files::serve(
        &boot_fs::Pinned::default(),
        std::slice::from_ref(&c.config.images_dir),
        &rel,
        &method,
        &headers,
    )
    .await
}

async fn loader_file(
    State(s): State<Arc<AppState>>,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    files::serve(
        &s.control.config.pinned_loaders(),
        std::slice::from_ref(&s.control.config.loaders_dir),
        &path,
        &method,
        &headers,
    )
    .await
}
