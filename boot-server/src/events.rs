//! The event hub: every part of the server reports what happened here
//! ([`EventHub::emit`], never blocking and never on a lease-commit path); a
//! background task appends events to the store in batches, prunes the log
//! to its retention limit, and broadcasts each stored event to subscribers
//! (the agent long poll, the engine, the UI's live updates).
//!
//! With a store shared by several servers ([`EventHub::start_shared`]) the
//! live feed carries every server's events: a follower task reads the log
//! after its cursor whenever this server stored events or another server
//! said it did ([`EventHub::poke`], from the store's notifications), and at
//! least every second; it broadcasts them in id order, which the shared
//! store makes commit order. [`EventHub::subscribe_local`] carries only this
//! server's own events (metrics, alerts: counted and sent once).

use crate::model::{now_ms, Event, EventKind};
use crate::store::{NewEvent, Store};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, Notify};

/// Events waiting to be written at most; beyond it they are dropped and counted.
const QUEUE: usize = 16_384;
/// Most events written in one transaction.
const BATCH: usize = 512;
/// Repeated file-fetch events for the same node and path within this window are coalesced.
const COALESCE: Duration = Duration::from_secs(10);
/// The shared log is read at least this often (a missed notification).
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Last time a (node, path) file fetch was recorded.
type RecentFiles = HashMap<(Option<String>, String), Instant>;

/// Handle for emitting and subscribing; cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    tx: mpsc::Sender<NewEvent>,
    live: broadcast::Sender<Event>,
    local: broadcast::Sender<Event>,
    /// Wakes the follower (shared store only).
    follow: Option<Arc<Notify>>,
    recent_files: Arc<Mutex<RecentFiles>>,
    /// Events dropped because the writer fell behind.
    pub dropped: Arc<AtomicU64>,
}

impl EventHub {
    /// Starts the writer task on the current runtime; `retain` bounds the log.
    pub fn start(store: Arc<dyn Store>, retain: u64) -> EventHub {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (live, _) = broadcast::channel(1024);
        let (local, _) = broadcast::channel(1024);
        let feeds = Feeds {
            local: local.clone(),
            live: Some(live.clone()),
            follow: None,
        };
        tokio::spawn(writer(store, rx, feeds, retain));
        EventHub {
            tx,
            live,
            local,
            follow: None,
            recent_files: Arc::new(Mutex::new(HashMap::new())),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// [`EventHub::start`] for a store other servers append to as well: the
    /// live feed follows the stored log (every server's events, in order).
    pub fn start_shared(store: Arc<dyn Store>, retain: u64) -> EventHub {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (live, _) = broadcast::channel(1024);
        let (local, _) = broadcast::channel(1024);
        let follow = Arc::new(Notify::new());
        let feeds = Feeds {
            local: local.clone(),
            live: None,
            follow: Some(follow.clone()),
        };
        tokio::spawn(follower(store.clone(), live.clone(), follow.clone()));
        tokio::spawn(writer(store, rx, feeds, retain));
        EventHub {
            tx,
            live,
            local,
            follow: Some(follow),
            recent_files: Arc::new(Mutex::new(HashMap::new())),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Another server stored events: the live feed reads them now (shared
    /// store; a no-op otherwise).
    pub fn poke(&self) {
        if let Some(f) = &self.follow {
            f.notify_one();
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

    /// Stored events as they are written (every server's, with a shared store).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// This server's own events as it stores them.
    pub fn subscribe_local(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }
}

/// Where the writer hands stored events.
struct Feeds {
    local: broadcast::Sender<Event>,
    /// The live feed, when this writer is its only source (own store).
    live: Option<broadcast::Sender<Event>>,
    /// The follower to wake, when the live feed follows the stored log.
    follow: Option<Arc<Notify>>,
}

/// Broadcasts every stored event after the log's end at start, in id order,
/// when poked and at least every [`FOLLOW_EVERY`].
async fn follower(store: Arc<dyn Store>, live: broadcast::Sender<Event>, poke: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    let mut cursor = loop {
        match store.last_event_id().await {
            Ok(id) => break id,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "event log end not read yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    loop {
        let _ = tokio::time::timeout(FOLLOW_EVERY, poke.notified()).await;
        loop {
            match store.events(cursor, None, BATCH as u32).await {
                Ok(list) => {
                    let full = list.len() == BATCH;
                    for e in list {
                        cursor = e.id;
                        let _ = live.send(e);
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "stored events not read for the live feed; retrying");
                    break;
                }
            }
        }
    }
}

async fn writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<NewEvent>,
    feeds: Feeds,
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
            if let Some(live) = &feeds.live {
                let _ = live.send(e.clone());
            }
            let _ = feeds.local.send(e);
        }
        if let Some(f) = &feeds.follow {
            f.notify_one();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{pg_schema, pg_store};
    use crate::store::PgStore;

    /// Two servers' hubs on one shared store: each one's live feed carries
    /// the other's events, in id order; the local feed only its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_hub_sees_every_servers_events() {
        let test = "events::tests::a_shared_hub_sees_every_servers_events";
        let Some(a) = pg_store(test).await else {
            return;
        };
        let url = std::env::var("BOOT_TEST_PG_URL").unwrap();
        let b = PgStore::connect_in_schema(&url, &pg_schema(test))
            .await
            .unwrap();
        let b = Arc::new(b);
        let hub_a = EventHub::start_shared(Arc::new(a), 1000);
        let hub_b = EventHub::start_shared(b.clone(), 1000);
        let mut wakes = b.listen();
        assert_eq!(
            wakes.recv().await,
            Some(crate::store::postgres::notify::Wake::Resync)
        );
        // Let both followers read the log's end first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut live_b = hub_b.subscribe();
        let mut local_b = hub_b.subscribe_local();
        let t0 = Instant::now();
        hub_a.emit(
            Some("n1".into()),
            EventKind::Unknown,
            serde_json::json!({"from": "a"}),
        );
        // b's notification listener pokes its hub, as serve wires it.
        loop {
            let w = tokio::time::timeout(Duration::from_secs(2), wakes.recv())
                .await
                .expect("no notification");
            if w == Some(crate::store::postgres::notify::Wake::Events) {
                hub_b.poke();
                break;
            }
        }
        let e = tokio::time::timeout(Duration::from_millis(500), live_b.recv())
            .await
            .expect("b's live feed missed a's event")
            .unwrap();
        assert_eq!(e.detail["from"], "a");
        eprintln!("a's event reached b's live feed after {:?}", t0.elapsed());
        hub_b.emit(None, EventKind::Unknown, serde_json::json!({"from": "b"}));
        let own = tokio::time::timeout(Duration::from_secs(2), local_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(own.detail["from"], "b");
        let next = tokio::time::timeout(Duration::from_secs(2), live_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.detail["from"], "b");
        assert!(next.id > e.id);
        assert!(local_b.try_recv().is_err(), "a's event on b's local feed");
    }
}
