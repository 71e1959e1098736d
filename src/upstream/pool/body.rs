//! The origin's response body on its way to the client.
//!
//! [`UpstreamBody`] holds the connection's [`Lease`] and is the only place a
//! lease is ended: at end-of-stream the lease's completion rule decides
//! whether the connection goes back to the pool; if the body fails, the
//! connection is closed. If it is dropped early (the client went away or
//! stopped reading), the rest of the body is drained in the background
//! within `drain.max_bytes` and `drain.timeout`: a body that ends in time
//! saves its connection, one that does not closes it. Returning a half-read
//! connection is therefore not expressible.
//!
//! What became of the response (bytes sent, a failure mid-body, its end,
//! the drain's outcome) is reported to an [`Outcome`]: the proxy's access
//! record, which this layer does not know.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::lease::Lease;
use super::CloseReason;

/// What a response body reports about itself. Dropped when the response
/// is over (or its drain is): the place to write what it learned.
pub(crate) trait Outcome: Send + Unpin + 'static {
    /// `n` more body bytes went to the client.
    fn sent(&mut self, n: u64);
    /// The body failed mid-stream (the origin's connection broke).
    fn cut_off(&mut self);
    /// The client-facing response ended (before any drain).
    fn ended(&mut self);
    /// The client left early; the rest of the body was drained and the
    /// connection `reused`, or not.
    fn drained(&mut self, reused: bool);
}

/// Nobody listening (a body drained on its own).
impl Outcome for () {
    fn sent(&mut self, _: u64) {}
    fn cut_off(&mut self) {}
    fn ended(&mut self) {}
    fn drained(&mut self, _: bool) {}
}

/// How much of an abandoned response body eddy reads to save its
/// connection (`[drain]`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DrainLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

/// A response body streaming from the origin, owning the connection's lease.
pub(crate) struct UpstreamBody<O: Outcome = ()> {
    /// `None` only once handed to a drain task.
    inner: Option<Incoming>,
    lease: Option<Lease>,
    drain: DrainLimits,
    /// Told what happens; dropped when the response is over (or its drain
    /// is).
    record: Option<O>,
}

impl<O: Outcome> UpstreamBody<O> {
    pub(crate) fn new(inner: Incoming, lease: Lease, drain: DrainLimits) -> UpstreamBody<O> {
        let mut body = UpstreamBody {
            inner: Some(inner),
            lease: Some(lease),
            drain,
            record: None,
        };
        body.finish_if_done();
        body
    }

    /// Who is told what becomes of the response.
    pub(crate) fn set_record(&mut self, record: O) {
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

impl<O: Outcome> Body for UpstreamBody<O> {
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
                    r.sent(data.len() as u64);
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
                    r.cut_off();
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

impl<O: Outcome> Drop for UpstreamBody<O> {
    fn drop(&mut self) {
        // The client-facing response ends here, whatever a drain does next.
        let mut record = self.record.take();
        if let Some(r) = record.as_mut() {
            r.ended();
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
            r.drained(false);
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
async fn drain<O: Outcome>(
    mut inner: Incoming,
    lease: Lease,
    limits: DrainLimits,
    mut record: Option<O>,
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
        lease.finish_async().await
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
        r.drained(reused);
    }
}
