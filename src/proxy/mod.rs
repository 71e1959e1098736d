//! One client request's path through eddy:
//! target → route (origin + pool settings) → rewrite → checkout → send →
//! response with the connection's lease in its body.
//!
//! Each stage is a function that makes one decision and fails with a
//! `ProxyError`, which becomes the client's answer; nothing here touches
//! sockets or pool internals directly.

mod exchange;
mod headers;
mod intercept;
mod request_body;
mod retry;
mod router;
mod server;
mod target;
mod tunnel;
mod upgrade;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::VIA;
use http::{HeaderValue, Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub(crate) use headers::strip_hop_by_hop;
pub(crate) use router::Router;
pub(crate) use server::http1_builder;
pub use target::{forward_target, origin_form, Target};

use crate::access::{AccessRecord, BytesIn, Upstream};
use crate::config::{HostPattern, ListenerMode, RetryConfig};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::upstream::h2::InFlight;
use crate::upstream::{DrainLimits, LoopGuard, PaceRule, Pool, ReqBody, UpstreamBody};

/// Held by a tunnel for as long as it relays: whatever the client
/// connection holds (its `max_client_connections` permit, its place in
/// graceful shutdown), so a tunnel counts as an open connection.
pub(crate) type ConnHold = Arc<dyn std::any::Any + Send + Sync>;

/// What a listener's requests share.
#[derive(Clone)]
pub(crate) struct ListenerCtx {
    /// Position in the configuration (indexes per-listener metric series).
    pub index: usize,
    pub name: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub mode: ListenerMode,
    /// For route listeners: where every request goes.
    pub route_target: Option<Target>,
    pub router: Arc<Router>,
    pub pool: Pool,
    pub loop_guard: Arc<LoopGuard>,
    /// How fast a request body must arrive (the listener's
    /// `client_idle_timeout`, `client_body_timeout`, `client_body_min_rate`).
    pub body_pace: PaceRule,
    /// Request bodies up to this size are read before a connection is taken
    /// (`client_body_buffer`).
    pub body_buffer: usize,
    /// `preserve_header_case`: off, the origin's header case is dropped
    /// too (the upstream side always records it).
    pub preserve_header_case: bool,
    pub retry: RetryConfig,
    pub drain: DrainLimits,
    /// Ports CONNECT may tunnel to (`security.connect_ports`).
    pub connect_ports: Vec<u16>,
    /// `security.allow_hosts`; empty means any host.
    pub allow_hosts: Vec<HostPattern>,
    /// This process's `Via` entry (`1.1 eddy-<token>`): added to requests
    /// eddy forwards, and a request that already carries it has looped.
    pub via: HeaderValue,
    pub tunnels: prometheus::IntCounter,
    pub tunnels_open: prometheus::IntGauge,
    pub access_log: bool,
    /// `[tls_intercept]`: CONNECT tunnels to its hosts are terminated here.
    pub intercept: Option<Arc<crate::intercept::Interceptor>>,
    /// The listener's limits on request heads, for the connections eddy
    /// serves inside intercepted tunnels (plain ones get them from the
    /// listener's own connection task).
    pub heads: HeadLimits,
    /// Fired when eddy starts shutting down: intercepted connections stop
    /// taking requests.
    pub shutdown: crate::shutdown::ShutdownSignal,
}

/// A listener's limits on client request heads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadLimits {
    /// `client_header_timeout`.
    pub timeout: std::time::Duration,
    /// `max_header_bytes`.
    pub max_bytes: usize,
    /// `max_headers`.
    pub max_fields: usize,
}

/// A listener's [`ListenerCtx`], replaced whole by a configuration reload.
/// Each request reads the one current when it arrives and keeps it to the
/// end, so an exchange never sees half of an old and half of a new
/// configuration.
pub(crate) struct ListenerSlot(std::sync::RwLock<Arc<ListenerCtx>>);

impl ListenerSlot {
    pub(crate) fn new(ctx: ListenerCtx) -> ListenerSlot {
        ListenerSlot(std::sync::RwLock::new(Arc::new(ctx)))
    }

    pub(crate) fn current(&self) -> Arc<ListenerCtx> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn replace(&self, ctx: ListenerCtx) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ctx);
    }
}

/// Whether any `Via` entry is this process's own.
fn carries_via(headers: &http::HeaderMap, own: &HeaderValue) -> bool {
    let Ok(own) = own.to_str() else { return false };
    let token = own.rsplit(' ').next().unwrap_or(own);
    headers
        .get_all(VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|entry| entry.split_whitespace().nth(1) == Some(token))
}

