//! Prometheus metrics of the service (`GET /metrics`, text exposition format).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `dsbox_live_sandboxes` | gauge | — (every kernel sandbox: acquired and pooled) |
//! | `dsbox_sessions` | gauge | `api` (manager, sandbox, env): sandboxes held by clients |
//! | `dsbox_pool_ready` | gauge | `template`: ready kernels in the warm pool |
//! | `dsbox_execute_seconds` | histogram | `api`: wall time of an execute, queueing included |
//! | `dsbox_executes_total` | counter | `api`, `status` (ok, error, timed_out, ...) |
//! | `dsbox_errors_total` | counter | `kind` (the error body's `kind`) |
//! | `dsbox_requests_total` | counter | `route`, `status` |
//! | `dsbox_reclaimed_total` | counter | `api`: sandboxes destroyed after being idle |
//! | `dsbox_kernel_restarts` | gauge | `template`: kernels replaced since start (lost or restarted; read from the templates at each scrape) |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecLabels {
    pub api: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TemplateLabel {
    pub template: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~105 s: a `1+1` round trip and a long cell both land in a bucket.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    pub live: Gauge,
    pub sessions: Family<ApiLabel, Gauge>,
    pub pool_ready: Family<TemplateLabel, Gauge>,
    pub kernel_restarts: Family<TemplateLabel, Gauge>,
    pub execute_seconds: Family<ApiLabel, Histogram, fn() -> Histogram>,
    pub executes: Family<ExecLabels, Counter>,
    pub errors: Family<KindLabel, Counter>,
    pub requests: Family<RouteLabels, Counter>,
    pub reclaimed: Family<ApiLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            live: Gauge::default(),
            sessions: Family::default(),
            pool_ready: Family::default(),
            kernel_restarts: Family::default(),
            execute_seconds: Family::new_with_constructor(latency_histogram),
            executes: Family::default(),
            errors: Family::default(),
            requests: Family::default(),
            reclaimed: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "dsbox_live_sandboxes",
            "Kernel sandboxes alive (held by clients and ready in warm pools)",
            m.live.clone(),
        );
        registry.register(
            "dsbox_sessions",
            "Sandboxes held by clients, by API",
            m.sessions.clone(),
        );
        registry.register(
            "dsbox_pool_ready",
            "Ready kernels in the warm pool, by template",
            m.pool_ready.clone(),
        );
        registry.register(
            "dsbox_kernel_restarts",
            "Kernels replaced since start (lost or restarted), by template",
            m.kernel_restarts.clone(),
        );
        registry.register(
            "dsbox_execute_seconds",
            "Wall time of an execute request (queueing behind the session's earlier cells included)",
            m.execute_seconds.clone(),
        );
        registry.register(
            "dsbox_executes",
            "Executed cells by API and status",
            m.executes.clone(),
        );
        registry.register("dsbox_errors", "Error responses by kind", m.errors.clone());
        registry.register(
            "dsbox_requests",
            "Requests by route and status",
            m.requests.clone(),
        );
        registry.register(
            "dsbox_reclaimed",
            "Sandboxes destroyed after being idle, by API",
            m.reclaimed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}
