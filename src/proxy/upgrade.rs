//! `Upgrade` requests, WebSocket in practice: the request gets an upstream
//! connection of its own, outside the pool; if the origin answers 101 the two
//! sockets are relayed both ways until either side is done, and the connection
//! is closed with the client's, never reused. Anything but 101 is relayed as an
//! ordinary response, and the dedicated connection closes after it.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{strip_hop_by_hop, ConnHold, DirectBody, ListenerCtx, ProxyBody, Target};
use crate::access::{AccessRecord, Upstream};
use crate::error::ProxyError;
use crate::upstream::ReqBody;

/// Whether the request asks to switch protocols.
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub(super) async fn relay(
    mut req: Request<Incoming>,
    target: Target,
    ctx: &ListenerCtx,
    record: &mut AccessRecord,
    hold: &ConnHold,
) -> Result<Response<ProxyBody>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let route = ctx.router.route(&target);
    record.origin = Some(ctx.metrics.origin(route.origin.as_str()));
    record.reused = Some(false);
    record.upstream = Some(Upstream::Origin(route.origin.clone()));
    let (mut parts, body) = req.into_parts();
    let protocol = parts.headers.get(UPGRADE).cloned();
    super::headers::rewrite_for_upstream(&mut parts, &target.authority, &ctx.via)?;
    if let Some(p) = protocol {
        parts.headers.insert(UPGRADE, p);
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if let Some(uri) = crate::upstream::via::absolute_form(&route.origin, &parts.uri) {
        parts.uri = uri;
    }
    let (body, _) = ReqBody::from_incoming(body, ctx.body_pace);
    let settings = &route.settings;
    let mut sender = ctx.pool.open_dedicated(&route.origin, settings).await?;
    let origin = route.origin.to_string();
    let sent = tokio::time::timeout(
        settings.response_header_timeout.get(),
        sender.send_request(Request::from_parts(parts, body)),
    )
    .await;
    let mut resp = match sent {
        Ok(Ok(resp)) => {
            record.first_byte = Some(std::time::Instant::now());
            resp
        }
        Ok(Err(e)) if e.is_parse() => {
            return Err(ProxyError::HttpProtocol {
                origin,
                reason: e.to_string(),
            })
        }
        Ok(Err(e)) => {
            return Err(ProxyError::ConnectionTerminated {
                origin,
                reason: e.to_string(),
            })
        }
        Err(_) => return Err(ProxyError::ResponseTimeout { origin }),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, incoming) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(
            parts,
            ProxyBody::Direct(DirectBody::new(incoming)),
        ));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let hold = hold.clone();
    let task_origin = route.origin.clone();
    tokio::spawn(async move {
        let _hold = hold;
        let (upstream, client) = tokio::join!(upstream_upgrade, client_upgrade);
        let (Ok(upstream), Ok(client)) = (upstream, client) else {
            tracing::debug!(origin = %task_origin, "upgrade did not complete");
            return;
        };
        let (mut upstream, mut client) = (TokioIo::new(upstream), TokioIo::new(client));
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                tracing::debug!(origin = %task_origin, up, down, "upgraded connection closed")
            }
            Err(e) => {
                tracing::debug!(origin = %task_origin, error = %e, "upgraded connection ended with an error")
            }
        }
        drop(sender);
    });
    let (mut parts, _) = resp.into_parts();
    let protocol = parts.headers.get(UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(p) = protocol {
        parts.headers.insert(UPGRADE, p);
    }
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    Ok(Response::from_parts(parts, ProxyBody::Full(None)))
}
