//! The two bodies that cross the upstream connection.
//!
//! [`ReqBody`] carries the client's request body upstream and records when
//! hyper has consumed all of it: a connection is reusable only if the request
//! was fully written, and `response_header_timeout` starts only then. A body
//! that stops arriving fails after an inactivity timeout, so a stalled client
//! cannot hold an upstream connection (a slot of a bounded pool) forever.
//!
//! [`UpstreamBody`] carries the origin's response body to the client and
//! holds the connection's [`Lease`]. It is the only place a lease is
//! completed: at end-of-stream the connection goes back to the pool; if the
//! body fails, the connection is closed. If it is dropped early (the client
//! went away or stopped reading), the rest of the body is drained in the
//! background within `drain.max_bytes` and `drain.timeout` (SPEC section
//! 6): a body that ends in time saves its connection, one that does not
//! closes it. Returning a half-read connection is therefore not expressible.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::pool::{CloseReason, Lease};
use crate::access::AccessRecord;

/// Progress of a request body being sent: when hyper last took a piece of
/// it, and whether it has taken all of it.
#[derive(Debug)]
pub struct BodyDone {
    done: AtomicBool,
    notify: Notify,
    epoch: Instant,
    /// Milliseconds after `epoch` at which hyper last took a frame.
    last_progress_ms: AtomicU64,
}

impl Default for BodyDone {
    fn default() -> Self {
        BodyDone {
            done: AtomicBool::new(false),
            notify: Notify::new(),
            epoch: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
        }
    }
}

