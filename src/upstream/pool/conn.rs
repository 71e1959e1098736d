//! One upstream connection: its sender, a second handle on its socket for
//! the liveness probe, and what decides whether it may be used again.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, CONNECTION};
use http::Version;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use super::core::Poolable;
use super::CloseReason;
use crate::config::PoolConfig;
use crate::metrics::OriginMetrics;
use crate::upstream::io::ReadLog;
use crate::upstream::request_body::ReqBody;
use crate::upstream::tls::TlsFailure;

/// What the liveness probe saw on a connection that is not dead.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Probe {
    Quiet,
    /// TLS bytes are waiting that hyper's task has not read yet.
    Readable,
}

/// A live upstream connection, owned by whoever holds it.
pub(crate) struct Conn {
    pub(super) id: u64,
    pub(super) sender: SendRequest<ReqBody>,
    pub(super) socket: socket2::Socket,
    pub(super) retire_at: Option<Instant>,
    pub(super) requests: u64,
    pub(super) keepalive_hint: Option<Duration>,
    /// Response bytes read on this connection so far, and a TLS failure.
    pub(super) read_log: Arc<ReadLog>,
    pub(super) metrics: Arc<OriginMetrics>,
    /// Over TLS, bytes on an idle connection are normal (TLS 1.3 session
    /// tickets, a close_notify that rustls will read): only EOF condemns it.
    pub(super) tls: bool,
    /// The address dialled, for a `deny_cidrs` that a reload changed (and
    /// the access log).
    pub(super) peer: Option<std::net::IpAddr>,
    /// How long opening it took (DNS, TCP, TLS, handshake).
    pub(super) connect_took: Duration,
    /// The connector's deny-list epoch `peer` was last checked under.
    pub(super) deny_epoch: u64,
    /// The resolver's count of changed answers when `peer` was last
    /// checked against its origin's addresses.
    pub(super) dns_changes: u64,
    /// Counts it toward its address in `/pools` while it lives.
    pub(super) _peer_share: Option<super::follow::PeerShare>,
}

impl Conn {
    pub(super) fn bytes_read(&self) -> u64 {
        self.read_log.bytes()
    }

    /// The TLS failure this connection died of, if it did.
    pub(super) fn tls_failure(&self) -> Option<TlsFailure> {
        self.read_log.tls_failure()
    }

    /// Non-blocking probe of the socket: `Err` with the reason to discard it.
    /// A readable EOF means the peer closed; unexpected bytes on an idle
    /// HTTP/1 connection mean it cannot be trusted either.
    pub(super) fn probe(&self) -> Result<Probe, CloseReason> {
        if self.sender.is_closed() {
            return Err(CloseReason::PeerClosed);
        }
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match self.socket.peek(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Probe::Quiet),
            Ok(0) => Err(CloseReason::PeerClosed),
            // Over TLS, records arrive unasked (session tickets) and hyper's
            // task consumes them; it may not have run yet.
            Ok(_) if self.tls => Ok(Probe::Readable),
            Ok(_) => Err(CloseReason::Error),
            Err(_) => Err(CloseReason::PeerClosed),
        }
    }

    /// Whether this connection must retire instead of going idle.
    pub(super) fn retirement(&self, now: Instant, settings: &PoolConfig) -> Option<CloseReason> {
        let max = settings.max_requests_per_connection;
        if max > 0 && self.requests >= max {
            return Some(CloseReason::MaxRequests);
        }
        if self.retire_at.is_some_and(|at| now >= at) {
            return Some(CloseReason::MaxLifetime);
        }
        None
    }
}

impl Poolable for Conn {
    fn id(&self) -> u64 {
        self.id
    }
    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
    fn keepalive_hint(&self) -> Option<Duration> {
        self.keepalive_hint
    }
    fn retire_at(&self) -> Option<Instant> {
        self.retire_at
    }
    fn retirement(&self, now: Instant, settings: &PoolConfig) -> Option<CloseReason> {
        Conn::retirement(self, now, settings)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Ends hyper's connection task promptly whatever it was doing; the
        // file descriptors close when both handles are gone.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// Whether the origin keeps the connection open after this response, and
/// the idle limit it announced (`Keep-Alive: timeout=N`).
pub(super) fn persistence(version: Version, headers: &HeaderMap) -> (bool, Option<Duration>) {
    let mut close = false;
    let mut keep_alive = false;
    for value in headers.get_all(CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            close |= token.eq_ignore_ascii_case("close");
            keep_alive |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    let reusable = !close && (version != Version::HTTP_10 || keep_alive);
    let hint = headers
        .get("keep-alive")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').find_map(|part| {
                let (k, val) = part.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("timeout")
                    .then(|| val.trim().parse::<u64>().ok())
                    .flatten()
            })
        })
        .map(Duration::from_secs);
    (reusable, hint)
}

/// Up to a tenth of `lifetime`, different per connection, so a pool opened
/// in one burst does not retire in one burst.
pub(super) fn jitter(lifetime: Duration, id: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = id ^ nanos ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let tenth = lifetime / 10;
    let fraction = (x % 1_000) as u32;
    tenth * fraction / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn origin_persistence_follows_connection_and_version() {
        let mut h = HeaderMap::new();
        assert_eq!(persistence(Version::HTTP_11, &h), (true, None));
        assert_eq!(persistence(Version::HTTP_10, &h), (false, None));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5, max=100"));
        assert_eq!(
            persistence(Version::HTTP_10, &h),
            (true, Some(Duration::from_secs(5)))
        );
        h.insert(CONNECTION, HeaderValue::from_static("Close"));
        assert!(!persistence(Version::HTTP_11, &h).0);
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        let life = Duration::from_secs(100);
        for id in 0..1_000 {
            assert!(jitter(life, id) <= Duration::from_secs(10));
        }
    }
}
