//! The listening socket and the client sockets it accepts, TCP or Unix.
//!
//! Kept apart because it is the only part that knows the two socket kinds
//! and the kernel: which options a client TCP socket gets (no Nagle delay,
//! keepalive, a bounded send buffer) and where they are set. On Linux they
//! are set once on the listening socket, which passes them to every socket
//! it accepts; elsewhere after each accept. Everything above works on a
//! [`ClientStream`] and never sets an option itself.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::task::{Context, Poll};

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
pub(super) enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl ClientStream {
    /// Ready when a read would not block: bytes, end of stream or an error.
    /// What a connection waiting for its next request waits on.
    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientStream::Tcp(s) => s.poll_read_ready(cx),
            ClientStream::Unix(s) => s.poll_read_ready(cx),
        }
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
