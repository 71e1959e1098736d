//! HTTP/2 upstreams (`[[upstream]] http2 = true`).
//!
//! One HTTP/2 connection carries many requests at once, so these origins do
//! not use the HTTP/1 pool: each has a single multiplexed connection, opened
//! on first use (concurrent first requests wait for that one connect instead
//! of opening their own) and replaced once it is closed or the origin sent
//! GOAWAY. hyper queues streams beyond the origin's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`. One connection per origin is within
//! any `max_connections_per_host`.
//!
//! The map is bounded by configuration: only `[[upstream]]` entries with
//! `http2 = true` have a slot, and a reload drops the slots of origins no
//! route reaches any more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::client::conn::http2::SendRequest;

use super::origin::Origin;
use super::request_body::ReqBody;
use crate::metrics::OriginMetrics;

/// A shared HTTP/2 connection, with its origin's metric handles resolved
/// once when it opened (not looked up again per request).
#[derive(Clone)]
pub(crate) struct H2Conn {
    pub id: u64,
    pub sender: SendRequest<ReqBody>,
    pub metrics: Arc<OriginMetrics>,
}

#[derive(Default)]
pub(crate) struct H2Slots {
    slots: Mutex<HashMap<Origin, Arc<tokio::sync::Mutex<Option<H2Conn>>>>>,
    next_id: AtomicU64,
}

impl H2Slots {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The slot for `origin` (created on first use).
    pub(crate) fn slot(&self, origin: &Origin) -> Arc<tokio::sync::Mutex<Option<H2Conn>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(origin.clone()).or_default().clone()
    }

    /// Keeps the slots of the origins `keep` accepts (a reload): a dropped
    /// slot's connection closes once the streams on it end, and the next
    /// request opens one under the new settings.
    pub(crate) fn retain(&self, keep: impl Fn(&Origin) -> bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|origin, _| keep(origin));
    }

    /// Forgets connection `id` if it is still the origin's current one.
    pub(crate) async fn forget(&self, origin: &Origin, id: u64) {
        let slot = self.slot(origin);
        let mut current = slot.lock().await;
        let forgotten = current.as_ref().is_some_and(|c| c.id == id);
        if forgotten {
            *current = None;
        }
        tracing::trace!(%origin, id, forgotten, "HTTP/2 connection dropped from its slot");
    }
}
