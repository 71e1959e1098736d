//! Accepting client connections and serving HTTP/1 on them.
//!
//! The accept loop takes a permit before each `accept`, so at
//! `max_client_connections` it stops accepting (the kernel backlog holds
//! the rest) instead of dropping connections it already took. Accept errors
//! such as `EMFILE` back off and retry; they never end the loop.
//!
//! Each connection is watched by a small state machine (`Activity`):
//! waiting for a request head is bounded by `client_header_timeout` (from the
//! first byte, or from accept for the first request), the gap between
//! requests by `client_idle_timeout`. While a request is in flight, the only
//! bound is on a client that stops reading its response: no write progress
//! for `client_idle_timeout` ends the connection, and the response body is
//! drained to save the upstream connection. hyper's own header timer cannot
//! express any of this, so it is off.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::access::AccessRecord;
use crate::config::ListenerConfig;
use crate::error::ProxyError;
use crate::head_scan::{HeadScan, Reject};
use crate::proxy::{self, ConnHold, ListenerSlot, ProxyBody};
use crate::shutdown::{ConnTracker, ShutdownSignal};

/// A bound listening socket.
pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Bound {
    async fn accept(&self) -> io::Result<(ClientStream, SocketAddr)> {
        match self {
            Bound::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                if !INHERITS_SOCKET_OPTIONS {
                    client_socket_options(&socket2::SockRef::from(&s));
                }
                Ok((ClientStream::Tcp(s), peer))
            }
            Bound::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                Ok((ClientStream::Unix(s), SocketAddr::from(([0, 0, 0, 0], 0))))
            }
        }
    }
}

/// Whether accepted sockets inherit the listening socket's options. Linux
/// copies `TCP_NODELAY`, keepalive and `SO_SNDBUF` to every accepted socket,
/// so setting them once on the listener saves five system calls per client
/// connection, and a legacy client makes one connection per request.
const INHERITS_SOCKET_OPTIONS: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Prepares a TCP listening socket: on Linux its options pass to every
/// client socket it accepts (elsewhere they are set after each accept).
pub fn prepare_tcp_listener(l: &TcpListener) {
    if INHERITS_SOCKET_OPTIONS {
        client_socket_options(&socket2::SockRef::from(l));
    }
}

/// The options of every client TCP socket: no Nagle delay, TCP keepalive
/// (ends tunnels whose peer vanished), and a bounded send buffer. A bounded
/// send buffer makes the kernel report write progress every ~170 KB drained;
/// an autotuned one (up to 4 MB) could make a slow but steady reader look
/// stalled to the write-stall timeout. On loopback it costs nothing.
fn client_socket_options(s: &socket2::SockRef<'_>) {
    let _ = s.set_nodelay(true);
    let _ = s.set_tcp_keepalive(&crate::upstream::connect::keepalive_params());
    let _ = s.set_send_buffer_size(CLIENT_SEND_BUFFER);
}

/// Limits every connection of one listener shares.
struct ClientLimits {
    header_timeout: Duration,
    idle_timeout: Duration,
    max_header_bytes: usize,
}

