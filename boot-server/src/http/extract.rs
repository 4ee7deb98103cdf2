//! Request extractors of the admin API that answer a malformed request in
//! the API's one error shape (`400 {"code": "bad_request", ...}`) instead of
//! axum's plain-text rejections: JSON bodies, path and query parameters.

use super::ApiError;
use crate::control::ErrorKind;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::BadRequest, m)
}

/// Parses a JSON body into `T`, answering 400 in the API's shape.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("the request needs a JSON body"));
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("request body: {e}")))
}

/// A JSON request body (any or no content type).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| bad(format!("request body: {}", e.body_text())))?;
        parse(&body).map(ApiJson)
    }
}

/// Path parameters.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| bad(format!("path: {}", e.body_text())))
    }
}

/// Query parameters.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| bad(format!("query: {}", e.body_text())))
    }
}
