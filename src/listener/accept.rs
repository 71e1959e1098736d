//! The accept loop of one listener, and what each accepted connection holds
//! while it lives.
//!
//! Why a permit is taken *before* `accept`: at `max_client_connections` the
//! loop stops accepting and the kernel backlog holds the rest, where a
//! limit checked after `accept` could only drop a connection already taken.
//! Accept errors such as `EMFILE` back off (from 5 ms, doubling up to 1 s)
//! and retry; they never end the loop, which ends only at shutdown.
//!
//! The permit, the `eddy_client_connections_open` count and the connection's
//! place in graceful shutdown are bundled into one hold, shared with a
//! CONNECT tunnel that outlives the HTTP exchange on its connection; the
//! last of them to end releases all three at once.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::{ClientConn, ClientLimits};
use super::socket::Bound;
use crate::config::ListenerConfig;
use crate::proxy::http1_builder;
use crate::proxy::ListenerSlot;
use crate::shutdown::{ConnTracker, ShutdownSignal};

/// Runs a listener until shutdown.
pub(crate) async fn serve(
    bound: Bound,
    config: &ListenerConfig,
    slot: Arc<ListenerSlot>,
    shutdown: ShutdownSignal,
    tracker: ConnTracker,
) {
    let permits = Arc::new(Semaphore::new(config.max_client_connections));
    let limits = Arc::new(ClientLimits {
        header_timeout: config.client_header_timeout.get(),
        idle_timeout: config.client_idle_timeout.get(),
        max_header_bytes: config.max_header_bytes.as_usize(),
        max_headers: config.max_headers,
    });
    let builder = Arc::new(http1_builder(
        config.max_header_bytes.as_usize(),
        config.max_headers,
        config.preserve_header_case,
    ));
    let ctx = slot.current();
    let accepted_total = ctx
        .metrics
        .client_connections
        .with_label_values(&[&ctx.name]);
    let open = ctx
        .metrics
        .client_connections_open
        .with_label_values(&[&ctx.name]);
    // One wait on the shutdown signal for the whole loop: each new wait
    // would register with the signal again.
    let mut stop = pin!(shutdown.wait());
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut stop => break,
            },
        };
        let accepted = tokio::select! {
            r = bound.accept() => r,
            _ = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                tracing::warn!(listener = %ctx.name, error = %e, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        accepted_total.inc();
        open.inc();
        let conn = ClientConn {
            hold: Arc::new(Held {
                _open: OpenGuard(open.clone()),
                _permit: permit,
                _track: tracker.track(),
            }),
            slot: slot.clone(),
            limits: limits.clone(),
            builder: builder.clone(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(conn.serve(stream, peer));
    }
    if let Bound::Unix(_, path) = &bound {
        let _ = std::fs::remove_file(path);
    }
}

/// Keeps `eddy_client_connections_open` true: one per live connection.
struct OpenGuard(prometheus::IntGauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a client connection holds while it lives, shared with a CONNECT
/// tunnel that outlives the HTTP exchange on it.
struct Held {
    _open: OpenGuard,
    _permit: OwnedSemaphorePermit,
    _track: crate::shutdown::TrackGuard,
}
