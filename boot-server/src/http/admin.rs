//! Admin REST API (`/api/*` outside `/api/agent`). Authorised by
//! [`super::auth::authorize`] before any body is read: over the Unix socket by
//! file permissions, elsewhere by a token (`Authorization: Bearer <token>`).
//! Every handler is a thin call into the [`Control`](crate::control::Control)
//! layer and carries its OpenAPI description (`utoipa::path`), gathered in
//! [`AdminApi`] and served by [`super::openapi`].

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::openapi::Binary;
use super::{ApiError, AppState};
use crate::control::{DiskView, ErrorKind, NodeCommand};
use crate::model::{
    BootImage, Event, Lease, MacAddr, Node, NodeState, QueuedCommand, Reservation, Selector,
};
use crate::store::Enrolment;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, OpenApi, ToSchema};

/// The OpenAPI description of this module's routes.
#[derive(OpenApi)]
#[openapi(paths(
    nodes,
    enrol,
    node,
    node_load,
    node_power,
    node_power_act,
    node_state,
    queue_command,
    node_commands,
    command,
    images,
    add_image,
    import_images,
    remove_image,
    upload_image_file,
    default_image,
    set_default_image,
    assignments,
    assign,
    leases,
    reservations,
    put_reservation,
    remove_reservation,
    events,
    disks,
    add_base,
    upload_base,
    create_overlay,
    delete_disk,
    snapshot,
    attach,
    detach,
    backup
))]
pub struct AdminApi;

/// The admin API's routes (`/api/...`), all behind [`super::auth::authorize`]
/// except the OpenAPI document.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/nodes", get(nodes).post(enrol))
        .route("/api/nodes/{id}", get(node))
        .route("/api/nodes/{id}/load", get(node_load))
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
        .route("/api/events/stream", get(super::stream::events_stream))
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
        .merge(super::tokens::routes())
        .merge(super::servers::routes())
        .merge(super::bundles::routes())
        .merge(super::hosts::routes())
        .route_layer(middleware::from_fn_with_state(
            state,
            super::auth::authorize,
        ))
        .route("/api/openapi.json", get(super::openapi::serve))
}

type ApiResult = Result<Response, ApiError>;

fn ok<T: serde::Serialize>(v: T) -> ApiResult {
    Ok(Json(v).into_response())
}

fn created<T: serde::Serialize>(v: T) -> ApiResult {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every node.
#[utoipa::path(get, path = "/api/nodes", tag = "nodes",
    responses((status = 200, description = "Every node", body = [Node])))]
async fn nodes(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(s.control.store.nodes().await?)
}

/// One node, by id or MAC.
#[utoipa::path(get, path = "/api/nodes/{id}", tag = "nodes",
    params(("id" = String, Path, description = "Node id or MAC")),
    responses((status = 200, description = "The node", body = Node)))]
async fn node(State(s): State<Arc<AppState>>, ApiPath(id): ApiPath<String>) -> ApiResult {
    ok(s.control.find_node(&id).await?)
}

/// From when a history is read.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SinceQuery {
    /// Milliseconds since the epoch (default: everything kept).
    since_ms: Option<i64>,
}

/// A node's load history (its heartbeats while it served environments).
#[utoipa::path(get, path = "/api/nodes/{id}/load", tag = "nodes",
    params(("id" = String, Path, description = "Node id or MAC"), SinceQuery),
    responses((status = 200, description = "Load samples, oldest first", body = [crate::model::LoadSample])))]
async fn node_load(
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<SinceQuery>,
) -> ApiResult {
    ok(s.control.node_load(&id, q.since_ms.unwrap_or(0)).await?)
}

/// A node to register ahead of its first boot.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EnrolBody {
    /// MAC of the node's boot interface.
    mac: MacAddr,
    /// Serial number (SMBIOS).
    serial: Option<String>,
    /// Free-form labels (rack, location, ...).
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Power control: `ipmi://HOST[:PORT]` or `qmp:///PATH`.
    power: Option<String>,
}

