//! What is recorded about each request: one access-log line, the
//! per-request metrics (`eddy_requests_total`, `eddy_request_duration_seconds`,
//! `eddy_errors_total`), and a warn line for a failure.
//!
//! A record is created when a request head arrives and written exactly once,
//! when it is dropped. It travels with the response body, so the line knows
//! the bytes sent and, for a client that left early, what draining did for
//! the upstream connection. A request the client abandons before any answer
//! is still written, with status 499 (nginx's "client closed request").
//!
//! The line is one event whose fields are the record: in JSON (with
//! `log.format = "json"`) one flat object. A field with no value (no
//! upstream for a refused request, no connect time on a reused connection)
//! is left out rather than written as a placeholder, and times are
//! milliseconds rounded to the microsecond, so both formats read as numbers.
//!
//! A failure (an answer eddy made itself, a response cut off mid-body) is
//! also written at `warn` under the `eddy::failure` target whether or not
//! the access log is on, throttled per origin and kind (see
//! `failures`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;

use crate::failures::Admit;
use crate::metrics::{Metrics, OriginMetrics, NO_UPSTREAM};
use crate::upstream::{Origin, Outcome, RequestProgress};

/// The status logged for a request whose client left before the answer.
pub(crate) const CLIENT_CLOSED: u16 = 499;

/// Longest path and query written to the log; longer ones are cut and end
/// in `...`.
pub(crate) const MAX_LOGGED_PATH: usize = 1024;

/// A path and query as the log shows it: cut at [`MAX_LOGGED_PATH`].
fn logged_path(full: &str) -> std::borrow::Cow<'_, str> {
    if full.len() <= MAX_LOGGED_PATH {
        return full.into();
    }
    // A URI is ASCII, but cut at a character boundary all the same.
    let mut end = MAX_LOGGED_PATH - 3;
    while !full.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &full[..end]).into()
}

/// Where a request went.
#[derive(Clone)]
pub(crate) enum Upstream {
    /// An origin, logged as `scheme://host:port`.
    Origin(Origin),
    /// A CONNECT tunnel's destination, logged as `tcp://host:port`.
    Tunnel(Arc<str>),
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Origin(o) => f.write_str(o.as_str()),
            Upstream::Tunnel(t) => f.write_str(t),
        }
    }
}

/// The request body's size, as far as it is known.
pub(crate) enum BytesIn {
    /// No body, or not read (the request failed first).
    None,
    /// Read whole before the request went upstream.
    Known(u64),
    /// Streamed: what arrived by the time the line is written.
    Streamed(Arc<RequestProgress>),
}

impl BytesIn {
    fn get(&self) -> u64 {
        match self {
            BytesIn::None => 0,
            BytesIn::Known(n) => *n,
            BytesIn::Streamed(p) => p.received(),
        }
    }
}

/// Milliseconds, rounded to the microsecond: `12.345`, never
/// `12.345000000000001`.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub(crate) struct AccessRecord {
    pub listener: usize,
    pub listener_name: Arc<str>,
    pub client: SocketAddr,
    /// `None` for a head refused before it was parsed.
    pub method: Option<Method>,
    /// The target as the client asked for it (`host:port`), if known.
    pub host: Option<String>,
    /// The request's path and query (a reference into the request's own
    /// bytes, not a copy); cut at [`MAX_LOGGED_PATH`] when written.
    pub path: Option<http::uri::PathAndQuery>,
    /// Where the request went: an origin, or a tunnel's destination.
    pub upstream: Option<Upstream>,
    /// The address eddy's upstream connection is connected to.
    pub peer: Option<SocketAddr>,
    /// How long opening the upstream connection took (a new one only).
    pub connect: Option<Duration>,
    /// When the upstream's response head arrived.
    pub first_byte: Option<Instant>,
    /// The request body's bytes, as received from the client.
    pub bytes_in: BytesIn,
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
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// The response body failed mid-stream (the origin's connection broke).
    pub cut_off: bool,
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
    pub(crate) fn count_retry(&self, succeeded: bool) {
        if let (true, Some(m)) = (self.retries > 0, &self.origin) {
            if succeeded {
                m.retries_succeeded.inc();
            } else {
                m.retries_failed.inc();
            }
        }
    }

    pub(crate) fn new(
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
            path: None,
            upstream: None,
            peer: None,
            connect: None,
            first_byte: None,
            bytes_in: BytesIn::None,
            status: 0,
            started: Instant::now(),
            ended: None,
            pool_wait: None,
            reused: None,
            retries: 0,
            error: None,
            origin: None,
            bytes_out: 0,
            cut_off: false,
            drain: None,
            note: None,
            metrics,
            log,
        }
    }
}

