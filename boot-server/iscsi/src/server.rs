//! `IscsiServer`: the TCP listener, the target table (IQN → disk, allowed initiator
//! address, optional CHAP credentials), admission limits (per client address and in
//! total), and [`IscsiHandle`], through which the integrator adds, removes and revokes
//! targets; removing or revoking closes the target's open connections at once, like
//! `boot_nbd::NbdHandle::revoke`. Each admitted connection runs on its own thread
//! (login, then the full feature phase in `session`), with blocking socket I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use boot_disk::{Disk, DiskStore};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::login::{self, Chap};

/// What a target's LUN 0 serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskRef {
    /// A base image, served read-only (writes get DATA PROTECT / WRITE PROTECTED).
    Base(String),
    /// An overlay (or snapshot), served read-write.
    Overlay(String),
}

/// One target in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// The disk behind LUN 0.
    pub disk: DiskRef,
    /// The only initiator address that may log in (None: any address).
    pub allowed_initiator: Option<IpAddr>,
    /// CHAP credentials the initiator must present (None: no authentication).
    pub chap: Option<Chap>,
}

impl TargetConfig {
    /// The address rule: whether an initiator at `peer` may reach this target without
    /// the admin credential (the one check behind login, discovery and the
    /// credentials a discovery session may use).
    pub fn admits(&self, peer: IpAddr) -> bool {
        self.allowed_initiator.is_none_or(|a| a == peer)
    }
}

/// Resource limits of an [`IscsiServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiLimits {
    /// Most open connections in total (default 256).
    pub max_connections: usize,
    /// Most open connections from one client address (default 16).
    pub max_connections_per_ip: usize,
    /// Time a client gets to finish logging in (default 30 s).
    pub login_timeout: Duration,
    /// Negotiation limits (data segment and burst sizes, command window).
    pub negotiation: login::Limits,
}

impl Default for IscsiLimits {
    fn default() -> Self {
        IscsiLimits {
            max_connections: 256,
            max_connections_per_ip: 16,
            login_timeout: Duration::from_secs(30),
            negotiation: login::Limits::default(),
        }
    }
}

/// Checks an iSCSI name: `iqn.`, `eui.` or `naa.` form, printable ASCII without
/// spaces, at most 223 bytes (RFC 7143 §4.2.7.1).
pub fn valid_iqn(name: &str) -> bool {
    (name.starts_with("iqn.") || name.starts_with("eui.") || name.starts_with("naa."))
        && name.len() <= 223
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
}

struct Target {
    cfg: TargetConfig,
    /// Bumped when the entry is replaced, so a login that looked up an older version
    /// cannot bind to the new one.
    generation: u64,
}

/// One logged-in connection, as [`IscsiHandle::sessions`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The initiator's address and port.
    pub peer: SocketAddr,
    /// The initiator's iSCSI name.
    pub initiator: String,
    /// The target IQN (None for a discovery session).
    pub target: Option<String>,
    /// The CHAP user that authenticated, if any.
    pub chap_user: Option<String>,
    /// Logged in with the admin credential.
    pub admin: bool,
    /// CRC32C header digest in use.
    pub header_digest: bool,
    /// CRC32C data digest in use.
    pub data_digest: bool,
}

struct Entry {
    ip: IpAddr,
    info: Option<SessionInfo>,
    /// (target IQN, overlay id if the disk is an overlay) once logged in.
    target: Option<(String, Option<String>)>,
    sock: OwnedFd,
}

#[derive(Default)]
struct Inner {
    targets: BTreeMap<String, Target>,
    conns: HashMap<u64, Entry>,
    /// The admin credential: logs in to every target from any address.
    admin: Option<Chap>,
    next_id: u64,
    next_generation: u64,
    next_tsih: u16,
}

/// Shared state of a server and its handles.
pub(crate) struct Registry {
    pub(crate) limits: IscsiLimits,
    pub(crate) store: Arc<DiskStore>,
    inner: Mutex<Inner>,
    closed: Notify,
}