/// Registers a node ahead of its first boot (or updates its registration).
#[utoipa::path(post, path = "/api/nodes", tag = "nodes", request_body = EnrolBody,
    responses((status = 201, description = "The node as registered", body = Node)))]
async fn enrol(State(s): State<Arc<AppState>>, ApiJson(b): ApiJson<EnrolBody>) -> ApiResult {
    let node = s
        .control
        .enrol(Enrolment {
            mac: b.mac,
            serial: b.serial,
            labels: b.labels,
            power: b.power,
        })
        .await?;
    created(node)
}

/// A node state an admin may set.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StateBody {
    /// `quarantined`, `retired`, or `idle` (from quarantined).
    state: NodeState,
}

/// Quarantines, releases (to idle) or retires a node.
#[utoipa::path(put, path = "/api/nodes/{id}/state", tag = "nodes", request_body = StateBody,
    params(("id" = String, Path, description = "Node id or MAC")),
    responses((status = 200, description = "The node in its new state", body = Node)))]
async fn node_state(
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(b): ApiJson<StateBody>,
) -> ApiResult {
    ok(s.control.set_node_state(&id, b.state).await?)
}

/// A node's power state and, after an action, the action.
#[derive(Serialize, ToSchema)]
struct PowerView {
    /// The node as named in the request.
    node: String,
    /// The action carried out, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<crate::power::PowerAction>,
    /// What its BMC reads now.
    state: crate::power::PowerState,
}

/// The node's power state, read from its BMC (or QEMU monitor).
#[utoipa::path(get, path = "/api/nodes/{id}/power", tag = "nodes",
    params(("id" = String, Path, description = "Node id or MAC")),
    responses((status = 200, description = "Power state", body = PowerView),
        (status = 409, description = "The node has no power control", body = super::openapi::ErrorBody)))]
async fn node_power(State(s): State<Arc<AppState>>, ApiPath(id): ApiPath<String>) -> ApiResult {
    let state = s.control.node_power_status(&id).await?;
    ok(PowerView {
        node: id,
        action: None,
        state,
    })
}

/// A power action for a node's BMC.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PowerBody {
    /// on, off (hard), cycle, or pxe (network boot next).
    action: crate::power::PowerAction,
}

/// Powers a node on, off, cycles it, or points its next boot at the network.
#[utoipa::path(post, path = "/api/nodes/{id}/power", tag = "nodes", request_body = PowerBody,
    params(("id" = String, Path, description = "Node id or MAC")),
    responses((status = 200, description = "Power state after the action", body = PowerView)))]
async fn node_power_act(
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(b): ApiJson<PowerBody>,
) -> ApiResult {
    let state = s.control.node_power(&id, b.action).await?;
    ok(PowerView {
        node: id,
        action: Some(b.action),
        state,
    })
}

/// A node command (`reboot`, `reprovision`, `kexec` by image), or an agent
/// command as the agent receives it (round-1 API).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum CommandBody {
    /// A node command.
    Node(NodeCommand),
    /// An agent command, as is.
    Agent(RawCommand),
}

/// An agent command as the agent receives it (`{"kind": ...}`).
#[derive(Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
struct RawCommand(boot_proto::CommandKind);

/// The id of a queued command.
#[derive(Serialize, ToSchema)]
struct CommandQueued {
    /// Command id (`GET /api/commands/{id}`).
    id: i64,
}

/// Queues a command for a node's agent (wakes its long poll).
#[utoipa::path(post, path = "/api/nodes/{id}/commands", tag = "nodes", request_body = CommandBody,
    params(("id" = String, Path, description = "Node id or MAC")),
    responses((status = 202, description = "Queued", body = CommandQueued)))]
