//! `CONNECT host:port` tunnels on forward listeners: what `HTTPS_PROXY` clients
//! use. eddy dials the destination first, so a refused, unresolvable or slow
//! destination is answered with the usual 502/504 instead of a 200 that leads
//! nowhere. Then it answers 200 and relays bytes both ways until both sides are
//! done (a half-close is passed on). Tunnels are never pooled; only ports in
//! `security.connect_ports` may be tunnelled to.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{ConnHold, ListenerCtx, ProxyBody, Target};
use crate::access::{AccessRecord, Upstream};
use crate::config::split_host_port;
use crate::error::ProxyError;
use crate::upstream::tunnels::tunnel_destination;
use crate::upstream::Origin;

/// Keeps `eddy_tunnels_open` true.
struct OpenTunnel(prometheus::IntGauge);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(super) async fn connect(
    req: Request<Incoming>,
    ctx: &ListenerCtx,
    record: &mut AccessRecord,
    client: std::net::SocketAddr,
    hold: &ConnHold,
) -> Result<Response<ProxyBody>, ProxyError> {
    let target = tunnel_target(&req)?;
    record.host = Some(target.authority.clone());
    ctx.check_allowed(&target.host)?;
    if !ctx.connect_ports.contains(&target.port) {
        return Err(ProxyError::Denied(
            "CONNECT is only allowed to security.connect_ports",
        ));
    }
    if ctx.loop_guard.is_own_target(&target.host, target.port) {
        return Err(ProxyError::Loop(target.authority));
    }
    if let Some(interceptor) = ctx
        .intercept
        .as_ref()
        .filter(|i| i.intercepts(&target.host))
    {
        let inner = super::intercept::tls_target(&target.host, target.port);
        let route = ctx.router.route(&inner);
        // The app asked for TLS to this host: an `[[upstream]]` that would
        // send its requests on in plain text leaves the tunnel alone.
        if route.origin.is_tls() {
            // Terminated here; the requests inside are dialled by the pool.
            let label = ctx.metrics.origin(route.origin.as_str());
            let tunnel = super::intercept::Tunnel::new(ctx, inner, &label.label);
            let interceptor = interceptor.clone();
            return Ok(after_upgrade(req, ctx, hold, move |upgraded, hold| {
                super::intercept::serve(upgraded, interceptor, tunnel, client, hold)
            }));
        }
        tracing::warn!(host = %target.host, "not intercepted: its [[upstream]] connects without TLS");
    }
    let route = ctx.router.route(&target);
    let mut origin = Origin::new(false, &target.host, target.port);
    // An `[[upstream]]` with `via` for this host: the tunnel goes through
    // the egress proxy (a CONNECT of eddy's own to it), as pooled
    // connections to that origin do.
    if let Some((host, port)) = route.origin.via_proxy() {
        origin = origin.via(host, port);
    }
    let destination = tunnel_destination(&origin);
    // Counted under the destination (`tcp://host:port`), within the label cap.
    record.origin = Some(ctx.metrics.origin(&destination));
    record.upstream = Some(Upstream::Tunnel(destination));
    let settings = route.settings;
    let started = std::time::Instant::now();
    let (upstream, listed) = ctx.pool.open_tunnel(&origin, &settings).await?;
    record.connect = Some(started.elapsed());
    record.first_byte = Some(std::time::Instant::now());
    record.peer = upstream.peer_addr().ok();
    record.reused = Some(false);
    Ok(after_upgrade(
        req,
        ctx,
        hold,
        move |upgraded, hold| async move {
            let _hold = hold;
            let _listed = listed;
            let mut client = TokioIo::new(upgraded);
            let mut upstream = upstream;
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((up, down)) => tracing::debug!(%origin, up, down, "tunnel closed"),
                Err(e) => tracing::debug!(%origin, error = %e, "tunnel ended with an error"),
            }
        },
    ))
}

/// The 200 that opens a tunnel; `relay` then runs on the client's
/// connection once hyper hands it over, counted in `eddy_tunnels_open`
/// and holding the client connection's slot (`hold`) while it runs.
fn after_upgrade<F, Fut>(
    req: Request<Incoming>,
    ctx: &ListenerCtx,
    hold: &ConnHold,
    relay: F,
) -> Response<ProxyBody>
where
    F: FnOnce(hyper::upgrade::Upgraded, ConnHold) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(req);
    ctx.tunnels.inc();
    ctx.tunnels_open.inc();
    let open = OpenTunnel(ctx.tunnels_open.clone());
    let hold = hold.clone();
    tokio::spawn(async move {
        let _open = open;
        match on_upgrade.await {
            Ok(upgraded) => relay(upgraded, hold).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(ProxyBody::Full(None))
}

/// The `host:port` of a CONNECT request (authority-form; the port is
/// required).
fn tunnel_target(req: &Request<Incoming>) -> Result<Target, ProxyError> {
    let authority = req
        .uri()
        .authority()
        .ok_or(ProxyError::BadRequest("CONNECT needs a host:port target"))?;
    match split_host_port(authority.as_str()) {
        Some((host, Some(port))) => Ok(Target {
            host,
            port,
            authority: authority.as_str().to_string(),
            tls: false,
        }),
        _ => Err(ProxyError::BadRequest("CONNECT needs a host:port target")),
    }
}
