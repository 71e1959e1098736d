//! Serving one client connection: hyper's HTTP/1 server over the watched
//! socket, calling the proxy for each request, until the client leaves, a
//! timeout fires or shutdown asks the connection to finish.
//!
//! Why hyper comes and goes: a keep-alive client spends most of its life
//! idle, and hyper's connection keeps 16 KiB or more of buffers the whole
//! time. So the connection task alternates between two states. *Waiting*:
//! the socket, the timer and the shutdown signal, nothing else (about
//! 1.3 KiB in all). *Exchanging*: a hyper connection, boxed, built when
//! bytes arrive and dropped once [`Activity::park_at`] says it can lose
//! nothing (no request in flight, every byte read answered, the response
//! written), 10 ms after a response (a kept-alive client under load keeps
//! it). Legacy clients, one request per connection, never park: hyper
//! closes first.
//!
//! Why the connection task polls hyper by hand instead of just awaiting it:
//! three things end a connection besides hyper itself, and they must be
//! checked between hyper's polls without costing anything per connection
//! in the common case. The timeout is one timer, re-armed from the
//! connection's [`Activity`] at its deadline or at the moment to park,
//! whichever comes first. Shutdown (and a refused pipelined head, which
//! asks to close after the earlier requests) turns into hyper's graceful
//! shutdown, so requests in flight are answered before the close. And only
//! a connection that waits for its next request registers with the
//! shutdown signal (a list every connection shares, behind one lock): the
//! registration stays for the connection's life and wakes its task, so
//! while exchanging it only looks at the signal's flag, and a connection
//! whose request was already there when it started never registers.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::io::WatchedIo;
use super::socket::ClientStream;
use super::timeouts::{Activity, BusyGuard};
use crate::proxy::{self, ConnHold, ListenerSlot, ProxyBody};
use crate::shutdown::ShutdownSignal;

/// Limits every connection of one listener shares.
pub(super) struct ClientLimits {
    pub(super) header_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) max_header_bytes: usize,
    pub(super) max_headers: usize,
}

pub(super) struct ClientConn {
    pub(super) hold: ConnHold,
    /// Read per request, so a reload applies to the next request on a
    /// keep-alive connection too.
    pub(super) slot: Arc<ListenerSlot>,
    pub(super) limits: Arc<ClientLimits>,
    pub(super) builder: Arc<http1::Builder>,
    pub(super) shutdown: ShutdownSignal,
}