async fn queue_command(
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(cmd): ApiJson<CommandBody>,
) -> ApiResult {
    let cmd = match cmd {
        CommandBody::Node(c) => c,
        CommandBody::Agent(RawCommand(command)) => NodeCommand::Raw { command },
    };
    let cid = s.control.command_node(&id, cmd).await?;
    Ok((StatusCode::ACCEPTED, Json(CommandQueued { id: cid })).into_response())
}

/// The node's last 100 agent commands, newest first.
#[utoipa::path(get, path = "/api/nodes/{id}/commands", tag = "nodes",
    params(("id" = String, Path, description = "Node id or MAC")),
    responses((status = 200, description = "Commands, newest first", body = [QueuedCommand])))]
async fn node_commands(State(s): State<Arc<AppState>>, ApiPath(id): ApiPath<String>) -> ApiResult {
    let node = s.control.find_node(&id).await?;
    ok(s.control.store.commands_of(&node.id, 100).await?)
}

/// One agent command and its status.
#[utoipa::path(get, path = "/api/commands/{id}", tag = "nodes",
    params(("id" = i64, Path, description = "Command id")),
    responses((status = 200, description = "The command", body = QueuedCommand)))]
async fn command(State(s): State<Arc<AppState>>, ApiPath(id): ApiPath<i64>) -> ApiResult {
    ok(s.control.command(id).await?)
}

/// An image of the table, and whether it is the default.
#[derive(Serialize, ToSchema)]
struct ImageEntry {
    #[serde(flatten)]
    image: BootImage,
    /// Whether nodes without an assignment boot it.
    default: bool,
}

/// The boot-image table.
#[utoipa::path(get, path = "/api/images", tag = "images",
    responses((status = 200, description = "Every image", body = [ImageEntry])))]
async fn images(State(s): State<Arc<AppState>>) -> ApiResult {
    let default = s.control.store.default_image().await?;
    let list: Vec<ImageEntry> = s
        .control
        .store
        .images()
        .await?
        .into_iter()
        .map(|image| ImageEntry {
            default: default.as_deref() == Some(image.name.as_str()),
            image,
        })
        .collect();
    ok(list)
}

/// An image manifest: its text, or a file on the server (exactly one).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AddImageBody {
    /// Manifest text (TOML), file paths relative to the images directory.
    manifest: Option<String>,
    /// A manifest file already on the server.
    server_path: Option<String>,
}

/// Adds or updates an image from a manifest.
#[utoipa::path(post, path = "/api/images", tag = "images", request_body = AddImageBody,
    responses((status = 201, description = "The image as stored", body = BootImage)))]
async fn add_image(State(s): State<Arc<AppState>>, ApiJson(b): ApiJson<AddImageBody>) -> ApiResult {
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
    created(image)
}

/// Names of the images imported.
#[derive(Serialize, ToSchema)]
struct Imported {
    /// Image names added or updated.
    imported: Vec<String>,
}

/// Imports every `images/*/image.toml` of the server's images directory.
#[utoipa::path(post, path = "/api/images/import", tag = "images",
    responses((status = 200, description = "What was imported", body = Imported)))]
async fn import_images(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(Imported {
        imported: s.control.import_images().await?,
    })
}

/// Removes an image from the table (refused while assigned or the default).
#[utoipa::path(delete, path = "/api/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 204, description = "Removed")))]
async fn remove_image(State(s): State<Arc<AppState>>, ApiPath(name): ApiPath<String>) -> ApiResult {
    s.control.remove_image(&name).await?;
    no_content()
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

/// Where an uploaded file went.
#[derive(Serialize, ToSchema)]
struct Uploaded {
    /// Path relative to the images directory.
    path: String,
    /// Bytes received.
    bytes: u64,
}

/// Uploads one file of an image (before adding its manifest).
#[utoipa::path(put, path = "/api/images/{name}/files/{file}", tag = "images",
    params(("name" = String, Path, description = "Image name"),
           ("file" = String, Path, description = "File name inside the image's directory")),
    request_body(content = Binary, content_type = "application/octet-stream"),
    responses((status = 201, description = "Stored", body = Uploaded)))]