fn shutdown(fd: &OwnedFd) {
    // SAFETY: shutdown(2) on a descriptor we own; it acts on the shared socket.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
}

/// A login's view of one target, with the generation it saw.
pub(crate) struct Resolved {
    pub(crate) cfg: TargetConfig,
    pub(crate) generation: u64,
    /// The peer's address may reach it (else only the admin credential may).
    pub(crate) address_ok: bool,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, ip: IpAddr, sock: &impl AsFd) -> Result<Ticket, &'static str> {
        let dup = sock
            .as_fd()
            .try_clone_to_owned()
            .map_err(|_| "cannot duplicate socket")?;
        let mut g = self.lock();
        if g.conns.len() >= self.limits.max_connections {
            return Err("too many connections");
        }
        if g.conns.values().filter(|e| e.ip == ip).count() >= self.limits.max_connections_per_ip {
            return Err("too many connections from this address");
        }
        g.next_id += 1;
        let id = g.next_id;
        g.conns.insert(
            id,
            Entry {
                ip,
                info: None,
                target: None,
                sock: dup,
            },
        );
        Ok(Ticket {
            reg: self.clone(),
            id,
        })
    }

    /// What `peer` may do with target `iqn`: None if there is no such target, or the
    /// peer's address may not reach it and there is no admin credential.
    pub(crate) fn lookup(&self, iqn: &str, peer: IpAddr) -> Option<Resolved> {
        let g = self.lock();
        let t = g.targets.get(iqn)?;
        let address_ok = t.cfg.admits(peer);
        if !address_ok && g.admin.is_none() {
            return None;
        }
        Some(Resolved {
            cfg: t.cfg.clone(),
            generation: t.generation,
            address_ok,
        })
    }

    /// Targets `peer` may see in discovery (every one for the admin).
    pub(crate) fn visible(&self, peer: IpAddr, admin: bool) -> Vec<String> {
        self.lock()
            .targets
            .iter()
            .filter(|(_, t)| admin || t.cfg.admits(peer))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The admin credential, and the CHAP credentials of the targets `peer` may see
    /// (what a discovery session may log in with).
    pub(crate) fn credentials(&self, peer: IpAddr) -> (Option<Chap>, Vec<Chap>) {
        let g = self.lock();
        let visible = g
            .targets
            .values()
            .filter(|t| t.cfg.admits(peer))
            .filter_map(|t| t.cfg.chap.clone())
            .collect();
        (g.admin.clone(), visible)
    }

    pub(crate) fn new_tsih(&self) -> u16 {
        let mut g = self.lock();
        g.next_tsih = g.next_tsih.wrapping_add(1).max(1);
        g.next_tsih
    }

    fn close_where(&self, pred: impl Fn(&(String, Option<String>)) -> bool) -> usize {
        let g = self.lock();
        let mut n = 0;
        for e in g.conns.values() {
            if e.target.as_ref().is_some_and(&pred) {
                shutdown(&e.sock);
                n += 1;
            }
        }
        n
    }

    fn count(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        self.lock().conns.values().filter(|e| pred(e)).count()
    }
}

/// One admitted connection; dropping it unregisters the connection.
pub(crate) struct Ticket {
    reg: Arc<Registry>,
    id: u64,
}

impl Ticket {
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.reg
    }

    /// Records that this connection serves target `iqn` as `seen` at login. False when
    /// the target was removed or replaced since: the login must fail.
    pub(crate) fn bind(&self, iqn: &str, seen: &Resolved) -> bool {
        let mut g = self.reg.lock();
        match g.targets.get(iqn) {
            Some(t) if t.generation == seen.generation => {}
            _ => return false,
        }
        let overlay = match &seen.cfg.disk {
            DiskRef::Overlay(id) => Some(id.clone()),
            DiskRef::Base(_) => None,
        };
        if let Some(e) = g.conns.get_mut(&self.id) {
            e.target = Some((iqn.to_string(), overlay));
        }
        true
    }
}