/// The response body's reports, written into the record.
impl Outcome for AccessRecord {
    fn sent(&mut self, n: u64) {
        self.bytes_out += n;
    }
    fn cut_off(&mut self) {
        self.cut_off = true;
        self.note = Some("the response body failed mid-stream");
    }
    fn ended(&mut self) {
        self.ended = Some(Instant::now());
    }
    fn drained(&mut self, reused: bool) {
        self.drain = Some(if reused { "reused" } else { "closed" });
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
        let end = self.ended.unwrap_or_else(Instant::now);
        let elapsed = end.saturating_duration_since(self.started);
        let origin = self
            .origin
            .take()
            .unwrap_or_else(|| self.metrics.origin(NO_UPSTREAM));
        origin.request(self.listener, self.status);
        origin.request_duration.observe(elapsed.as_secs_f64());
        let failure = match &self.error {
            Some((error, _)) => Some(origin.failed(error, "request")),
            None if self.cut_off => Some(origin.throttle("connection_terminated", "response body")),
            None => None,
        };
        if let Some(Admit::Write { suppressed }) = failure {
            self.warn(&origin, suppressed);
        }
        if !self.log {
            return;
        }
        let connection = self.reused.map(|r| if r { "reused" } else { "new" });
        let ttfb = self
            .first_byte
            .map(|at| ms(at.saturating_duration_since(self.started)));
        tracing::info!(
            target: "eddy::access",
            listener = %self.listener_name,
            client = %self.client,
            method = self.method.as_ref().map(Method::as_str),
            host = self.host.as_deref(),
            path = self.path.as_ref().map(|p| logged_path(p.as_str())).as_deref(),
            status = self.status,
            upstream = self.upstream.as_ref().map(tracing::field::display),
            peer = self.peer.map(tracing::field::display),
            upstream_connection = connection,
            retries = self.retries,
            drain = self.drain,
            proxy_status = self.error.as_ref().map(|e| e.0),
            detail = self.error.as_ref().map(|e| e.1.as_str()).or(self.note),
            bytes_in = self.bytes_in.get(),
            bytes_out = self.bytes_out,
            pool_wait_ms = self.pool_wait.map(ms),
            connect_ms = self.connect.map(ms),
            ttfb_ms = ttfb,
            duration_ms = ms(elapsed),
        );
    }
}

impl AccessRecord {
    /// The failure's warn line; `suppressed` like it were left out before.
    fn warn(&self, origin: &OriginMetrics, suppressed: u64) {
        let (error, detail) = match &self.error {
            Some((e, d)) => (*e, d.as_str()),
            None => (
                "connection_terminated",
                "the response body failed mid-stream",
            ),
        };
        let upstream = match &self.upstream {
            Some(u) => u.to_string(),
            None => origin.label.clone(),
        };
        tracing::warn!(
            target: "eddy::failure",
            upstream = %upstream,
            error,
            status = self.status,
            listener = %self.listener_name,
            client = %self.client,
            method = self.method.as_ref().map(Method::as_str),
            path = self.path.as_ref().map(|p| logged_path(p.as_str())).as_deref(),
            peer = self.peer.map(tracing::field::display),
            detail,
            suppressed,
            "{}",
            if self.error.is_some() { "request failed" } else { "response cut off" }
        );
    }
}
