//! The upstream socket as hyper sees it (plain TCP or TLS), counting the
//! bytes it reads and noting a TLS failure it meets.
//!
//! Stale-connection retry may only replay a request if no byte of the
//! response had been received; hyper's errors do not say whether the origin
//! had started answering. The count does: the exchange compares it before
//! and after.
//!
//! hyper's errors do not say either that the connection died of a TLS
//! alert (only "connection error", or, for a request it had not written
//! yet, that the connection closed). Under TLS 1.3 that is how an origin
//! refuses a client certificate: after the handshake, on the first read.
//! The failure is noted here, where the read returns it, which is before
//! hyper fails the request waiting on the connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An upstream transport.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.inner {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

use super::tls::TlsFailure;

/// What the connection's reads have seen so far.
#[derive(Default)]
pub(crate) struct ReadLog {
    bytes: AtomicU64,
    /// 0: none; otherwise a [`TlsFailure`] (1 certificate, 2 protocol).
    tls_failure: AtomicU8,
}

impl ReadLog {
    /// Response bytes read so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The TLS failure the connection met, if it met one.
    pub(crate) fn tls_failure(&self) -> Option<TlsFailure> {
        match self.tls_failure.load(Ordering::Acquire) {
            1 => Some(TlsFailure::Certificate),
            2 => Some(TlsFailure::Protocol),
            _ => None,
        }
    }

    fn note<T>(&self, res: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(e)) = res {
            if let Some(f) = TlsFailure::find(e) {
                let code = match f {
                    TlsFailure::Certificate => 1,
                    TlsFailure::Protocol => 2,
                };
                self.tls_failure.store(code, Ordering::Release);
            }
        }
    }
}

pub(crate) struct CountingIo {
    inner: Stream,
    log: Arc<ReadLog>,
}

impl CountingIo {
    pub(crate) fn new(inner: Stream) -> (CountingIo, Arc<ReadLog>) {
        let log = Arc::new(ReadLog::default());
        (
            CountingIo {
                inner,
                log: log.clone(),
            },
            log,
        )
    }
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = delegate!(self, s => s.poll_read(cx, buf));
        let n = buf.filled().len() - before;
        if n > 0 {
            self.log.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.log.note(&res);
        res
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = delegate!(self, s => s.poll_write(cx, buf));
        self.log.note(&res);
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = delegate!(self, s => s.poll_write_vectored(cx, bufs));
        self.log.note(&res);
        res
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}
