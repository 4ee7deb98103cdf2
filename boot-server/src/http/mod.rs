//! The HTTP service: per-node iPXE scripts, image and loader files, the agent
//! endpoints and the admin API. Handlers parse and answer; boot decisions
//! come from the [`BootPlan`], state from the [`Store`].

pub mod admin;
pub mod agent;
pub mod files;
pub mod listener;
pub mod range;

use crate::config::Config;
use crate::plan::{BootPlan, Firmware, ScriptHints};
use crate::store::{format_mac, parse_mac, Store};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Shared by all handlers.
pub struct AppState {
    pub plan: Arc<BootPlan>,
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub admin_token: String,
    pub commands: CommandWakeups,
}

/// Wakes a node's long-poll when a command is queued for it.
#[derive(Default)]
pub struct CommandWakeups(Mutex<HashMap<String, Arc<Notify>>>);

impl CommandWakeups {
    pub fn for_node(&self, node: &str) -> Arc<Notify> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(node.to_string()).or_default().clone()
    }
    pub fn wake(&self, node: &str) {
        self.for_node(node).notify_waiters();
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/boot.ipxe", get(chain_script))
        .route("/ipxe/{mac}", get(node_script))
        .route("/images/{*path}", get(image_file).head(image_file))
        .route("/loaders/{*path}", get(loader_file).head(loader_file))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(agent::routes())
        .merge(admin::routes())
        .with_state(state)
}

/// Maps internal failures to a 500 with the error chain logged.
pub struct HttpError(pub StatusCode, pub String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for HttpError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "request failed");
        HttpError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

async fn chain_script(State(s): State<Arc<AppState>>) -> Result<Response, HttpError> {
    Ok(ipxe(s.plan.chain_script()?))
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
) -> Result<Response, HttpError> {
    let Some(mac) = parse_mac(&mac) else {
        return Err(HttpError(
            StatusCode::BAD_REQUEST,
            format!("not a MAC address: {mac}"),
        ));
    };
    let hints = ScriptHints {
        // iPXE expands an unset ${uuid} to an empty string.
        uuid: q.uuid.filter(|u| !u.is_empty()),
        firmware: q
            .platform
            .as_deref()
            .and_then(|p| Firmware::from_ipxe(p, q.buildarch.as_deref().unwrap_or(""))),
    };
    let script = s.plan.script(&format_mac(mac), &hints).await?;
    tracing::info!(node = %script.node.id, image = ?script.image, "served boot script");
    Ok(ipxe(script.text))
}

fn ipxe(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn image_file(
    State(s): State<Arc<AppState>>,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Response {
    let response = files::serve(&[s.config.images_dir.clone()], &path, &method, &headers).await;
    // Whole-file fetches only: HTTP SAN boot reads a disk in many small ranges.
    if method == Method::GET && response.status() == axum::http::StatusCode::OK {
        // Timeline: which node fetched which file, when (off the request path).
        let store = s.store.clone();
        let peer = Some(peer.ip());
        tokio::spawn(async move {
            let detail = json!({ "path": path, "peer": peer });
            crate::store::record_peer_event(&store, peer, "http-file", detail).await;
        });
    }
    response
}

async fn loader_file(
    State(s): State<Arc<AppState>>,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    files::serve(&[s.config.loaders_dir.clone()], &path, &method, &headers).await
}
