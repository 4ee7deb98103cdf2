//! Admin REST routes of environment bundles: `GET
//! /api/environments/{name}/export` streams a bundle (built by the control
//! layer, never held in memory), `POST /api/bundles` imports one streamed
//! in the request body. Admin tokens only (a bundle holds disk data); see
//! [`super::auth`]. Mounted by [`super::admin::routes`].

use super::extract::{ApiPath, ApiQuery};
use super::openapi::Binary;
use super::{ApiError, AppState};
use crate::control::{ErrorKind, ImportOptions, ImportPlan};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi};

/// The OpenAPI description of the bundle routes.
#[derive(OpenApi)]
#[openapi(paths(export, import))]
pub struct BundlesApi;

/// The bundle routes (without state; authorised by the caller's layer).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/environments/{name}/export", get(export))
        .route("/api/bundles", post(import))
}

type ApiResult = Result<Response, ApiError>;

/// Header carrying the bundle's size before compression (for progress).
pub const RAW_BYTES_HEADER: &str = "x-bundle-raw-bytes";

/// How to export.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    /// Deactivate the environment first and wait until its slots are
    /// released (otherwise its overlays are snapshotted live).
    #[serde(default)]
    halt: bool,
}

/// Streams environment `name` as a bundle (zstd-compressed tar, manifest first).
#[utoipa::path(get, path = "/api/environments/{name}/export", tag = "environments",
    params(("name" = String, Path, description = "Environment name"), ExportQuery),
    responses((status = 200, description = "The bundle", body = Binary, content_type = "application/zstd")))]
async fn export(
    State(s): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> ApiResult {
    let out = s.control.export_env(&name, q.halt).await?;
    let stream = tokio_stream_from(out.chunks);
    Ok((
        [
            (header::CONTENT_TYPE, "application/zstd".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", out.file_name),
            ),
            (
                header::HeaderName::from_static(RAW_BYTES_HEADER),
                out.raw_bytes.to_string(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// How to import (the map files' contents, parsed by the CLI).
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// Create the environment under this name.
    #[serde(rename = "as")]
    #[param(rename = "as")]
    as_name: Option<String>,
    /// Move its addresses into this subnet (CIDR), keeping host offsets.
    subnet: Option<String>,
    /// Address map: `OLD=NEW` pairs separated by commas.
    map_addresses: Option<String>,
    /// Node map: `FROM=TO` pairs separated by commas (FROM: a source node id or `slotN`).
    map_nodes: Option<String>,
    /// Verify and print the plan; create nothing.
    #[serde(default)]
    dry_run: bool,
}

fn pairs(what: &str, s: &Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for p in s
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.trim().is_empty())
    {
        let (a, b) = p.split_once('=').ok_or_else(|| {
            ApiError::new(
                ErrorKind::BadRequest,
                format!("{what}: {p:?} is not FROM=TO"),
            )
        })?;
        out.push((a.trim().to_string(), b.trim().to_string()));
    }
    Ok(out)
}

/// Imports a bundle streamed in the body: verified entirely before anything
/// is created; the environment is created inactive. With `dry_run`, only the plan.
#[utoipa::path(post, path = "/api/bundles", tag = "environments",
    params(ImportQuery),
    request_body(content = Binary, content_type = "application/octet-stream"),
    responses((status = 201, description = "Created (the plan carried out)", body = ImportPlan),
        (status = 200, description = "Dry run: the plan", body = ImportPlan)))]
async fn import(
    State(s): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    body: Body,
) -> ApiResult {
    let mut map_addresses = BTreeMap::new();
    for (a, b) in pairs("map_addresses", &q.map_addresses)? {
        let parse = |x: &str| {
            x.parse().map_err(|_| {
                ApiError::new(
                    ErrorKind::BadRequest,
                    format!("map_addresses: {x:?} is not an IPv4 address"),
                )
            })
        };
        map_addresses.insert(parse(&a)?, parse(&b)?);
    }
    let opts = ImportOptions {
        as_name: q.as_name,
        subnet: q.subnet,
        map_addresses,
        map_nodes: pairs("map_nodes", &q.map_nodes)?.into_iter().collect(),
        dry_run: q.dry_run,
        fail_after: None,
        crash_after: None,
    };
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let dry = opts.dry_run;
    // Run to the end even when the client goes away: a creation step cut
    // short would skip the rollback.
    let control = s.control.clone();
    let plan = tokio::spawn(async move { control.import_env(reader, opts).await })
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("import task: {e}")))??;
    let status = if dry {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(plan)).into_response())
}
