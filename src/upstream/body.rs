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
//! body is dropped early (the client went away) or fails, the connection is
//! closed. Returning a half-read connection is therefore not expressible.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::pool::{CloseReason, Lease};

/// Set once the request body has been handed to hyper in full.
#[derive(Debug, Default)]
pub struct BodyDone {
    done: AtomicBool,
    notify: Notify,
}

impl BodyDone {
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
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
    Stream {
        inner: Incoming,
        done: Arc<BodyDone>,
        idle_timeout: Duration,
        /// Fires when the client has been silent for `idle_timeout` while
        /// hyper waits for more body.
        idle: Pin<Box<Sleep>>,
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
        let done = Arc::new(BodyDone::default());
        let body = ReqBody::Stream {
            inner,
            done: done.clone(),
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
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
            ReqBody::Stream {
                inner,
                done,
                idle_timeout,
                idle,
            } => {
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
            ReqBody::Stream { inner, done, .. } => {
                let end = inner.is_end_stream();
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
            ReqBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// A response body streaming from the origin, owning the connection's lease.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, lease: Lease) -> UpstreamBody {
        let mut body = UpstreamBody {
            inner,
            lease: Some(lease),
        };
        body.finish_if_done();
        body
    }

    fn finish_if_done(&mut self) {
        if self.inner.is_end_stream() {
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
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(_)) => this.finish_if_done(),
            None => {
                if let Some(lease) = this.lease.take() {
                    lease.finish();
                }
            }
            Some(Err(_)) => {
                if let Some(lease) = this.lease.take() {
                    lease.close(CloseReason::Error);
                }
            }
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

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            if self.inner.is_end_stream() {
                lease.finish();
            } else {
                // The client stopped reading mid-body. Draining arrives with
                // SPEC section 6; until then the connection cannot be reused.
                lease.close(CloseReason::NotDrained);
            }
        }
    }
}