/// A `Via` entry unique to this process.
pub(crate) fn via_entry() -> HeaderValue {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    HeaderValue::from_str(&format!("1.1 eddy-{:08x}", mixed >> 32))
        .unwrap_or_else(|_| HeaderValue::from_static("1.1 eddy"))
}

impl ListenerCtx {
    /// `security.allow_hosts`: when set, only those hosts may be reached.
    pub(crate) fn check_allowed(&self, host: &str) -> Result<(), ProxyError> {
        if self.allow_hosts.is_empty() || self.allow_hosts.iter().any(|p| p.matches(host)) {
            Ok(())
        } else {
            Err(ProxyError::Denied(
                "the host is not in security.allow_hosts",
            ))
        }
    }
}

/// The body of a response to the client: relayed from an origin, or made by
/// eddy itself.
// Nearly every response is `Upstream`; boxing it to shrink the rare
// `Full` case would add an allocation to every proxied response.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ProxyBody {
    Upstream(UpstreamBody<AccessRecord>),
    Full(Option<Bytes>),
    /// A body from a connection that is not the HTTP/1 pool's: a shared
    /// HTTP/2 connection, or a dedicated one.
    Direct(DirectBody),
}

/// A response body relayed as it comes, counting what it sends for the
/// access record, which it writes when the body ends or is dropped.
pub(crate) struct DirectBody {
    inner: Incoming,
    record: Option<AccessRecord>,
    /// An HTTP/2 stream, counted until the body ends.
    in_flight: Option<InFlight>,
}

impl DirectBody {
    fn new(inner: Incoming) -> DirectBody {
        DirectBody {
            inner,
            record: None,
            in_flight: None,
        }
    }
}

