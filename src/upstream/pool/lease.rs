//! The handles a request holds on the pool, each an RAII type so that the
//! counts stay true whatever fails or is cancelled:
//! - [`WaiterGuard`] removes a waiter that stops waiting from the queue;
//! - [`ConnectPermit`] is a reserved slot; dropped, it frees the slot;
//! - [`Pooled`] is a checked-out connection; its only way forward is
//!   [`Pooled::send`], and dropped it closes the connection;
//! - [`Lease`] is a connection whose response is streaming; only the
//!   response body ends it, and at end-of-stream the completion rule
//!   (`completion`) decides whether the connection goes back.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use std::future::Future;
use tokio::time::timeout;

use super::body::{DrainLimits, UpstreamBody};
use super::completion::{after_wait, AfterResponse, ExchangeEnd};
use super::conn::{persistence, Conn, Probe};
use super::{CloseReason, Pool, Reuse, Route, PROBE_AFTER_IDLE};
use crate::error::{chain, ProxyError};
use crate::metrics::OriginMetrics;
use crate::upstream::origin::Origin;
use crate::upstream::request_body::{ReqBody, RequestProgress, Sending};
use crate::upstream::tls::TlsFailure;

/// What a waiting request is given.
pub(crate) enum Grant {
    Conn(Pooled),
    Permit(ConnectPermit),
}

/// Removes a waiter from its queue when the waiting request stops waiting.
pub(super) struct WaiterGuard<'a> {
    pub(super) pool: &'a Pool,
    pub(super) origin: &'a Origin,
    pub(super) id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        // Removing the sender drops nothing that locks: an unsent grant is
        // never stored in the queue.
        self.pool
            .with_core(|core, _, _| core.stop_waiting(self.origin, self.id));
    }
}

/// A reserved slot for a connection being opened. Dropping it (the connect
/// failed or the request went away) frees the slot for the next waiter.
pub(crate) struct ConnectPermit {
    pub(super) pool: Pool,
    pub(super) route: Route,
    pub(super) armed: bool,
    /// The origin's metric handles, when the core had them at hand.
    pub(super) metrics: Option<Arc<OriginMetrics>>,
}

impl ConnectPermit {
    pub(super) fn new(pool: Pool, route: Route) -> ConnectPermit {
        ConnectPermit {
            pool,
            route,
            armed: true,
            metrics: None,
        }
    }

    /// The origin's handles come along (no look-up when it connects).
    pub(super) fn with_metrics(mut self, metrics: Arc<OriginMetrics>) -> ConnectPermit {
        self.metrics = Some(metrics);
        self
    }

    /// The connection is open: the slot turns from connecting to in use.
    pub(super) fn fulfil(mut self, conn: Conn) -> Pooled {
        self.armed = false;
        self.pool
            .with_core(|core, _, _| core.connected(&self.route.origin));
        self.pool
            .pooled(self.route.origin.clone(), conn, false, Duration::ZERO)
    }
}

impl Drop for ConnectPermit {
    fn drop(&mut self) {
        if self.armed {
            self.pool
                .with_core(|core, deliver, _| core.slot_freed(&self.route.origin, true, deliver));
        }
    }
}

/// A connection checked out to one request. Its only way forward is
/// [`Pooled::send`]; dropping it closes the connection.
pub(crate) struct Pooled {
    pub(super) pool: Pool,
    pub(super) origin: Origin,
    /// `Some` until the connection is returned or closed.
    pub(super) conn: Option<Conn>,
    pub(super) reused: bool,
    /// How long the connection sat idle before this checkout (zero for a
    /// new one or a hand-off); decides the probe ([`Pooled::into_ready`]).
    pub(super) idle_for: Duration,
    /// No request was sent on it and nothing found it broken: dropped like
    /// this (its request's client left while it was handed over or made
    /// ready), it goes back to the pool instead of being closed.
    pub(super) untouched: bool,
    pub(super) close_reason: CloseReason,
    /// How long the request waited in the pool's queue for it.
    pub(super) waited: Duration,
}

