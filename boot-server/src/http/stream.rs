//! Live events for the web UI: `GET /api/events/stream`, Server-Sent Events
//! fed by the [`EventHub`](crate::events::EventHub) broadcast. Authorised like
//! every admin route (`Authorization: Bearer`): the UI reads the stream with
//! `fetch` rather than `EventSource`, so the token travels in a header and
//! never in a URL (nor in a log line).
//!
//! `?after=ID` first replays stored events after `ID` (at most [`REPLAY`]),
//! then goes live without a gap or a duplicate (it subscribes before reading
//! the store, and skips live events it already sent). `?node=` and `?kind=`
//! filter. Backpressure: a client that does not read keeps its events in the
//! broadcast's bounded ring only; once it falls [`behind`](tokio::sync::broadcast::error::RecvError::Lagged)
//! it gets one `lagged` event and the stream ends (it reconnects with
//! `after`), and the listener's send-stall timeout cuts a peer that stops
//! reading altogether. Nothing is buffered per client without bound. The
//! stream ends when the server stops (an open browser tab does not hold up
//! the graceful shutdown).

use super::{ApiError, AppState};
use crate::model::{Event, EventKind};
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::{error::RecvError, Receiver};
use tokio::sync::watch;

/// Most stored events replayed before going live.
pub const REPLAY: u32 = 1000;

/// Query of the stream.
#[derive(Deserialize, Default)]
pub struct StreamQuery {
    /// Replay stored events after this id first.
    after: Option<i64>,
    /// Only events about this node (id or MAC).
    node: Option<String>,
    /// Only events of these kinds (comma-separated, e.g. `engine-decision,slot-step`).
    kind: Option<String>,
}

/// Which events a client asked for.
struct Filter {
    node: Option<String>,
    kinds: Option<Vec<EventKind>>,
}

impl Filter {
    fn wants(&self, e: &Event) -> bool {
        self.node
            .as_ref()
            .is_none_or(|n| e.node.as_ref() == Some(n))
            && self.kinds.as_ref().is_none_or(|k| k.contains(&e.kind))
    }
}

/// Where a client's stream is.
struct Cursor {
    backlog: std::vec::IntoIter<Event>,
    live: Option<Receiver<Event>>,
    last_id: i64,
    filter: Filter,
    /// The server's stop signal.
    stopping: watch::Receiver<bool>,
}

fn sse(e: &Event) -> SseEvent {
    SseEvent::default()
        .id(e.id.to_string())
        .event("event")
        .json_data(e)
        .unwrap_or_else(|_| SseEvent::default().comment("unserialisable event"))
}

