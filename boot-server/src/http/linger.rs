//! Lingering close: a request body the handler left unread (a 400 on a bad
//! query, a 401, an import that stopped at a corrupt entry) is read and thrown
//! away, for a bounded time, after the answer.
//!
//! hyper does not read from the socket by itself. Closing a connection with
//! request bytes still in the kernel's receive buffer makes the kernel send a
//! reset, and a client that sends its whole body before reading the answer
//! (Python's `requests`, most HTTP libraries; curl reads early and is spared)
//! then sees "connection reset" instead of our error. nginx's lingering close
//! (`lingering_time` 30 s, `lingering_timeout` 5 s) is the convention followed.
//! A client that asked `Expect: 100-continue` has sent nothing yet: its body is
//! left alone (hyper then answers without inviting it).

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// The longest time spent draining one unread body.
const LINGER_TOTAL: Duration = Duration::from_secs(30);
/// The longest wait for the next piece of it.
const LINGER_IDLE: Duration = Duration::from_secs(5);

/// Middleware: wraps the request body so that whatever the handler leaves
/// unread is drained once the handler lets go of it.
pub async fn drain_unread_body(req: Request, next: Next) -> Response {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        return next.run(req).await;
    }
    let req = req.map(|body| Body::new(DrainOnDrop { inner: Some(body) }));
    next.run(req).await
}

/// A request body that drains its unread rest when dropped.
struct DrainOnDrop {
    /// `None` once the body ended.
    inner: Option<Body>,
}

impl HttpBody for DrainOnDrop {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            this.inner = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads and discards `body` until it ends, stalls for [`LINGER_IDLE`] or
/// [`LINGER_TOTAL`] has passed; dropping it then lets hyper close.
async fn drain(body: Body) {
    let deadline = Instant::now() + LINGER_TOTAL;
    let mut data = body.into_data_stream();
    loop {
        let wait = deadline.min(Instant::now() + LINGER_IDLE);
        match tokio::time::timeout_at(wait, data.next()).await {
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
}
