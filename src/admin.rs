//! The admin port: the status page, liveness, readiness,
//! pool state, metrics and the effective configuration. It answers only
//! these endpoints, and only GET (HEAD too); everything else is 404 or 405.

mod status;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::shutdown::ShutdownSignal;
use crate::upstream::Pool;

/// What the admin endpoints read.
pub(crate) struct AdminState {
    /// The configuration in effect (a reload replaces it).
    pub config: std::sync::RwLock<Arc<Config>>,
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    /// True once every listener is bound; false again while shutting down.
    pub ready: AtomicBool,
    /// Recent counter samples for the status page's rates.
    pub(crate) history: status::History,
}

impl AdminState {
    /// Records the counters for the status page's window (at start; then
    /// the sampler in [`serve`] does it).
    pub(crate) fn sample(&self) {
        self.history.sample(&self.metrics);
    }

    pub(crate) fn current_config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: ShutdownSignal) {
    let sampler = {
        let state = state.clone();
        let stop = shutdown.clone();
        async move {
            // The first sample was taken at start (Eddy::start).
            let first = tokio::time::Instant::now() + status::SAMPLE_EVERY;
            let mut tick = tokio::time::interval_at(first, status::SAMPLE_EVERY);
            // After a stall, no burst of samples that would shrink the window.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => state.sample(),
                    _ = stop.wait() => return,
                }
            }
        }
    };
    tokio::spawn(sampler);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => return,
        };
        let state = state.clone();
        let conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state)) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = conn_shutdown.wait() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn route(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/" => with_type(
            StatusCode::OK,
            Bytes::from_static(status::PAGE.as_bytes()),
            "text/html; charset=utf-8",
        ),
        "/status.json" => json(
            serde_json::to_string(&status::status(&state.pool, &state.metrics, &state.history))
                .unwrap_or_else(|_| "{}".into()),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/pools" => json(pools_json(&state.pool)),
        "/metrics" => with_type(
            StatusCode::OK,
            state.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/config" => with_type(
            StatusCode::OK,
            state.current_config().to_toml(),
            "application/toml; charset=utf-8",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/pools`: an object keyed by origin.
pub(crate) fn pools_json(pool: &Pool) -> String {
    let map: serde_json::Map<String, serde_json::Value> = pool
        .snapshot()
        .into_iter()
        .map(|s| {
            let key = s.origin.clone();
            (
                key,
                serde_json::to_value(s).unwrap_or(serde_json::Value::Null),
            )
        })
        .collect();
    serde_json::to_string_pretty(&map).unwrap_or_else(|_| "{}".into())
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, body.to_string(), "text/plain; charset=utf-8")
}

fn json(body: String) -> Response<Full<Bytes>> {
    with_type(StatusCode::OK, body, "application/json")
}

fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
