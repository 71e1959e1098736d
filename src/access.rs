//! What is recorded about a request once its response has ended.
//!
//! The record travels with the response body: the access-log line and the
//! per-request metrics (`eddy_requests_total`, `eddy_request_duration_seconds`,
//! `eddy_errors_total`) are written when the body is done, so they know the
//! bytes sent and, for a client that left early, whether draining saved the
//! upstream connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;

use crate::metrics::OriginMetrics;

pub struct AccessRecord {
    pub listener: usize,
    pub listener_name: Arc<str>,
    pub client: SocketAddr,
    pub method: Method,
    /// The target as the client asked for it (`host:port`), if known.
    pub host: Option<String>,
    pub status: u16,
    pub started: Instant,
    pub pool_wait: Option<Duration>,
    /// Whether the upstream connection was reused, if one was used.
    pub reused: Option<bool>,
    pub retries: u32,
    /// The Proxy-Status error type and detail, for responses eddy made.
    pub error: Option<(&'static str, String)>,
    pub metrics: Arc<OriginMetrics>,
    pub log: bool,
    pub bytes_out: u64,
}

impl AccessRecord {
    /// The response is over; `drain` says what became of the upstream
    /// connection when the client left early (`reused` or `closed`).
    pub fn finish(self, drain: Option<&'static str>) {
        let elapsed = self.started.elapsed();
        self.metrics.request(self.listener, self.status);
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        if let Some((error, _)) = &self.error {
            self.metrics.error(error);
        }
        if !self.log {
            return;
        }
        let connection = match self.reused {
            Some(true) => "reused",
            Some(false) => "new",
            None => "-",
        };
        tracing::info!(
            target: "eddy::access",
            listener = %self.listener_name,
            client = %self.client,
            method = %self.method,
            host = self.host.as_deref().unwrap_or("-"),
            status = self.status,
            bytes_out = self.bytes_out,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            pool_wait_ms = self.pool_wait.map_or(0.0, |w| w.as_secs_f64() * 1000.0),
            upstream_connection = connection,
            retries = self.retries,
            drain = drain.unwrap_or("-"),
            proxy_status = self.error.as_ref().map_or("-", |e| e.0),
            detail = self.error.as_ref().map_or("", |e| e.1.as_str()),
        );
    }
}
