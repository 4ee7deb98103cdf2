//! Agent endpoints (`/api/agent/*`): hello, heartbeat, the long-poll command
//! channel and command results. Every call carries the per-node, per-boot
//! token minted into the boot script; a middleware resolves it (by its
//! digest) to the node before any body is parsed, so a node can only ever
//! see and answer its own commands. A token from an older boot stops working
//! when the next boot says hello, and a hello is refused from any address
//! but the node's own.
//!
//! Commands are bound to a boot: a poll takes only the commands queued for
//! the boot whose token it carries, and a new boot's hello closes what the
//! earlier boots left unfinished (`CommandStore`). Hello and heartbeat
//! answers list every live server's agent API (from the server registry's
//! [`AGENT_URL_PREFIX`]/[`AGENT_PIN_PREFIX`] entries) so that an agent goes
//! on with another server when its own stops answering.

use super::{ApiError, AppState};
use crate::control::ErrorKind;
use crate::model::{EventKind, Node, NodeState};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use boot_proto::{
    AgentServer, Command, CommandResult, Heartbeat, HeartbeatReply, Hello, HelloReply,
    AGENT_TOKEN_HEADER,
};
use serde::Deserialize;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Registry entry (`listen`) naming a server's agent API base URL.
pub const AGENT_URL_PREFIX: &str = "agent-url=";
/// Registry entry naming the SHA-256 of its agent API certificate (TLS).
pub const AGENT_PIN_PREFIX: &str = "agent-pin=";

/// Every live server's agent API from the registry, this server first. An
/// error reading the registry lists this server alone (the agent keeps
/// what it knew).
async fn agent_servers(s: &AppState) -> Vec<AgentServer> {
    let c = &s.control;
    let me = c.config.store.server_name();
    let mut out: Vec<AgentServer> = Vec::new();
    let records = match c.store.servers().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "server registry unreadable; agents keep their list");
            return out;
        }
    };
    let mut records: Vec<_> = records
        .into_iter()
        .filter(|r| r.age_ms < crate::model::SERVER_DOWN_AFTER_MS)
        .collect();
    // This server first, then by name: every agent tries them in one order.
    records.sort_by_key(|r| (r.info.name != me, r.info.name.clone()));
    for r in records {
        let find = |p: &str| r.info.listen.iter().find_map(|l| l.strip_prefix(p));
        if let Some(url) = find(AGENT_URL_PREFIX) {
            out.push(AgentServer {
                url: url.to_string(),
                pin: find(AGENT_PIN_PREFIX).map(str::to_string),
            });
        }
    }
    out
}

/// The node an agent request authenticated as.
#[derive(Clone)]
struct AgentNode {
    node: Node,
    /// The token is the next boot's (not yet promoted by a hello).
    next_boot: bool,
    token_digest: String,
}

/// The agent API's routes (`/api/agent/...`), authenticated by the per-node token.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/agent/hello", post(hello))
        .route("/api/agent/heartbeat", post(heartbeat))
        .route("/api/agent/commands", get(commands))
        .route("/api/agent/results", post(result))
        .route_layer(middleware::from_fn_with_state(state, authenticate))
        // Authenticated by the hand-off credential itself, not a token.
        .route("/api/agent/handoff", post(handoff))
}

/// With `[agent] tls_listen` set, the plain listener's agent routes answer
/// 403 (before any token is read) so that no token travels in the clear.
pub fn refused_in_the_clear() -> Router<Arc<AppState>> {
    async fn refuse(State(s): State<Arc<AppState>>) -> Response {
        ApiError::new(
            ErrorKind::Forbidden,
            format!(
                "the agent API is served over TLS at {}",
                s.control.config.agent_url()
            ),
        )
        .into_response()
    }
    Router::new()
        .route("/api/agent/hello", post(refuse))
        .route("/api/agent/heartbeat", post(refuse))
        .route("/api/agent/commands", get(refuse))
        .route("/api/agent/results", post(refuse))
        .route("/api/agent/handoff", post(refuse))
}

fn unauthorized(m: &str) -> Response {
    ApiError::new(ErrorKind::Unauthorized, m).into_response()
}

