//! Sending a request upstream, and sending it again when the connection it
//! went on turned out stale: a connection the origin had closed while it
//! sat idle (docs/design.md, "Stale retry"). HTTP/1 goes through the pool,
//! HTTP/2 over the origin's shared connection; both ask the one rule in
//! [`super::retry`] whether a failed attempt goes again.
//!
//! What each side contributes:
//! - a request is replayable if its method is idempotent (GET, HEAD,
//!   OPTIONS, TRACE, PUT, DELETE) or it carries `Idempotency-Key` /
//!   `X-Idempotency-Key`, and its body is empty or was buffered in full
//!   (at most `retry.retry_body_buffer`): then a copy is kept;
//! - HTTP/1: a failure with EOF, reset or broken pipe before any response
//!   byte, on a connection that had served a request before (or before the
//!   request was written), is a lost connection; anything else is final;
//! - HTTP/2: a refused stream is refused, a malformed answer or our own
//!   body failing is final, anything else is a lost connection;
//! - a request that could not be replayed only goes on a connection idle for
//!   less than `retry.unsafe_max_idle_age`, or a new one, so the race it
//!   cannot recover from is rare; if it still hits it, the client gets 502
//!   `connection_terminated` and the request is never sent twice.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::retry::{self, Failure, InHand};
use crate::access::AccessRecord;
use crate::config::RetryConfig;
use crate::error::{chain, ProxyError};
use crate::upstream::pool::Lease;
use crate::upstream::tls::TlsFailure;
use crate::upstream::{Pool, ReqBody, RequestProgress, Reuse, Route};

/// Whether the method or headers allow replaying this request at all.
pub(super) fn idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || headers.contains_key("idempotency-key")
        || headers.contains_key("x-idempotency-key")
}

/// What a replay needs: the request head and its buffered body. Taken only
/// when a replay could happen (a reused connection, a replayable request).
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// What hyper keeps with the head: the case of the client's names.
    extensions: http::Extensions,
    body: Option<Bytes>,
}

impl Template {
    fn of(req: &Request<ReqBody>) -> Option<Template> {
        let body = match req.body() {
            ReqBody::Empty => None,
            ReqBody::Full(Some(b)) => Some(b.clone()),
            _ => return None,
        };
        Some(Template {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
            body,
        })
    }

    /// A fresh copy of the request (for HTTP/2, where each attempt needs
    /// one).
    fn to_request(&self) -> Request<ReqBody> {
        let mut req = Request::new(match &self.body {
            Some(b) => ReqBody::Full(Some(b.clone())),
            None => ReqBody::Empty,
        });
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        req
    }

    fn build(self) -> Request<ReqBody> {
        let mut req = Request::new(match self.body {
            Some(b) => ReqBody::Full(Some(b)),
            None => ReqBody::Empty,
        });
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        *req.extensions_mut() = self.extensions;
        req
    }
}

/// Sends `req` and, under the rule above, again on a new connection when
/// the one it went on was stale. What happens is written into `record` as it
/// happens, so a request abandoned midway is still accounted for.
pub(super) async fn send_with_retry(
    ctx: &super::ListenerCtx,
    route: &Route,
    req: Request<ReqBody>,
    progress: Option<Arc<RequestProgress>>,
    record: &mut AccessRecord,
) -> Result<(Response<Incoming>, Lease), ProxyError> {
    let (pool, retry) = (&ctx.pool, &ctx.retry);
    let (body_idle, drain) = (ctx.body_pace.idle, ctx.drain);
    let replayable = idempotent(req.method(), req.headers())
        && matches!(req.body(), ReqBody::Empty | ReqBody::Full(_));
    let mut reuse = if replayable {
        Reuse::Any
    } else {
        Reuse::IdleUnder(retry.unsafe_max_idle_age.get())
    };
    let timeout = route.settings.response_header_timeout.get();
    let mut req = req;
    let mut pool_wait = Duration::ZERO;
    loop {
        let pooled = match pool.checkout(route, reuse).await {
            Ok(p) => p,
            Err(error) => {
                record.count_retry(false);
                return Err(error);
            }
        };
        if let Some(m) = pooled.metrics() {
            if pooled.is_reused() {
                m.upstream_reused.inc();
            } else {
                m.upstream_new.inc();
            }
            record.origin = Some(m);
        }
        pool_wait += pooled.waited();
        record.pool_wait = Some(pool_wait);
        record.reused = Some(pooled.is_reused());
        record.peer = pooled.peer();
        record.connect = pooled.connect_time();
        // Only a reused connection can be stale, and only while a retry is
        // left is a copy of the request worth its cost.
        let template = (replayable && record.retries < retry.stale_retries && pooled.is_reused())
            .then(|| Template::of(&req))
            .flatten();
        let failure = match pooled
            .send(req, progress.clone(), timeout, body_idle, drain)
            .await
        {
            Ok(exchanged) => {
                record.first_byte = Some(std::time::Instant::now());
                record.count_retry(true);
                return Ok(exchanged);
            }
            Err(f) => f,
        };
        record.count_retry(false);
        let kind = if failure.stale {
            Failure::Lost
        } else {
            Failure::Final
        };
        let in_hand = match (&failure.unsent, &template) {
            (Some(_), _) => InHand::Unsent,
            (None, Some(_)) => InHand::Copy,
            (None, None) => InHand::Nothing,
        };
        // `template` exists only for an idempotent request.
        if !retry::again(kind, in_hand, true, record.retries, retry.stale_retries) {
            return Err(failure.error);
        }
        req = match (failure.unsent, template) {
            (Some(unsent), _) => unsent,
            (None, Some(t)) => t.build(),
            (None, None) => return Err(failure.error),
        };
        tracing::debug!(origin = %route.origin, retry = record.retries + 1, "stale upstream connection; sending again on a new one");
        record.retries += 1;
        reuse = Reuse::Fresh;
    }
}