/// `GET /api/events/stream`.
pub async fn events_stream(
    State(s): State<Arc<AppState>>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let c = &s.control;
    let kinds = match q.kind.as_deref().filter(|k| !k.is_empty()) {
        None => None,
        Some(list) => {
            let mut kinds = Vec::new();
            for k in list.split(',') {
                match EventKind::parse(k.trim()) {
                    EventKind::Unknown => {
                        return Err(ApiError::new(
                            crate::control::ErrorKind::BadRequest,
                            format!("kind={k}: not an event kind (see `boot-server events`)"),
                        ))
                    }
                    kind => kinds.push(kind),
                }
            }
            Some(kinds)
        }
    };
    let node = match q.node.as_deref().filter(|n| !n.is_empty()) {
        None => None,
        Some(n) => Some(c.find_node(n).await?.id),
    };
    // Subscribe first, then read the store: nothing falls in between.
    let live = c.events.subscribe();
    let (backlog, last_id) = match q.after {
        Some(after) => {
            let list = c.store.events(after, node.as_deref(), REPLAY).await?;
            let last = list.last().map_or(after, |e| e.id);
            (list, last)
        }
        None => (Vec::new(), 0),
    };
    let cursor = Cursor {
        backlog: backlog.into_iter(),
        live: Some(live),
        last_id,
        filter: Filter { node, kinds },
        stopping: s.stopping.clone(),
    };
    let events = stream::unfold(cursor, next_event);
    let opened = stream::once(async { Ok(SseEvent::default().event("open").data("{}")) });
    Ok(Sse::new(futures_util::StreamExt::chain(opened, events))
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn next_event(mut c: Cursor) -> Option<(Result<SseEvent, Infallible>, Cursor)> {
    while let Some(e) = c.backlog.next() {
        if c.filter.wants(&e) {
            return Some((Ok(sse(&e)), c));
        }
    }
    loop {
        let mut stopping = c.stopping.clone();
        let rx = c.live.as_mut()?;
        let received = tokio::select! {
            r = rx.recv() => r,
            _ = stopping.wait_for(|s| *s) => return None,
        };
        match received {
            Ok(e) => {
                if e.id <= c.last_id || !c.filter.wants(&e) {
                    continue;
                }
                c.last_id = e.id;
                return Some((Ok(sse(&e)), c));
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::info!(missed, "events stream: client too slow, dropped");
                c.live = None;
                let ev = SseEvent::default()
                    .event("lagged")
                    .data(format!("{{\"missed\":{missed},\"last_id\":{}}}", c.last_id));
                return Some((Ok(ev), c));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

/// `Stream` of one client (for tests).
#[cfg(test)]
fn client_stream(c: Cursor) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold(c, next_event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::sync::broadcast;

    fn ev(id: i64, node: Option<&str>, kind: EventKind) -> Event {
        Event {
            id,
            at_ms: 0,
            node: node.map(str::to_string),
            kind,
            detail: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn replay_then_live_without_duplicates_and_filtered() {
        let (tx, rx) = broadcast::channel(16);
        let (_stop, stopping) = watch::channel(false);
        let c = Cursor {
            backlog: vec![
                ev(1, Some("a"), EventKind::Script),
                ev(2, Some("b"), EventKind::Script),
            ]
            .into_iter(),
            live: Some(rx),
            last_id: 2,
            filter: Filter {
                node: Some("a".into()),
                kinds: None,
            },
            stopping,
        };
        // 2 was both stored and broadcast; 3 is for another node; 4 is new.
        tx.send(ev(2, Some("a"), EventKind::Script)).unwrap();
        tx.send(ev(3, Some("b"), EventKind::Script)).unwrap();
        tx.send(ev(4, Some("a"), EventKind::AgentReady)).unwrap();
        let got: Vec<_> = client_stream(c).take(2).collect().await;
        assert_eq!(got.len(), 2);
        assert!(format!("{:?}", got[0]).contains("id: 1\\n"), "{:?}", got[0]);
        assert!(format!("{:?}", got[1]).contains("id: 4\\n"), "{:?}", got[1]);
    }

    #[tokio::test]
    async fn a_slow_client_is_dropped_not_buffered() {
        let (tx, rx) = broadcast::channel(4);
        let (_stop, stopping) = watch::channel(false);
        let c = Cursor {
            backlog: Vec::new().into_iter(),
            live: Some(rx),
            last_id: 0,
            filter: Filter {
                node: None,
                kinds: None,
            },
            stopping,
        };
        for i in 1..=10 {
            tx.send(ev(i, None, EventKind::Script)).unwrap();
        }
        let got: Vec<_> = client_stream(c).collect().await;
        assert_eq!(got.len(), 1, "one `lagged` event, then the end: {got:?}");
        assert!(format!("{:?}", got[0]).contains("lagged"));
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_server_stops() {
        let (_tx, rx) = broadcast::channel::<Event>(4);
        let (stop, stopping) = watch::channel(false);
        let c = Cursor {
            backlog: vec![ev(1, None, EventKind::Script)].into_iter(),
            live: Some(rx),
            last_id: 1,
            filter: Filter {
                node: None,
                kinds: None,
            },
            stopping,
        };
        let mut s = Box::pin(client_stream(c));
        assert!(s.next().await.is_some(), "the replayed event");
        stop.send(true).unwrap();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), s.next()).await;
        assert!(matches!(end, Ok(None)), "the stream ended: {end:?}");
    }
}
