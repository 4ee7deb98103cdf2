//! Counting HTTP requests: a middleware that labels each request by its
//! listener (`node` or `admin`), its route template (`/ipxe/{mac}`, never
//! the MAC itself; `unmatched` for 404s) and status class, counts the
//! response body bytes as they are sent, and times the response head.

use super::{Labels, Metrics};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// State of [`count`]: the metrics and the listener's name.
pub type Counting = (Arc<Metrics>, &'static str);

/// Middleware (`axum::middleware::from_fn_with_state`) that counts requests.
pub async fn count(State((m, listener)): State<Counting>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = Instant::now();
    let res = next.run(req).await;
    let class = match res.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let by_listener: Labels = vec![("listener", listener.to_string())];
    m.http_duration
        .get_or_create(&by_listener)
        .observe(started.elapsed().as_secs_f64());
    let labels: Labels = vec![
        ("listener", listener.to_string()),
        ("route", route.clone()),
        ("code", class.to_string()),
    ];
    m.http_requests.get_or_create(&labels).inc();
    let bytes = m
        .http_bytes
        .get_or_create_owned(&vec![("listener", listener.to_string()), ("route", route)]);
    let (parts, inner) = res.into_parts();
    Response::from_parts(parts, axum::body::Body::new(Counted { inner, bytes }))
}

pin_project_lite::pin_project! {
    /// A response body that counts its data bytes and keeps its size hint
    /// (so Content-Length is still sent for bodies of known size).
    struct Counted {
        #[pin]
        inner: axum::body::Body,
        bytes: prometheus_client::metrics::counter::Counter,
    }
}

impl hyper::body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(d) = frame.data_ref() {
                this.bytes.inc_by(d.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