/// Resolves the agent token to its node (401 before any body is read).
async fn authenticate(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let Some(token) = req
        .headers()
        .get(AGENT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && t.len() <= 256)
    else {
        return unauthorized(&format!("missing {AGENT_TOKEN_HEADER}"));
    };
    let digest = crate::secret::digest(token);
    match s.control.store.node_by_token(&digest).await {
        Ok(Some((node, next_boot))) => {
            req.extensions_mut().insert(AgentNode {
                node,
                next_boot,
                token_digest: digest,
            });
            next.run(req).await
        }
        Ok(None) => unauthorized("unknown or stale node token"),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Whether the node (per the plan) lives at `peer`.
async fn at_node_address(s: &AppState, node: &Node, peer: IpAddr) -> Result<bool, ApiError> {
    if s.control.config.trust_boot_network {
        return Ok(true);
    }
    Ok(match s.control.plan.node_address(node).await? {
        Some(ip) => IpAddr::V4(ip) == peer,
        // No address known (enrolled, booted by kexec before any DHCP):
        // the token alone identifies the boot.
        None => true,
    })
}

/// A pre-staged boot exchanges its one-time hand-off credential
/// (`x-node-handoff`) for its agent token: once, after the decision bound
/// it, from the node's own address. 401 for an unknown, used or expired
/// credential; 409 while no decision has bound it (the agent retries).
async fn handoff(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    use crate::handoff::Take;
    let c = &s.control;
    let Some(secret) = headers
        .get(boot_proto::AGENT_HANDOFF_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && t.len() <= 256)
    else {
        return Ok(unauthorized(&format!(
            "missing {}",
            boot_proto::AGENT_HANDOFF_HEADER
        )));
    };
    let fp = crate::secret::fingerprint(secret);
    // The address is checked before the credential is used up.
    let node_of = |id: String| async move { c.store.node(&id).await };
    let now = crate::model::now_ms();
    let holder = match c.plan.handoffs.take_peek(secret, now) {
        Some(n) => n,
        None => {
            tracing::warn!(handoff = %fp, peer = %peer.ip(), "hand-off refused: unknown, used or expired");
            return Ok(unauthorized("unknown, used or expired hand-off credential"));
        }
    };
    let Some(node) = node_of(holder).await? else {
        return Ok(unauthorized("the hand-off's node is gone"));
    };
    if !at_node_address(&s, &node, peer.ip()).await? {
        tracing::warn!(node = %node.id, peer = %peer.ip(), handoff = %fp, "hand-off refused: not the node's address");
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "hand-off from an address that is not the node's",
        ));
    }
    match c.plan.handoffs.take(secret, now) {
        Take::Token { node: id, token } => {
            c.events.emit(
                Some(id.clone()),
                EventKind::Handoff,
                json!({ "handoff": fp, "token": crate::secret::fingerprint(&token) }),
            );
            tracing::info!(node = %id, handoff = %fp, "hand-off: token given");
            Ok(Json(boot_proto::HandoffReply { token }).into_response())
        }
        Take::Unbound { .. } => Err(ApiError::new(
            ErrorKind::Conflict,
            "no decision has bound this hand-off yet",
        )),
        Take::Unknown => Ok(unauthorized("unknown, used or expired hand-off credential")),
    }
}

async fn hello(
    State(s): State<Arc<AppState>>,
    Extension(a): Extension<AgentNode>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(body): Json<Hello>,
) -> Result<Response, ApiError> {
    let c = &s.control;
    let node = a.node;
    if body.protocol_version < boot_proto::MIN_PROTOCOL_VERSION {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "agent protocol {} is too old; this server accepts {}..={}",
                body.protocol_version,
                boot_proto::MIN_PROTOCOL_VERSION,
                boot_proto::PROTOCOL_VERSION
            ),
        ));
    }
    if !at_node_address(&s, &node, peer.ip()).await? {
        c.events.emit(
            Some(node.id.clone()),
            EventKind::AccessRefused,
            json!({ "what": "agent hello", "peer": peer.ip().to_string() }),
        );
        tracing::warn!(node = %node.id, peer = %peer.ip(), "agent hello refused: not the node's address");
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "hello from an address that is not the node's",
        ));
    }
    if a.next_boot {
        // The new boot is up: the previous boot's token stops working now
        // and the node's boot counter advances (commands queued from now on
        // are this boot's).
        c.store.promote_token(&node.id, &a.token_digest).await?;
    }
    let inventory = serde_json::to_value(&body.inventory).map_err(anyhow::Error::from)?;
    let serving = serving(&s, &node).await?;
    let facts = crate::model::HelloFacts {
        inventory,
        image: body.image.clone(),
        protocol: body.protocol_version,
    };
    c.store.record_hello(&node.id, &facts, serving).await?;
    if a.next_boot {
        // After the hello is stored: whoever waits on a closed command
        // (the engine's slot steps) sees the new boot first. What the
        // earlier boots had not finished, or never took, is closed.
        let closed = c.store.close_commands_of_previous_boot(&node.id).await?;
        if closed > 0 {
            tracing::info!(node = %node.id, closed, "commands of the previous boot closed");
        }
    }
    if c.config.engine.manual_enrolment && !node.enrolled && node.state == NodeState::Discovered {
        // Manual enrolment: an agent's hello does not put an unknown node
        // into the pool; an admin's `node add` does.
        c.store
            .set_node_state(&node.id, NodeState::Discovered)
            .await?;
    }
    c.wake_engine();
    c.events.emit(
        Some(node.id.clone()),
        EventKind::AgentReady,
        json!({ "image": body.image, "uptime_ms": body.uptime_ms, "init_ms": body.init_ms, "agent_start_ms": body.agent_start_ms, "agent_version": body.agent_version, "protocol": body.protocol_version }),
    );
    tracing::info!(node = %node.id, image = ?body.image, uptime_ms = ?body.uptime_ms, "agent ready");
    Ok(Json(HelloReply {
        node_id: node.id,
        heartbeat_interval_secs: c.config.agent.heartbeat_interval_secs,
        servers: agent_servers(&s).await,
    })
    .into_response())
}

