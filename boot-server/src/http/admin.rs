//! Admin REST API (`/api/*` outside `/api/agent`). Authorised before any
//! body is read: over the Unix socket by file permissions, elsewhere by the
//! admin token (`Authorization: Bearer <token>`, compared in constant time).
//! Every handler is a thin call into the [`Control`](crate::control::Control) layer.

use super::{ApiError, AppState, ViaAdminSocket};
use crate::control::{DiskView, ErrorKind, NodeCommand};
use crate::model::{MacAddr, NodeState, Reservation, Selector};
use crate::store::Enrolment;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The admin API's routes (`/api/...`), all behind the admin token or the Unix socket.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/nodes", get(nodes).post(enrol))
        .route("/api/nodes/{id}", get(node))
        .route("/api/nodes/{id}/state", put(node_state))
        .route(
            "/api/nodes/{id}/power",
            get(node_power).post(node_power_act),
        )
        .route(
            "/api/nodes/{id}/commands",
            post(queue_command).get(node_commands),
        )
        .route("/api/commands/{id}", get(command))
        .route("/api/images", get(images).post(add_image))
        .route("/api/images/import", post(import_images))
        .route("/api/images/{name}", delete(remove_image))
        .route("/api/images/{name}/files/{file}", put(upload_image_file))
        .route(
            "/api/default-image",
            get(default_image).put(set_default_image),
        )
        .route("/api/assignments", get(assignments).put(assign))
        .route("/api/leases", get(leases))
        .route("/api/reservations", get(reservations))
        .route(
            "/api/reservations/{mac}",
            put(put_reservation).delete(remove_reservation),
        )
        .route("/api/events", get(events))
        .route("/api/disks", get(disks))
        .route("/api/disks/bases", post(add_base))
        .route("/api/disks/bases/{name}", put(upload_base))
        .route("/api/disks/overlays", post(create_overlay))
        .route("/api/disks/{id}", delete(delete_disk))
        .route("/api/disks/{id}/snapshot", post(snapshot))
        .route("/api/disks/{id}/attach", post(attach))
        .route("/api/disks/{id}/detach", post(detach))
        .route("/api/backup", get(backup))
        .merge(super::envs::routes())
        .route_layer(middleware::from_fn_with_state(state, authorize))
}

