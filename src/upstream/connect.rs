//! Opening an upstream connection: DNS (`dns`), TCP connect (`dial`), an
//! egress proxy's tunnel (`via`), TLS, the HTTP handshake.
//!
//! The whole sequence runs under one deadline (`connect_timeout`) so a slow
//! resolver and a slow SYN cannot add up. Every resolved address is
//! checked against eddy's own listeners before it is dialled, so a name that
//! resolves to eddy itself is a 508, not an infinite loop, and against
//! `deny_cidrs`, so a name cannot smuggle a denied address past the policy.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::dial::DialError;
use super::dns::Resolver;
use super::io::{CountingIo, ReadLog, Stream};
use super::loop_guard::LoopGuard;
use super::origin::Origin;
use super::request_body::ReqBody;
use super::tls::{TlsFailure, TlsProfile};
use crate::config::{Cidr, PoolConfig};
use crate::error::ProxyError;

/// What a successful connect hands to the pool.
pub(crate) struct Connected {
    pub sender: http1::SendRequest<ReqBody>,
    pub connection: http1::Connection<TokioIo<CountingIo>, ReqBody>,
    /// Response bytes read on this connection so far.
    pub read_log: Arc<ReadLog>,
    /// A second handle on the same socket, for the liveness probe and for
    /// shutting the socket down whatever state hyper's task is in.
    pub socket: socket2::Socket,
}

pub(crate) struct Connector {
    loop_guard: Arc<LoopGuard>,
    h1: http1::Builder,
    /// For `https://` origins without TLS settings of their own.
    default_tls: Arc<TlsProfile>,
    /// `security.deny_cidrs`: addresses never dialled. Read once per new
    /// connection; replaced by a reload.
    deny: std::sync::RwLock<Vec<Cidr>>,
    /// Bumped by each [`Connector::set_deny`], so that a connection dialled
    /// under an older list is checked against the new one once.
    deny_epoch: std::sync::atomic::AtomicU64,
    /// Names to addresses, shared with the pool, which keeps the names it
    /// holds connections to fresh.
    resolver: Arc<Resolver>,
}

impl Connector {
    pub(crate) fn new(
        loop_guard: Arc<LoopGuard>,
        default_tls: Arc<TlsProfile>,
        deny: Vec<Cidr>,
    ) -> Connector {
        // hyper's defaults bound a response head: 100 headers, ~400 KiB of
        // buffer. Raising the header count would cost every response a heap
        // array filled before parsing; 100 parse on the stack.
        let mut h1 = http1::Builder::new();
        // Header names go out as the client spelt them (the case map hyper
        // keeps in the request's extensions, when the listener preserves
        // case), and the response's names come back as the origin spelt
        // them.
        h1.preserve_header_case(true);
        Connector {
            loop_guard,
            h1,
            default_tls,
            deny: std::sync::RwLock::new(deny),
            deny_epoch: std::sync::atomic::AtomicU64::new(0),
            resolver: Arc::new(Resolver::new()),
        }
    }