async fn upload_image_file(
    State(s): State<Arc<AppState>>,
    ApiPath((name, file)): ApiPath<(String, String)>,
    body: Body,
) -> ApiResult {
    let (rel, dest) = s.control.upload_path(&name, &file)?;
    let bytes = receive_file(body, &dest).await?;
    created(Uploaded { path: rel, bytes })
}

/// The image of nodes without an assignment (`null`: none).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DefaultImage {
    /// Image name, or null for none.
    image: Option<String>,
}

/// The default image.
#[utoipa::path(get, path = "/api/default-image", tag = "images",
    responses((status = 200, description = "The default image", body = DefaultImage)))]
async fn default_image(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(DefaultImage {
        image: s.control.store.default_image().await?,
    })
}

/// Sets (or with `null` removes) the default image.
#[utoipa::path(put, path = "/api/default-image", tag = "images", request_body = DefaultImage,
    responses((status = 204, description = "Set")))]
async fn set_default_image(
    State(s): State<Arc<AppState>>,
    ApiJson(b): ApiJson<DefaultImage>,
) -> ApiResult {
    s.control.set_default_image(b.image).await?;
    no_content()
}

/// An assignment: which nodes boot which image.
#[derive(Serialize, ToSchema)]
struct Assignment {
    /// The nodes it applies to.
    selector: Selector,
    /// The image they boot.
    image: String,
}

/// Every assignment.
#[utoipa::path(get, path = "/api/assignments", tag = "images",
    responses((status = 200, description = "Every assignment", body = [Assignment])))]
async fn assignments(State(s): State<Arc<AppState>>) -> ApiResult {
    let list: Vec<Assignment> = s
        .control
        .store
        .assignments()
        .await?
        .into_iter()
        .map(|(selector, image)| Assignment { selector, image })
        .collect();
    ok(list)
}

/// An image for a node by MAC or UUID (exactly one); `image` null removes it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    /// MAC of the node.
    mac: Option<MacAddr>,
    /// SMBIOS UUID of the node.
    uuid: Option<String>,
    /// Image to boot; null removes the assignment.
    image: Option<String>,
}

/// Assigns an image to a node (or removes its assignment).
#[utoipa::path(put, path = "/api/assignments", tag = "images", request_body = AssignBody,
    responses((status = 204, description = "Assigned")))]
async fn assign(State(s): State<Arc<AppState>>, ApiJson(b): ApiJson<AssignBody>) -> ApiResult {
    let selector = match (b.mac, b.uuid) {
        (Some(m), None) => Selector::Mac(m),
        (None, Some(u)) => Selector::Uuid(u),
        _ => {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                "give exactly one of mac, uuid",
            ))
        }
    };
    s.control.assign(selector, b.image).await?;
    no_content()
}

/// DHCP leases.
#[utoipa::path(get, path = "/api/leases", tag = "network",
    responses((status = 200, description = "Every lease", body = [Lease])))]
async fn leases(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(s.control.leases().await?)
}

/// DHCP reservations.
#[utoipa::path(get, path = "/api/reservations", tag = "network",
    responses((status = 200, description = "Every reservation", body = [Reservation])))]
async fn reservations(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(s.control.reservations().await?)
}

/// A fixed address (and host name) for a MAC.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReservationBody {
    /// The address.
    #[schema(value_type = String, format = Ipv4)]
    ip: std::net::Ipv4Addr,
    /// Host name handed out with it (option 12).
    hostname: Option<String>,
}

/// Reserves an address for a MAC (moves it if another MAC held it).
#[utoipa::path(put, path = "/api/reservations/{mac}", tag = "network", request_body = ReservationBody,
    params(("mac" = MacAddr, Path, description = "Client MAC")),
    responses((status = 200, description = "The reservation", body = Reservation)))]