/// 401 unless the request came over the admin socket or carries the token.
async fn authorize(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if req.extensions().get::<ViaAdminSocket>().is_some() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(boot_proto::ADMIN_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if crate::secret::constant_time_eq(given.as_bytes(), s.admin_token.as_bytes()) {
        next.run(req).await
    } else {
        ApiError::new(
            ErrorKind::Unauthorized,
            "admin token required (Authorization: Bearer <token>)",
        )
        .into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok<T: serde::Serialize>(v: T) -> ApiResult {
    Ok(Json(v).into_response())
}

async fn nodes(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(s.control.store.nodes().await?)
}

async fn node(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    ok(s.control.find_node(&id).await?)
}

#[derive(Deserialize)]
struct EnrolBody {
    mac: String,
    serial: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    power: Option<String>,
}

fn parse_mac(m: &str) -> Result<MacAddr, ApiError> {
    m.parse()
        .map_err(|e: crate::model::BadMac| ApiError::new(ErrorKind::BadRequest, e.to_string()))
}

async fn enrol(State(s): State<Arc<AppState>>, Json(b): Json<EnrolBody>) -> ApiResult {
    let node = s
        .control
        .enrol(Enrolment {
            mac: parse_mac(&b.mac)?,
            serial: b.serial,
            labels: b.labels,
            power: b.power,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(node)).into_response())
}

#[derive(Deserialize)]
struct StateBody {
    state: NodeState,
}

async fn node_state(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Json(b): Json<StateBody>,
) -> ApiResult {
    ok(s.control.set_node_state(&id, b.state).await?)
}

async fn node_power(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let state = s.control.node_power_status(&id).await?;
    ok(serde_json::json!({ "node": id, "state": state }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerBody {
    action: crate::power::PowerAction,
}

async fn node_power_act(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Json(b): Json<PowerBody>,
) -> ApiResult {
    let state = s.control.node_power(&id, b.action).await?;
    ok(serde_json::json!({ "node": id, "action": b.action, "state": state }))
}

/// A node command (`reboot`, `reprovision`, `kexec` by image), or an agent
/// command as the agent receives it (round-1 API).
#[derive(Deserialize)]
#[serde(untagged)]
enum CommandBody {
    Node(NodeCommand),
    Agent(boot_proto::CommandKind),
}

async fn queue_command(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Json(cmd): Json<CommandBody>,
) -> ApiResult {
    let cmd = match cmd {
        CommandBody::Node(c) => c,
        CommandBody::Agent(command) => NodeCommand::Raw { command },
    };
    let cid = s.control.command_node(&id, cmd).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": cid }))).into_response())
}

async fn node_commands(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let node = s.control.find_node(&id).await?;
    ok(s.control.store.commands_of(&node.id, 100).await?)
}

async fn command(State(s): State<Arc<AppState>>, Path(id): Path<i64>) -> ApiResult {
    ok(s.control.command(id).await?)
}

async fn images(State(s): State<Arc<AppState>>) -> ApiResult {
    let default = s.control.store.default_image().await?;
    let list: Vec<_> = s
        .control
        .store
        .images()
        .await?
        .into_iter()
        .map(|i| {
            let mut v = serde_json::to_value(&i).unwrap_or_default();
            v["default"] = json!(default.as_deref() == Some(i.name.as_str()));
            v
        })
        .collect();
    ok(list)
}

#[derive(Deserialize)]
struct AddImageBody {
    /// Manifest text (TOML), file paths relative to the images directory.
    manifest: Option<String>,
    /// A manifest file already on the server.
    server_path: Option<String>,
}

async fn add_image(State(s): State<Arc<AppState>>, Json(b): Json<AddImageBody>) -> ApiResult {
    let image = match (b.manifest, b.server_path) {
        (Some(m), None) => s.control.add_image(m).await?,
        (None, Some(p)) => s.control.add_image_from_server_path(&p).await?,
        _ => {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                "give exactly one of manifest, server_path",
            ))
        }
    };
    Ok((StatusCode::CREATED, Json(image)).into_response())
}

async fn import_images(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(json!({ "imported": s.control.import_images().await? }))
}

async fn remove_image(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult {
    s.control.remove_image(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Streams a request body into `dest` (temp file, fsync, rename); returns its size.
async fn receive_file(body: Body, dest: &std::path::Path) -> Result<u64, ApiError> {
    let io = |e: std::io::Error| {
        ApiError::new(
            ErrorKind::Unavailable,
            format!("writing {}: {e}", dest.display()),
        )
    };
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let tmp = dest.with_extension("upload-tmp");
    let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(ErrorKind::BadRequest, format!("upload interrupted: {e}"))
        })?;
        n += chunk.len() as u64;
        f.write_all(&chunk).await.map_err(io)?;
    }
    f.sync_all().await.map_err(io)?;
    drop(f);
    tokio::fs::rename(&tmp, dest).await.map_err(io)?;
    Ok(n)
}

async fn upload_image_file(
    State(s): State<Arc<AppState>>,
    Path((name, file)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let (rel, dest) = s.control.upload_path(&name, &file)?;
    let bytes = receive_file(body, &dest).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "path": rel, "bytes": bytes })),
    )
        .into_response())
}

async fn default_image(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(json!({ "image": s.control.store.default_image().await? }))
}

#[derive(Deserialize)]
struct DefaultBody {
    image: Option<String>,
}

async fn set_default_image(
    State(s): State<Arc<AppState>>,
    Json(b): Json<DefaultBody>,
) -> ApiResult {
    s.control.set_default_image(b.image).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn assignments(State(s): State<Arc<AppState>>) -> ApiResult {
    let list: Vec<_> = s
        .control
        .store
        .assignments()
        .await?
        .into_iter()
        .map(|(sel, image)| json!({ "selector": sel, "image": image }))
        .collect();
    ok(list)
}

#[derive(Deserialize)]
struct AssignBody {
    mac: Option<String>,
    uuid: Option<String>,
    /// None removes the assignment.
    image: Option<String>,
}

async fn assign(State(s): State<Arc<AppState>>, Json(b): Json<AssignBody>) -> ApiResult {
    let selector = match (b.mac, b.uuid) {
        (Some(m), None) => Selector::Mac(parse_mac(&m)?),
        (None, Some(u)) => Selector::Uuid(u),
        _ => {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                "give exactly one of mac, uuid",
            ))
        }
    };
    s.control.assign(selector, b.image).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn leases(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(s.control.leases().await?)
}

