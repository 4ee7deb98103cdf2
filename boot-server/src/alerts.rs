//! Alert delivery: follows the event broadcast, and POSTs every `alert`
//! event as JSON to the webhook configured for its kind (`[alerts.kinds]`),
//! else to the default (`[alerts] url`). Each URL has its own worker and a
//! bounded queue: a slow or dead receiver delays only its own alerts, a full
//! queue drops (counted in `boot_alert_webhook_deliveries_total{result="dropped"}`),
//! and nothing here can hold up the engine, which only emits events.
//! Failed posts (network errors, 5xx, 408, 429) are retried with
//! exponential backoff up to `max_attempts`. Webhook URLs often embed a
//! secret, so logs name a URL only by its host and a fingerprint.

use crate::config::AlertsConfig;
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::model::{Event, EventKind};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// First retry delay; doubled per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The JSON body posted for an alert event.
pub fn payload(e: &Event) -> Value {
    json!({
        "alert": e.detail.get("alert").and_then(Value::as_str).unwrap_or("unknown"),
        "event_id": e.id,
        "at_ms": e.at_ms,
        "node": e.node,
        "detail": e.detail,
        "source": "boot-server",
    })
}

/// How a URL is named in logs: scheme, host and port, and a fingerprint of
/// the whole URL (its path or query may hold a token).
pub fn describe(url: &str) -> String {
    let fp = crate::secret::fingerprint(url);
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{} (sha256:{fp})",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => format!("sha256:{fp}"),
    }
}

/// Starts delivery when any webhook is configured; returns whether it did.
pub fn spawn(
    config: &AlertsConfig,
    events: &EventHub,
    metrics: Arc<Metrics>,
) -> anyhow::Result<bool> {
    let mut urls: Vec<&String> = config.kinds.values().filter(|u| !u.is_empty()).collect();
    urls.extend(config.url.iter().filter(|u| !u.is_empty()));
    if urls.is_empty() {
        return Ok(false);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs.max(1)))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut workers: HashMap<String, mpsc::Sender<Value>> = HashMap::new();
    for url in urls {
        if workers.contains_key(url) {
            continue;
        }
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        workers.insert(url.clone(), tx);
        tokio::spawn(deliver(
            client.clone(),
            url.clone(),
            config.bearer_token.clone(),
            config.max_attempts.max(1),
            rx,
            metrics.clone(),
        ));
    }
    let config = config.clone();
    let mut rx = events.subscribe_local();
    tokio::spawn(async move {
        loop {
            let e = match rx.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "alert delivery fell behind the event broadcast; some alerts not delivered"
                    );
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            if e.kind != EventKind::Alert {
                continue;
            }
            let kind = e
                .detail
                .get("alert")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            let Some(url) = config.url_for(kind) else {
                continue;
            };
            let Some(tx) = workers.get(url) else { continue };
            if tx.try_send(payload(&e)).is_err() {
                metrics.webhook("dropped");
                tracing::warn!(alert = kind, webhook = %describe(url), "alert queue full: alert dropped");
            }
        }
    });
    Ok(true)
}

/// Posts the queue's alerts to `url` one after the other.
async fn deliver(
    client: reqwest::Client,
    url: String,
    bearer: Option<String>,
    max_attempts: u32,
    mut rx: mpsc::Receiver<Value>,
    metrics: Arc<Metrics>,
) {
    let name = describe(&url);
    while let Some(body) = rx.recv().await {
        let kind = body["alert"].as_str().unwrap_or("unknown").to_string();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let mut req = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            if let Some(t) = &bearer {
                req = req.bearer_auth(t);
            }
            let (retry, why) = match req.send().await {
                Ok(r) if r.status().is_success() => {
                    metrics.webhook("delivered");
                    tracing::debug!(alert = %kind, webhook = %name, attempt, "alert delivered");
                    break;
                }
                Ok(r) => {
                    let s = r.status();
                    (
                        s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429,
                        format!("HTTP {s}"),
                    )
                }
                // reqwest's error text names the URL: keep only its kind.
                Err(e) => (true, error_kind(&e).to_string()),
            };
            if !retry || attempt >= max_attempts {
                metrics.webhook("failed");
                tracing::warn!(alert = %kind, webhook = %name, attempts = attempt, error = %why, "alert not delivered");
                break;
            }
            tracing::info!(alert = %kind, webhook = %name, attempt, error = %why, retry_in = ?backoff, "alert delivery failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_request() {
        "request failed"
    } else {
        "error"
    }
}