impl Ticket {
    /// Records what a finished login negotiated (for [`IscsiHandle::sessions`]).
    pub(crate) fn set_info(&self, info: SessionInfo) {
        if let Some(e) = self.reg.lock().conns.get_mut(&self.id) {
            e.info = Some(info);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.reg.lock().conns.remove(&self.id);
        self.reg.closed.notify_waiters();
    }
}

/// Opens the disk a target serves.
pub(crate) fn open_disk(store: &DiskStore, d: &DiskRef) -> Result<Disk> {
    Ok(match d {
        DiskRef::Base(n) => Disk::Base(store.open_base(n)?),
        DiskRef::Overlay(id) => Disk::Overlay(store.open_overlay(id)?),
    })
}

/// Acts on a running [`IscsiServer`]'s target table and connections. Cheap to clone.
#[derive(Clone)]
pub struct IscsiHandle {
    reg: Arc<Registry>,
}

impl IscsiHandle {
    /// Adds (or replaces) target `iqn`. Replacing a target with a different
    /// configuration closes the connections to its old version.
    pub fn add_target(&self, iqn: &str, cfg: TargetConfig) -> Result<()> {
        if !valid_iqn(iqn) {
            bail!("invalid iSCSI target name {iqn:?}");
        }
        if let Some(c) = &cfg.chap {
            if c.initiator.secret.len() < 12 || c.initiator.secret.len() > 255 {
                bail!("CHAP secret for {iqn} must be 12..=255 bytes");
            }
            if let Some(t) = &c.target {
                if t.secret.len() < 12 || t.secret == c.initiator.secret {
                    bail!("mutual CHAP secret for {iqn} must be 12+ bytes and differ from the initiator's");
                }
            }
        }
        let replaced = {
            let mut g = self.reg.lock();
            g.next_generation += 1;
            let generation = g.next_generation;
            let old = g.targets.insert(
                iqn.to_string(),
                Target {
                    cfg: cfg.clone(),
                    generation,
                },
            );
            old.is_some_and(|o| o.cfg != cfg)
        };
        if replaced {
            self.revoke(iqn);
        }
        tracing::info!(target_iqn = iqn, disk = ?cfg.disk, allowed = ?cfg.allowed_initiator,
            chap = cfg.chap.is_some(), "iSCSI target added");
        Ok(())
    }

    /// Sets (or with None removes) the admin credential: an initiator presenting it
    /// with CHAP logs in to every target from any address, and its discovery sessions
    /// list every target. Removing it leaves admin sessions already open running.
    pub fn set_admin(&self, admin: Option<Chap>) -> Result<()> {
        if let Some(c) = &admin {
            if c.initiator.secret.len() < 12 || c.initiator.secret.len() > 255 {
                bail!("the admin CHAP secret must be 12..=255 bytes");
            }
            if let Some(t) = &c.target {
                if t.secret.len() < 12 || t.secret == c.initiator.secret {
                    bail!("the admin's mutual CHAP secret must be 12+ bytes and differ from the initiator's");
                }
            }
        }
        tracing::info!(
            admin_user = admin.as_ref().map(|c| c.initiator.user.as_str()),
            "iSCSI admin credential set"
        );
        self.reg.lock().admin = admin;
        Ok(())
    }

    /// Removes target `iqn` and closes its open connections; returns how many were cut.
    pub fn remove_target(&self, iqn: &str) -> usize {
        let existed = self.reg.lock().targets.remove(iqn).is_some();
        let n = self.revoke(iqn);
        if existed {
            tracing::info!(target_iqn = iqn, connections = n, "iSCSI target removed");
        }
        n
    }

    /// Removes target `iqn` from the table but leaves its open connections running
    /// (new logins and discovery no longer find it; [`IscsiHandle::revoke`] or
    /// [`IscsiHandle::revoke_overlay`] cuts them later). True if it was there.
    pub fn forget_target(&self, iqn: &str) -> bool {
        let existed = self.reg.lock().targets.remove(iqn).is_some();
        if existed {
            tracing::info!(
                target_iqn = iqn,
                open = self.connections_to(iqn),
                "iSCSI target withdrawn; open connections kept"
            );
        }
        existed
    }

