//! Prometheus metrics, in a registry eddy owns. Their names and labels are
//! part of eddy's interface (dashboards and alerts select on them; the
//! docs/metrics.md describes them): rename one only with all its users.
//!
//! No global statics: each [`Metrics`] has its own registry, so two eddys can
//! run in one test process without sharing counters. The hot path never
//! formats a label or looks one up: each origin's series are resolved once,
//! into an [`OriginMetrics`] that the pool keeps with the origin and each
//! connection, and a request costs a few atomic adds. Only error paths
//! resolve a label when they happen (`eddy_errors_total`).
//!
//! The gauges that describe the pool (`eddy_upstream_connections`,
//! `eddy_pool_pending`) are not counted up and down at all: they are read
//! from the pool's own state at scrape time, so they cannot drift from the
//! truth whatever failed on the way.
//!
//! The `upstream` label is capped at `metrics.max_upstream_labels` distinct
//! origins; later ones share the `other` series, so a forward proxy that sees
//! arbitrary hosts cannot grow Prometheus' series without bound. Requests
//! eddy answered before choosing an origin report `upstream="none"`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::failures::{Admit, Throttles};

/// The `upstream` label for origins past the cap.
pub(crate) const OTHER_UPSTREAM: &str = "other";
/// The `upstream` label for requests answered before an origin was chosen.
pub(crate) const NO_UPSTREAM: &str = "none";

/// Histogram buckets in seconds: 100 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub(crate) struct Metrics {
    registry: Registry,
    listeners: Vec<String>,
    pub client_connections: IntCounterVec,
    pub client_connections_open: IntGaugeVec,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_requests: IntCounterVec,
    connections_opened: IntCounterVec,
    connect_duration: HistogramVec,
    pool_wait: HistogramVec,
    pool_rejected: IntCounterVec,
    stale_retries: IntCounterVec,
    body_drains: IntCounterVec,
    connections_closed: IntCounterVec,
    errors: IntCounterVec,
    pub tunnels: IntCounterVec,
    /// `eddy_tls_intercepted_requests_total`, by upstream.
    pub intercepted: IntCounterVec,
    pub tunnels_open: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: Gauge,
    max_upstream_labels: usize,
    origins: Mutex<HashMap<String, Arc<OriginMetrics>>>,
}

/// One origin's series, resolved once.
pub(crate) struct OriginMetrics {
    /// The `upstream` label value these series carry.
    pub label: String,
    pub retries_succeeded: IntCounter,
    pub retries_failed: IntCounter,
    pub drains_reused: IntCounter,
    pub drains_closed: IntCounter,
    pub upstream_new: IntCounter,
    pub upstream_reused: IntCounter,
    pub opened: IntCounter,
    pub connect_duration: Histogram,
    pub pool_wait: Histogram,
    pub request_duration: Histogram,
    pub rejected_queue_full: IntCounter,
    pub rejected_timeout: IntCounter,
    closed: Vec<IntCounter>,
    /// `eddy_requests_total`, by listener index then status class.
    requests: Vec<[IntCounter; 5]>,
    errors: IntCounterVec,
    /// Which failures get a warn line now (see [`crate::failures`]).
    throttles: Throttles,
}

impl OriginMetrics {
    /// A pooled connection opened after `took` (DNS, TCP, TLS, handshake).
    pub(crate) fn connection_opened(&self, took: std::time::Duration) {
        self.opened.inc();
        self.connect_duration.observe(took.as_secs_f64());
    }

    pub(crate) fn connection_closed(&self, reason: CloseReason) {
        if let Some(c) = self.closed.get(reason as usize) {
            c.inc();
        }
    }

    /// A response with `status` went to a client of listener `listener`.
    pub(crate) fn request(&self, listener: usize, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if let Some(by_class) = self.requests.get(listener) {
            by_class[class].inc();
        }
    }

    /// An error eddy answered itself, by Proxy-Status type (off the hot path).
    pub(crate) fn error(&self, proxy_status: &str) {
        self.errors
            .with_label_values(&[&self.label, proxy_status])
            .inc();
    }