async fn reservations(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(s.control.reservations().await?)
}

#[derive(Deserialize)]
struct ReservationBody {
    ip: std::net::Ipv4Addr,
    hostname: Option<String>,
}

async fn put_reservation(
    State(s): State<Arc<AppState>>,
    Path(mac): Path<String>,
    Json(b): Json<ReservationBody>,
) -> ApiResult {
    let r = Reservation {
        mac: parse_mac(&mac)?,
        ip: b.ip,
        hostname: b.hostname,
    };
    s.control.put_reservation(r.clone()).await?;
    ok(r)
}

async fn remove_reservation(State(s): State<Arc<AppState>>, Path(mac): Path<String>) -> ApiResult {
    s.control.remove_reservation(parse_mac(&mac)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<i64>,
    node: Option<String>,
    limit: Option<u32>,
    /// Seconds to wait for a first event after `after` (long poll, max 60).
    wait: Option<u64>,
}

async fn events(State(s): State<Arc<AppState>>, Query(q): Query<EventsQuery>) -> ApiResult {
    let c = &s.control;
    let node = match &q.node {
        Some(n) => Some(
            c.find_node(n)
                .await
                .map(|n| n.id)
                .unwrap_or_else(|_| n.clone()),
        ),
        None => None,
    };
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.unwrap_or(0).min(60));
    let mut live = c.events.subscribe();
    loop {
        let list = c.store.events(after, node.as_deref(), limit).await?;
        if !list.is_empty() || tokio::time::Instant::now() >= deadline {
            return ok(list);
        }
        // Wait for any new event (then look again, filtered by the store).
        if tokio::time::timeout_at(deadline, live.recv())
            .await
            .is_err()
        {
            return ok(list);
        }
    }
}

async fn disks(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(s.control.list_disks().await?)
}

#[derive(Deserialize)]
struct AddBaseBody {
    name: String,
    /// A raw or qcow2 file already on the server.
    server_path: String,
}

async fn add_base(State(s): State<Arc<AppState>>, Json(b): Json<AddBaseBody>) -> ApiResult {
    let v: DiskView = s.control.add_base(b.name, b.server_path.into()).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn upload_base(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult {
    let tmp_dir = s.control.config.disks_dir().join("uploads");
    crate::fsutil::private_dir(&tmp_dir).map_err(ApiError::from)?;
    let tmp = tmp_dir.join(format!(
        "{}.{}",
        name.replace('/', "_"),
        crate::secret::random_token(6)
    ));
    receive_file(body, &tmp).await?;
    let result = s.control.add_base(name, tmp.clone()).await;
    let _ = tokio::fs::remove_file(&tmp).await;
    Ok((StatusCode::CREATED, Json(result?)).into_response())
}

#[derive(Deserialize)]
struct OverlayBody {
    id: String,
    base: String,
}

async fn create_overlay(State(s): State<Arc<AppState>>, Json(b): Json<OverlayBody>) -> ApiResult {
    let v = s.control.create_overlay(b.id, b.base).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    base: bool,
}

async fn delete_disk(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult {
    s.control.delete_disk(id, q.base).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct SnapshotBody {
    snapshot: String,
}

async fn snapshot(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Json(b): Json<SnapshotBody>,
) -> ApiResult {
    let v = s.control.snapshot(id, b.snapshot).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[derive(Deserialize)]
struct AttachBody {
    node: String,
    #[serde(default)]
    now: bool,
    mount: Option<String>,
}

async fn attach(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Json(b): Json<AttachBody>,
) -> ApiResult {
    let (node, export, command) = s
        .control
        .attach_disk(id.clone(), &b.node, b.now, b.mount)
        .await?;
    let iscsi = s.control.iscsi_access(&id, &node, &export);
    ok(json!({ "overlay": id, "node": node, "export": export, "command": command, "iscsi": iscsi }))
}

async fn detach(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let closed = s.control.detach_disk(&id).await?;
    ok(json!({ "overlay": id, "connections_closed": closed }))
}

/// A consistent copy of the state database (SQLite online backup), streamed.
async fn backup(State(s): State<Arc<AppState>>) -> ApiResult {
    let bytes = s.control.backup().await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/vnd.sqlite3")],
        bytes,
    )
        .into_response())
}
