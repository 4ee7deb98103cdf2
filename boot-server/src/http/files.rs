//! Static file responses (images and loaders): `Content-Length` always (iPXE
//! pre-sizes its buffer only when it knows the length), `HEAD`, and single
//! `Range` requests answered with 206 for HTTP SAN boot. Paths are resolved by
//! the same no-escape rule as TFTP ([`boot_fs::resolve_path`]).
//!
//! Bodies are read with positioned reads of [`CHUNK`] bytes, one chunk at a
//! time and only when hyper asks for more (its write queue is bounded by the
//! listener's `max_buf_size`), so memory per download is a few chunks however
//! many nodes boot at once. A chunk the page cache holds is read right on the
//! async worker (`preadv2` with `RWF_NOWAIT` never waits for the disk); only
//! a chunk that needs the disk goes to the blocking pool. In a boot storm every
//! node reads the same cached image, and the hand-off per chunk to the blocking
//! pool and back cost more CPU than the read itself. The previous
//! `ReaderStream` over `tokio::fs::File` held a 256 KiB stream buffer plus
//! tokio's own file buffer per download (500 downloads: 307 MB RSS).
//! tower-http's `ServeDir` is not used: it follows symlinks out of its root
//! and answers multi-range requests with 416 where iPXE-friendly servers
//! send the whole file.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use boot_fs::range::{answer, RangeAnswer};
use bytes::Bytes;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Serves `rel` from `roots` (first root holding it wins; a `pinned` name
/// from its configured file).
pub async fn serve(
    pinned: &boot_fs::Pinned,
    roots: &[PathBuf],
    rel: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let path = match boot_fs::resolve_pinned(pinned, roots, rel) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(path = rel, error = %e, "file refused");
            return (StatusCode::NOT_FOUND, format!("not found: {rel}\n")).into_response();
        }
    };
    let file = match tokio::fs::File::open(&path).await {
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
    let file = file.into_std().await;
    builder
        .body(file_body(file, start, count))
        .unwrap_or_default()
}

/// Bytes read from disk per body chunk.
pub const CHUNK: usize = 32 * 1024;

/// `count` bytes of `file` from `start`, read a chunk at a time when polled.
fn file_body(file: std::fs::File, start: u64, count: u64) -> Body {
    let file = Arc::new(file);
    let chunks =
        futures_util::stream::unfold((file, start, count), |(file, pos, left)| async move {
            if left == 0 {
                return None;
            }
            let want = left.min(CHUNK as u64) as usize;
            let read = match read_cached(&file, pos, want) {
                Some(chunk) => Ok(Ok(chunk)),
                None => {
                    let reader = file.clone();
                    tokio::task::spawn_blocking(move || read_chunk(&reader, pos, want)).await
                }
            };
            match read {
                Ok(Ok(chunk)) => {
                    let got = chunk.len() as u64;
                    Some((Ok(chunk), (file, pos + got, left - got)))
                }
                // The length promised in Content-Length cannot be kept: end the
                // body with an error so hyper closes the connection.
                Ok(Err(e)) => Some((Err(e), (file, pos, 0))),
                Err(e) => Some((Err(io::Error::other(e)), (file, pos, 0))),
            }
        });
    Body::from_stream(chunks)
}

/// Up to `len` bytes at `pos` if the page cache holds them (at least the
/// first page), without waiting for the disk; `None` when the read would
/// block, the file system does not support `RWF_NOWAIT`, or it hit the end
/// (the blocking path then reports the short file).
fn read_cached(file: &std::fs::File, pos: u64, len: usize) -> Option<Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; len];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let offset = libc::off_t::try_from(pos).ok()?;
    // SAFETY: `iov` points at `buf`, which is `len` writable bytes and outlives
    // the call; the descriptor is open for the lifetime of `file`.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    match n {
        n if n > 0 => {
            buf.truncate(n as usize);
            Some(Bytes::from(buf))
        }
        // 0 (end of file), EAGAIN (not cached), EOPNOTSUPP, ENOSYS, EINTR, …
        _ => None,
    }
}

/// Exactly `len` bytes at `pos`; a file that shrank meanwhile is an error.
fn read_chunk(file: &std::fs::File, pos: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], pos + filled as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being served",
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Bytes::from(buf))
}
