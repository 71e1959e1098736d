//! What is recorded about each request: one access-log line and the
//! per-request metrics (`eddy_requests_total`, `eddy_request_duration_seconds`,
//! `eddy_errors_total`).
//!
//! A record is created when a request head arrives and written exactly once,
//! when it is dropped. It travels with the response body, so the line knows
//! the bytes sent and, for a client that left early, what draining did for
//! the upstream connection. A request the client abandons before any answer
//! is still written, with status 499 (nginx's "client closed request").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;

use crate::metrics::{Metrics, OriginMetrics, NO_UPSTREAM};

/// The status logged for a request whose client left before the answer.
pub const CLIENT_CLOSED: u16 = 499;

pub struct AccessRecord {
    pub listener: usize,
    pub listener_name: Arc<str>,
    pub client: SocketAddr,
    /// `None` for a head refused before it was parsed.
    pub method: Option<Method>,
    /// The target as the client asked for it (`host:port`), if known.
    pub host: Option<String>,
    /// 0 until the answer is known.
    pub status: u16,
    pub started: Instant,
    /// When the client-facing response ended (before any drain).
    pub ended: Option<Instant>,
    pub pool_wait: Option<Duration>,
    /// Whether the upstream connection was reused, if one was used.
    pub reused: Option<bool>,
    pub retries: u32,
    /// The Proxy-Status error type and detail, for responses eddy made.
    pub error: Option<(&'static str, String)>,
    /// The origin's series; `None` means `upstream="none"`.
    pub origin: Option<Arc<OriginMetrics>>,
    pub bytes_out: u64,
    /// What became of the upstream connection when the client left early.
    pub drain: Option<&'static str>,
    /// Anything else worth a word: a body that failed mid-stream, say.
    pub note: Option<&'static str>,
    metrics: Arc<Metrics>,
    log: bool,
}

impl AccessRecord {
    /// Counts how a retried request's attempt ended under its origin's
    /// `eddy_stale_retries_total`; a first attempt counts nothing.
    pub fn count_retry(&self, succeeded: bool) {
        if let (true, Some(m)) = (self.retries > 0, &self.origin) {
            if succeeded {
                m.retries_succeeded.inc();
            } else {
                m.retries_failed.inc();
            }
        }
    }

    pub fn new(
        listener: usize,
        listener_name: Arc<str>,
        client: SocketAddr,
        method: Option<Method>,
        metrics: Arc<Metrics>,
        log: bool,
    ) -> AccessRecord {
        AccessRecord {
            listener,
            listener_name,
            client,
            method,
            host: None,
            status: 0,
            started: Instant::now(),
            ended: None,
            pool_wait: None,
            reused: None,
            retries: 0,
            error: None,
            origin: None,
            bytes_out: 0,
            drain: None,
            note: None,
            metrics,
            log,
        }
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        if self.status == 0 {
            self.status = CLIENT_CLOSED;
            self.note = self
                .note
                .or(Some("the client closed the request before the answer"));
        }
        let elapsed = self
            .ended
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(self.started);
        let origin = self
            .origin
            .take()
            .unwrap_or_else(|| self.metrics.origin(NO_UPSTREAM));
        origin.request(self.listener, self.status);
        origin.request_duration.observe(elapsed.as_secs_f64());
        if let Some((error, _)) = &self.error {
            origin.error(error);
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
            method = self.method.as_ref().map_or("-", Method::as_str),
            host = self.host.as_deref().unwrap_or("-"),
            status = self.status,
            bytes_out = self.bytes_out,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            pool_wait_ms = self.pool_wait.map_or(0.0, |w| w.as_secs_f64() * 1000.0),
            upstream_connection = connection,
            retries = self.retries,
            drain = self.drain.unwrap_or("-"),
            proxy_status = self.error.as_ref().map_or("-", |e| e.0),
            detail = self
                .error
                .as_ref()
                .map(|e| e.1.as_str())
                .or(self.note)
                .unwrap_or(""),
        );
    }
}