impl ClientConn {
    pub(super) async fn serve(self, mut stream: ClientStream, peer: SocketAddr) {
        let activity = Arc::new(Activity::new(
            self.limits.header_timeout,
            self.limits.idle_timeout,
        ));
        let mut stop = pin!(self.shutdown.wait());
        let sleep = pin!(tokio::time::sleep_until(
            activity.instant(activity.deadline_ms())
        ));
        let mut timer = Timer {
            armed: activity.deadline_ms(),
            sleep,
        };
        let end = loop {
            // Waiting for a request: the socket alone, no HTTP state.
            let waited = poll_fn(|cx| {
                if let Poll::Ready(r) = stream.poll_read_ready(cx) {
                    return Poll::Ready(r.map_or(Some(End::Closed), |()| None));
                }
                // `stop` is polled only after `is_fired` said no: a wait that
                // has completed is never polled again.
                if self.shutdown.is_fired() || stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(End::Closed));
                }
                timer
                    .poll_until(cx, &activity, None)
                    .map(|()| Some(End::TimedOut))
            })
            .await;
            if let Some(end) = waited {
                break end;
            }
            activity.unpark();
            // Boxed: a parked connection's task should not keep room for
            // the exchange's state.
            match Box::pin(self.exchange(stream, &activity, peer, &mut timer)).await {
                End::Parked(s) => stream = s,
                end => break end,
            }
        };
        if matches!(end, End::TimedOut) {
            tracing::debug!(%peer, listener = %self.slot.current().name, "client connection timed out");
        }
    }

    /// Serves requests with hyper until the connection parks between two of
    /// them, ends, or times out. hyper and its buffers live (boxed) only
    /// here, so a connection waiting for its next request holds none of
    /// them.
    async fn exchange(
        &self,
        stream: ClientStream,
        activity: &Arc<Activity>,
        peer: SocketAddr,
        timer: &mut Timer<'_>,
    ) -> End {
        // Built in a block, so that the service and the socket wrapper,
        // moved into the box, take no room in this future while it waits.
        let mut conn = {
            let slot = self.slot.clone();
            let svc_activity = activity.clone();
            let hold = self.hold.clone();
            let svc = service_fn(move |req| {
                let ctx = slot.current();
                let hold = hold.clone();
                let busy = BusyGuard::begin(svc_activity.clone());
                async move {
                    // Boxed: hyper keeps room for the service future in its
                    // connection; a pointer's worth instead of the whole
                    // request state machine (~4 KiB).
                    let resp = Box::pin(proxy::handle(req, &ctx, peer, &hold)).await;
                    Ok::<_, Infallible>(resp.map(|body| ClientBody { body, _busy: busy }))
                }
            });
            let io = TokioIo::new(WatchedIo::new(
                stream,
                activity.clone(),
                self.limits.max_header_bytes,
                self.limits.max_headers,
                peer,
                self.slot.clone(),
            ));
            // Not pinned: hyper's connection is `Unpin`, and `into_parts`
            // needs it by value to give the socket back.
            Box::new(self.builder.serve_connection(io, svc).with_upgrades())
        };
        let mut stopping = false;
        let end = poll_fn(|cx| {
            loop {
                if let Poll::Ready(result) = Pin::new(&mut *conn).poll(cx) {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "client connection ended with an error");
                    }
                    return Poll::Ready(Some(End::Closed));
                }
                if stopping {
                    break;
                }
                // A plain load. A connection that waited before registered
                // its task with the signal; one that never waited parks
                // within `LINGER_MS` of its response (and then sees it), or
                // gets its head within `client_header_timeout`.
                let stop_now = self.shutdown.is_fired();
                if stop_now || activity.close_requested.load(Ordering::Relaxed) {
                    stopping = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                    continue;
                }
                break;
            }
            // hyper waits for the next request with nothing to lose: when
            // its moment comes, take the socket back and drop the rest.
            let park_at = activity.park_at();
            if park_at.is_some_and(|at| activity.now_ms() >= at) {
                return Poll::Ready(None);
            }
            timer.poll_until(cx, activity, park_at).map(|()| {
                if park_at.is_some_and(|at| at <= activity.deadline_ms()) {
                    None
                } else {
                    Some(End::TimedOut)
                }
            })
        })
        .await;
        if let Some(end) = end {
            return end;
        }
        match (*conn).into_parts() {
            // hyper reads only when it holds no whole request, and the
            // last read, at a request boundary, found nothing: its buffer
            // is empty. Were it not, closing is safer than guessing.
            Some(parts) if parts.read_buf.is_empty() => {
                End::Parked(parts.io.into_inner().into_stream())
            }
            Some(parts) => {
                tracing::debug!(%peer, unread = parts.read_buf.len(), "client bytes left in hyper's buffer at a boundary; closing");
                End::Closed
            }
            None => End::Closed,
        }
    }
}

/// How a stretch of a client connection ended.
enum End {
    /// hyper was let go between two requests; the connection goes on with
    /// its socket.
    Parked(ClientStream),
    /// The client left, an error, shutdown, or a refused head.
    Closed,
    /// The phase's timeout fired.
    TimedOut,
}

/// The connection's one timer, at its [`Activity`]'s deadline or at the
/// moment to park, whichever comes first.
struct Timer<'a> {
    armed: u64,
    sleep: Pin<&'a mut tokio::time::Sleep>,
}

impl Timer<'_> {
    /// Re-arms at the current deadline (or `park_at`, if sooner) if it
    /// moved, then polls. The phase can only change while the connection is
    /// polled, so re-arming here keeps the timer exact.
    fn poll_until(
        &mut self,
        cx: &mut Context<'_>,
        activity: &Activity,
        park_at: Option<u64>,
    ) -> Poll<()> {
        let deadline = activity.deadline_ms().min(park_at.unwrap_or(u64::MAX));
        if deadline != self.armed {
            self.armed = deadline;
            self.sleep.as_mut().reset(activity.instant(deadline));
        }
        self.sleep.as_mut().poll(cx)
    }
}

/// The response body, holding the connection's "request in flight" mark
/// until hyper has finished writing it.
struct ClientBody {
    body: ProxyBody,
    _busy: BusyGuard,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
