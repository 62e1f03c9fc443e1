//! Prometheus metrics, text format at `/metrics`. Every family the gateway
//! exports is a field here so any module can update it; a module that needs a
//! new family may also register it in [`Metrics::registry`] at start-up.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The matched route pattern (`/api/projects/{p}/files/{*path}`), never the raw path.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The route whose answer the failure became (e.g.
    /// `/api/projects/{p}/exec`).
    pub op: String,
    /// The gRPC code (`deadline_exceeded`, `unavailable`, ...).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LifecycleLabels {
    /// `hibernate` or `restore`.
    pub op: String,
    /// `ok` or `error`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `terminal`, `watch`, `preview`, `events`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `upstream` (browser to dev server) or `downstream`.
    pub direction: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

fn lifecycle_histogram() -> Histogram {
    // 50 ms .. ~27 min.
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

/// Every metric of the gateway.
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistogramFamily<RouteLabels>,
    pub agent_rpc_errors: Family<RpcLabels, Counter>,
    pub lifecycle_seconds: HistogramFamily<LifecycleLabels>,
    /// Archive bytes written (hibernate) and read (restore).
    pub archive_bytes: Family<OpLabels, Counter>,
    pub open_terminals: Gauge,
    pub open_websockets: Family<KindLabels, Gauge>,
    pub proxied_bytes: Family<DirectionLabels, Counter>,
    /// Preview requests answered by the fast path (`preview::fast`).
    pub preview_fast: Counter,
    /// Client connections open now.
    pub open_connections: Gauge,
    /// Requests and connections refused by a limit, by reason
    /// (`connections`, `public_wake`, `preview_loop`, ...).
    pub refused: Family<ReasonLabels, Counter>,
    /// Other modules may register families here before the server starts.
    pub registry: Mutex<Registry>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let request_seconds: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route (to the response head)",
            request_seconds.clone(),
        );
        let agent_rpc_errors = Family::<RpcLabels, Counter>::default();
        registry.register(
            "agent_rpc_errors",
            "Agent and upstream failures that became a 5xx answer, by route and gRPC code",
            agent_rpc_errors.clone(),
        );
        let lifecycle_seconds: HistogramFamily<LifecycleLabels> =
            Family::new_with_constructor(lifecycle_histogram);
        registry.register(
            "lifecycle_duration_seconds",
            "Hibernate and restore durations",
            lifecycle_seconds.clone(),
        );
        let archive_bytes = Family::<OpLabels, Counter>::default();
        registry.register(
            "archive_bytes",
            "Archive bytes written by hibernation and read by restore",
            archive_bytes.clone(),
        );
        let open_terminals = Gauge::default();
        registry.register(
            "open_terminals",
            "Terminal WebSockets open now",
            open_terminals.clone(),
        );
        let open_websockets = Family::<KindLabels, Gauge>::default();
        registry.register(
            "open_websockets",
            "WebSockets and streams open now by kind",
            open_websockets.clone(),
        );
        let proxied_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "preview_proxied_bytes",
            "Bytes passed through the preview proxy",
            proxied_bytes.clone(),
        );
        let preview_fast = Counter::default();
        registry.register(
            "preview_fast_path_requests",
            "Preview requests answered by the fast path (the others through hyper)",
            preview_fast.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refused",
            "Connections and requests refused by a limit, by reason",
            refused.clone(),
        );
        Metrics {
            preview_fast,
            open_connections,
            refused,
            requests,
            request_seconds,
            agent_rpc_errors,
            lifecycle_seconds,
            archive_bytes,
            open_terminals,
            open_websockets,
            proxied_bytes,
            registry: Mutex::new(registry),
        }
    }

    /// Counts one refusal by a limit.
    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The text exposition of every registered family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Counts an open WebSocket by kind in the metrics while it lives.
pub struct WsGauge {
    metrics: std::sync::Arc<Metrics>,
    kind: &'static str,
}

impl WsGauge {
    pub fn new(metrics: &std::sync::Arc<Metrics>, kind: &'static str) -> WsGauge {
        metrics
            .open_websockets
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
        WsGauge {
            metrics: metrics.clone(),
            kind,
        }
    }
}

impl Drop for WsGauge {
    fn drop(&mut self) {
        self.metrics
            .open_websockets
            .get_or_create(&KindLabels {
                kind: self.kind.to_owned(),
            })
            .dec();
    }
}
