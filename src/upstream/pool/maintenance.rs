//! Work the pool does on its own: the reaper that closes idle connections
//! at their expiry, prewarming of `min_idle_per_host`, shutdown, and the
//! snapshot behind `/pools`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use std::sync::Arc;

use tokio::sync::Notify;

use super::core::{prewarm_backoff, Prewarm};
use super::lease::ConnectPermit;
use super::{CloseReason, Pool, Route, WeakPool};
use crate::failures::Admit;

impl Pool {
    /// Closes expired idle connections; sleeps until the next expiry. Holds
    /// the pool only while it works: a pool nobody else holds is dropped,
    /// and the reaper ends.
    pub(super) async fn reaper(pool: WeakPool, wake: Arc<Notify>) {
        loop {
            let next = {
                let Some(pool) = pool.upgrade() else { return };
                if pool.lock().is_closing() {
                    return;
                }
                let now = Instant::now();
                pool.with_core(|core, deliver, fx| core.reap(now, deliver, fx))
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = wake.notified() => {}
                    }
                }
                None => wake.notified().await,
            }
        }
    }

    /// Keeps `min_idle_per_host` connections open for each route, opening
    /// them one at a time, until the pool shuts down.
    ///
    /// Each call replaces the routes of the one before (a reload calls it
    /// with the new configuration's routes, possibly none).
    pub(crate) fn prewarm(&self, routes: Vec<Route>) {
        let generation = self
            .shared
            .prewarm_generation
            .fetch_add(1, Ordering::AcqRel)
            + 1;
        // An earlier call's loop sees the new generation and stops.
        self.shared.prewarm_wake.notify_waiters();
        if routes.is_empty() {
            return;
        }
        self.with_core(|core, _, _| {
            for route in &routes {
                core.pin(&route.origin, &route.settings, route.generation, || {
                    self.shared.metrics.origin(route.origin.as_str())
                });
            }
        });
        let weak = self.downgrade();
        let wake = self.shared.prewarm_wake.clone();
        tokio::spawn(async move {
            loop {
                {
                    let Some(pool) = weak.upgrade() else { return };
                    for route in &routes {
                        if !pool.prewarm_route(route, generation).await {
                            return;
                        }
                    }
                    if pool.lock().is_closing() {
                        return;
                    }
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    /// Opens connections for `route` until its origin has its
    /// `min_idle_per_host` (as the core decides). False once this
    /// prewarming was replaced by a later [`Pool::prewarm`] (a reload): the
    /// caller stops.
    pub(super) async fn prewarm_route(&self, route: &Route, generation: u64) -> bool {
        loop {
            if self.shared.prewarm_generation.load(Ordering::Acquire) != generation {
                return false;
            }
            let now = Instant::now();
            let decided = self.with_core(|core, _, _| core.prewarm(&route.origin, now));
            if decided == Prewarm::Done {
                return true;
            }
            let permit = ConnectPermit::new(self.clone(), route.clone());
            match self.connect(permit).await {
                Ok(mut pooled) => {
                    if let Some(conn) = pooled.conn.take() {
                        // Not kept (evicted at once): opening another would
                        // only repeat that.
                        if !self.release(&route.origin, conn) {
                            return true;
                        }
                    }
                }
                Err(e) => {
                    // Counted and shown like a request's failure, since no
                    // request will be there to report it.
                    let metrics = self.shared.metrics.origin(route.origin.as_str());
                    if let Admit::Write { suppressed } = metrics.failed(e.proxy_status(), "prewarm")
                    {
                        let failures = self
                            .lock()
                            .origin(&route.origin)
                            .map_or(1, |os| os.connect_failures());
                        tracing::warn!(
                            target: "eddy::failure",
                            upstream = %route.origin,
                            error = e.proxy_status(),
                            detail = %e,
                            failures,
                            retry_in_seconds = prewarm_backoff(failures).as_secs(),
                            suppressed,
                            "prewarming failed"
                        );
                    }
                    return true;
                }
            }
        }
    }

    /// Closes every idle connection and makes connections that come back
    /// close instead of idling.
    pub(crate) fn shutdown(&self) {
        self.with_core(|core, _, fx| core.shutdown(fx));
    }

    /// Pool gauges summed by `upstream` label (for `/metrics`): the HTTP/1
    /// pool's connections, HTTP/2 connections (in use while they carry a
    /// stream) and open CONNECT tunnels (always in use).
    pub(crate) fn gauges(&self) -> Vec<GaugeRow> {
        let mut rows: Vec<GaugeRow> = Vec::new();
        fn row<'a>(rows: &'a mut Vec<GaugeRow>, label: &str) -> &'a mut GaugeRow {
            match rows.iter().position(|r| r.label == label) {
                Some(i) => &mut rows[i],
                None => {
                    rows.push(GaugeRow {
                        label: label.to_string(),
                        ..GaugeRow::default()
                    });
                    let last = rows.len() - 1;
                    &mut rows[last]
                }
            }
        }
        {
            let st = self.lock();
            for (_, os) in st.origins() {
                let r = row(&mut rows, &os.meta.label);
                r.idle += os.idle().len();
                r.in_use += os.in_use();
                r.connecting += os.connecting();
                r.pending += os.pending();
            }
        }
        let metrics = &self.shared.metrics;
        for h2 in self.shared.h2.views() {
            let r = row(&mut rows, &metrics.origin(h2.origin.as_str()).label);
            match (h2.open, h2.streams > 0) {
                (true, true) => r.in_use += 1,
                (true, false) => r.idle += 1,
                (false, _) => {}
            }
            r.connecting += usize::from(h2.connecting);
        }
        for (destination, open) in self.shared.tunnels.snapshot() {
            row(&mut rows, &metrics.origin(&destination).label).in_use += open;
        }
        rows
    }

    /// A point-in-time view of every origin's pool (for `/pools`), with
    /// HTTP/2 origins and open tunnels.
    pub(crate) fn snapshot(&self) -> Vec<OriginStats> {
        let now = Instant::now();
        let last_error = |failure: Option<(Instant, &'static str)>| {
            failure.map(|(at, error)| LastError {
                error,
                seconds_ago: now.saturating_duration_since(at).as_secs_f64(),
            })
        };
        let (origins, mut out): (Vec<_>, Vec<OriginStats>) = {
            let st = self.lock();
            st.origins()
                .map(|(origin, os)| {
                    (
                        origin.clone(),
                        OriginStats {
                            origin: origin.to_string(),
                            protocol: "http/1.1",
                            idle: os.idle().len(),
                            in_use: os.in_use(),
                            connecting: os.connecting(),
                            pending: os.pending(),
                            opened_total: os.opened_total(),
                            reused_total: os.reused_total(),
                            oldest_idle_seconds: os.idle().first().map_or(0.0, |i| {
                                now.saturating_duration_since(i.since).as_secs_f64()
                            }),
                            effective_idle_timeout_seconds: os
                                .effective_idle_timeout()
                                .0
                                .as_secs_f64(),
                            streams: None,
                            connect_failures: os.connect_failures(),
                            last_error: last_error(os.last_failure()),
                            max_connections_per_host: os.settings().max_connections_per_host,
                            max_pending_per_host: os.settings().max_pending_per_host,
                            idle_timeout_learned: os.effective_idle_timeout().1
                                == CloseReason::KeepaliveHint,
                            ports_short: os.port_cap().is_some(),
                            addresses: Vec::new(),
                        },
                    )
                })
                .unzip()
        };
        // Outside the pool's lock: the resolver and the address counts
        // have locks of their own.
        for (origin, stats) in origins.iter().zip(out.iter_mut()) {
            stats.addresses = self.addresses_of(origin);
        }
        for h2 in self.shared.h2.views() {
            let busy = h2.open && h2.streams > 0;
            out.push(OriginStats {
                origin: h2.origin.to_string(),
                protocol: "h2",
                idle: usize::from(h2.open && !busy),
                in_use: usize::from(busy),
                connecting: usize::from(h2.connecting),
                streams: Some(h2.streams),
                connect_failures: h2.connect_failures,
                last_error: last_error(h2.last_failure),
                ..OriginStats::default()
            });
        }
        for (destination, open) in self.shared.tunnels.snapshot() {
            out.push(OriginStats {
                origin: destination.to_string(),
                protocol: "tunnel",
                in_use: open,
                ..OriginStats::default()
            });
        }
        out.sort_by(|a, b| a.origin.cmp(&b.origin));
        out
    }
}
/// One origin's figures, as `/pools` reports them.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct OriginStats {
    #[serde(skip)]
    pub origin: String,
    /// `http/1.1` (the pool), `h2` (one multiplexed connection) or
    /// `tunnel` (CONNECT tunnels open to this destination).
    pub protocol: &'static str,
    pub idle: usize,
    pub in_use: usize,
    pub connecting: usize,
    pub pending: usize,
    pub opened_total: u64,
    pub reused_total: u64,
    pub oldest_idle_seconds: f64,
    pub effective_idle_timeout_seconds: f64,
    /// HTTP/2: requests in flight on the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams: Option<usize>,
    /// Connects that failed in a row (0 once one succeeds).
    pub connect_failures: u32,
    /// The last failed connect, while the origin is known to the pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// The bounds in effect, for the status page (not part of `/pools`).
    #[serde(skip)]
    pub max_connections_per_host: usize,
    #[serde(skip)]
    pub max_pending_per_host: usize,
    /// The effective idle timeout is one learned from the origin.
    #[serde(skip)]
    pub idle_timeout_learned: bool,
    /// New connections are held back: local ports ran out toward it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ports_short: bool,
    /// The addresses its name resolves to, and connections per address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<super::follow::AddressStats>,
}

/// A failed connect, as `/pools` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LastError {
    /// Its Proxy-Status type.
    pub error: &'static str,
    pub seconds_ago: f64,
}

/// One `upstream` label's pool gauges.
#[derive(Debug, Default)]
pub(crate) struct GaugeRow {
    pub label: String,
    pub idle: usize,
    pub in_use: usize,
    pub connecting: usize,
    pub pending: usize,
}