/// Whether the origin refused the stream (GOAWAY or `REFUSED_STREAM`): it
/// never processed the request, so sending it again is safe for any method.
fn refused_stream(e: &hyper::Error) -> bool {
    chain(e)
        .find_map(|err| err.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
        })
}

/// Whether an HTTP/2 error concerns the whole connection (GOAWAY, I/O, a
/// closed connection) rather than one stream (a reset stream leaves the
/// shared connection healthy).
fn connection_level(e: &hyper::Error) -> bool {
    chain(e)
        .find_map(|err| err.downcast_ref::<h2::Error>())
        .is_none_or(|h2| h2.is_go_away() || h2.is_io() || !h2.is_reset())
}

/// Sends `req` over the origin's shared HTTP/2 connection. A request that
/// fails with the connection (the origin sent GOAWAY, or it was lost) goes
/// again on a new connection if it can be replayed, at most
/// `retry.stale_retries` times.
pub(super) async fn send_h2(
    pool: &Pool,
    route: &Route,
    mut req: Request<ReqBody>,
    retry: &RetryConfig,
    record: &mut AccessRecord,
) -> Result<Response<Incoming>, ProxyError> {
    let origin = route.origin.to_string();
    // HTTP/2 carries the authority in the request URI (`:authority`).
    let authority = req
        .headers_mut()
        .remove(http::header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| route.origin.host().to_string());
    let scheme = if route.origin.is_tls() {
        "https"
    } else {
        "http"
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|_| ProxyError::BadRequest("the target cannot be sent over HTTP/2"))?;
    *req.version_mut() = Version::HTTP_2;
    let idempotent = idempotent(req.method(), req.headers());
    // Any request whose body is at hand can be re-sent if the origin
    // refused its stream (never processed); idempotent ones also after
    // other connection failures.
    let template = (retry.stale_retries > 0)
        .then(|| Template::of(&req))
        .flatten();
    let timeout = route.settings.response_header_timeout.get();
    loop {
        let (conn, reused) = match pool.h2_sender(&route.origin, &route.settings).await {
            Ok(opened) => opened,
            Err(error) => {
                record.count_retry(false);
                return Err(error);
            }
        };
        let (mut sender, id) = (conn.sender, conn.id);
        record.reused = Some(reused);
        record.peer = conn.peer;
        record.connect = conn.connect_took.filter(|_| !reused);
        if reused {
            conn.metrics.upstream_reused.inc();
        } else {
            conn.metrics.upstream_new.inc();
        }
        record.origin = Some(conn.metrics);
        let attempt = async {
            sender.ready().await?;
            sender.send_request(req).await
        };
        let error = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(resp)) => {
                record.first_byte = Some(std::time::Instant::now());
                record.count_retry(true);
                return Ok(resp);
            }
            Ok(Err(e)) => e,
            Err(_) => {
                // A connection that cannot answer in time is not trusted
                // with the next request.
                pool.h2_forget(&route.origin, id).await;
                return Err(ProxyError::ResponseTimeout { origin });
            }
        };
        if connection_level(&error) {
            pool.h2_forget(&route.origin, id).await;
        }
        record.count_retry(false);
        let kind = if error.is_user() || error.is_parse() {
            Failure::Final
        } else if refused_stream(&error) {
            Failure::Refused
        } else {
            Failure::Lost
        };
        let in_hand = if template.is_some() {
            InHand::Copy
        } else {
            InHand::Nothing
        };
        let again = retry::again(
            kind,
            in_hand,
            idempotent,
            record.retries,
            retry.stale_retries,
        );
        match (&template, again) {
            (Some(t), true) => {
                tracing::debug!(%origin, error = %error, "HTTP/2 connection failed; sending again on a new one");
                req = t.to_request();
                record.retries += 1;
            }
            _ if error.is_parse() => {
                return Err(ProxyError::HttpProtocol {
                    origin,
                    reason: error.to_string(),
                })
            }
            _ => {
                return Err(match TlsFailure::find(&error) {
                    Some(tls) => tls.error(origin, &error),
                    None => ProxyError::ConnectionTerminated {
                        origin,
                        reason: error.to_string(),
                    },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn idempotency_follows_method_and_key() {
        let mut h = HeaderMap::new();
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(idempotent(&m, &h), "{m}");
        }
        assert!(!idempotent(&Method::POST, &h));
        assert!(!idempotent(&Method::PATCH, &h));
        h.insert("idempotency-key", HeaderValue::from_static("k1"));
        assert!(idempotent(&Method::POST, &h));
        let mut x = HeaderMap::new();
        x.insert("x-idempotency-key", HeaderValue::from_static("k1"));
        assert!(idempotent(&Method::PATCH, &x));
    }
}
