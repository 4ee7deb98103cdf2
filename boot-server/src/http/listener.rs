//! Serving an axum [`Router`] on a TCP or Unix socket with the limits a
//! boot server facing a whole rack needs: a deadline for the request head
//! (slowloris), a stall deadline for responses the client stops reading, a
//! cap on concurrent connections in total and per client IP (refused
//! connections get an immediate 503 with `Retry-After` and are closed, so
//! the accept queue never fills), a total cap kept below the process's
//! file-descriptor limit (so TFTP and NBD still get sockets), and graceful
//! shutdown with a bounded grace period.
//!
//! Built on hyper's HTTP/1.1 connection builder with hyper-util's Tokio
//! adapters and graceful-shutdown watcher, and tower-http's request-body
//! timeout. Handlers see `ConnectInfo<SocketAddr>` (TCP) or
//! `ConnectInfo<UnixPeer>` (Unix socket), as `into_make_service_with_connect_info`
//! gives them.

use anyhow::{Context, Result};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Limits and timeouts of one listener. `Default` gives values sized for a
/// rack of iPXE clients and agents.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Concurrent connections in total. Clamped at start to the open-file
    /// limit minus [`FD_RESERVE`] so other servers keep descriptors.
    pub max_connections: usize,
    /// Concurrent connections from one client IP (TCP only). iPXE opens one
    /// or two at a time, the agent one plus its long poll.
    pub max_connections_per_ip: usize,
    /// Time a client has to send a complete request head. hyper also applies
    /// it while a kept-alive connection waits idle for its next request, so
    /// it is the keep-alive idle timeout as well (iPXE reopens a pooled
    /// connection the server closed).
    pub header_read_timeout: Duration,
    /// A response write that makes no progress for this long (the client
    /// stopped reading) closes the connection. iPXE's own idle watchdog is
    /// 120 s.
    pub send_stall_timeout: Duration,
    /// Time allowed between chunks of a request body.
    pub request_body_timeout: Duration,
    /// On shutdown, how long requests in flight may run before their
    /// connections are dropped.
    pub shutdown_grace: Duration,
    /// hyper's per-connection buffer bound (request head and queued response
    /// bytes); it bounds memory per download. One file chunk
    /// ([`super::files::CHUNK`]): the socket's send buffer is the queue that
    /// matters, and a 500-client storm peaked at 67 MiB RSS with 64 KiB.
    pub max_buf_size: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: 4096,
            max_connections_per_ip: 64,
            header_read_timeout: Duration::from_secs(5),
            send_stall_timeout: Duration::from_secs(60),
            request_body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            max_buf_size: super::files::CHUNK,
        }
    }
}

/// Descriptors left for everything that is not an HTTP connection (TFTP
/// transfers, NBD clients, SQLite, image files being served).
pub const FD_RESERVE: u64 = 256;

/// The peer of a Unix-socket connection: its credentials when the kernel
/// gave them.
#[derive(Debug, Clone, Copy)]
pub struct UnixPeer {
    /// Credentials of the connecting process.
    pub cred: Option<tokio::net::unix::UCred>,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, lets requests in flight finish within
/// `config.shutdown_grace`, and returns. Handlers may extract
/// `ConnectInfo<SocketAddr>`.
pub async fn serve_tcp<F>(
    listener: TcpListener,
    app: Router,
    config: ListenerConfig,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send,
{
    let local = listener.local_addr().context("HTTP listener address")?;
    run(Listener::Tcp(listener), app, config, None, shutdown)
        .await
        .with_context(|| format!("HTTP server on {local}"))
}

/// Like [`serve_tcp`] over TLS: each connection's handshake must finish
/// within `config.header_read_timeout`.
pub async fn serve_tls<F>(
    listener: TcpListener,
    app: Router,
    config: ListenerConfig,
    tls: tokio_rustls::TlsAcceptor,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send,
{
    let local = listener.local_addr().context("HTTPS listener address")?;
    run(Listener::Tcp(listener), app, config, Some(tls), shutdown)
        .await
        .with_context(|| format!("HTTPS server on {local}"))
}

/// Like [`serve_tcp`] on a Unix socket; handlers may extract
/// `ConnectInfo<UnixPeer>`. The per-IP cap does not apply.
pub async fn serve_unix<F>(
    listener: UnixListener,
    app: Router,
    config: ListenerConfig,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send,
{
    run(Listener::Unix(listener), app, config, None, shutdown)
        .await
        .context("HTTP server on Unix socket")
}

/// Raises the soft open-file limit to the hard limit (systemd starts
/// services with a soft limit of 1024) and returns the soft limit now in
/// force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream, UnixPeer),
}

impl Listener {
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| {
                let cred = s.peer_cred().ok();
                Accepted::Unix(s, UnixPeer { cred })
            }),
        }
    }
}