impl Pooled {
    /// How long the checkout took: queue time, and for a pooled connection
    /// the lookup and probe (opening a new one is
    /// `eddy_upstream_connect_duration_seconds`).
    pub(crate) fn waited(&self) -> Duration {
        self.waited
    }

    /// Whether this connection had served an earlier request.
    pub(crate) fn is_reused(&self) -> bool {
        self.reused
    }

    /// The address the connection is connected to.
    pub(crate) fn peer(&self) -> Option<std::net::SocketAddr> {
        let ip = self.conn.as_ref()?.peer?;
        Some(std::net::SocketAddr::new(ip, self.origin.dial_host().1))
    }

    /// How long opening the connection took, for a new one.
    pub(crate) fn connect_time(&self) -> Option<Duration> {
        let conn = self.conn.as_ref()?;
        (!self.reused).then_some(conn.connect_took)
    }

    /// Checks a connection before use: the liveness probe for a reused one,
    /// then hyper's readiness (the previous exchange fully processed).
    /// `None` means it was dead and has been discarded.
    ///
    /// The probe runs on a connection that served before when it sat idle
    /// at least [`super::PROBE_AFTER_IDLE`], and always for a request that
    /// cannot be replayed (`reuse` is not `Any`): no stale retry stands
    /// behind that one.
    pub(super) async fn into_ready(mut self, reuse: Reuse, bound: Duration) -> Option<Pooled> {
        let probe = self.reused && (reuse != Reuse::Any || self.idle_for >= PROBE_AFTER_IDLE);
        if probe {
            let mut probe = self.conn.as_ref()?.probe();
            if probe == Ok(Probe::Readable) {
                // Let hyper's task read them (a session ticket is fine; a
                // close_notify or a stray response closes the connection),
                // then look again: bytes still waiting are not to be trusted.
                // Dropped meanwhile, it is closed, not put back unread.
                self.untouched = false;
                tokio::task::yield_now().await;
                probe = match self.conn.as_ref()?.probe() {
                    Ok(Probe::Readable) => Err(CloseReason::Error),
                    other => other,
                };
                self.untouched = probe.is_ok();
            }
            if let Err(reason) = probe {
                self.condemn(reason);
                return None;
            }
        }
        let conn = self.conn.as_mut()?;
        if conn.sender.is_ready() {
            return Some(self);
        }
        let ready = timeout(bound, conn.sender.ready()).await;
        match ready {
            Ok(Ok(())) => Some(self),
            _ => {
                self.condemn(CloseReason::PeerClosed);
                None
            }
        }
    }