async fn put_reservation(
    State(s): State<Arc<AppState>>,
    ApiPath(mac): ApiPath<String>,
    ApiJson(b): ApiJson<ReservationBody>,
) -> ApiResult {
    let r = Reservation {
        mac: parse_mac(&mac)?,
        ip: b.ip,
        hostname: b.hostname,
    };
    s.control.put_reservation(r.clone()).await?;
    ok(r)
}

fn parse_mac(m: &str) -> Result<MacAddr, ApiError> {
    m.parse()
        .map_err(|e: crate::model::BadMac| ApiError::new(ErrorKind::BadRequest, e.to_string()))
}

/// Removes the reservation of a MAC.
#[utoipa::path(delete, path = "/api/reservations/{mac}", tag = "network",
    params(("mac" = MacAddr, Path, description = "Client MAC")),
    responses((status = 204, description = "Removed")))]
async fn remove_reservation(
    State(s): State<Arc<AppState>>,
    ApiPath(mac): ApiPath<String>,
) -> ApiResult {
    s.control.remove_reservation(parse_mac(&mac)?).await?;
    no_content()
}

/// Which events to list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only events with an id above this one.
    after: Option<i64>,
    /// Only events of this node (id or MAC).
    node: Option<String>,
    /// At most this many events (default 1000, at most 100000).
    limit: Option<u32>,
    /// Seconds to wait for a first event after `after` (long poll, max 60).
    wait: Option<u64>,
    /// Only the newest `tail` events of the log (before the node filter):
    /// replaces `after` (the UI's recent-events views).
    tail: Option<u32>,
}

/// The event log (audit trail, decisions, boot timeline), oldest first;
/// with `wait`, a long poll for the next events.
#[utoipa::path(get, path = "/api/events", tag = "events", params(EventsQuery),
    responses((status = 200, description = "Events, oldest first", body = [Event])))]
async fn events(State(s): State<Arc<AppState>>, ApiQuery(q): ApiQuery<EventsQuery>) -> ApiResult {
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
    let after = match q.tail {
        Some(n) => (c.store.last_event_id().await? - i64::from(n)).max(0),
        None => q.after.unwrap_or(0),
    };
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

/// Virtual disks: bases, overlays, snapshots.
#[utoipa::path(get, path = "/api/disks", tag = "disks",
    responses((status = 200, description = "Every disk", body = [DiskView])))]
async fn disks(State(s): State<Arc<AppState>>) -> ApiResult {
    ok(s.control.list_disks().await?)
}

/// A base disk from a file on the server.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AddBaseBody {
    /// Name of the new base.
    name: String,
    /// A raw or qcow2 file already on the server.
    server_path: String,
}

/// Creates a read-only base disk from a file on the server.
#[utoipa::path(post, path = "/api/disks/bases", tag = "disks", request_body = AddBaseBody,
    responses((status = 201, description = "The base", body = DiskView)))]
async fn add_base(State(s): State<Arc<AppState>>, ApiJson(b): ApiJson<AddBaseBody>) -> ApiResult {
    let v: DiskView = s.control.add_base(b.name, b.server_path.into()).await?;
    created(v)
}

/// Creates a read-only base disk from the uploaded file (raw, or a format
/// qemu-img converts).
#[utoipa::path(put, path = "/api/disks/bases/{name}", tag = "disks",
    params(("name" = String, Path, description = "Name of the new base")),
    request_body(content = Binary, content_type = "application/octet-stream"),
    responses((status = 201, description = "The base", body = DiskView)))]
async fn upload_base(
    State(s): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
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
    created(result?)
}

/// A copy-on-write overlay of a base.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OverlayBody {
    /// Id of the new overlay.
    id: String,
    /// Base disk it starts from.
    base: String,
}

/// Creates a copy-on-write overlay of a base.
#[utoipa::path(post, path = "/api/disks/overlays", tag = "disks", request_body = OverlayBody,
    responses((status = 201, description = "The overlay", body = DiskView)))]
