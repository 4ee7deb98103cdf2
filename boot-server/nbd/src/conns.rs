//! Open connections: admission limits (per client address and in total), the worker
//! thread and buffer budgets shared by all connections, which overlay each connection
//! serves, and revocation (closing every connection to an overlay at once).

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::stats::NbdStats;

/// Resource limits of an [`crate::NbdServer`]. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdLimits {
    /// Most open connections in total; more are closed at accept (default 512).
    pub max_connections: usize,
    /// Most open connections from one client IP address (default 32).
    pub max_connections_per_ip: usize,
    /// Worker threads, i.e. requests executed at once, per connection (default 8).
    pub workers_per_connection: usize,
    /// Worker threads across all connections (default 512). A connection gets
    /// `min(workers_per_connection, what is left)` and at least one, so the total never
    /// exceeds `max_worker_threads + max_connections`.
    pub max_worker_threads: usize,
    /// Bytes of request buffers larger than 256 KiB (WRITE payloads up to 32 MiB) held
    /// at once across all connections (default 512 MiB); a request waits for its share.
    /// Smaller buffers are kept per worker (at most 256 KiB each).
    pub max_buffer_bytes: usize,
}

impl Default for NbdLimits {
    fn default() -> Self {
        NbdLimits {
            max_connections: 512,
            max_connections_per_ip: 32,
            workers_per_connection: 8,
            max_worker_threads: 512,
            max_buffer_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Request buffers up to this size are kept by a worker without counting against
/// [`NbdLimits::max_buffer_bytes`].
pub(crate) const SMALL_BUF: usize = 256 * 1024;

struct Entry {
    ip: IpAddr,
    overlay: Option<String>,
    /// A duplicate of the connection's socket, to shut it down from outside.
    sock: OwnedFd,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    threads: usize,
    /// Bumped by every revocation.
    epoch: u64,
    /// Overlay id -> epoch of its latest revocation.
    revoked_at: HashMap<String, u64>,
}

/// The server's table of open connections (shared with [`NbdHandle`]s).
pub(crate) struct Registry {
    limits: NbdLimits,
    inner: Mutex<Inner>,
    closed: Notify,
    buffers: ByteBudget,
    stats: Arc<NbdStats>,
}

fn shutdown(fd: &OwnedFd) {
    // SAFETY: shutdown(2) on a descriptor we own; it acts on the shared socket.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
}

impl Registry {
    pub(crate) fn new(limits: NbdLimits) -> Arc<Self> {
        Arc::new(Registry {
            buffers: ByteBudget::new(limits.max_buffer_bytes.max(SMALL_BUF)),
            limits,
            inner: Mutex::new(Inner::default()),
            closed: Notify::new(),
            stats: Arc::new(NbdStats::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `ip`, or says why not.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        sock: &impl AsFd,
    ) -> Result<Ticket, &'static str> {
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
        let want = self.limits.workers_per_connection.max(1);
        let left = self.limits.max_worker_threads.saturating_sub(g.threads);
        let workers = want.min(left).max(1);
        g.threads += workers;
        g.next_id += 1;
        let id = g.next_id;
        g.conns.insert(
            id,
            Entry {
                ip,
                overlay: None,
                sock: dup,
            },
        );
        Ok(Ticket {
            reg: self.clone(),
            id,
            workers,
        })
    }

    fn revoke(&self, overlay: &str) -> usize {
        let mut g = self.lock();
        g.epoch += 1;
        let epoch = g.epoch;
        g.revoked_at.insert(overlay.to_string(), epoch);
        let mut n = 0;
        for e in g.conns.values() {
            if e.overlay.as_deref() == Some(overlay) {
                shutdown(&e.sock);
                n += 1;
            }
        }
        n
    }

    fn count(&self, overlay: Option<&str>) -> usize {
        let g = self.lock();
        match overlay {
            None => g.conns.len(),
            Some(o) => g
                .conns
                .values()
                .filter(|e| e.overlay.as_deref() == Some(o))
                .count(),
        }
    }

    pub(crate) fn buffers(&self) -> &ByteBudget {
        &self.buffers
    }

    pub(crate) fn stats(&self) -> &Arc<NbdStats> {
        &self.stats
    }
}

/// One admitted connection; dropping it unregisters the connection.
pub(crate) struct Ticket {
    reg: Arc<Registry>,
    id: u64,
    workers: usize,
}

impl Ticket {
    /// Worker threads this connection may run.
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.reg
    }

    /// Revocation epoch now: take it before asking the resolver, pass it to `bind`.
    pub(crate) fn epoch(&self) -> u64 {
        self.reg.lock().epoch
    }

    /// Records that this connection serves `overlay` (None: a base). False if the
    /// overlay was revoked after `since`, i.e. the resolver's answer may be stale.
    pub(crate) fn bind(&self, overlay: Option<&str>, since: u64) -> bool {
        let mut g = self.reg.lock();
        if let Some(o) = overlay {
            if g.revoked_at.get(o).is_some_and(|e| *e > since) {
                return false;
            }
        }
        if let Some(e) = g.conns.get_mut(&self.id) {
            e.overlay = overlay.map(str::to_string);
        }
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.reg.lock();
        g.conns.remove(&self.id);
        g.threads -= self.workers;
        drop(g);
        self.reg.closed.notify_waiters();
    }
}

/// Lets the integrator act on a running [`crate::NbdServer`]'s connections. Cheap to
/// clone; valid for the server's whole life.
#[derive(Clone)]
pub struct NbdHandle {
    pub(crate) reg: Arc<Registry>,
}

impl NbdHandle {
    /// Closes at once every open connection serving overlay `id` (their sockets are
    /// shut down: clients see the connection drop, no further request is read) and
    /// refuses a handshake that resolved `id` before this call but had not opened it
    /// yet. Returns how many connections were cut. The integrator must stop resolving
    /// the overlay's export names *before* calling this, so the client cannot reopen.
    /// Requests already executing finish (see [`NbdHandle::wait_closed`]).
    pub fn revoke(&self, id: &str) -> usize {
        let n = self.reg.revoke(id);
        tracing::info!(overlay = id, connections = n, "NBD access revoked");
        n
    }

    /// Waits until no connection serving overlay `id` remains (their worker threads
    /// have ended, so none of their writes can reach the overlay any more). False if
    /// `timeout` passed first. Use after [`NbdHandle::revoke`] when fencing.
    pub async fn wait_closed(&self, id: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.reg.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.reg.count(Some(id)) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.reg.count(Some(id)) == 0;
            }
        }
    }

    /// Open connections serving overlay `id`.
    pub fn connections_to(&self, id: &str) -> usize {
        self.reg.count(Some(id))
    }

    /// Open connections in total (including ones still negotiating).
    pub fn connections(&self) -> usize {
        self.reg.count(None)
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<NbdStats> {
        self.reg.stats.clone()
    }

    /// The limits the server runs with.
    pub fn limits(&self) -> &NbdLimits {
        &self.reg.limits
    }
}

/// Counts bytes of large buffers in use; `acquire` waits for room.
pub(crate) struct ByteBudget {
    total: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// Bytes held from a [`ByteBudget`]; returned on drop.
pub(crate) struct BudgetGuard<'a> {
    budget: &'a ByteBudget,
    n: usize,
}

impl ByteBudget {
    fn new(total: usize) -> Self {
        ByteBudget {
            total,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Takes `n` bytes (at most the whole budget), waiting while others hold too much.
    pub(crate) fn acquire(&self, n: usize) -> BudgetGuard<'_> {
        let n = n.min(self.total);
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used + n > self.total {
            used = self
                .freed
                .wait_timeout(used, Duration::from_secs(1))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += n;
        BudgetGuard { budget: self, n }
    }
}

impl Drop for BudgetGuard<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= self.n;
        drop(used);
        self.budget.freed.notify_all();
    }
}