    /// Sends the request and waits for the response head, at most
    /// `response_timeout` after the request body was fully handed over. A
    /// body the origin stops taking for `body_idle` ends the wait too (504).
    ///
    /// `progress` is the streamed body's record (`None` for a body read
    /// ahead in full, or none at all); the lease keeps it for the
    /// completion rule.
    ///
    /// If the client goes away while the head is awaited (this future is
    /// dropped), the exchange is adopted: see `Adopt`.
    pub(crate) async fn send(
        mut self,
        req: Request<ReqBody>,
        progress: Option<Arc<RequestProgress>>,
        response_timeout: Duration,
        body_idle: Duration,
        drain: DrainLimits,
    ) -> Result<(Response<Incoming>, Lease), SendFailure> {
        let mut req = req;
        if let Some(uri) = crate::upstream::via::absolute_form(&self.origin, req.uri()) {
            *req.uri_mut() = uri;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(SendFailure::new(terminated(
                &self.origin,
                "connection already closed".into(),
            )));
        };
        conn.requests += 1;
        self.untouched = false;
        if let Some(progress) = &progress {
            // The exchange starts now: the wait for a connection was
            // nobody's stall.
            progress.touch();
        }
        let read_before = conn.bytes_read();
        let response = Box::pin(conn.sender.try_send_request(req));
        let mut adopt = Adopt {
            exchange: Some((self, response)),
            streamed: progress.is_some(),
            drain,
        };
        let head_timer = async {
            if let Some(progress) = &progress {
                if progress.wait_taken(body_idle).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(response_timeout).await;
        };
        let response = std::future::poll_fn(|cx| match adopt.exchange.as_mut() {
            Some((_, response)) => response.as_mut().poll(cx),
            None => std::task::Poll::Pending,
        });
        let outcome = tokio::select! {
            r = response => Some(r),
            _ = head_timer => None,
        };
        let Some((mut this, _)) = adopt.exchange.take() else {
            unreachable!("the exchange is only taken here, once the response future ended");
        };
        let read_after = this.conn.as_ref().map_or(read_before, Conn::bytes_read);
        match outcome {
            None => Err(SendFailure::new(ProxyError::ResponseTimeout {
                origin: this.origin.to_string(),
            })),
            Some(Err(mut e)) => {
                let unsent = e.take_message();
                let error = e.into_error();
                if error.is_user() {
                    // The client's body failed (aborted, stalled, too
                    // slow): the exchange cannot be finished, and nothing
                    // is wrong with the origin.
                    this.condemn(CloseReason::NotDrained);
                }
                // The connection was lost (EOF, reset, broken pipe) before
                // any response byte, on a connection that had served a
                // request or before the request was written.
                let tls_failure = this.conn.as_ref().and_then(Conn::tls_failure);
                let stale = is_connection_lost(&error)
                    && tls_failure.is_none()
                    && read_after == read_before
                    && (this.reused || unsent.is_some());
                // The connection died of a TLS alert (a TLS 1.3 origin
                // refusing eddy's client certificate): that is the error,
                // whatever hyper made of it.
                let error = match (tls_failure, TlsFailure::find(&error)) {
                    (Some(f), None) => {
                        let reason = match f {
                            TlsFailure::Certificate => "the origin ended the TLS session over a certificate (under TLS 1.3, often one it requires from eddy: client_cert, client_key)",
                            TlsFailure::Protocol => "the origin ended the TLS session with an alert",
                        };
                        f.error(this.origin.to_string(), &std::io::Error::other(reason))
                    }
                    _ => classify(&this.origin, &error),
                };
                Err(SendFailure {
                    error,
                    unsent,
                    stale,
                })
            }
            Some(Ok(resp)) => {
                if this.reused && this.idle_for >= super::SURVIVAL_WORTH_NOTING {
                    this.pool.survived(&this.origin, this.idle_for);
                }
                match lease_for(this, &resp, progress, drain.timeout) {
                    Ok(lease) => Ok((resp, lease)),
                    // The connection closes with `this`.
                    Err(this) => Err(SendFailure::new(ProxyError::HttpProtocol {
                        origin: this.origin.to_string(),
                        reason: "conflicting Content-Length and Transfer-Encoding".into(),
                    })),
                }
            }
        }
    }

    /// Closes the connection, counted under `reason`.
    fn discard(mut self, reason: CloseReason) {
        self.condemn(reason);
    }

    /// Marks the connection to be closed, counted under `reason`, when this
    /// handle is dropped.
    pub(super) fn condemn(&mut self, reason: CloseReason) {
        self.untouched = false;
        self.close_reason = reason;
    }

    /// The origin's counters.
    pub(crate) fn metrics(&self) -> Option<Arc<OriginMetrics>> {
        self.conn.as_ref().map(|c| c.metrics.clone())
    }

    /// Trades this connection for a slot to open a new one (a retry must
    /// not go on a connection handed over from another request): the
    /// connection is closed, the slot stays reserved.
    pub(super) fn into_permit(mut self, route: &Route) -> ConnectPermit {
        let conn = self.conn.take();
        self.pool.with_core(|core, _, fx| {
            core.trade_for_permit(&self.origin);
            if let Some(conn) = conn {
                fx.closed.push((conn, CloseReason::Evicted));
            }
        });
        ConnectPermit::new(self.pool.clone(), route.clone())
    }
}

/// The in-flight response of a request whose client may go away.
type ResponseFuture = std::pin::Pin<
    Box<
        dyn Future<Output = Result<Response<Incoming>, TrySendError<Request<ReqBody>>>>
            + Send
            + 'static,
    >,
>;

/// The lease that carries `pooled` through the response body, or `pooled`
/// back if the head's framing is in doubt: hyper lets chunked win over a
/// Content-Length, and a proxy must not relay such a response (response
/// splitting), nor reuse its connection.
// Both variants carry the `Pooled`: boxing the error would only add an
// allocation to the rare path.
#[allow(clippy::result_large_err)]
fn lease_for(
    mut pooled: Pooled,
    resp: &Response<Incoming>,
    progress: Option<Arc<RequestProgress>>,
    await_request: Duration,
) -> Result<Lease, Pooled> {
    let h = resp.headers();
    if h.contains_key(http::header::TRANSFER_ENCODING)
        && h.contains_key(http::header::CONTENT_LENGTH)
    {
        return Err(pooled);
    }
    let (origin_keeps_open, hint) = persistence(resp.version(), h);
    if let (Some(conn), Some(hint)) = (pooled.conn.as_mut(), hint) {
        conn.keepalive_hint = Some(hint);
    }
    Ok(Lease {
        pooled,
        progress,
        origin_keeps_open,
        status: resp.status(),
        await_request,
    })
}

/// Owns an exchange while its response head is awaited. Dropped while
/// still holding it, the client went away before the head (a load tool
/// stopping, an app timing out): the request is on the wire, so closing
/// the connection would waste it and leave a TIME-WAIT socket toward the
/// origin. If the request had no streamed body, the exchange is adopted by
/// a task that waits for the head and drains the body, within the drain
/// limits (`drain.max_bytes`, `drain.timeout`), and the connection goes
/// back to the pool.
struct Adopt {
    exchange: Option<(Pooled, ResponseFuture)>,
    /// The request had a streamed body.
    streamed: bool,
    drain: DrainLimits,
}

impl Drop for Adopt {
    fn drop(&mut self) {
        let Some((pooled, response)) = self.exchange.take() else {
            return;
        };
        // Only requests without a streamed body: for one with, whether the
        // origin answered before reading all of it can no longer be told.
        let runtime = tokio::runtime::Handle::try_current();
        let (false, Ok(runtime)) = (self.streamed, runtime) else {
            return;
        };
        let drain = self.drain;
        runtime.spawn(async move {
            let started = tokio::time::Instant::now();
            match tokio::time::timeout(drain.timeout, response).await {
                Ok(Ok(resp)) => {
                    let lease = match lease_for(pooled, &resp, None, drain.timeout) {
                        Ok(lease) => lease,
                        Err(pooled) => {
                            pooled.discard(CloseReason::Error);
                            return;
                        }
                    };
                    let left = DrainLimits {
                        max_bytes: drain.max_bytes,
                        timeout: drain.timeout.saturating_sub(started.elapsed()),
                    };
                    // Dropped unread: an empty body finishes the lease, any
                    // other is drained by the body's own drain task.
                    drop(UpstreamBody::<()>::new(resp.into_body(), lease, left));
                }
                _ => {
                    if let Some(m) = pooled.metrics() {
                        m.drains_closed.inc();
                    }
                    pooled.discard(CloseReason::NotDrained);
                }
            }
        });
    }
}

/// A request that did not get a response head.
pub(crate) struct SendFailure {
    /// The answer for the client if the request is not sent again.
    pub error: ProxyError,
    /// The request itself when it was never written (hyper hands it back).
    pub unsent: Option<Request<ReqBody>>,
    /// The connection turned out closed before any response byte, and
    /// either had served a request before or never got this one: the
    /// stale-connection case, which a replayable request survives by
    /// going again on a new connection.
    pub stale: bool,
}

impl SendFailure {
    fn new(error: ProxyError) -> SendFailure {
        SendFailure {
            error,
            unsent: None,
            stale: false,
        }
    }
}

/// EOF, reset, broken pipe: the peer was gone, as opposed to a malformed
/// answer, a timeout or our own body failing.
fn is_connection_lost(e: &hyper::Error) -> bool {
    if e.is_user() || e.is_parse() || e.is_timeout() {
        return false;
    }
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        return true;
    }
    chain(e)
        .find_map(|err| err.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::NotConnected
            )
        })
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.untouched {
                self.pool.release(&self.origin, conn);
                return;
            }
            let reason = self.close_reason;
            self.pool.with_core(|core, deliver, fx| {
                fx.closed.push((conn, reason));
                core.slot_freed(&self.origin, false, deliver);
            });
        }
    }
}

