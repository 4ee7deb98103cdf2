//! Prometheus metrics (`/metrics`, Prometheus text format 0.0.4): one
//! registry of the `prometheus-client` crate holding what the server counts
//! itself (HTTP requests, engine decisions, boot phases, alerts, store
//! commit latency), plus a collector that reads the protocol crates' own
//! counters ([`boot_dhcp::DhcpStats`], [`boot_tftp::TftpStats`],
//! [`boot_nbd::NbdStats`]) at scrape time, so those crates need no metrics
//! library. Gauges that describe state (nodes by state, alerts active) are
//! read from the store at each scrape.
//!
//! Labels are bounded and carry no identities: no MAC, node id, address,
//! token or environment name, which is why the node-facing port may serve
//! `/metrics` without a token (`[metrics] on_node_port`).

mod boots;
pub mod http;
mod protocols;

use crate::control::Control;
use crate::events::EventHub;
use crate::model::{Event, EventKind, NodeState, SlotStep};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

pub use protocols::Sources;

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A label set: (name, value) pairs with bounded values.
pub type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Node states, in the order the gauge lists them.
const NODE_STATES: &[NodeState] = &[
    NodeState::Discovered,
    NodeState::Idle,
    NodeState::Provisioning,
    NodeState::Ready,
    NodeState::Failed,
    NodeState::Quarantined,
    NodeState::Retired,
];

/// Alerts that describe a lasting condition (counted by `boot_alerts_active`).
pub const STATEFUL_ALERTS: &[&str] = &["env-below-minimum", "node-unavailable", "node-quarantined"];

fn label(k: &'static str, v: impl Into<String>) -> Labels {
    vec![(k, v.into())]
}

