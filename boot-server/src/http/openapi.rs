//! The admin API's OpenAPI 3 document, generated from the handlers'
//! `utoipa::path` descriptions and the types' `ToSchema` derives, served at
//! `/api/openapi.json`. Every operation answers errors in one shape,
//! [`ErrorBody`]; which statuses an operation may answer is derived here
//! from what it takes (401/403/503 all; 400 and 404 with parameters or a
//! body, which may name nothing; 409 for changes), so no route can forget them.

use crate::control::ErrorKind;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};

/// Every API error: `{"code": "not_found", "message": "..."}`.
#[derive(serde::Serialize, ToSchema)]
pub struct ErrorBody {
    /// What kind of failure (maps to the HTTP status).
    pub code: ErrorKind,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// A raw byte stream (uploads, the database backup).
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .into()
    }
}

impl ToSchema for Binary {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "boot-server admin API",
        description = "Every admin operation of boot-server. Authenticate with \
            `Authorization: Bearer <token>`: the bootstrap admin token (`boot-server admin-token`) \
            or an API token (`/api/tokens`: admin, read-only, or operator of named environments). \
            Errors are `{\"code\", \"message\"}`."
    ),
    paths(openapi_json, events_stream),
    components(schemas(ErrorBody))
)]
struct Base;

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "server", security(()),
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

/// Live events as Server-Sent Events (the web UI's feed): the stored events
/// after `after` are replayed first (at most 1,000), then new ones as they
/// happen, each as an `event` whose data is the event's JSON; a client that
/// falls behind gets one `lagged` event and the stream ends. Documented
/// here; served by `http::stream`.
#[utoipa::path(get, path = "/api/events/stream", tag = "events",
    params(
        ("after" = Option<i64>, Query, description = "Replay stored events after this id first"),
        ("node" = Option<String>, Query, description = "Only events about this node (id or MAC)"),
        ("kind" = Option<String>, Query, description = "Only these kinds, comma-separated"),
    ),
    responses((status = 200, description = "An endless text/event-stream", content_type = "text/event-stream", body = String)))]
#[allow(dead_code)]
fn events_stream() {}

/// The whole document: every admin route, the error responses, the bearer scheme.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Base::openapi();
    doc.merge(super::admin::AdminApi::openapi());
    doc.merge(super::envs::EnvsApi::openapi());
    doc.merge(super::tokens::TokensApi::openapi());
    doc.merge(super::servers::ServersApi::openapi());
    doc.merge(super::bundles::BundlesApi::openapi());
    doc.merge(super::hosts::HostsApi::openapi());
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    components.responses.insert(
        "Error".into(),
        RefOr::T(
            ResponseBuilder::new()
                .description("An error: `{\"code\", \"message\"}`")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        ),
    );
    doc.security = Some(vec![SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    for item in doc.paths.paths.values_mut() {
        for (changes, op) in [
            (false, &mut item.get),
            (true, &mut item.put),
            (true, &mut item.post),
            (true, &mut item.delete),
            (true, &mut item.patch),
        ] {
            if let Some(op) = op {
                add_errors(op, changes);
            }
        }
    }
    doc
}

fn add_errors(op: &mut Operation, changes: bool) {
    if op.operation_id.as_deref() == Some("openapi_json") {
        return;
    }
    let params = op.parameters.as_deref().unwrap_or_default();
    let mut codes = vec!["401", "403", "503"];
    // Names in the path, the query or the body may name nothing.
    if !params.is_empty() || op.request_body.is_some() {
        codes.push("400");
        codes.push("404");
    }
    if changes {
        codes.push("409");
    }
    for code in codes {
        op.responses
            .responses
            .entry(code.to_string())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Error")));
    }
}

/// `GET /api/openapi.json` (no token needed: it holds no state).
pub async fn serve() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let body = JSON.get_or_init(|| document().to_json().unwrap_or_else(|_| "{}".into()));
    ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}
