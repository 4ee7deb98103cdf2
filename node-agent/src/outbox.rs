//! At-least-once command results: the outbox keeps every result until the
//! server acknowledges it (2xx) and posts them, in order, from a background
//! thread that retries with backoff forever. It also owns the record of
//! finished commands (by id) that makes execution idempotent when the server
//! redelivers a command.
//!
//! Both survive an agent restart within one boot: they are written to
//! `<state_dir>/results.json` (`/run/node-agent` by default, a tmpfs that the
//! initramfs moves into the real root, so it lives exactly one boot).

use crate::client::{Backoff, CallError, Client};
use anyhow::{Context, Result};
use boot_proto::CommandResult;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How many finished commands are remembered for de-duplication.
pub const DONE_KEEP: usize = 256;

/// What is written to disk.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Final results of finished commands, oldest first.
    pub done: VecDeque<CommandResult>,
    /// Results not yet acknowledged by the server, in posting order.
    pub pending: VecDeque<CommandResult>,
}

impl Record {
    /// Loads the record; a missing file is an empty record, a damaged one is
    /// reported and replaced (losing it only risks re-running a command).
    pub fn load(path: &Path) -> Record {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                warn!(file = %path.display(), error = %e, "damaged results record; starting empty");
                Record::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot read results record; starting empty");
                Record::default()
            }
        }
    }

    /// Writes the record atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec(self).context("encode results record")?;
        std::fs::write(&tmp, body).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
    }
}

/// Called by the poster when the server answers 401; it must return once the
/// agent has new credentials (or the old ones work again).
pub type OnUnauthorized = Arc<dyn Fn() + Send + Sync>;

struct Inner {
    rec: Record,
    path: Option<PathBuf>,
}

impl Inner {
    fn persist(&self) {
        if let Some(p) = &self.path {
            if let Err(e) = self.rec.save(p) {
                warn!(error = %format!("{e:#}"), "cannot persist results record");
            }
        }
    }
}

/// Shared handle to the outbox; clones share it.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<(Mutex<Inner>, Condvar)>,
}

impl Outbox {
    /// Opens the outbox persisted at `path` (`None`: memory only).
    pub fn open(path: Option<PathBuf>) -> Outbox {
        let rec = path.as_deref().map(Record::load).unwrap_or_default();
        if !rec.pending.is_empty() || !rec.done.is_empty() {
            info!(
                done = rec.done.len(),
                pending = rec.pending.len(),
                "results record restored"
            );
        }
        Outbox {
            inner: Arc::new((Mutex::new(Inner { rec, path }), Condvar::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The final result of command `id`, if it already ran.
    pub fn done(&self, id: u64) -> Option<CommandResult> {
        self.lock().rec.done.iter().rfind(|r| r.id == id).cloned()
    }

    /// Queues a result for posting.
    pub fn push(&self, r: CommandResult) {
        let mut g = self.lock();
        g.rec.pending.push_back(r);
        g.persist();
        self.inner.1.notify_all();
    }

    /// Records command `id` as finished with `r` and queues `r` for posting.
    pub fn finish(&self, r: CommandResult) {
        let mut g = self.lock();
        g.rec.done.push_back(r.clone());
        while g.rec.done.len() > DONE_KEEP {
            g.rec.done.pop_front();
        }
        g.rec.pending.push_back(r);
        g.persist();
        self.inner.1.notify_all();
    }

    /// Queues `r` again unless an identical result is still pending.
    pub fn repost(&self, r: CommandResult) {
        if self.lock().rec.pending.contains(&r) {
            return;
        }
        self.push(r);
    }

    /// Results not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.lock().rec.pending.len()
    }

    /// Waits until every result is acknowledged or `limit` passes; true when empty.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut g = self.lock();
        while !g.rec.pending.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .inner
                .1
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    fn front(&self) -> CommandResult {
        let mut g = self.lock();
        loop {
            if let Some(r) = g.rec.pending.front() {
                return r.clone();
            }
            g = self.inner.1.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn pop(&self, r: &CommandResult) {
        let mut g = self.lock();
        if g.rec.pending.front() == Some(r) {
            g.rec.pending.pop_front();
        }
        g.persist();
        self.inner.1.notify_all();
    }

    /// Starts the background poster; it runs for the life of the process.
    pub fn spawn_poster(&self, client: Client, on_unauthorized: OnUnauthorized) -> Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("results".into())
            .spawn(move || me.post_forever(&client, &on_unauthorized))
            .context("spawn results poster")?;
        Ok(())
    }

    fn post_forever(&self, client: &Client, on_unauthorized: &OnUnauthorized) {
        let mut backoff = Backoff::default();
        loop {
            let r = self.front();
            match client.result(&r) {
                Ok(()) => {
                    backoff.reset();
                    self.pop(&r);
                }
                Err(e) if e.is_permanent() => {
                    // e.g. 404: the server no longer knows this command. It
                    // will say so however often we ask.
                    warn!(id = r.id, status = ?r.status, error = %e, "server refused the result for good; dropping it");
                    self.pop(&r);
                }
                Err(CallError::Unauthorized(_)) => {
                    warn!(id = r.id, "result: token rejected; renewing credentials");
                    on_unauthorized();
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(id = r.id, error = %e, retry_ms = d.as_millis() as u64, "result not delivered; retrying");
                    std::thread::sleep(d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot_proto::CommandStatus;

    fn res(id: u64, status: CommandStatus) -> CommandResult {
        CommandResult {
            id,
            status,
            detail: format!("r{id}"),
        }
    }

    #[test]
    fn record_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/results.json");
        let o = Outbox::open(Some(path.clone()));
        o.push(res(7, CommandStatus::Started));
        o.finish(res(7, CommandStatus::Succeeded));
        assert_eq!(o.pending(), 2);
        drop(o);
        // A new process in the same boot knows command 7 ran and still owes both results.
        let o = Outbox::open(Some(path.clone()));
        assert_eq!(o.done(7), Some(res(7, CommandStatus::Succeeded)));
        assert_eq!(o.done(8), None);
        assert_eq!(o.pending(), 2);
        o.repost(res(7, CommandStatus::Succeeded));
        assert_eq!(o.pending(), 2, "identical pending result not queued twice");
        std::fs::write(&path, b"{garbage").unwrap();
        assert_eq!(Outbox::open(Some(path)).pending(), 0);
    }

    #[test]
    fn done_record_is_bounded() {
        let o = Outbox::open(None);
        for i in 0..(DONE_KEEP as u64 + 10) {
            o.finish(res(i, CommandStatus::Succeeded));
        }
        assert_eq!(o.done(0), None);
        assert!(o.done(DONE_KEEP as u64 + 9).is_some());
        assert!(!o.wait_idle(Duration::from_millis(10)));
    }
}