fn phase_histogram() -> Histogram {
    // 50 ms .. 410 s
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

fn http_histogram() -> Histogram {
    // 1 ms .. 65 s
    Histogram::new(exponential_buckets(0.001, 4.0, 9))
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    /// Protocol counters read at scrape time (set as the servers start).
    pub sources: Arc<Sources>,
    nodes: Family<Labels, Gauge>,
    alerts_active: Family<Labels, Gauge>,
    events: Family<Labels, Counter>,
    events_missed: Counter,
    decisions: Family<Labels, Counter>,
    alerts: Family<Labels, Counter>,
    reprovision: Histogram,
    slot_steps: HistogramFamily,
    boot_phases: HistogramFamily,
    boot_total: Histogram,
    store_commit: Histogram,
    pub(crate) http_requests: Family<Labels, Counter>,
    pub(crate) http_bytes: Family<Labels, Counter>,
    pub(crate) http_duration: HistogramFamily,
    webhook: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered (all at zero).
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let sources = Arc::new(Sources::default());
        let mut m = Metrics {
            registry: Registry::default(),
            sources: sources.clone(),
            nodes: Family::default(),
            alerts_active: Family::default(),
            events: Family::default(),
            events_missed: Counter::default(),
            decisions: Family::default(),
            alerts: Family::default(),
            reprovision: Histogram::new(exponential_buckets(0.5, 2.0, 11)),
            slot_steps: Family::new_with_constructor(phase_histogram),
            boot_phases: Family::new_with_constructor(phase_histogram),
            boot_total: phase_histogram(),
            // 0.5 ms .. 4 s
            store_commit: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            http_requests: Family::default(),
            http_bytes: Family::default(),
            http_duration: Family::new_with_constructor(http_histogram),
            webhook: Family::default(),
        };
        r.register("boot_nodes", "Nodes in the store by state", m.nodes.clone());
        r.register(
            "boot_alerts_active",
            "Conditions an alert was raised for that still hold (environments below their minimum, failed nodes, quarantined nodes)",
            m.alerts_active.clone(),
        );
        r.register(
            "boot_alerts",
            "Alert events raised, by alert kind",
            m.alerts.clone(),
        );
        r.register(
            "boot_events",
            "Events recorded in the event log, by kind",
            m.events.clone(),
        );
        r.register(
            "boot_metrics_events_missed",
            "Events the metrics observer missed because it fell behind the broadcast",
            m.events_missed.clone(),
        );
        r.register(
            "boot_engine_decisions",
            "Engine decisions by action (claim, preempt, release, scale, schedule, ready)",
            m.decisions.clone(),
        );
        r.register(
            "boot_reprovision_duration_seconds",
            "Time from the engine's claim of a node to its slot being ready in the new environment",
            m.reprovision.clone(),
        );
        r.register(
            "boot_slot_step_duration_seconds",
            "Time a slot spent in each step of a move (pending, stopping, pointing, booting, starting, releasing, failed)",
            m.slot_steps.clone(),
        );
        r.register(
            "boot_phase_duration_seconds",
            "Duration of each phase of a network boot (dhcp_to_script, script_to_kernel, kernel_to_initrd, initrd_to_agent), from the node's recorded events",
            m.boot_phases.clone(),
        );
        r.register(
            "boot_duration_seconds",
            "Time from a node's first boot event (DHCP answer or script) to its agent's hello",
            m.boot_total.clone(),
        );
        r.register(
            "boot_store_commit_duration_seconds",
            "Duration of each group-commit transaction of the SQLite store, fsync included",
            m.store_commit.clone(),
        );
        r.register(
            "boot_http_requests",
            "HTTP requests answered, by listener, route template and status class",
            m.http_requests.clone(),
        );
        r.register(
            "boot_http_response_bytes",
            "HTTP response body bytes sent, by listener and route template",
            m.http_bytes.clone(),
        );
        r.register(
            "boot_http_request_duration_seconds",
            "Time to the response head, by listener",
            m.http_duration.clone(),
        );
        r.register(
            "boot_alert_webhook_deliveries",
            "Alert webhook deliveries by result (delivered, failed after retries, dropped on a full queue)",
            m.webhook.clone(),
        );
        r.register_collector(Box::new(sources));
        // Every known label value is present from the start (rate() over a
        // series that appears late misses its first increase).
        for s in NODE_STATES {
            let _ = m.nodes.get_or_create(&label("state", s.as_str()));
        }
        for a in STATEFUL_ALERTS {
            let _ = m.alerts_active.get_or_create(&label("alert", *a));
        }
        for outcome in ["delivered", "failed", "dropped"] {
            let _ = m.webhook.get_or_create(&label("result", outcome));
        }
        m.registry = r;
        m
    }

    /// Counts one webhook delivery outcome (`delivered`, `failed`, `dropped`).
    pub fn webhook(&self, result: &'static str) {
        self.webhook.get_or_create(&label("result", result)).inc();
    }

    /// Records one store transaction's duration.
    pub fn store_commit(&self, d: std::time::Duration) {
        self.store_commit.observe(d.as_secs_f64());
    }

    /// Reads the state gauges from the store, then encodes every metric.
    pub async fn render(&self, control: &Control) -> String {
        self.refresh(control).await;
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }

    async fn refresh(&self, c: &Control) {
        match c.store.nodes().await {
            Ok(nodes) => {
                for s in NODE_STATES {
                    let n = nodes.iter().filter(|n| n.state == *s).count();
                    self.nodes
                        .get_or_create(&label("state", s.as_str()))
                        .set(n as i64);
                }
                let count = |s: NodeState| nodes.iter().filter(|n| n.state == s).count() as i64;
                self.active("node-unavailable", count(NodeState::Failed));
                self.active("node-quarantined", count(NodeState::Quarantined));
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "metrics: nodes not read"),
        }
        let envs = c.store.environments().await;
        let slots = c.store.slots(None).await;
        if let (Ok(envs), Ok(slots)) = (envs, slots) {
            let short = envs
                .iter()
                .filter(|e| e.active && e.min > 0)
                .filter(|e| {
                    let ready = slots
                        .iter()
                        .filter(|s| s.environment == e.name && s.step == SlotStep::Ready)
                        .count() as u32;
                    ready < e.min.min(e.max)
                })
                .count();
            self.active("env-below-minimum", short as i64);
        }
    }

    fn active(&self, alert: &'static str, n: i64) {
        self.alerts_active
            .get_or_create(&label("alert", alert))
            .set(n);
    }

    /// Follows the event broadcast until the hub stops: counts events,
    /// decisions and alerts, and times boots and moves from them.
    pub fn spawn_observer(self: &Arc<Self>, events: &EventHub, control: Arc<Control>) {
        let mut rx = events.subscribe_local();
        let me = self.clone();
        tokio::spawn(async move {
            let mut boots = boots::Boots::default();
            loop {
                match rx.recv().await {
                    Ok(e) => me.observe(&e, &mut boots, &control).await,
                    Err(RecvError::Lagged(n)) => {
                        me.events_missed.inc_by(n);
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    async fn observe(&self, e: &Event, boots: &mut boots::Boots, c: &Control) {
        self.events
            .get_or_create(&label("kind", e.kind.as_str()))
            .inc();
        let d = &e.detail;
        match e.kind {
            EventKind::EngineDecision => {
                let action = d["action"].as_str().unwrap_or("unknown");
                self.decisions
                    .get_or_create(&label("action", bounded(action)))
                    .inc();
                if action == "ready" {
                    if let Some(ms) = d["total_ms"].as_f64() {
                        self.reprovision.observe(ms / 1000.0);
                    }
                }
            }
            EventKind::SlotStep => {
                if let (Some(from), Some(ms)) = (d["from"].as_str(), d["ms"].as_f64()) {
                    if SlotStep::parse(from).is_some() {
                        self.slot_steps
                            .get_or_create(&label("step", from))
                            .observe(ms / 1000.0);
                    }
                }
            }
            EventKind::Alert => {
                let alert = d["alert"].as_str().unwrap_or("unknown");
                self.alerts
                    .get_or_create(&label("alert", bounded(alert)))
                    .inc();
            }
            _ => {}
        }
        for (phase, secs) in boots.observe(e, c).await {
            if phase == boots::TOTAL {
                self.boot_total.observe(secs);
            } else {
                self.boot_phases
                    .get_or_create(&label("phase", phase))
                    .observe(secs);
            }
        }
    }
}

/// A label value from an event detail, kept to a sane shape (the values
/// come from this server's code, but a stored event could say anything).
fn bounded(s: &str) -> String {
    if s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        s.to_string()
    } else {
        "other".to_string()
    }
}
