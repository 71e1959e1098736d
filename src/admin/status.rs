//! The status page (`GET /`) and the JSON it refreshes from
//! (`GET /status.json`).
//!
//! Why a page at all: during an incident nobody wants to write PromQL to find
//! the saturated pool. Why this shape: the figures are read from the same
//! places `/metrics` and `/pools` read (the Prometheus registry's counters
//! and the pool's own state), so the three never disagree; nothing is
//! counted twice. Rates and "recent errors" need history, which a counter
//! does not keep, so a sampler records the counters every
//! [`SAMPLE_EVERY`] into a ring of at most [`SAMPLES`] entries (five
//! minutes), each bounded by the `upstream` label cap. Origins past that cap
//! (`metrics.max_upstream_labels`) share the `other` counters, as in
//! `/metrics`: their rows show pool state only, and `other` gets a row of
//! its own. The page itself is one
//! HTML file with inline CSS and script: no external assets, so it works on
//! a loopback-only admin port with no internet.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::proto::MetricFamily;
use serde::Serialize;
use tokio::time::Instant;

use crate::metrics::{Metrics, NO_UPSTREAM};
use crate::upstream::pool::OriginStats;
use crate::upstream::Pool;

/// The page, served as is.
pub(crate) const PAGE: &str = include_str!("status.html");

/// How often the sampler records the counters.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: five minutes at [`SAMPLE_EVERY`], plus the one that
/// starts the window.
const SAMPLES: usize = 31;

/// One origin's counters at one moment (by `upstream` label).
#[derive(Clone, Debug, Default, PartialEq)]
struct Counters {
    requests_new: u64,
    requests_reused: u64,
    retries_succeeded: u64,
    retries_failed: u64,
    drains_reused: u64,
    drains_closed: u64,
    rejected: u64,
    errors: BTreeMap<String, u64>,
}

impl Counters {
    fn requests(&self) -> u64 {
        self.requests_new + self.requests_reused
    }
}

/// The counter families the page reads, each with the label that splits it.
const READ: [(&str, &str); 5] = [
    ("eddy_upstream_requests_total", "connection"),
    ("eddy_stale_retries_total", "outcome"),
    ("eddy_body_drains_total", "outcome"),
    ("eddy_pool_rejected_total", "reason"),
    ("eddy_errors_total", "error"),
];

/// The counters of every `upstream` label, from the registry.
fn read_counters(families: &[MetricFamily]) -> BTreeMap<String, Counters> {
    let mut out: BTreeMap<String, Counters> = BTreeMap::new();
    for family in families {
        let Some(&(name, key)) = READ.iter().find(|(n, _)| *n == family.name()) else {
            continue;
        };
        for m in family.get_metric() {
            let value = m.get_counter().get_value() as u64;
            if value == 0 {
                continue;
            }
            let label = |wanted: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == wanted)
                    .map(|l| l.value().to_string())
            };
            let (Some(upstream), Some(kind)) = (label("upstream"), label(key)) else {
                continue;
            };
            let c = out.entry(upstream).or_default();
            match (name, kind.as_str()) {
                ("eddy_upstream_requests_total", "reused") => c.requests_reused += value,
                ("eddy_upstream_requests_total", _) => c.requests_new += value,
                ("eddy_stale_retries_total", "succeeded") => c.retries_succeeded += value,
                ("eddy_stale_retries_total", _) => c.retries_failed += value,
                ("eddy_body_drains_total", "reused") => c.drains_reused += value,
                ("eddy_body_drains_total", _) => c.drains_closed += value,
                ("eddy_pool_rejected_total", _) => c.rejected += value,
                _ => *c.errors.entry(kind).or_default() += value,
            }
        }
    }
    out
}

/// The value of an unlabelled gauge, or the sum of a labelled one.
fn gauge_sum(families: &[MetricFamily], name: &str) -> f64 {
    families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_gauge().get_value())
        .sum()
}

/// Every `upstream` label's counters at one moment.
type Sample = (Instant, BTreeMap<String, Counters>);

/// The recent counter samples.
#[derive(Default)]
pub(crate) struct History(Mutex<VecDeque<Sample>>);

impl History {
    /// Records the counters now (the sampler calls this).
    pub(crate) fn sample(&self, metrics: &Metrics) {
        let counters = read_counters(&metrics.gather());
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == SAMPLES {
            ring.pop_front();
        }
        ring.push_back((Instant::now(), counters));
    }