async fn create_overlay(
    State(s): State<Arc<AppState>>,
    ApiJson(b): ApiJson<OverlayBody>,
) -> ApiResult {
    let v = s.control.create_overlay(b.id, b.base).await?;
    created(v)
}

/// Whether a deletion names a base.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeleteQuery {
    /// Delete a base disk instead of an overlay.
    #[serde(default)]
    base: bool,
}

/// Deletes an overlay (refused while attached or open) or, with `base`, a base.
#[utoipa::path(delete, path = "/api/disks/{id}", tag = "disks", params(("id" = String, Path, description = "Overlay id (or base name)"), DeleteQuery),
    responses((status = 204, description = "Deleted")))]
async fn delete_disk(
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult {
    s.control.delete_disk(id, q.base).await?;
    no_content()
}

/// The id of a new snapshot.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    /// Id of the new overlay holding the snapshot.
    snapshot: String,
}

/// Snapshots an overlay (for cloning): a new overlay with its current contents.
#[utoipa::path(post, path = "/api/disks/{id}/snapshot", tag = "disks", request_body = SnapshotBody,
    params(("id" = String, Path, description = "Overlay to snapshot")),
    responses((status = 201, description = "The snapshot", body = DiskView)))]
async fn snapshot(
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(b): ApiJson<SnapshotBody>,
) -> ApiResult {
    let v = s.control.snapshot(id, b.snapshot).await?;
    created(v)
}

/// Which node an overlay goes to, and whether at once.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    /// Node id or MAC.
    node: String,
    /// Also attach it on the running node now.
    #[serde(default)]
    now: bool,
    /// With `now`: mount point on the node (none: block device only).
    mount: Option<String>,
}

/// An overlay attached to a node.
#[derive(Serialize, ToSchema)]
struct Attached {
    /// The overlay.
    overlay: String,
    /// The node id.
    node: String,
    /// The secret NBD export name.
    export: String,
    /// With `now`: the agent command attaching it.
    command: Option<i64>,
    /// The same disk over iSCSI (target and CHAP login), when iSCSI is on.
    iscsi: Option<crate::iscsi::NodeTarget>,
}

/// Attaches an overlay to a node (its root disk from the next boot on).
#[utoipa::path(post, path = "/api/disks/{id}/attach", tag = "disks", request_body = AttachBody,
    params(("id" = String, Path, description = "Overlay to attach")),
    responses((status = 200, description = "Attached", body = Attached)))]
async fn attach(
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(b): ApiJson<AttachBody>,
) -> ApiResult {
    let (node, export, command) = s
        .control
        .attach_disk(id.clone(), &b.node, b.now, b.mount)
        .await?;
    let iscsi = s.control.iscsi_access(&id, &node, &export);
    ok(Attached {
        overlay: id,
        node,
        export,
        command,
        iscsi,
    })
}

/// An overlay detached.
#[derive(Serialize, ToSchema)]
struct Detached {
    /// The overlay.
    overlay: String,
    /// Open NBD connections closed.
    connections_closed: usize,
}

/// Detaches an overlay: its export stops working and open connections close.
#[utoipa::path(post, path = "/api/disks/{id}/detach", tag = "disks",
    params(("id" = String, Path, description = "Overlay to detach")),
    responses((status = 200, description = "Detached", body = Detached)))]
async fn detach(State(s): State<Arc<AppState>>, ApiPath(id): ApiPath<String>) -> ApiResult {
    let closed = s.control.detach_disk(&id).await?;
    ok(Detached {
        overlay: id,
        connections_closed: closed,
    })
}

/// A consistent copy of the state database (SQLite online backup); admin tokens only.
#[utoipa::path(get, path = "/api/backup", tag = "server",
    responses((status = 200, description = "The SQLite database", body = Binary, content_type = "application/vnd.sqlite3")))]
async fn backup(State(s): State<Arc<AppState>>) -> ApiResult {
    let bytes = s.control.backup().await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/vnd.sqlite3")],
        bytes,
    )
        .into_response())
}