    /// The configuration of target `iqn`, if it is in the table.
    pub fn target(&self, iqn: &str) -> Option<TargetConfig> {
        self.reg.lock().targets.get(iqn).map(|t| t.cfg.clone())
    }

    /// Closes at once every open connection to target `iqn` (their sockets are shut
    /// down; commands executing finish). The target stays in the table, so remove or
    /// replace it first when the initiator must not log in again.
    pub fn revoke(&self, iqn: &str) -> usize {
        let n = self.reg.close_where(|(t, _)| t == iqn);
        if n > 0 {
            tracing::info!(
                target_iqn = iqn,
                connections = n,
                "iSCSI connections revoked"
            );
        }
        n
    }

    /// Closes every open connection serving overlay `id`, whatever the target.
    pub fn revoke_overlay(&self, id: &str) -> usize {
        let n = self.reg.close_where(|(_, o)| o.as_deref() == Some(id));
        tracing::info!(
            overlay = id,
            connections = n,
            "iSCSI access to overlay revoked"
        );
        n
    }

    /// Waits until no connection to target `iqn` remains; false if `timeout` passed.
    pub async fn wait_closed(&self, iqn: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.reg.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.connections_to(iqn) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.connections_to(iqn) == 0;
            }
        }
    }

    /// Open (logged-in) connections to target `iqn`.
    pub fn connections_to(&self, iqn: &str) -> usize {
        self.reg
            .count(|e| e.target.as_ref().is_some_and(|(t, _)| t == iqn))
    }

    /// Open connections in total (including ones still logging in).
    pub fn connections(&self) -> usize {
        self.reg.count(|_| true)
    }

    /// The logged-in connections (normal and discovery sessions).
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.reg
            .lock()
            .conns
            .values()
            .filter_map(|e| e.info.clone())
            .collect()
    }

    /// The target names in the table.
    pub fn targets(&self) -> Vec<String> {
        self.reg.lock().targets.keys().cloned().collect()
    }

    /// The limits the server runs with.
    pub fn limits(&self) -> &IscsiLimits {
        &self.reg.limits
    }
}

/// The iSCSI target server.
pub struct IscsiServer {
    listener: TcpListener,
    reg: Arc<Registry>,
}

impl IscsiServer {
    /// Binds `listen` (conventionally port 3260) serving disks from `store`.
    pub async fn bind(
        listen: SocketAddr,
        store: Arc<DiskStore>,
        limits: IscsiLimits,
    ) -> Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind iSCSI listener on {listen}"))?;
        Ok(IscsiServer {
            listener,
            reg: Arc::new(Registry {
                limits,
                store,
                inner: Mutex::new(Inner::default()),
                closed: Notify::new(),
            }),
        })
    }

    /// A handle to the target table and connections; valid for the server's life.
    pub fn handle(&self) -> IscsiHandle {
        IscsiHandle {
            reg: self.reg.clone(),
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

    /// Accepts connections until `shutdown` completes (open sessions keep running).
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        tracing::info!(addr = %self.local_addr(), "iSCSI target listening");
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
            let ticket = match self.reg.admit(peer.ip(), &sock) {
                Ok(t) => t,
                Err(why) => {
                    tracing::warn!(%peer, "iSCSI connection refused: {why}");
                    continue;
                }
            };
            let sock = match sock.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, "detach socket: {e}");
                    continue;
                }
            };
            let spawned = std::thread::Builder::new()
                .name("iscsi-conn".into())
                .spawn(move || {
                    if let Err(e) = crate::session::connection(sock, peer, ticket) {
                        tracing::info!(%peer, "iSCSI connection ended: {e:#}");
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(%peer, "spawn iSCSI connection thread: {e}");
            }
        }
    }
}