    /// The oldest sample, and the newest at least `min_age` old (or, in a
    /// process younger than that, the oldest if a second has passed).
    fn baselines(&self, now: Instant, min_age: Duration) -> (Option<Sample>, Option<Sample>) {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = ring.front().cloned();
        let age = |at: &Instant| now.saturating_duration_since(*at);
        let recent = ring
            .iter()
            .rev()
            .find(|(at, _)| age(at) >= min_age)
            .or_else(|| {
                ring.front()
                    .filter(|(at, _)| age(at) >= Duration::from_secs(1))
            })
            .cloned();
        (oldest, recent)
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Status {
    pub version: &'static str,
    pub uptime_seconds: f64,
    pub rss_bytes: f64,
    pub client_connections_open: f64,
    /// Span of the `recent_*` figures (up to five minutes).
    pub window_seconds: f64,
    /// Requests refused for the client's own mistakes in the window, by
    /// Proxy-Status type: not a sign of any origin's health, so shown apart.
    pub client_errors: BTreeMap<String, u64>,
    pub origins: Vec<OriginStatus>,
}

/// Proxy-Status types that describe the client's request, not an origin:
/// a malformed request, a destination eddy may not reach. (A loop is the
/// client's when eddy refused it before choosing an origin, `none`, and
/// the route's when the origin's address turned out to be eddy's own; the
/// shipped alerts split them the same way.)
const CLIENT_ERRORS: [&str; 3] = [
    "http_request_error",
    "http_request_denied",
    "destination_ip_prohibited",
];

fn is_client_error(error: &str) -> bool {
    CLIENT_ERRORS.contains(&error)
}

#[derive(Serialize, Debug)]
pub(crate) struct OriginStatus {
    /// The pool's origin, a tunnel's destination, or the `upstream` label
    /// (`other`).
    pub origin: String,
    /// Whether eddy holds a pool for it (the figures below from `/pools`).
    pub pooled: bool,
    /// As `/pools` says: `http/1.1`, `h2` or `tunnel` (empty without one).
    pub protocol: &'static str,
    /// HTTP/2: requests in flight.
    pub streams: Option<usize>,
    /// Connects that failed in a row (prewarming's too).
    pub connect_failures: u32,
    pub idle: usize,
    pub in_use: usize,
    pub connecting: usize,
    pub pending: usize,
    pub max_connections_per_host: usize,
    pub max_pending_per_host: usize,
    pub opened_total: u64,
    pub reused_total: u64,
    pub effective_idle_timeout_seconds: f64,
    pub idle_timeout_learned: bool,
    pub requests_total: u64,
    /// Share of upstream requests sent on a reused connection.
    pub reuse_ratio: Option<f64>,
    /// Since the newest sample at least ten seconds old (or since start).
    pub requests_per_second: f64,
    pub retries_succeeded: u64,
    pub retries_failed: u64,
    pub drains_reused: u64,
    pub drains_closed: u64,
    pub rejected_total: u64,
    /// Requests turned away with 503 in the window.
    pub recent_rejected: u64,
    /// Errors eddy answered for this origin in the window, by Proxy-Status
    /// (the client's own mistakes are in [`Status::client_errors`]).
    pub recent_errors: BTreeMap<String, u64>,
    /// All slots taken and requests waiting.
    pub saturated: bool,
    /// Origin errors, rejections or failed retries in the window, or the
    /// last connects failed.
    pub failing: bool,
}

/// The figures `/status.json` serves.
pub(crate) fn status(pool: &Pool, metrics: &Metrics, history: &History) -> Status {
    let now = Instant::now();
    let families = metrics.gather();
    let counters = read_counters(&families);
    let (oldest, recent) = history.baselines(now, SAMPLE_EVERY);
    let window = oldest.as_ref().map_or(0.0, |(at, _)| {
        now.saturating_duration_since(*at).as_secs_f64()
    });
    let empty = Counters::default();
    let mut pools: BTreeMap<String, OriginStats> = pool
        .snapshot()
        .into_iter()
        .map(|s| (s.origin.clone(), s))
        .collect();
    let mut names: Vec<String> = pools.keys().cloned().collect();
    // `none` is requests eddy refused before choosing an origin: client
    // errors, shown apart.
    names.extend(
        counters
            .keys()
            .filter(|k| !pools.contains_key(*k) && k.as_str() != NO_UPSTREAM)
            .cloned(),
    );
    let mut client_errors: BTreeMap<String, u64> = BTreeMap::new();
    let base_of = |name: &str| {
        oldest
            .as_ref()
            .and_then(|(_, c)| c.get(name).cloned())
            .unwrap_or_default()
    };
    for (name, now_c) in &counters {
        let base = base_of(name);
        for (error, n) in &now_c.errors {
            let recent = n.saturating_sub(*base.errors.get(error).unwrap_or(&0));
            if recent > 0 && (name == NO_UPSTREAM || is_client_error(error)) {
                *client_errors.entry(error.clone()).or_default() += recent;
            }
        }
    }
    let origins = names
        .into_iter()
        .map(|name| {
            let now_c = counters.get(&name).unwrap_or(&empty);
            let then = |b: &Option<Sample>| {
                b.as_ref()
                    .map(|(at, c)| (*at, c.get(&name).cloned().unwrap_or_default()))
            };
            let rps = match then(&recent) {
                Some((at, c)) => {
                    let secs = now.saturating_duration_since(at).as_secs_f64();
                    (now_c.requests().saturating_sub(c.requests())) as f64 / secs.max(1e-3)
                }
                None => 0.0,
            };
            let base = then(&oldest).map(|(_, c)| c).unwrap_or_default();
            let recent_errors: BTreeMap<String, u64> = now_c
                .errors
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.saturating_sub(*base.errors.get(k).unwrap_or(&0)),
                    )
                })
                .filter(|(k, v)| *v > 0 && !is_client_error(k))
                .collect();
            // 503s from a full queue are also in `errors` (as
            // connection_limit_reached); rejections are counted on their own
            // for origins past the label cap too.
            let connect_failures = pools.get(&name).map_or(0, |p| p.connect_failures);
            let failing = !recent_errors.is_empty()
                || now_c.rejected > base.rejected
                || now_c.retries_failed > base.retries_failed
                || connect_failures > 0;
            // An origin with counters but no pool (closed since, or past
            // the label cap) shows zeros.
            let (pooled, p) = match pools.remove(&name) {
                Some(p) => (true, p),
                None => (false, OriginStats::default()),
            };
            let requests = now_c.requests();
            let (busy, bound, pending) = (
                p.in_use + p.connecting,
                p.max_connections_per_host,
                p.pending,
            );
            OriginStatus {
                pooled,
                protocol: p.protocol,
                streams: p.streams,
                connect_failures,
                idle: p.idle,
                in_use: p.in_use,
                connecting: p.connecting,
                pending,
                max_connections_per_host: bound,
                max_pending_per_host: p.max_pending_per_host,
                opened_total: p.opened_total,
                reused_total: p.reused_total,
                effective_idle_timeout_seconds: p.effective_idle_timeout_seconds,
                idle_timeout_learned: p.idle_timeout_learned,
                requests_total: requests,
                reuse_ratio: (requests > 0).then(|| now_c.requests_reused as f64 / requests as f64),
                requests_per_second: rps,
                retries_succeeded: now_c.retries_succeeded,
                retries_failed: now_c.retries_failed,
                drains_reused: now_c.drains_reused,
                drains_closed: now_c.drains_closed,
                rejected_total: now_c.rejected,
                recent_rejected: now_c.rejected.saturating_sub(base.rejected),
                recent_errors,
                saturated: bound > 0 && busy >= bound && pending > 0,
                failing,
                origin: name,
            }
        })
        .collect();
    let start = gauge_sum(&families, "process_start_time_seconds");
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: if start > 0.0 {
            (crate::metrics::unix_now() - start).max(0.0)
        } else {
            0.0
        },
        rss_bytes: gauge_sum(&families, "process_resident_memory_bytes"),
        client_connections_open: gauge_sum(&families, "eddy_client_connections_open"),
        window_seconds: window,
        client_errors,
        origins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts, Registry};

    #[test]
    fn client_mistakes_are_told_from_origin_failures() {
        assert!(is_client_error("http_request_error"));
        assert!(is_client_error("destination_ip_prohibited"));
        assert!(!is_client_error("connection_refused"));
        assert!(!is_client_error("proxy_loop_detected"));
    }

    #[test]
    fn counters_are_read_by_upstream_label() {
        let r = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("eddy_upstream_requests_total", "h"),
            &["upstream", "connection"],
        )
        .expect("metric");
        let errors =
            IntCounterVec::new(Opts::new("eddy_errors_total", "h"), &["upstream", "error"])
                .expect("metric");
        r.register(Box::new(requests.clone())).expect("register");
        r.register(Box::new(errors.clone())).expect("register");
        requests
            .with_label_values(&["http://a:80", "new"])
            .inc_by(2);
        requests
            .with_label_values(&["http://a:80", "reused"])
            .inc_by(8);
        errors.with_label_values(&["none", "dns_error"]).inc();
        let c = read_counters(&r.gather());
        assert_eq!(c["http://a:80"].requests(), 10);
        assert_eq!(c["http://a:80"].requests_reused, 8);
        assert_eq!(c["none"].errors["dns_error"], 1);
    }
}