/// A connection whose response is streaming to the client. Held by
/// [`crate::upstream::UpstreamBody`], the only code that ends it.
pub(crate) struct Lease {
    pub(super) pooled: Pooled,
    /// The streamed request body's record; `None` when the body was read
    /// ahead in full (or there was none): complete once sent with the head.
    pub(super) progress: Option<Arc<RequestProgress>>,
    /// The origin keeps the connection open after this response.
    pub(super) origin_keeps_open: bool,
    pub(super) status: http::StatusCode,
    /// Longest wait, once the response has ended, for a request body that
    /// is still being sent (`drain.timeout`).
    pub(super) await_request: Duration,
}

impl Lease {
    /// The response body reached its end: the completion rule decides.
    /// When the request body is still on its way, a task waits for it
    /// (bounded) and returns or closes the connection then.
    pub(in crate::upstream) fn finish(self) {
        match self.decide() {
            AfterResponse::AwaitRequest => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(self.await_request());
                }
                Err(_) => {
                    self.apply(AfterResponse::Close(CloseReason::NotDrained));
                }
            },
            decided => {
                self.apply(decided);
            }
        }
    }

    /// [`Lease::finish`], waiting in place; returns whether the connection
    /// went back to the pool.
    pub(in crate::upstream) async fn finish_async(self) -> bool {
        match self.decide() {
            AfterResponse::AwaitRequest => self.await_request().await,
            decided => self.apply(decided),
        }
    }

    fn decide(&self) -> AfterResponse {
        ExchangeEnd {
            origin_keeps_open: self.origin_keeps_open,
            status: self.status,
            streamed: self.progress.is_some(),
            request: self
                .progress
                .as_ref()
                .map_or(Sending::Complete, |p| p.state()),
        }
        .decide()
    }

    async fn await_request(self) -> bool {
        let state = match &self.progress {
            Some(p) => tokio::time::timeout(self.await_request, p.settled())
                .await
                .unwrap_or(Sending::Partial),
            None => Sending::Complete,
        };
        self.apply(after_wait(state))
    }

    /// Carries out a decision; returns whether the connection went back.
    fn apply(mut self, decided: AfterResponse) -> bool {
        match decided {
            AfterResponse::Return => {
                let Some(conn) = self.pooled.conn.take() else {
                    return false;
                };
                let p = &self.pooled;
                p.pool.release(&p.origin, conn)
            }
            AfterResponse::Close(reason) => {
                self.pooled.condemn(reason);
                false
            }
            // Only `finish` and `finish_async` wait; a wait that reached
            // here has run out.
            AfterResponse::AwaitRequest => {
                self.pooled.condemn(CloseReason::NotDrained);
                false
            }
        }
    }

    /// The origin's counters, for the drain outcome.
    pub(in crate::upstream) fn metrics(&self) -> Option<Arc<OriginMetrics>> {
        self.pooled.conn.as_ref().map(|c| c.metrics.clone())
    }

    /// The exchange did not complete: close the connection.
    pub(in crate::upstream) fn close(mut self, reason: CloseReason) {
        self.pooled.condemn(reason);
    }
}

pub(super) fn terminated(origin: &Origin, reason: String) -> ProxyError {
    ProxyError::ConnectionTerminated {
        origin: origin.to_string(),
        reason,
    }
}

/// Maps a failed exchange onto the Proxy-Status table.
pub(super) fn classify(origin: &Origin, e: &hyper::Error) -> ProxyError {
    if e.is_user() {
        // Our request body failed: the client stalled or went away mid-body.
        ProxyError::BadRequest("the request body stalled or was cut off")
    } else if e.is_parse() || e.is_parse_too_large() || e.is_parse_status() {
        ProxyError::HttpProtocol {
            origin: origin.to_string(),
            reason: e.to_string(),
        }
    } else if let Some(tls) = TlsFailure::find(e) {
        // A TLS 1.3 origin refusing eddy's (missing) client certificate.
        tls.error(origin.to_string(), e)
    } else {
        terminated(origin, e.to_string())
    }
}
