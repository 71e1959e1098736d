//! An intercepted CONNECT tunnel (`[tls_intercept]`): eddy is the TLS
//! server inside it, as the host the client asked for, and each request
//! read from it goes through the pool to `https://host:port` exactly as a
//! route listener's request would: every pool rule, retry, drain, metric
//! and access-log field applies, and so do `[[upstream]]` entries matching
//! `host:port`.
//!
//! The handshake is read first (`LazyConfigAcceptor`): a server name
//! (SNI) other than the CONNECT host ends the connection, so a client
//! cannot use a listed CONNECT to obtain a leaf for another name. A client
//! that does not trust the CA fails its own handshake, before any request
//! exists, so nothing reaches the origin.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_rustls::LazyConfigAcceptor;

use super::{ConnHold, ListenerCtx, Target};
use crate::config::ListenerMode;
use crate::intercept::Interceptor;

/// The `https://` target the requests of a tunnel to `host:port` go to.
pub(super) fn tls_target(host: &str, port: u16) -> Target {
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let authority = if port == 443 {
        bracketed
    } else {
        format!("{bracketed}:{port}")
    };
    Target {
        host: host.to_string(),
        port,
        authority,
        tls: true,
    }
}

/// One tunnel to intercept: its target, the context its requests are
/// served under (the listener's, routed to the target like a route
/// listener's), and the counter of its requests.
pub(super) struct Tunnel {
    pub(super) target: Target,
    pub(super) ctx: Arc<ListenerCtx>,
    pub(super) intercepted: prometheus::IntCounter,
}

impl Tunnel {
    pub(super) fn new(ctx: &ListenerCtx, target: Target, origin_label: &str) -> Tunnel {
        let intercepted = ctx.metrics.intercepted.with_label_values(&[origin_label]);
        let mut inner = ctx.clone();
        inner.mode = ListenerMode::Route;
        inner.route_target = Some(target.clone());
        Tunnel {
            target,
            ctx: Arc::new(inner),
            intercepted,
        }
    }
}

/// Serves one intercepted tunnel until the client closes it, it idles
/// past `client_idle_timeout`, or eddy shuts down.
pub(super) async fn serve(
    upgraded: Upgraded,
    interceptor: Arc<Interceptor>,
    tunnel: Tunnel,
    client: SocketAddr,
    hold: ConnHold,
) {
    let Tunnel {
        target,
        ctx,
        intercepted,
    } = tunnel;
    // The handshake gets `client_header_timeout`, as a request head does:
    // a client that sends nothing does not hold its slot for ever.
    let deadline = tokio::time::Instant::now() + ctx.heads.timeout;
    let acceptor =
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), TokioIo::new(upgraded));
    let start = match tokio::time::timeout_at(deadline, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(host = %target.host, error = %e, "intercepted tunnel: no TLS ClientHello");
            return;
        }
        Err(_) => {
            tracing::debug!(host = %target.host, "intercepted tunnel: no TLS ClientHello in time");
            return;
        }
    };
    // The CONNECT host is lower case already.
    let hello = start.client_hello();
    let sni = hello.server_name();
    if sni.is_some_and(|name| !name.eq_ignore_ascii_case(&target.host)) {
        tracing::debug!(host = %target.host, sni = ?sni, "intercepted tunnel: the server name is not the CONNECT host");
        return;
    }
    let config = match interceptor.server_config(&target.host) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(host = %target.host, error = %e, "intercepted tunnel: no leaf certificate");
            return;
        }
    };
    let tls = match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // Usually a client that does not trust the CA, or that offers
            // only h2.
            tracing::debug!(host = %target.host, error = %e, "intercepted tunnel: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(host = %target.host, "intercepted tunnel: TLS handshake not finished in time");
            return;
        }
    };
    let idle = ctx.body_pace.idle;
    let heads = ctx.heads;
    let preserve_case = ctx.preserve_header_case;
    let shutdown = ctx.shutdown.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        intercepted.inc();
        let (ctx, hold) = (ctx.clone(), hold.clone());
        async move { Ok::<_, Infallible>(super::handle_intercepted(req, &ctx, client, &hold).await) }
    });
    // The listener's own limits. hyper's head timer runs while it waits
    // for the next request too, so `client_idle_timeout` is also the
    // longest an intercepted connection stays idle, as plain ones do.
    // (No head scanner here: hyper answers an oversized head itself,
    // without `Proxy-Status`.)
    let mut http = super::http1_builder(heads.max_bytes, heads.max_fields, preserve_case);
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(idle);
    let conn = http
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    // At shutdown the request in flight finishes and no other is taken.
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(host = %target.host, error = %e, "intercepted connection ended");
    }
}
