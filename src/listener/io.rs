//! The client socket as hyper sees it: every byte read passes the head
//! scanner first, and every read and write is reported to the connection's
//! timeouts.
//!
//! Why below hyper rather than in the request handler: a head eddy refuses
//! must never reach hyper's parser (hyper would answer it with a bare error
//! of its own, or quietly resolve conflicting framing), so the check has to
//! sit where the bytes arrive. A refused head is answered here, on the wire,
//! with eddy's own error response and recorded like any request; hyper then
//! sees end of stream and whatever it writes is discarded. A refused
//! pipelined head is cut off instead: the requests before it are served,
//! then the connection closes. And only the socket knows whether the client
//! is taking response bytes, which is what the write-stall timeout needs.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::socket::ClientStream;
use super::timeouts::Activity;
use crate::access::AccessRecord;
use crate::error::ProxyError;
use crate::head_scan::{HeadScan, Reject};
use crate::proxy::ListenerSlot;

/// The client socket: reports reads to the connection's [`Activity`] and
/// checks each request head with a [`HeadScan`]. A head the scanner refuses
/// is answered here, with eddy's own error response; hyper then sees end of
/// stream and whatever it writes is discarded.
///
/// It also tells the connection's [`Activity`] whether hyper's last read
/// found nothing at a request boundary, one of the conditions for letting
/// hyper go between requests (see `conn`), which takes the socket back
/// with [`WatchedIo::into_stream`].
pub(super) struct WatchedIo {
    inner: ClientStream,
    activity: Arc<Activity>,
    scan: HeadScan,
    max_header_bytes: usize,
    max_headers: usize,
    /// A refused head was answered; the connection is finished.
    answered: bool,
    /// A refused pipelined head: hyper sees end of stream before it.
    cut: bool,
    peer: SocketAddr,
    /// Read only when a head is refused (rare): the context of that moment.
    slot: Arc<ListenerSlot>,
}

impl WatchedIo {
    pub(super) fn new(
        inner: ClientStream,
        activity: Arc<Activity>,
        max_header_bytes: usize,
        max_headers: usize,
        peer: SocketAddr,
        slot: Arc<ListenerSlot>,
    ) -> WatchedIo {
        WatchedIo {
            inner,
            activity,
            scan: HeadScan::new(max_header_bytes).with_max_headers(max_headers),
            max_header_bytes,
            max_headers,
            answered: false,
            cut: false,
            peer,
            slot,
        }
    }

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
            Reject::TooManyHeaders => ProxyError::TooManyHeaders {
                limit: self.max_headers,
            },
            Reject::Malformed(why) => ProxyError::BadRequest(why),
        }
    }

    /// The socket, for a connection that let hyper go between requests.
    pub(super) fn into_stream(self) -> ClientStream {
        self.inner
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
        // Never in a tunnel or upgraded stream (the scan is lost there).
        this.activity
            .on_read_attempt(res.is_pending() && this.scan.at_head_boundary());
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if this.activity.on_read() && this.scan.at_head_boundary() {
                this.scan = HeadScan::new(this.max_header_bytes).with_max_headers(this.max_headers);
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
