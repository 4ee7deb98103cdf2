//! Static file responses (images and loaders): `Content-Length` always (iPXE
//! pre-sizes its buffer only when it knows the length), `HEAD`, and single
//! `Range` requests answered with 206 for HTTP SAN boot. Paths are resolved by
//! the same no-escape rule as TFTP ([`boot_tftp::resolve_path`]).

use super::range::{answer, RangeAnswer};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::io::SeekFrom;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Serves `rel` from `roots` (first root holding it wins).
pub async fn serve(roots: &[PathBuf], rel: &str, method: &Method, headers: &HeaderMap) -> Response {
    let path = match boot_tftp::resolve_path(roots, rel) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(path = rel, error = %e, "file refused");
            return (StatusCode::NOT_FOUND, format!("not found: {rel}\n")).into_response();
        }
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return (StatusCode::NOT_FOUND, format!("not found: {rel}\n")).into_response(),
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return (StatusCode::NOT_FOUND, format!("not found: {rel}\n")).into_response(),
    };
    let range = answer(headers.get(header::RANGE).map(HeaderValue::as_bytes), len);
    let (status, start, count) = match range {
        RangeAnswer::Full => (StatusCode::OK, 0, len),
        RangeAnswer::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .header(header::CONTENT_LENGTH, 0)
                .body(Body::empty())
                .unwrap_or_default();
        }
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, count);
    if let RangeAnswer::Partial { start, end } = range {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    if method == Method::HEAD {
        return builder.body(Body::empty()).unwrap_or_default();
    }
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), 256 * 1024);
    builder.body(Body::from_stream(stream)).unwrap_or_default()
}
