//! The listening socket and the client sockets it accepts, TCP or Unix.
//!
//! Kept apart because it is the only part that knows the two socket kinds
//! and the kernel: which options a client TCP socket gets (no Nagle delay,
//! keepalive, a bounded send buffer) and where they are set. On Linux they
//! are set once on the listening socket, which passes them to every socket
//! it accepts; elsewhere after each accept. Everything above works on a
//! [`ClientStream`] and never sets an option itself.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::task::{ready, Context, Poll};

use tokio::io::ReadBuf;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// A bound listening socket.
pub(crate) enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Bound {
    pub(super) async fn accept(&self) -> io::Result<(ClientStream, SocketAddr)> {
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
pub(crate) fn prepare_tcp_listener(l: &TcpListener) {
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

/// `SO_SNDBUF` for client sockets (the kernel doubles it for bookkeeping).
const CLIENT_SEND_BUFFER: usize = 256 * 1024;

/// A client socket of either kind.
///
/// Used through `&self` only: the connection task keeps it (in an `Arc`)
/// while it waits for a request with no HTTP state at all, and lends it to
/// a hyper connection for each run of requests (see `conn`).
pub(super) enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One body for both socket kinds: they share every method used here.
macro_rules! either {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            ClientStream::Tcp($s) => $e,
            ClientStream::Unix($s) => $e,
        }
    };
}

impl ClientStream {
    /// Ready when a read would not block: bytes, end of stream or an error.
    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_read_ready(cx))
    }

    /// What `AsyncRead::poll_read` does for an owned stream, through `&self`.
    pub(super) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            // `try_read_buf` clears the readiness it found stale.
            match either!(self, s => s.try_read_buf(buf)) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// What `AsyncWrite::poll_write` does, through `&self`.
    pub(super) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(either!(self, s => s.poll_write_ready(cx)))?;
            match self.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                res => return Poll::Ready(res),
            }
        }
    }

    /// What `AsyncWrite::poll_write_vectored` does, through `&self`.
    pub(super) fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(either!(self, s => s.poll_write_ready(cx)))?;
            match either!(self, s => s.try_write_vectored(bufs)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                res => return Poll::Ready(res),
            }
        }
    }

    /// A write that never waits (eddy's own small error answers).
    pub(super) fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        either!(self, s => s.try_write(bytes))
    }

    /// Sends the FIN (half-close), as `AsyncWrite::poll_shutdown` does.
    pub(super) fn shutdown_write(&self) -> io::Result<()> {
        either!(self, s => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