    /// A failure of this origin's (or of `none`'s): counted under
    /// `eddy_errors_total` with its Proxy-Status type, and whether its warn
    /// line is written now. `context` says where it happened (`request`,
    /// `prewarm`).
    pub(crate) fn failed(&self, proxy_status: &'static str, context: &'static str) -> Admit {
        self.error(proxy_status);
        self.throttles.admit((proxy_status, context))
    }

    /// A failure that is not an error eddy answered (a response cut off
    /// mid-body): only whether its warn line is written now.
    pub(crate) fn throttle(&self, kind: &'static str, context: &'static str) -> Admit {
        self.throttles.admit((kind, context))
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        &["upstream"],
    )
    .expect("valid metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    /// Metrics for a process with these listeners (by name, in order).
    pub(crate) fn new(max_upstream_labels: usize, listeners: &[String]) -> Metrics {
        let r = Registry::new();
        let config_last_reload_success = Gauge::new(
            "eddy_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (Unix time).",
        )
        .expect("valid metric definition");
        r.register(Box::new(config_last_reload_success.clone()))
            .expect("metric registered once");
        // Always 1: the version is in the label, so a query can join it onto
        // any other series (`* on (instance) group_left (version)`).
        let build_info = gauge(
            &r,
            "eddy_build_info",
            "Always 1; the running eddy's version is the label.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let m = Metrics {
            client_connections: counter(&r, "eddy_client_connections_total", "Client connections accepted.", &["listener"]),
            client_connections_open: gauge(&r, "eddy_client_connections_open", "Client connections open.", &["listener"]),
            requests: counter(&r, "eddy_requests_total", "Responses sent to clients, by status class.", &["listener", "upstream", "code"]),
            request_duration: histogram(&r, "eddy_request_duration_seconds", "Time from request head received to response fully sent."),
            upstream_requests: counter(&r, "eddy_upstream_requests_total", "Requests sent upstream, by whether the connection was new or reused.", &["upstream", "connection"]),
            connections_opened: counter(&r, "eddy_upstream_connections_opened_total", "Upstream connections opened.", &["upstream"]),
            connect_duration: histogram(&r, "eddy_upstream_connect_duration_seconds", "Time to open an upstream connection (DNS, TCP, handshake)."),
            pool_wait: histogram(&r, "eddy_pool_wait_seconds", "Time a request waited for a pooled connection."),
            pool_rejected: counter(&r, "eddy_pool_rejected_total", "Requests refused with 503 because no connection became free.", &["upstream", "reason"]),
            stale_retries: counter(&r, "eddy_stale_retries_total", "Requests sent again after a reused upstream connection turned out closed, by outcome of the retry.", &["upstream", "outcome"]),
            body_drains: counter(&r, "eddy_body_drains_total", "Response bodies read to the end after the client went away, by whether the connection was saved.", &["upstream", "outcome"]),
            connections_closed: counter(&r, "eddy_upstream_connections_closed_total", "Upstream connections closed, by reason.", &["upstream", "reason"]),
            errors: counter(&r, "eddy_errors_total", "Failures, by Proxy-Status error type: responses eddy made itself, and connections it failed to open on its own (prewarming).", &["upstream", "error"]),
            tunnels: counter(&r, "eddy_tunnels_total", "CONNECT tunnels opened.", &["listener"]),
            intercepted: counter(&r, "eddy_tls_intercepted_requests_total", "Requests read from CONNECT tunnels eddy terminated ([tls_intercept]) and sent through the pool.", &["upstream"]),
            tunnels_open: gauge(&r, "eddy_tunnels_open", "CONNECT tunnels open.", &["listener"]),
            config_reloads: counter(&r, "eddy_config_reloads_total", "Configuration reloads, by outcome.", &["outcome"]),
            config_last_reload_success,
            registry: r,
            listeners: listeners.to_vec(),
            max_upstream_labels,
            origins: Mutex::new(HashMap::new()),
        };
        // Series that exist from the start, at zero.
        for l in listeners {
            m.client_connections.with_label_values(&[l]);
            m.client_connections_open.with_label_values(&[l]);
            m.tunnels.with_label_values(&[l]);
            m.tunnels_open.with_label_values(&[l]);
        }
        for outcome in ["success", "failure"] {
            m.config_reloads.with_label_values(&[outcome]);
        }
        m.config_last_reload_success.set(unix_now());
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = m.registry.register(Box::new(process)) {
                tracing::warn!(error = %e, "process metrics unavailable");
            }
        }
        m
    }

