//! The event hub: every part of the server reports what happened here
//! ([`EventHub::emit`], never blocking and never on a lease-commit path); a
//! background task appends events to the store in batches, prunes the log
//! to its retention limit, and broadcasts each stored event to subscribers
//! (the agent long poll, the engine, the UI's live updates).

use crate::model::{now_ms, Event, EventKind};
use crate::store::{NewEvent, Store};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// Events waiting to be written at most; beyond it they are dropped and counted.
const QUEUE: usize = 16_384;
/// Most events written in one transaction.
const BATCH: usize = 512;
/// Repeated file-fetch events for the same node and path within this window are coalesced.
const COALESCE: Duration = Duration::from_secs(10);

/// Last time a (node, path) file fetch was recorded.
type RecentFiles = HashMap<(Option<String>, String), Instant>;

/// Handle for emitting and subscribing; cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    tx: mpsc::Sender<NewEvent>,
    live: broadcast::Sender<Event>,
    recent_files: Arc<Mutex<RecentFiles>>,
    /// Events dropped because the writer fell behind.
    pub dropped: Arc<AtomicU64>,
}

impl EventHub {
    /// Starts the writer task on the current runtime; `retain` bounds the log.
    pub fn start(store: Arc<dyn Store>, retain: u64) -> EventHub {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (live, _) = broadcast::channel(1024);
        tokio::spawn(writer(store, rx, live.clone(), retain));
        EventHub {
            tx,
            live,
            recent_files: Arc::new(Mutex::new(HashMap::new())),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records an event (in the background).
    pub fn emit(&self, node: Option<String>, kind: EventKind, detail: Value) {
        if matches!(kind, EventKind::HttpFile | EventKind::TftpFile)
            && self.coalesced(&node, &detail)
        {
            return;
        }
        let e = NewEvent {
            at_ms: now_ms(),
            node,
            kind,
            detail,
        };
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn coalesced(&self, node: &Option<String>, detail: &Value) -> bool {
        let path = detail
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut recent = self.recent_files.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if recent.len() > 10_000 {
            recent.retain(|_, at| now.duration_since(*at) < COALESCE);
        }
        match recent.insert((node.clone(), path), now) {
            Some(at) => now.duration_since(at) < COALESCE,
            None => false,
        }
    }

    /// Stored events as they are written.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}

async fn writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<NewEvent>,
    live: broadcast::Sender<Event>,
    retain: u64,
) {
    let mut last_prune = Instant::now();
    let mut since_prune = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let events = std::mem::take(&mut batch);
        let n = events.len();
        let mut backoff = Duration::from_millis(100);
        // A store error is retried (a locked or full disk clears up); new
        // events queue meanwhile and are dropped, counted, past QUEUE.
        let stored = loop {
            match store.append_events(events.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(events = n, error = %format!("{e:#}"), "events not stored yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        for e in stored {
            let _ = live.send(e);
        }
        since_prune += n as u64;
        // Prune every minute, or sooner when many events came in.
        if last_prune.elapsed() > Duration::from_secs(60) || since_prune > (retain / 10).max(100) {
            last_prune = Instant::now();
            since_prune = 0;
            match store.prune_events(retain).await {
                Ok(0) => {}
                Ok(k) => tracing::debug!(pruned = k, "event log pruned"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "event log not pruned"),
            }
        }
    }
}
