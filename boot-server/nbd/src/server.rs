//! `NbdServer`: TCP listener, per-connection task (handshake then transmission), and the
//! `ExportResolver` seam through which the boot server decides which peer may open what.
//! Admission limits and revocation live in `conns` ([`NbdLimits`], [`NbdHandle`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};

use crate::conns::{NbdHandle, NbdLimits, Registry, Ticket};
use crate::handshake::handshake;
use crate::stats::NbdStats;
use crate::transmit;
use boot_disk::DiskStore;

/// What an export name maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTarget {
    /// A base image, served read-only.
    Base(String),
    /// An overlay (or snapshot), served read-write.
    Overlay(String),
}

/// Decides which export names a peer may open.
pub trait ExportResolver: Send + Sync + 'static {
    /// The disk to serve for `name` requested by `peer`, or None (unknown / denied).
    fn resolve(&self, name: &str, peer: SocketAddr) -> Option<ExportTarget>;
    /// Names shown to `peer` by NBD_OPT_LIST.
    fn list(&self, _peer: SocketAddr) -> Vec<String> {
        vec![]
    }
    /// How `name` appears in logs. Export names may hold secrets, so by default only
    /// a fingerprint is logged; resolvers whose names are not secret may return them.
    fn display_name(&self, name: &str) -> String {
        format!("sha256:{}", fingerprint(name))
    }
}

/// Short fingerprint of a secret for logs: the first 8 hex digits of its SHA-256.
pub fn fingerprint(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Resolver that allows every peer everything in a store: an export name is an overlay
/// id if such an overlay exists, else a base name (read-only). For tools and tests.
pub struct AllowAllResolver(pub Arc<DiskStore>);

impl ExportResolver for AllowAllResolver {
    fn resolve(&self, name: &str, _peer: SocketAddr) -> Option<ExportTarget> {
        if !boot_disk::valid_name(name) {
            return None;
        }
        if self
            .0
            .root()
            .join("overlays")
            .join(name)
            .join("map")
            .exists()
        {
            Some(ExportTarget::Overlay(name.to_string()))
        } else if self
            .0
            .root()
            .join("bases")
            .join(format!("{name}.raw"))
            .exists()
        {
            Some(ExportTarget::Base(name.to_string()))
        } else {
            None
        }
    }

    fn list(&self, _peer: SocketAddr) -> Vec<String> {
        let mut v: Vec<String> = self
            .0
            .list_overlays()
            .map(|o| o.into_iter().map(|o| o.id).collect())
            .unwrap_or_default();
        if let Ok(b) = self.0.list_bases() {
            for b in b {
                if !v.contains(&b.name) {
                    v.push(b.name);
                }
            }
        }
        v
    }

    fn display_name(&self, name: &str) -> String {
        name.to_string()
    }
}

/// Time a client gets to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The NBD server.
pub struct NbdServer {
    listener: TcpListener,
    store: Arc<DiskStore>,
    resolver: Arc<dyn ExportResolver>,
    registry: Arc<Registry>,
}

impl NbdServer {
    /// Binds `listen` with the default [`NbdLimits`].
    pub async fn bind(
        listen: SocketAddr,
        store: Arc<DiskStore>,
        resolver: Arc<dyn ExportResolver>,
    ) -> Result<Self> {
        Self::bind_with_limits(listen, store, resolver, NbdLimits::default()).await
    }

    /// Binds `listen`; connections are admitted and run within `limits`.
    pub async fn bind_with_limits(
        listen: SocketAddr,
        store: Arc<DiskStore>,
        resolver: Arc<dyn ExportResolver>,
        limits: NbdLimits,
    ) -> Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind NBD listener on {listen}"))?;
        Ok(NbdServer {
            listener,
            store,
            resolver,
            registry: Registry::new(limits),
        })
    }

    /// A handle to the server's open connections (revocation, counts). Take it before
    /// `run`; it stays valid while the server runs.
    pub fn handle(&self) -> NbdHandle {
        NbdHandle {
            reg: self.registry.clone(),
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound TCP listener has a local address")
    }

    /// Accepts connections forever.
    pub async fn run(self) -> Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Accepts connections until `shutdown` completes (open connections keep running
    /// until their clients disconnect).
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        tracing::info!(addr = %self.local_addr(), "NBD server listening");
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = &mut shutdown => return Ok(()),
            };
            let (sock, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let stats = self.registry.stats().clone();
            let ticket = match self.registry.admit(peer.ip(), &sock) {
                Ok(t) => {
                    NbdStats::add(&stats.connections, 1);
                    t
                }
                Err(why) => {
                    NbdStats::add(&stats.refused, 1);
                    tracing::warn!(%peer, "NBD connection refused: {why}");
                    continue;
                }
            };
            let store = self.store.clone();
            let resolver = self.resolver.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(sock, peer, store, resolver, ticket).await {
                    tracing::info!(%peer, "NBD connection ended: {e:#}");
                }
            });
        }
    }
}

async fn connection(
    mut sock: TcpStream,
    peer: SocketAddr,
    store: Arc<DiskStore>,
    resolver: Arc<dyn ExportResolver>,
    ticket: Ticket,
) -> Result<()> {
    sock.set_nodelay(true).ok();
    let neg = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&mut sock, peer, &store, &resolver, &ticket),
    )
    .await
    .context("handshake timed out")
    .and_then(|r| r);
    if neg.is_err() {
        NbdStats::add(&ticket.registry().stats().handshake_failures, 1);
    }
    let neg = neg?;
    let Some(neg) = neg else { return Ok(()) };
    tracing::debug!(
        %peer,
        export = resolver.display_name(&neg.export),
        structured = neg.structured,
        "transmission"
    );
    // The ticket lives until the worker threads have ended.
    transmit::serve(sock, neg, ticket).await
}