async fn run<F>(
    listener: Listener,
    app: Router,
    config: ListenerConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send,
{
    let fd_limit = raise_fd_limit();
    let max_total = config
        .max_connections
        .min(fd_limit.saturating_sub(FD_RESERVE).max(16) as usize);
    if max_total < config.max_connections {
        tracing::warn!(
            fd_limit,
            max_connections = max_total,
            "open-file limit lowers the HTTP connection cap"
        );
    }
    let limits = Arc::new(Limits {
        max_total,
        max_per_ip: config.max_connections_per_ip.max(1),
        counts: Mutex::new(Counts::default()),
    });
    let app = app
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            config.request_body_timeout,
        ))
        .layer(axum::middleware::from_fn(super::linger::drain_unread_body));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(config.max_buf_size.max(8192));
    let graceful = GracefulShutdown::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut last_refusal_log: Option<Instant> = None;
    let mut refused_since_log = 0u64;
    tokio::pin!(shutdown);

    loop {
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(e) => {
                if is_connection_error(&e) {
                    continue;
                }
                // EMFILE/ENFILE and the like: nothing to accept with; back
                // off briefly instead of spinning (not the 1 s axum uses).
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip = match &accepted {
            Accepted::Tcp(_, addr) => Some(addr.ip().to_canonical()),
            Accepted::Unix(..) => None,
        };
        let slot = match limits.admit(ip) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(&accepted);
                refused_since_log += 1;
                if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(peer = ?ip, reason = why, refused = refused_since_log, "HTTP connection refused");
                    last_refusal_log = Some(Instant::now());
                    refused_since_log = 0;
                }
                continue;
            }
        };
        match accepted {
            Accepted::Tcp(stream, addr) => {
                let _ = stream.set_nodelay(true);
                let io = StallGuard::new(stream, config.send_stall_timeout);
                match &tls {
                    None => spawn_connection(&http, &graceful, &mut tasks, &app, io, addr, slot),
                    Some(acceptor) => spawn_tls_connection(
                        &http,
                        &graceful,
                        &mut tasks,
                        &app,
                        (acceptor.clone(), config.header_read_timeout),
                        io,
                        addr,
                        slot,
                    ),
                }
            }
            Accepted::Unix(stream, peer) => {
                let io = StallGuard::new(stream, config.send_stall_timeout);
                spawn_connection(&http, &graceful, &mut tasks, &app, io, peer, slot);
            }
        }
    }

    drop(listener);
    let in_flight = graceful.count();
    tracing::info!(connections = in_flight, "HTTP: stopped accepting; draining");
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?config.shutdown_grace,
            "HTTP: requests still running after the grace period; dropping them"
        );
    }
    tasks.shutdown().await;
    Ok(())
}

fn spawn_connection<Io, P>(
    http: &hyper::server::conn::http1::Builder,
    graceful: &GracefulShutdown,
    tasks: &mut JoinSet<()>,
    app: &Router,
    io: Io,
    peer: P,
    slot: Slot,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Clone + Send + Sync + 'static,
{
    let app = app.clone();
    let service = service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer.clone()));
        app.clone().oneshot(req)
    });
    let conn = graceful.watch(http.serve_connection(TokioIo::new(io), service));
    tasks.spawn(async move {
        let _slot = slot;
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    });
}

/// Like [`spawn_connection`] after a TLS handshake (bounded by `limit`).
#[allow(clippy::too_many_arguments)]
fn spawn_tls_connection<Io>(
    http: &hyper::server::conn::http1::Builder,
    graceful: &GracefulShutdown,
    tasks: &mut JoinSet<()>,
    app: &Router,
    (acceptor, limit): (tokio_rustls::TlsAcceptor, Duration),
    io: Io,
    peer: SocketAddr,
    slot: Slot,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = app.clone();
    let http = http.clone();
    let watcher = graceful.watcher();
    tasks.spawn(async move {
        let _slot = slot;
        let stream = match tokio::time::timeout(limit, acceptor.accept(io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let service = service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTPS connection ended with an error");
        }
    });
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Tells a refused client to come back (iPXE honours `Retry-After`) without
/// ever waiting on it, then closes.
fn refuse(accepted: &Accepted) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let _ = match accepted {
        Accepted::Tcp(s, _) => s.try_write(BUSY),
        Accepted::Unix(s, _) => s.try_write(BUSY),
    };
}

struct Limits {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; gives its place back when dropped.
struct Slot {
    limits: Arc<Limits>,
    ip: Option<IpAddr>,
}

impl Limits {
    fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, &'static str> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max_total {
            return Err("connection limit");
        }
        if let Some(ip) = ip {
            let n = c.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err("per-client connection limit");
            }
            *n += 1;
        }
        c.total += 1;
        Ok(Slot {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = c.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A stream whose writes fail with `TimedOut` once they have made no
/// progress for `limit` (a client that stopped reading its download).
struct StallGuard<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StallGuard<S> {
    fn new(inner: S, limit: Duration) -> Self {
        StallGuard {
            inner,
            limit,
            stalled: None,
        }
    }

    fn watch<T>(
        &mut self,
        cx: &mut TaskContext<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                let limit = self.limit;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client stopped reading",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_ip_and_gives_back() {
        let limits = Arc::new(Limits {
            max_total: 3,
            max_per_ip: 2,
            counts: Mutex::new(Counts::default()),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = limits.admit(Some(a)).unwrap();
        let _s2 = limits.admit(Some(a)).unwrap();
        assert!(limits.admit(Some(a)).is_err(), "third from one IP");
        let _s3 = limits.admit(Some(b)).unwrap();
        assert!(limits.admit(None).is_err(), "total cap");
        drop(s1);
        let _s4 = limits.admit(Some(a)).unwrap();
        assert_eq!(limits.counts.lock().unwrap().per_ip[&a], 2);
    }
}
