//! TCP connects to an origin's addresses: Happy Eyeballs, the source
//! address, and telling a shortage of local ports from a refusal.
//!
//! Happy Eyeballs (RFC 8305): the addresses are tried in the order
//! [`super::dns::dial_order`] gives (families alternating, IPv6 first),
//! each attempt started [`ATTEMPT_DELAY`] after the one before or as soon
//! as it fails, and the first to connect wins; the others are dropped. A
//! family whose path silently drops packets then costs that delay, not
//! the whole `connect_timeout`.
//!
//! `source_address` binds each socket before it connects, with
//! `IP_BIND_ADDRESS_NO_PORT`: the port is chosen at `connect`, per
//! destination, so a source address does not cap eddy at one port range
//! for all origins together.
//!
//! `EADDRNOTAVAIL` from `connect` means no local port is free toward that
//! destination (TIME-WAIT sockets, or a small `ip_local_port_range`). It
//! is not the origin's fault, and the pool answers it by queueing the
//! request for a connection already open (see [`DialError::NoLocalPort`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

/// RFC 8305's recommended Connection Attempt Delay.
pub(crate) const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Why no connection was made.
#[derive(Debug)]
pub(crate) enum DialError {
    /// Every attempt failed; the last error seen.
    Failed(io::Error),
    /// No local port was free for any address tried.
    NoLocalPort(io::Error),
    /// `source_address` could not be bound.
    Bind(io::Error),
    /// The deadline passed first.
    Timeout,
}

/// Connects to the first of `addrs` that answers, Happy Eyeballs style,
/// from `source` if set, under `deadline`.
pub(crate) async fn connect(
    addrs: &[SocketAddr],
    source: Option<IpAddr>,
    deadline: Instant,
) -> Result<TcpStream, DialError> {
    // The usual case, one address: no race to run.
    if let [addr] = addrs {
        return match tokio::time::timeout_at(deadline, attempt(*addr, source)).await {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout),
        };
    }
    let mut racing = JoinSet::new();
    let mut next = 0;
    let mut next_at = Instant::now();
    let mut failure: Option<DialError> = None;
    loop {
        if next < addrs.len() && Instant::now() >= next_at {
            let addr = addrs[next];
            racing.spawn(attempt(addr, source));
            next += 1;
            next_at = Instant::now() + ATTEMPT_DELAY;
        }
        if racing.is_empty() {
            return Err(failure.unwrap_or(DialError::Failed(io::Error::other(
                "no address to connect to",
            ))));
        }
        tokio::select! {
            Some(done) = racing.join_next() => {
                let e = match done {
                    Ok(Ok(stream)) => return Ok(stream),
                    Ok(Err(e)) => e,
                    Err(join) => DialError::Failed(io::Error::other(join)),
                };
                failure = Some(worse(failure, e));
                // A failed attempt starts the next one at once.
                next_at = Instant::now();
            }
            _ = sleep_until(next_at), if next < addrs.len() => {}
            // A port shortage seen on the way is the answer that matters:
            // the pool waits it out instead of failing.
            _ = sleep_until(deadline) => return Err(match failure {
                Some(e @ DialError::NoLocalPort(_)) => e,
                _ => DialError::Timeout,
            }),
        }
    }
}

/// Which failure to report: a shortage of local ports over a refusal
/// (it is the one the pool acts on), otherwise the latest.
fn worse(before: Option<DialError>, now: DialError) -> DialError {
    match (before, now) {
        (Some(DialError::NoLocalPort(e)), DialError::Failed(_)) => DialError::NoLocalPort(e),
        (Some(DialError::Bind(e)), DialError::Failed(_)) => DialError::Bind(e),
        (_, now) => now,
    }
}

/// One connect attempt.
async fn attempt(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, DialError> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(DialError::Failed)?;
    if let Some(source) = source {
        // Best effort: without it the bind takes a port from the range
        // for every destination at once, which still works.
        if let Err(e) = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        ) {
            tracing::debug!(error = %e, "IP_BIND_ADDRESS_NO_PORT not available");
        }
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(DialError::Bind)?;
    }
    socket.connect(addr).await.map_err(classify)
}

fn classify(e: io::Error) -> DialError {
    if e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL) {
        DialError::NoLocalPort(e)
    } else {
        DialError::Failed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_shortage_is_reported_over_a_refusal() {
        let refused = || DialError::Failed(io::Error::from(io::ErrorKind::ConnectionRefused));
        let no_port = || DialError::NoLocalPort(io::Error::from_raw_os_error(99));
        assert!(matches!(
            worse(Some(no_port()), refused()),
            DialError::NoLocalPort(_)
        ));
        assert!(matches!(
            worse(Some(refused()), no_port()),
            DialError::NoLocalPort(_)
        ));
        assert!(matches!(worse(None, refused()), DialError::Failed(_)));
    }

    #[test]
    fn eaddrnotavail_is_a_port_shortage() {
        assert!(matches!(
            classify(io::Error::from_raw_os_error(nix::libc::EADDRNOTAVAIL)),
            DialError::NoLocalPort(_)
        ));
        assert!(matches!(
            classify(io::Error::from(io::ErrorKind::ConnectionRefused)),
            DialError::Failed(_)
        ));
    }

    /// Over real sockets: the first address refuses, the next is tried
    /// and wins. (A first address that drops packets silently needs a
    /// network namespace: tests/it/dns.rs.)
    #[tokio::test]
    async fn a_refused_address_passes_the_race_to_the_next() {
        let working = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let started = Instant::now();
        let s = connect(
            &[refused, working.local_addr().unwrap()],
            None,
            started + Duration::from_secs(10),
        )
        .await
        .expect("the second address answers");
        assert_eq!(s.peer_addr().unwrap(), working.local_addr().unwrap());
    }
}
