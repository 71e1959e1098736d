//! Prometheus metrics (SPEC section 9), in a registry eddy owns.
//!
//! No global statics: each [`Metrics`] has its own registry, so two eddys can
//! run in one test process without sharing counters. The hot path never
//! formats a label or looks one up: each origin's counters are resolved once,
//! into an [`OriginMetrics`] that the pool keeps with the origin and each
//! connection, and a request costs an atomic add.
//!
//! The `upstream` label is capped at `metrics.max_upstream_labels` distinct
//! origins; later ones share the `other` series, so a forward proxy that sees
//! arbitrary hosts cannot grow Prometheus' series without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

use crate::upstream::CloseReason;

/// The `upstream` label for origins past the cap.
pub const OTHER_UPSTREAM: &str = "other";

pub struct Metrics {
    registry: Registry,
    stale_retries: IntCounterVec,
    body_drains: IntCounterVec,
    connections_closed: IntCounterVec,
    max_upstream_labels: usize,
    origins: Mutex<HashMap<String, Arc<OriginMetrics>>>,
}

/// One origin's counters, resolved once.
pub struct OriginMetrics {
    pub retries_succeeded: IntCounter,
    pub retries_failed: IntCounter,
    pub drains_reused: IntCounter,
    pub drains_closed: IntCounter,
    closed: Vec<IntCounter>,
}

impl OriginMetrics {
    pub fn connection_closed(&self, reason: CloseReason) {
        if let Some(c) = self.closed.get(reason as usize) {
            c.inc();
        }
    }
}

impl Metrics {
    pub fn new(max_upstream_labels: usize) -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c =
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let stale_retries = counter(
            "eddy_stale_retries_total",
            "Requests sent again after a reused upstream connection turned out closed, by outcome of the retry.",
            &["upstream", "outcome"],
        );
        let body_drains = counter(
            "eddy_body_drains_total",
            "Response bodies read to the end after the client went away, by whether the connection was saved.",
            &["upstream", "outcome"],
        );
        let connections_closed = counter(
            "eddy_upstream_connections_closed_total",
            "Upstream connections closed, by reason.",
            &["upstream", "reason"],
        );
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = registry.register(Box::new(process)) {
                tracing::warn!(error = %e, "process metrics unavailable");
            }
        }
        Metrics {
            registry,
            stale_retries,
            body_drains,
            connections_closed,
            max_upstream_labels,
            origins: Mutex::new(HashMap::new()),
        }
    }

    /// The counters for `upstream` (`scheme://host:port`), or the shared
    /// `other` counters once the label cap is reached.
    pub fn origin(&self, upstream: &str) -> Arc<OriginMetrics> {
        let mut origins = self
            .origins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(m) = origins.get(upstream) {
            return m.clone();
        }
        let label = if origins.len() < self.max_upstream_labels {
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
        OriginMetrics {
            retries_succeeded: self.stale_retries.with_label_values(&[label, "succeeded"]),
            retries_failed: self.stale_retries.with_label_values(&[label, "failed"]),
            drains_reused: self.body_drains.with_label_values(&[label, "reused"]),
            drains_closed: self.body_drains.with_label_values(&[label, "closed"]),
            closed: CloseReason::ALL
                .iter()
                .map(|r| {
                    self.connections_closed
                        .with_label_values(&[label, r.as_str()])
                })
                .collect(),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_labels_are_capped() {
        let m = Metrics::new(2);
        m.origin("http://a:80").retries_succeeded.inc();
        m.origin("http://b:80").retries_succeeded.inc();
        m.origin("http://c:80").retries_succeeded.inc();
        m.origin("http://d:80").retries_succeeded.inc();
        let text = m.render();
        assert!(
            text.contains(
                r#"eddy_stale_retries_total{outcome="succeeded",upstream="http://a:80"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"eddy_stale_retries_total{outcome="succeeded",upstream="other"} 2"#),
            "{text}"
        );
        assert!(!text.contains("http://c:80"));
    }

    #[test]
    fn every_close_reason_has_a_series() {
        let m = Metrics::new(10);
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
}