impl BodyDone {
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_progress_ms.store(ms, Ordering::Relaxed);
    }

    /// When hyper last took a piece of the body (or the body was created).
    pub fn last_progress(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed))
    }

    /// Resolves when the body is complete, or fails once it has made no
    /// progress for `idle`: an origin that stops reading the upload must not
    /// hold the exchange (and its pool slot) for ever.
    pub async fn wait_progress(&self, idle: Duration) -> Result<(), BodyStalled> {
        loop {
            let notified = self.notify.notified();
            if self.is_done() {
                return Ok(());
            }
            let deadline = self.last_progress() + idle;
            if Instant::now() >= deadline {
                return Err(BodyStalled(idle));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn set(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    /// Resolves once the body is complete.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }
}

/// Errors a request body can end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The client sent no body bytes for the inactivity timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes for {0:?}")]
pub struct BodyStalled(pub Duration);

/// A request body on its way upstream.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    /// A body read in full before sending, so it can be replayed.
    Full(Option<Bytes>),
    Stream {
        /// Bytes already read while trying to buffer the body.
        prefix: Option<Bytes>,
        inner: Incoming,
        done: Arc<BodyDone>,
        idle_timeout: Duration,
        /// Fires when the client has been silent for `idle_timeout` while
        /// hyper waits for more body; armed at the first poll.
        idle: Pin<Box<Sleep>>,
        polled: bool,
    },
}

impl ReqBody {
    /// Wraps a client body; `None` for the completion flag when there is no
    /// body at all (the common GET), so nothing is allocated for it.
    pub fn from_incoming(
        inner: Incoming,
        idle_timeout: Duration,
    ) -> (ReqBody, Option<Arc<BodyDone>>) {
        if inner.is_end_stream() {
            return (ReqBody::Empty, None);
        }
        ReqBody::stream(None, inner, idle_timeout)
    }

    /// A streamed body whose first bytes (`prefix`) were already read.
    pub fn stream(
        prefix: Option<Bytes>,
        inner: Incoming,
        idle_timeout: Duration,
    ) -> (ReqBody, Option<Arc<BodyDone>>) {
        let done = Arc::new(BodyDone::default());
        let body = ReqBody::Stream {
            prefix,
            inner,
            done: done.clone(),
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            polled: false,
        };
        (body, Some(done))
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ReqBody::Stream {
                prefix,
                inner,
                done,
                idle_timeout,
                idle,
                polled,
            } => {
                if !*polled {
                    // Time spent waiting for a connection is not the
                    // client's silence.
                    *polled = true;
                    idle.as_mut().reset(Instant::now() + *idle_timeout);
                }
                done.touch();
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                let frame = match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        ready!(idle.as_mut().poll(cx));
                        return Poll::Ready(Some(Err(BodyStalled(*idle_timeout).into())));
                    }
                };
                idle.as_mut().reset(Instant::now() + *idle_timeout);
                match &frame {
                    None => done.set(),
                    Some(Ok(_)) if inner.is_end_stream() => done.set(),
                    _ => {}
                }
                Poll::Ready(frame.map(|r| r.map_err(BodyError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(data) => data.is_none(),
            ReqBody::Stream {
                prefix,
                inner,
                done,
                ..
            } => {
                let end = prefix.is_none() && inner.is_end_stream();
                if end {
                    done.set();
                }
                end
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReqBody::Stream { prefix, inner, .. } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let mut hint = inner.size_hint();
                hint.set_lower(hint.lower() + extra);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

/// How much of an abandoned response body eddy reads to save its
/// connection (`[drain]`).
#[derive(Clone, Copy, Debug)]
pub struct DrainLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

/// A response body streaming from the origin, owning the connection's lease.
pub struct UpstreamBody {
    /// `None` only once handed to a drain task.
    inner: Option<Incoming>,
    lease: Option<Lease>,
    drain: DrainLimits,
    /// Finished when the response is over (or its drain is).
    record: Option<AccessRecord>,
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, lease: Lease, drain: DrainLimits) -> UpstreamBody {
        let mut body = UpstreamBody {
            inner: Some(inner),
            lease: Some(lease),
            drain,
            record: None,
        };
        body.finish_if_done();
        body
    }

    /// What to log and count once the response is over.
    pub fn set_record(&mut self, record: AccessRecord) {
        self.record = Some(record);
    }

    fn at_end(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn finish_if_done(&mut self) {
        if self.at_end() {
            if let Some(lease) = self.lease.take() {
                lease.finish();
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(r), Some(data)) = (this.record.as_mut(), f.data_ref()) {
                    r.bytes_out += data.len() as u64;
                }
                this.finish_if_done();
            }
            None => {
                if let Some(lease) = this.lease.take() {
                    lease.finish();
                }
            }
            Some(Err(_)) => {
                if let Some(lease) = this.lease.take() {
                    lease.close(CloseReason::Error);
                }
                if let Some(r) = this.record.as_mut() {
                    r.note = Some("the response body failed mid-stream");
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.at_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // The client-facing response ends here, whatever a drain does next.
        let mut record = self.record.take();
        if let Some(r) = record.as_mut() {
            r.ended = Some(std::time::Instant::now());
        }
        let Some(lease) = self.lease.take() else {
            return;
        };
        if self.at_end() {
            lease.finish();
            return;
        }
        // The client went away or stopped reading mid-body: read the rest
        // into the void, within the drain limits, to save the connection.
        if let Some(r) = record.as_mut() {
            // What the record says if the drain never gets to run.
            r.drain = Some("closed");
        }
        let (Some(inner), Ok(runtime)) = (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            lease.close(CloseReason::NotDrained);
            return;
        };
        runtime.spawn(drain(inner, lease, self.drain, record));
    }
}

/// Reads and discards the rest of a body; returns the connection to the pool
/// if the body ends within the limits, closes it otherwise.
async fn drain(
    mut inner: Incoming,
    lease: Lease,
    limits: DrainLimits,
    mut record: Option<AccessRecord>,
) {
    let metrics = lease.metrics();
    let deadline = Instant::now() + limits.timeout;
    let mut read: u64 = 0;
    let ended = loop {
        if inner.is_end_stream() {
            break true;
        }
        match tokio::time::timeout_at(deadline, inner.frame()).await {
            Ok(None) => break true,
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                    if read > limits.max_bytes {
                        break false;
                    }
                }
            }
            Ok(Some(Err(_))) | Err(_) => break false,
        }
    };
    let reused = if ended {
        lease.finish()
    } else {
        lease.close(CloseReason::NotDrained);
        false
    };
    tracing::debug!(bytes = read, reused, "drained an abandoned response body");
    if let Some(m) = metrics {
        if reused {
            m.drains_reused.inc();
        } else {
            m.drains_closed.inc();
        }
    }
    if let Some(r) = record.as_mut() {
        r.drain = Some(if reused { "reused" } else { "closed" });
    }
}