/// Whether the node serves something (an environment slot or an explicit
/// assignment): `ready` rather than `idle` once up.
async fn serving(s: &AppState, node: &Node) -> Result<bool, ApiError> {
    use crate::model::Selector;
    if node.environment.is_some() {
        return Ok(true);
    }
    let store = &s.control.store;
    if store.assignment(&Selector::Mac(node.mac)).await?.is_some() {
        return Ok(true);
    }
    if let Some(u) = &node.uuid {
        if store
            .assignment(&Selector::Uuid(u.clone()))
            .await?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn heartbeat(
    State(s): State<Arc<AppState>>,
    Extension(a): Extension<AgentNode>,
    Json(body): Json<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let c = &s.control;
    let value = serde_json::to_value(&body).map_err(anyhow::Error::from)?;
    let serving = a.node.state == NodeState::Ready || serving(&s, &a.node).await?;
    if let Some((from, to)) = c
        .store
        .record_heartbeat(&a.node.id, &value, serving)
        .await?
    {
        c.events.emit(
            Some(a.node.id.clone()),
            EventKind::NodeRecovered,
            json!({ "from": from.as_str(), "to": to.as_str() }),
        );
        c.wake_engine();
    }
    if let Some(env) = &a.node.environment {
        c.record_load(&a.node.id, env, &body).await;
        if let Err(e) = crate::watch::judge_heartbeat(c, &a.node, &body).await {
            tracing::warn!(node = %a.node.id, error = %format!("{e:#}"), "could not judge the heartbeat's health");
        }
    }
    Ok(Json(HeartbeatReply {
        servers: agent_servers(&s).await,
    }))
}

#[derive(Deserialize)]
struct Wait {
    wait: Option<u64>,
}

/// Long poll: returns due commands at once, else waits up to `wait` seconds
/// (max 60) for the control layer to queue one. Delivery is at least once:
/// a command handed out stays due until the agent reports it started.
/// Only the commands of the boot the token belongs to: a next boot's token
/// before its hello (answered at once), or a poll outliving its boot, takes
/// nothing.
async fn commands(
    State(s): State<Arc<AppState>>,
    Extension(a): Extension<AgentNode>,
    Query(q): Query<Wait>,
) -> Result<Response, ApiError> {
    let c = &s.control;
    let Some(boot) = c.store.boot_of_token(&a.node.id, &a.token_digest).await? else {
        // A next boot's token before its hello: nothing of the present
        // boot's is for it (its agent says hello before it polls).
        return Ok(Json(Vec::<Command>::new()).into_response());
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.unwrap_or(0).min(60));
    let wakeup = c.wakeups.for_node(&a.node.id);
    loop {
        // Register interest before looking, so a wake between the two is not lost.
        let notified = wakeup.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let due = c.store.take_commands(&a.node.id, boot, 0).await?;
        if !due.is_empty() {
            let out: Vec<Command> = due
                .into_iter()
                .map(|c| Command {
                    id: c.id as u64,
                    kind: c.command,
                })
                .collect();
            return Ok(Json(out).into_response());
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(Json(Vec::<Command>::new()).into_response());
        }
    }
}

async fn result(
    State(s): State<Arc<AppState>>,
    Extension(a): Extension<AgentNode>,
    Json(body): Json<CommandResult>,
) -> Result<StatusCode, ApiError> {
    let c = &s.control;
    if !body.status.is_agent_report() {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("an agent cannot report {}", body.status.as_str()),
        ));
    }
    let detail: String = body.detail.chars().take(4096).collect();
    if !c
        .store
        .update_command(&a.node.id, body.id as i64, body.status, &detail)
        .await?
    {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no command {} for this node", body.id),
        ));
    }
    c.events.emit(
        Some(a.node.id.clone()),
        EventKind::CommandResult,
        json!({ "id": body.id, "status": body.status.as_str(), "detail": detail }),
    );
    c.wake_engine();
    Ok(StatusCode::NO_CONTENT)
}