    pub(crate) fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// Replaces `security.deny_cidrs` (a reload).
    pub(crate) fn set_deny(&self, deny: Vec<Cidr>) {
        *self.deny.write().unwrap_or_else(|p| p.into_inner()) = deny;
        self.deny_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Which `deny_cidrs` list is in force (see [`Connector::set_deny`]).
    pub(crate) fn deny_epoch(&self) -> u64 {
        self.deny_epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `deny_cidrs` now forbids `ip`.
    pub(crate) fn denies(&self, ip: std::net::IpAddr) -> bool {
        let deny = self.deny.read().unwrap_or_else(|p| p.into_inner());
        deny.iter().any(|c| c.contains(ip))
    }

    pub(crate) async fn connect(
        &self,
        origin: &Origin,
        settings: &PoolConfig,
        deadline: Instant,
    ) -> Result<Connected, ProxyError> {
        let mut stream = self.tcp(origin, settings, deadline).await?;
        if origin.via_proxy().is_some() && origin.is_tls() {
            super::via::open_tunnel(&mut stream, origin, deadline).await?;
        }
        let socket = socket2::SockRef::from(&stream)
            .try_clone()
            .map_err(|e| refused(origin, &e))?;
        let stream = if origin.is_tls() {
            Stream::Tls(Box::new(self.tls(origin, stream, deadline, false).await?))
        } else {
            Stream::Tcp(stream)
        };
        let (io, read_log) = CountingIo::new(stream);
        let handshake = timeout_at(deadline, self.h1.handshake(TokioIo::new(io))).await;
        let (sender, connection) = handshake_outcome(origin, handshake)?;
        Ok(Connected {
            sender,
            connection,
            read_log,
            socket,
        })
    }
}

impl Connector {
    /// DNS and TCP connect (to the egress proxy, for an origin behind
    /// one), refusing eddy's own addresses: the first half of a pooled
    /// connection, and all of a CONNECT tunnel's upstream leg.
    pub(crate) async fn tcp(
        &self,
        origin: &Origin,
        settings: &PoolConfig,
        deadline: Instant,
    ) -> Result<TcpStream, ProxyError> {
        let (host, port) = origin.dial_host();
        let ips = self
            .resolver
            .addresses(host, settings.dns_refresh.get(), deadline)
            .await?;
        let mut addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
        for addr in &addrs {
            if self.loop_guard.is_own_address(*addr) {
                return Err(ProxyError::Loop(addr.to_string()));
            }
        }
        // Checked on the resolved addresses, so a name cannot smuggle a
        // denied address (cloud metadata, say) past the policy.
        {
            let deny = self.deny.read().unwrap_or_else(|p| p.into_inner());
            addrs.retain(|a| !deny.iter().any(|c| c.contains(a.ip())));
        }
        if addrs.is_empty() {
            return Err(ProxyError::Prohibited(origin.to_string()));
        }
        let source = settings.source_address;
        if let Some(source) = source {
            addrs.retain(|a| a.is_ipv4() == source.is_ipv4());
            if addrs.is_empty() {
                return Err(ProxyError::ConnectionRefused {
                    origin: origin.to_string(),
                    reason: format!("no address of the family of source_address {source}"),
                });
            }
        }
        let stream = match super::dial::connect(&addrs, source, deadline).await {
            Ok(stream) => stream,
            Err(DialError::Timeout) => {
                return Err(ProxyError::ConnectTimeout {
                    origin: origin.to_string(),
                })
            }
            Err(DialError::NoLocalPort(_)) => {
                return Err(ProxyError::NoLocalPort {
                    origin: origin.to_string(),
                })
            }
            Err(DialError::Bind(e)) => {
                return Err(ProxyError::ConnectionRefused {
                    origin: origin.to_string(),
                    reason: format!("cannot bind source_address: {e}"),
                })
            }
            Err(DialError::Failed(e)) => return Err(refused(origin, &e)),
        };
        let _ = stream.set_nodelay(true);
        keepalive(&stream);
        Ok(stream)
    }
}

impl Connector {
    /// The TLS handshake, under the same deadline as the TCP connect.
    async fn tls(
        &self,
        origin: &Origin,
        stream: TcpStream,
        deadline: Instant,
        h2: bool,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
        let profile = origin.tls_profile().unwrap_or(&self.default_tls);
        let server_name = match &profile.sni {
            Some(name) => name.clone(),
            None => ServerName::try_from(origin.host().to_string()).map_err(|_| {
                ProxyError::TlsProtocol {
                    origin: origin.to_string(),
                    reason: "the host is not a valid TLS server name".into(),
                }
            })?,
        };
        let config = if h2 {
            &profile.config_h2
        } else {
            &profile.config
        };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        match timeout_at(deadline, connector.connect(server_name, stream)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(tls_error(origin, e)),
            Err(_) => Err(ProxyError::ConnectTimeout {
                origin: origin.to_string(),
            }),
        }
    }
}

impl Connector {
    /// An HTTP/2 connection: over TLS with ALPN `h2`, or by prior
    /// knowledge over plain TCP. Its task runs until the connection ends.
    pub(crate) async fn connect_h2(
        &self,
        origin: &Origin,
        settings: &PoolConfig,
        deadline: Instant,
    ) -> Result<(http2::SendRequest<ReqBody>, Option<SocketAddr>), ProxyError> {
        let tcp = self.tcp(origin, settings, deadline).await?;
        let peer = tcp.peer_addr().ok();
        let stream = if origin.is_tls() {
            let tls = self.tls(origin, tcp, deadline, true).await?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(ProxyError::TlsProtocol {
                    origin: origin.to_string(),
                    reason: "the origin did not agree to HTTP/2 (ALPN h2)".into(),
                });
            }
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Tcp(tcp)
        };
        let (io, _) = CountingIo::new(stream);
        // Pings find a connection that died silently (a NAT dropping the
        // flow), which would otherwise take every request to that origin
        // down with it until TCP gives up.
        //
        // One stream until the origin's first SETTINGS frame arrives: HTTP/2
        // assumes no stream limit before then, so a burst of requests
        // meeting a new connection would open more streams than the origin
        // allows and have them refused. The frame follows the handshake by
        // one round trip; it replaces this with the origin's limit (or none).
        let handshake = http2::Builder::new(TokioExecutor::new())
            .initial_max_send_streams(1)
            .timer(TokioTimer::new())
            .keep_alive_interval(std::time::Duration::from_secs(20))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(io));
        let (sender, connection) =
            handshake_outcome(origin, timeout_at(deadline, handshake).await)?;
        let task_origin = origin.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(origin = %task_origin, error = %e, "HTTP/2 upstream connection ended");
            }
        });
        Ok((sender, peer))
    }
}

/// An HTTP handshake's result under the connect deadline.
fn handshake_outcome<T>(
    origin: &Origin,
    r: Result<Result<T, hyper::Error>, tokio::time::error::Elapsed>,
) -> Result<T, ProxyError> {
    match r {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(ProxyError::ConnectionTerminated {
            origin: origin.to_string(),
            reason: e.to_string(),
        }),
        Err(_) => Err(ProxyError::ConnectTimeout {
            origin: origin.to_string(),
        }),
    }
}

/// A certificate the origin presented and eddy refused, or any other
/// handshake failure.
fn tls_error(origin: &Origin, e: io::Error) -> ProxyError {
    TlsFailure::find(&e)
        .unwrap_or(TlsFailure::Protocol)
        .error(origin.to_string(), &e)
}

/// TCP keepalive: a peer that vanished without a FIN or RST (a NAT that
/// forgot the flow, a host that died) is noticed in about three minutes,
/// which ends tunnels and relays that would otherwise wait for ever.
pub(crate) fn keepalive(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive_params());
}

pub(crate) fn keepalive_params() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(15))
}

fn refused(origin: &Origin, e: &io::Error) -> ProxyError {
    ProxyError::ConnectionRefused {
        origin: origin.to_string(),
        reason: e.to_string(),
    }
}