/// Runs a listener until shutdown.
pub async fn serve(
    bound: Bound,
    config: &ListenerConfig,
    slot: Arc<ListenerSlot>,
    shutdown: ShutdownSignal,
    tracker: ConnTracker,
) {
    let permits = Arc::new(Semaphore::new(config.max_client_connections));
    let limits = Arc::new(ClientLimits {
        header_timeout: config.client_header_timeout.get(),
        idle_timeout: config.client_idle_timeout.get(),
        max_header_bytes: config.max_header_bytes.as_usize(),
    });
    let builder = Arc::new(http1_builder(config.max_header_bytes.as_usize()));
    let ctx = slot.current();
    let accepted_total = ctx
        .metrics
        .client_connections
        .with_label_values(&[&ctx.name]);
    let open = ctx
        .metrics
        .client_connections_open
        .with_label_values(&[&ctx.name]);
    // One wait on the shutdown signal for the whole loop: each new wait
    // would register with the signal again.
    let mut stop_signal = shutdown.clone();
    let mut stop = pin!(stop_signal.wait());
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut stop => break,
            },
        };
        let accepted = tokio::select! {
            r = bound.accept() => r,
            _ = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                tracing::warn!(listener = %ctx.name, error = %e, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        accepted_total.inc();
        open.inc();
        let conn = ClientConn {
            hold: Arc::new(Held {
                _open: OpenGuard(open.clone()),
                _permit: permit,
                _track: tracker.track(),
            }),
            slot: slot.clone(),
            limits: limits.clone(),
            builder: builder.clone(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(conn.serve(stream, peer));
    }
    if let Bound::Unix(_, path) = &bound {
        let _ = std::fs::remove_file(path);
    }
}

fn http1_builder(max_header_bytes: usize) -> http1::Builder {
    let mut b = http1::Builder::new();
    // The head scanner enforces the exact limit on every head it sees; this
    // is hyper's backstop for heads it does not see (pipelined requests).
    let hard_cap = max_header_bytes.saturating_mul(2).saturating_add(8192);
    b.header_read_timeout(None)
        .max_header_size(hard_cap)
        .max_buf_size(hard_cap.saturating_add(8192).max(8192))
        .keep_alive(true);
    b
}

/// Keeps `eddy_client_connections_open` true: one per live connection.
struct OpenGuard(prometheus::IntGauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a client connection holds while it lives, shared with a CONNECT
/// tunnel that outlives the HTTP exchange on it.
struct Held {
    _open: OpenGuard,
    _permit: OwnedSemaphorePermit,
    _track: crate::shutdown::TrackGuard,
}

struct ClientConn {
    hold: ConnHold,
    /// Read per request, so a reload applies to the next request on a
    /// keep-alive connection too.
    slot: Arc<ListenerSlot>,
    limits: Arc<ClientLimits>,
    builder: Arc<http1::Builder>,
    shutdown: ShutdownSignal,
}

impl ClientConn {
    async fn serve(self, stream: ClientStream, peer: SocketAddr) {
        let activity = Arc::new(Activity::new(&self.limits));
        let slot = self.slot.clone();
        let svc_activity = activity.clone();
        let hold = self.hold.clone();
        let svc = service_fn(move |req| {
            let ctx = slot.current();
            let hold = hold.clone();
            let busy = BusyGuard::begin(svc_activity.clone());
            async move {
                // Boxed: hyper keeps room for the service future in every
                // connection, idle or not; a pointer's worth instead of the
                // whole request state machine (~4 KiB) keeps idle keep-alive
                // connections small.
                let resp = Box::pin(proxy::handle(req, &ctx, peer, &hold)).await;
                Ok::<_, Infallible>(resp.map(|body| ClientBody { body, _busy: busy }))
            }
        });
        let io = TokioIo::new(WatchedIo {
            inner: stream,
            activity: activity.clone(),
            scan: HeadScan::new(self.limits.max_header_bytes),
            max_header_bytes: self.limits.max_header_bytes,
            answered: false,
            cut: false,
            peer,
            slot: self.slot.clone(),
        });
        let mut conn = pin!(self.builder.serve_connection(io, svc).with_upgrades());
        let mut shutdown = self.shutdown.clone();
        let mut stop = pin!(shutdown.wait());
        let mut stopping = false;
        let mut armed = activity.deadline_ms();
        let mut timer = pin!(tokio::time::sleep_until(activity.instant(armed)));
        let timed_out = poll_fn(|cx| {
            loop {
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "client connection ended with an error");
                    }
                    return Poll::Ready(false);
                }
                if stopping {
                    break;
                }
                // Waiting on the shutdown signal registers with a list all
                // connections share, so only a connection idle between
                // requests waits on it. A busy one is polled again when its
                // exchange ends (it is idle then), and a new one either
                // gets its head within `client_header_timeout` or is cut
                // off; meanwhile a glance at the fired flag is a plain load.
                let stop_now = if activity.phase.load(Ordering::Relaxed) == PHASE_IDLE {
                    stop.as_mut().poll(cx).is_ready()
                } else {
                    self.shutdown.is_fired()
                };
                if stop_now || activity.close_requested.load(Ordering::Relaxed) {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                    continue;
                }
                break;
            }
            // The connection's phase can only change while it is polled,
            // so re-arming here keeps the timer exact.
            let deadline = activity.deadline_ms();
            if deadline != armed {
                armed = deadline;
                timer.as_mut().reset(activity.instant(deadline));
            }
            timer.as_mut().poll(cx).map(|()| true)
        })
        .await;
        if timed_out {
            tracing::debug!(%peer, listener = %self.slot.current().name, "client connection timed out");
        }
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

/// `SO_SNDBUF` for client sockets (the kernel doubles it for bookkeeping).
const CLIENT_SEND_BUFFER: usize = 256 * 1024;

const NO_DEADLINE: u64 = u64::MAX;
const PHASE_IDLE: u8 = 0;
const PHASE_HEAD: u8 = 1;
const PHASE_BUSY: u8 = 2;

/// Which timeout applies to a client connection right now. Touched only
/// from the connection's own task; atomics make it `Sync` for hyper.
struct Activity {
    epoch: Instant,
    phase: AtomicU8,
    in_flight: AtomicU32,
    /// Milliseconds since `epoch`, or [`NO_DEADLINE`].
    deadline: AtomicU64,
    header_ms: u64,
    idle_ms: u64,
    /// Since when a response write has been blocked, or [`NO_DEADLINE`].
    write_blocked_since: AtomicU64,
    /// Finish the requests in flight, then close.
    close_requested: AtomicBool,
}

impl Activity {
    fn new(limits: &ClientLimits) -> Activity {
        let header_ms = limits.header_timeout.as_millis() as u64;
        Activity {
            epoch: Instant::now(),
            phase: AtomicU8::new(PHASE_HEAD),
            in_flight: AtomicU32::new(0),
            deadline: AtomicU64::new(header_ms),
            header_ms,
            idle_ms: limits.idle_timeout.as_millis() as u64,
            write_blocked_since: AtomicU64::new(NO_DEADLINE),
            close_requested: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn deadline_ms(&self) -> u64 {
        self.deadline.load(Ordering::Relaxed)
    }

    fn instant(&self, ms: u64) -> Instant {
        if ms == NO_DEADLINE {
            // Far enough to never fire, near enough not to overflow.
            self.epoch + Duration::from_secs(86_400 * 365)
        } else {
            self.epoch + Duration::from_millis(ms)
        }
    }

    /// Bytes arrived: an idle connection starts receiving a head. Returns
    /// true when this read starts a new head.
    fn on_read(&self) -> bool {
        if self.phase.load(Ordering::Relaxed) == PHASE_IDLE {
            self.phase.store(PHASE_HEAD, Ordering::Relaxed);
            self.deadline.store(
                self.now_ms().saturating_add(self.header_ms),
                Ordering::Relaxed,
            );
            return true;
        }
        false
    }
}

impl Activity {
    /// The client is not taking response bytes: during a request, that
    /// starts the clock on `client_idle_timeout`.
    fn on_write_blocked(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) != NO_DEADLINE {
            return;
        }
        let now = self.now_ms();
        self.write_blocked_since.store(now, Ordering::Relaxed);
        if self.phase.load(Ordering::Relaxed) == PHASE_BUSY {
            self.deadline
                .store(now.saturating_add(self.idle_ms), Ordering::Relaxed);
        }
    }

    fn on_write_progress(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) == NO_DEADLINE {
            return;
        }
        self.write_blocked_since
            .store(NO_DEADLINE, Ordering::Relaxed);
        match self.phase.load(Ordering::Relaxed) {
            PHASE_BUSY => self.deadline.store(NO_DEADLINE, Ordering::Relaxed),
            // The last of a response is still being flushed after its body
            // ended: progress there restarts the idle clock too.
            PHASE_IDLE => self.deadline.store(
                self.now_ms().saturating_add(self.idle_ms),
                Ordering::Relaxed,
            ),
            _ => {}
        }
    }
}

/// Marks a request in flight from head parsed to response written.
struct BusyGuard(Arc<Activity>);

impl BusyGuard {
    fn begin(activity: Arc<Activity>) -> BusyGuard {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.phase.store(PHASE_BUSY, Ordering::Relaxed);
        activity.deadline.store(NO_DEADLINE, Ordering::Relaxed);
        BusyGuard(activity)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            a.phase.store(PHASE_IDLE, Ordering::Relaxed);
            a.deadline
                .store(a.now_ms().saturating_add(a.idle_ms), Ordering::Relaxed);
        }
    }
}

/// A client socket of either kind.
enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The client socket: reports reads to the connection's [`Activity`] and
/// checks each request head with a [`HeadScan`]. A head the scanner refuses
/// is answered here, with eddy's own error response; hyper then sees end of
/// stream and whatever it writes is discarded.
struct WatchedIo {
    inner: ClientStream,
    activity: Arc<Activity>,
    scan: HeadScan,
    max_header_bytes: usize,
    /// A refused head was answered; the connection is finished.
    answered: bool,
    /// A refused pipelined head: hyper sees end of stream before it.
    cut: bool,
    peer: SocketAddr,
    /// Read only when a head is refused (rare): the context of that moment.
    slot: Arc<ListenerSlot>,
}

impl WatchedIo {
    fn note_write(&self, res: &Poll<io::Result<usize>>) {
        match res {
            Poll::Pending => self.activity.on_write_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.on_write_progress(),
            Poll::Ready(_) => {}
        }
    }

    fn refusal_error(&self, reject: Reject) -> ProxyError {
        match reject {
            Reject::TooLarge => ProxyError::HeadTooLarge {
                limit: self.max_header_bytes,
            },
            Reject::Malformed(why) => ProxyError::BadRequest(why),
        }
    }

    /// Counts and logs a refused head like any request eddy answered.
    fn record_refusal(&self, reject: Reject, note: &'static str) {
        let error = self.refusal_error(reject);
        let ctx = self.slot.current();
        let mut record = AccessRecord::new(
            ctx.index,
            ctx.name.clone(),
            self.peer,
            None,
            ctx.metrics.clone(),
            ctx.access_log,
        );
        record.status = error.status().as_u16();
        record.error = Some((error.proxy_status(), error.to_string()));
        record.note = Some(note);
        drop(record);
    }

    /// Answers a refused head and ends the connection.
    fn answer(&mut self, reject: Reject) {
        self.record_refusal(reject, "request head refused");
        let bytes = self.refusal_error(reject).to_wire();
        // A fresh socket's send buffer takes a few hundred bytes; if it
        // cannot, the client is not reading and gets the close alone.
        let _ = match &self.inner {
            ClientStream::Tcp(s) => s.try_write(&bytes),
            ClientStream::Unix(s) => s.try_write(&bytes),
        };
        self.answered = true;
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        if this.answered {
            return Poll::Ready(Ok(()));
        }
        if this.cut {
            // Nothing more is read; the connection closes once the earlier
            // requests are answered (hyper would drop them on an early EOF).
            return Poll::Pending;
        }
        let res = match &mut this.inner {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        };
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if this.activity.on_read() && this.scan.at_head_boundary() {
                this.scan = HeadScan::new(this.max_header_bytes);
            }
            if let Some(refusal) = this.scan.scan(&buf.filled()[before..]) {
                if refusal.pipelined {
                    // Requests before it are served; the refused one is
                    // never forwarded, and the connection ends after them.
                    buf.set_filled(before + refusal.at);
                    this.cut = true;
                    this.activity.close_requested.store(true, Ordering::Relaxed);
                    this.record_refusal(
                        refusal.reject,
                        "pipelined request refused; closing after the earlier ones",
                    );
                } else {
                    // hyper never sees the refused head's last bytes.
                    buf.set_filled(before);
                    this.answer(refusal.reject);
                }
            }
        }
        res
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.answered {
            return Poll::Ready(Ok(buf.len()));
        }
        let res = match &mut self.inner {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        };
        self.note_write(&res);
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.answered {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let res = match &mut self.inner {
            ClientStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        };
        self.note_write(&res);
        res
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            ClientStream::Tcp(s) => s.is_write_vectored(),
            ClientStream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.scan.at_head_boundary() {
            // hyper ends an HTTP connection whose requests were all read to
            // the end: the socket closes right after and close sends the
            // FIN, so `shutdown` would be a system call for nothing. It is
            // passed on in every other case: a tunnel or upgraded stream
            // may be half-closed, and for a client still sending a body
            // (an early answer), the FIN must go out before the close
            // resets the connection over the unread bytes.
            return Poll::Ready(Ok(()));
        }
        match &mut self.inner {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the kernel behaviour `INHERITS_SOCKET_OPTIONS` relies on: an
    /// accepted socket carries the listener's options without any call.
    #[tokio::test]
    async fn accepted_sockets_carry_the_client_options() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        prepare_tcp_listener(&l);
        let addr = l.local_addr().unwrap();
        let bound = Bound::Tcp(l);
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = bound.accept().await.unwrap();
        let ClientStream::Tcp(s) = stream else {
            panic!("a TCP listener accepts TCP streams")
        };
        let sock = socket2::SockRef::from(&s);
        assert!(sock.nodelay().unwrap(), "TCP_NODELAY");
        assert!(sock.keepalive().unwrap(), "SO_KEEPALIVE");
        assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(sock.keepalive_interval().unwrap(), Duration::from_secs(15));
        // The kernel doubles the value for its bookkeeping.
        assert!(sock.send_buffer_size().unwrap() >= CLIENT_SEND_BUFFER);
        assert!(sock.send_buffer_size().unwrap() < 4 * CLIENT_SEND_BUFFER);
    }
}
