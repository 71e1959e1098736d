//! The pool's gauges, `eddy_upstream_connections{state}` and
//! `eddy_pool_pending`, read from the pool's own state at every scrape
//! rather than counted up and down, so they cannot drift from the truth
//! whatever failed on the way. The pool registers this collector with the
//! metrics registry; metrics do not know the pool.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};

use super::WeakPool;

/// `eddy_upstream_connections{state}` and `eddy_pool_pending`, read from the
/// pool when Prometheus scrapes.
pub(crate) struct PoolCollector {
    pool: WeakPool,
    descs: Vec<Desc>,
}

impl PoolCollector {
    pub(crate) fn new(pool: WeakPool) -> PoolCollector {
        let (connections, pending) = PoolCollector::vecs();
        let descs = connections
            .desc()
            .into_iter()
            .chain(pending.desc())
            .cloned()
            .collect();
        PoolCollector { pool, descs }
    }

    fn vecs() -> (GaugeVec, GaugeVec) {
        let connections = GaugeVec::new(
            Opts::new(
                "eddy_upstream_connections",
                "Upstream connections, by state.",
            ),
            &["upstream", "state"],
        )
        .expect("valid metric definition");
        let pending = GaugeVec::new(
            Opts::new("eddy_pool_pending", "Requests waiting for a connection."),
            &["upstream"],
        )
        .expect("valid metric definition");
        (connections, pending)
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (connections, pending) = PoolCollector::vecs();
        if let Some(pool) = self.pool.upgrade() {
            for g in pool.gauges() {
                connections
                    .with_label_values(&[&g.label, "idle"])
                    .add(g.idle as f64);
                connections
                    .with_label_values(&[&g.label, "in_use"])
                    .add(g.in_use as f64);
                connections
                    .with_label_values(&[&g.label, "connecting"])
                    .add(g.connecting as f64);
                pending.with_label_values(&[&g.label]).add(g.pending as f64);
            }
        }
        let mut families = connections.collect();
        families.extend(pending.collect());
        families
    }
}