impl Drop for DirectBody {
    fn drop(&mut self) {
        if let Some(r) = self.record.as_mut() {
            r.ended.get_or_insert_with(std::time::Instant::now);
        }
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(r) = this.record.as_mut() {
            match &frame {
                Some(Ok(f)) => r.bytes_out += f.data_ref().map_or(0, |d| d.len() as u64),
                Some(Err(_)) => r.cut_off = true,
                None => {}
            }
            if frame.is_none() || this.inner.is_end_stream() {
                r.ended.get_or_insert_with(std::time::Instant::now);
            }
        }
        if frame.is_none() || this.inner.is_end_stream() {
            this.in_flight = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl From<Bytes> for ProxyBody {
    fn from(b: Bytes) -> Self {
        ProxyBody::Full(Some(b))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Direct(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Direct(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Direct(b) => b.size_hint(),
        }
    }
}

/// Serves one client request; never fails (errors become responses).
pub(crate) async fn handle(
    req: Request<Incoming>,
    ctx: &ListenerCtx,
    client: SocketAddr,
    hold: &ConnHold,
) -> Response<ProxyBody> {
    // Written when dropped: also if this future is dropped because the
    // client went away before the answer.
    let mut record = new_record(&req, ctx, client);
    let result = if req.method() == Method::CONNECT && ctx.mode == ListenerMode::Forward {
        // Rare paths are boxed so the common request future stays small:
        // hyper moves it into place, and every byte of it is copied.
        Box::pin(tunnel::connect(req, ctx, &mut record, client, hold)).await
    } else {
        proxy(req, ctx, &mut record, hold).await
    };
    respond(result, record)
}

/// Serves one request read from an intercepted tunnel: as [`handle`],
/// but never a tunnel of its own (a CONNECT inside is refused by the
/// route context), which also keeps this future from containing itself.
pub(crate) async fn handle_intercepted(
    req: Request<Incoming>,
    ctx: &ListenerCtx,
    client: SocketAddr,
    hold: &ConnHold,
) -> Response<ProxyBody> {
    let mut record = new_record(&req, ctx, client);
    let result = proxy(req, ctx, &mut record, hold).await;
    respond(result, record)
}

/// The access record a request starts with.
fn new_record(req: &Request<Incoming>, ctx: &ListenerCtx, client: SocketAddr) -> AccessRecord {
    let mut record = AccessRecord::new(
        ctx.index,
        ctx.name.clone(),
        client,
        Some(req.method().clone()),
        ctx.metrics.clone(),
        ctx.access_log,
    );
    if req.method() != Method::CONNECT {
        // A clone of the URI's own bytes (a reference count), not a copy.
        record.path = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
    }
    record
}

/// The response for `result`, carrying `record` to be written when the
/// body ends.
fn respond(
    result: Result<Response<ProxyBody>, ProxyError>,
    mut record: AccessRecord,
) -> Response<ProxyBody> {
    let mut response = match result {
        Ok(resp) => resp,
        Err(e) => {
            // Logged (throttled) and counted when the record is written.
            record.error = Some((e.proxy_status(), e.to_string()));
            e.to_response()
        }
    };
    record.status = response.status().as_u16();
    match response.body_mut() {
        ProxyBody::Upstream(body) => body.set_record(record),
        ProxyBody::Full(b) => {
            record.bytes_out = b.as_ref().map_or(0, |b| b.len() as u64);
            record.ended = Some(std::time::Instant::now());
        }
        ProxyBody::Direct(body) => body.record = Some(record),
    }
    response
}

async fn proxy(
    req: Request<Incoming>,
    ctx: &ListenerCtx,
    record: &mut AccessRecord,
    hold: &ConnHold,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    if parts.method == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT is only served by forward listeners",
        ));
    }
    let target = match (&ctx.mode, &ctx.route_target) {
        (ListenerMode::Route, Some(t)) => t.clone(),
        _ => forward_target(&parts.uri)?,
    };
    if ctx.loop_guard.is_own_target(&target.host, target.port) {
        return Err(ProxyError::Loop(format!("{}:{}", target.host, target.port)));
    }
    if carries_via(&parts.headers, &ctx.via) {
        return Err(ProxyError::Loop(format!("{} (Via)", target.authority)));
    }
    if ctx.mode == ListenerMode::Forward {
        ctx.check_allowed(&target.host)?;
    }
    if upgrade::is_upgrade(&parts.headers) {
        let req = Request::from_parts(parts, body);
        return Box::pin(upgrade::relay(req, target, ctx, record, hold)).await;
    }
    let route = ctx.router.route(&target);
    record.upstream = Some(Upstream::Origin(route.origin.clone()));
    headers::rewrite_for_upstream(&mut parts, &target.authority, &ctx.via)?;
    record.host = Some(target.authority);

    // eddy reads the body itself, so it meets a `100-continue`
    // expectation here: hyper answers the client as the body is read.
    request_body::take_continue(&mut parts.headers);
    // A body is read ahead up to `client_body_buffer`, and further, up to
    // `retry_body_buffer`, where that makes a replay possible: idempotent
    // requests, and any request to an HTTP/2 origin, which may refuse a
    // stream unprocessed (REFUSED_STREAM, GOAWAY) whatever its method.
    let replayable = ctx.retry.stale_retries > 0
        && (route.http2 || exchange::idempotent(&parts.method, &parts.headers));
    let limit = if replayable {
        ctx.body_buffer.max(ctx.retry.retry_body_buffer.as_usize())
    } else {
        ctx.body_buffer
    };
    let (body, progress) = match request_body::read_ahead(body, limit, ctx.body_pace).await {
        Ok(b) => b,
        Err(e) => {
            record.origin = Some(ctx.metrics.origin(route.origin.as_str()));
            return Err(e);
        }
    };
    record.bytes_in = match (&body, &progress) {
        (_, Some(p)) => BytesIn::Streamed(p.clone()),
        (ReqBody::Full(Some(b)), None) => BytesIn::Known(b.len() as u64),
        _ => BytesIn::None,
    };
    if !route.http2 {
        request_body::frame_unknown_length(&mut parts.headers, &body);
    }
    let upstream_req = Request::from_parts(parts, body);
    if route.http2 {
        // A stream on the origin's connection from now until the response
        // body ends (`/pools`, the gauges).
        let in_flight = ctx.pool.h2_in_flight(&route.origin);
        let sent = Box::pin(exchange::send_h2(
            &ctx.pool,
            &route,
            upstream_req,
            &ctx.retry,
            record,
        ))
        .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                // Failed before a connection: counted all the same.
                record
                    .origin
                    .get_or_insert_with(|| ctx.metrics.origin(route.origin.as_str()));
                return Err(e);
            }
        };
        let (mut parts, incoming) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;
        let mut body = DirectBody::new(incoming);
        body.in_flight = Some(in_flight);
        return Ok(Response::from_parts(parts, ProxyBody::Direct(body)));
    }

    let sent = exchange::send_with_retry(ctx, &route, upstream_req, progress.clone(), record).await;
    let (response, lease) = match sent {
        Ok(exchanged) => exchanged,
        Err(e) => {
            // Failed before any connection (refused, DNS, queue full):
            // counted for the origin all the same.
            record
                .origin
                .get_or_insert_with(|| ctx.metrics.origin(route.origin.as_str()));
            return Err(e);
        }
    };
    let (mut parts, incoming) = response.into_parts();
    if !ctx.preserve_header_case {
        // The case hyper recorded for the origin's names lives here.
        parts.extensions.clear();
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    let body = UpstreamBody::new(incoming, lease, ctx.drain);
    if let Some(progress) = &progress {
        request_body::let_upload_finish(progress, parts.status, ctx.drain.timeout).await;
    }
    Ok(Response::from_parts(parts, ProxyBody::Upstream(body)))
}