    /// Adds a collector whose series are read at every scrape (the pool
    /// registers its gauges so: metrics need not know the pool).
    pub(crate) fn register(&self, collector: Box<dyn Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// The series for `upstream` (`scheme://host:port`), or the shared
    /// `other` series once the label cap is reached.
    pub(crate) fn origin(&self, upstream: &str) -> Arc<OriginMetrics> {
        let mut origins = self
            .origins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(m) = origins.get(upstream) {
            return m.clone();
        }
        // One slot under the cap is kept for `none`, so that however the
        // traffic arrives the label set is at most the cap plus `other`.
        let reserved = usize::from(!origins.contains_key(NO_UPSTREAM));
        let label =
            if upstream == NO_UPSTREAM || origins.len() + reserved < self.max_upstream_labels {
                upstream
            } else {
                OTHER_UPSTREAM
            };
        if let Some(m) = origins.get(label) {
            return m.clone();
        }
        let m = Arc::new(self.resolve(label));
        origins.insert(label.to_string(), m.clone());
        m
    }

    fn resolve(&self, label: &str) -> OriginMetrics {
        let requests = self
            .listeners
            .iter()
            .map(|l| CODE_CLASSES.map(|code| self.requests.with_label_values(&[l, label, code])))
            .collect();
        OriginMetrics {
            label: label.to_string(),
            retries_succeeded: self.stale_retries.with_label_values(&[label, "succeeded"]),
            retries_failed: self.stale_retries.with_label_values(&[label, "failed"]),
            drains_reused: self.body_drains.with_label_values(&[label, "reused"]),
            drains_closed: self.body_drains.with_label_values(&[label, "closed"]),
            upstream_new: self.upstream_requests.with_label_values(&[label, "new"]),
            upstream_reused: self.upstream_requests.with_label_values(&[label, "reused"]),
            opened: self.connections_opened.with_label_values(&[label]),
            connect_duration: self.connect_duration.with_label_values(&[label]),
            pool_wait: self.pool_wait.with_label_values(&[label]),
            request_duration: self.request_duration.with_label_values(&[label]),
            rejected_queue_full: self.pool_rejected.with_label_values(&[label, "queue_full"]),
            rejected_timeout: self.pool_rejected.with_label_values(&[label, "timeout"]),
            closed: CloseReason::ALL
                .iter()
                .map(|r| {
                    self.connections_closed
                        .with_label_values(&[label, r.as_str()])
                })
                .collect(),
            requests,
            errors: self.errors.clone(),
            throttles: Throttles::default(),
        }
    }

    /// Every metric family, as `/metrics` renders them.
    pub(crate) fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Why a connection was closed (the `reason` label of
/// `eddy_upstream_connections_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    IdleTimeout,
    KeepaliveHint,
    MaxLifetime,
    MaxRequests,
    PeerClosed,
    /// The exchange could not be finished: a response body too long or
    /// slow to drain, or a request body that failed, never completed, or
    /// was refused with 413.
    NotDrained,
    Evicted,
    Error,
    Shutdown,
    /// The connection's address left its origin's DNS answer.
    AddressGone,
}

impl CloseReason {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub(crate) const ALL: [CloseReason; 10] = [
        CloseReason::IdleTimeout,
        CloseReason::KeepaliveHint,
        CloseReason::MaxLifetime,
        CloseReason::MaxRequests,
        CloseReason::PeerClosed,
        CloseReason::NotDrained,
        CloseReason::Evicted,
        CloseReason::Error,
        CloseReason::Shutdown,
        CloseReason::AddressGone,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::KeepaliveHint => "keepalive_hint",
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::MaxRequests => "max_requests",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::NotDrained => "not_drained",
            CloseReason::Evicted => "evicted",
            CloseReason::Error => "error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::AddressGone => "address_gone",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/metrics.md explains every close reason, and no other.
    #[test]
    fn the_metrics_reference_explains_every_close_reason() {
        let doc = include_str!("../docs/metrics.md");
        let block = doc
            .split_once("of `eddy_upstream_connections_closed_total`")
            .and_then(|(_, rest)| rest.split_once("\n- **"))
            .map(|(block, _)| block)
            .expect("a list of close reasons");
        let documented: Vec<&str> = block
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- `"))
            .filter_map(|l| l.split_once("`:").map(|(name, _)| name))
            .collect();
        let reasons: Vec<&str> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(documented, reasons);
    }

    /// docs/metrics.md's summary gives every family the registry defines
    /// its type and exact labels (with a series in each, so none is left
    /// out of the exposition; the pool's gauges are checked live by
    /// tests/it/docs.rs).
    #[test]
    fn the_metrics_reference_gives_every_family_its_type_and_labels() {
        let doc = include_str!("../docs/metrics.md");
        let m = Metrics::new(10, &["proxy".to_string()]);
        let o = m.origin("http://a:80");
        o.error("dns_error");
        m.intercepted.with_label_values(&["https://a:443"]).inc();
        m.config_reloads.with_label_values(&["success"]).inc();
        let families = m.gather();
        assert!(families.len() >= 18, "{}", families.len());
        for family in families {
            let name = family.name();
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("docs/metrics.md has no row for {name}"));
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            let kind = format!("{:?}", family.get_field_type()).to_lowercase();
            assert_eq!(cells.get(1).copied(), Some(kind.as_str()), "{name}: type");
            let documented: std::collections::BTreeSet<&str> = cells
                .get(2)
                .map(|c| {
                    c.split(", ")
                        .map(|l| l.trim_matches('`'))
                        .filter(|l| !l.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            for metric in family.get_metric() {
                let labels: std::collections::BTreeSet<&str> =
                    metric.get_label().iter().map(|l| l.name()).collect();
                assert_eq!(labels, documented, "{name}: labels");
            }
        }
    }

    #[test]
    fn upstream_labels_are_capped() {
        // A cap of 3: one slot is kept for `none`, two for origins.
        let m = Metrics::new(3, &["proxy".to_string()]);
        m.origin("http://a:80").retries_succeeded.inc();
        m.origin("http://b:80").retries_succeeded.inc();
        m.origin("http://c:80").retries_succeeded.inc();
        m.origin("http://d:80").retries_succeeded.inc();
        m.origin(NO_UPSTREAM).retries_succeeded.inc();
        let text = m.render();
        for (upstream, n) in [
            ("http://a:80", 1),
            ("http://b:80", 1),
            ("other", 2),
            ("none", 1),
        ] {
            assert!(
                text.contains(&format!(
                    r#"eddy_stale_retries_total{{outcome="succeeded",upstream="{upstream}"}} {n}"#
                )),
                "{upstream}: {text}"
            );
        }
        assert!(!text.contains("http://c:80"));
        assert!(!text.contains("http://d:80"));
    }

    #[test]
    fn every_close_reason_has_a_series() {
        let m = Metrics::new(10, &["proxy".to_string()]);
        m.origin("http://a:80")
            .connection_closed(CloseReason::NotDrained);
        let text = m.render();
        for r in CloseReason::ALL {
            assert!(
                text.contains(&format!("reason=\"{}\"", r.as_str())),
                "{r:?}"
            );
        }
        assert!(text.contains(r#"eddy_upstream_connections_closed_total{reason="not_drained",upstream="http://a:80"} 1"#));
    }

    #[test]
    fn requests_are_counted_by_listener_and_status_class() {
        let m = Metrics::new(10, &["a".to_string(), "b".to_string()]);
        let o = m.origin("http://x:80");
        o.request(1, 204);
        o.request(1, 503);
        o.request(0, 999);
        let text = m.render();
        assert!(
            text.contains(
                r#"eddy_requests_total{code="2xx",listener="b",upstream="http://x:80"} 1"#
            ),
            "{text}"
        );
        assert!(text
            .contains(r#"eddy_requests_total{code="5xx",listener="b",upstream="http://x:80"} 1"#));
        assert!(text
            .contains(r#"eddy_requests_total{code="5xx",listener="a",upstream="http://x:80"} 1"#));
    }
}
