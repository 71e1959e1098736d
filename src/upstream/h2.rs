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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// The address it is connected to.
    pub peer: Option<std::net::SocketAddr>,
    /// How long opening it took.
    pub connect_took: Option<std::time::Duration>,
    /// The origin's `dns_refresh` when it opened.
    pub dns_refresh: std::time::Duration,
    /// The resolver's change count when `peer` was last checked against
    /// the origin's answer.
    pub dns_changes: u64,
}

/// One HTTP/2 origin: its connection, and what `/pools` shows of it.
#[derive(Default)]
pub(crate) struct H2Slot {
    /// The current connection; locked while one is being opened.
    pub(crate) conn: tokio::sync::Mutex<Option<H2Conn>>,
    /// A connect is under way.
    pub(crate) connecting: AtomicBool,
    /// Requests in flight on it (head sent, response body not yet over).
    streams: AtomicUsize,
    /// Connects that failed in a row, and the last one's time and type.
    failures: Mutex<(u32, Option<(tokio::time::Instant, &'static str)>)>,
}

impl H2Slot {
    /// Keeps the run of failed connects (for `/pools`).
    pub(crate) fn note_connect(&self, failed: Option<&'static str>) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failed {
            None => f.0 = 0,
            Some(error) => {
                f.0 = f.0.saturating_add(1);
                f.1 = Some((tokio::time::Instant::now(), error));
            }
        }
    }
}

/// A request in flight on an HTTP/2 origin's connection: counted while
/// this is held (by the response body, until it ends).
pub(crate) struct InFlight(Arc<H2Slot>);

impl InFlight {
    pub(crate) fn new(slot: Arc<H2Slot>) -> InFlight {
        slot.streams.fetch_add(1, Ordering::Relaxed);
        InFlight(slot)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An HTTP/2 origin's state at one moment.
pub(crate) struct H2View {
    pub origin: Origin,
    /// A connection is open.
    pub open: bool,
    pub connecting: bool,
    pub streams: usize,
    pub connect_failures: u32,
    pub last_failure: Option<(tokio::time::Instant, &'static str)>,
}

#[derive(Default)]
pub(crate) struct H2Slots {
    slots: Mutex<HashMap<Origin, Arc<H2Slot>>>,
    next_id: AtomicU64,
}

impl H2Slots {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The slot for `origin` (created on first use).
    pub(crate) fn slot(&self, origin: &Origin) -> Arc<H2Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(origin.clone()).or_default().clone()
    }

    /// Every HTTP/2 origin's state (for `/pools` and the gauges). A slot
    /// locked by a request checking it is counted as open if it carries
    /// streams.
    pub(crate) fn views(&self) -> Vec<H2View> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .map(|(origin, slot)| {
                let streams = slot.streams.load(Ordering::Relaxed);
                let connecting = slot.connecting.load(Ordering::Relaxed);
                let open = match slot.conn.try_lock() {
                    Ok(c) => c.as_ref().is_some_and(|c| !c.sender.is_closed()),
                    Err(_) => streams > 0,
                };
                let (connect_failures, last_failure) =
                    *slot.failures.lock().unwrap_or_else(|p| p.into_inner());
                H2View {
                    origin: origin.clone(),
                    open,
                    connecting,
                    streams,
                    connect_failures,
                    last_failure,
                }
            })
            .collect()
    }

    /// Keeps the slots of the origins `keep` accepts (a reload): a dropped
    /// slot's connection closes once the streams on it end, and the next
    /// request opens one under the new settings.
    pub(crate) fn retain(&self, keep: impl Fn(&Origin) -> bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|origin, _| keep(origin));
    }

    /// Origins with an open connection (whose names the pool keeps
    /// fresh), with their `dns_refresh`.
    pub(crate) fn open_origins(&self) -> Vec<(Origin, std::time::Duration)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .filter_map(|(origin, slot)| {
                let current = slot.conn.try_lock().ok()?;
                let c = current.as_ref().filter(|c| !c.sender.is_closed())?;
                Some((origin.clone(), c.dns_refresh))
            })
            .collect()
    }

    /// Drops each origin's connection whose address `gone` picks (it left
    /// the origin's DNS answer): streams on it finish, and the next request
    /// opens a connection to a current address. Returns how many.
    pub(crate) fn forget_gone(&self, gone: impl Fn(&Origin, std::net::IpAddr) -> bool) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut dropped = 0;
        for (origin, slot) in slots.iter() {
            // Locked: a connect is under way, to a current address.
            let Ok(mut current) = slot.conn.try_lock() else {
                continue;
            };
            let leaving = current
                .as_ref()
                .and_then(|c| c.peer)
                .is_some_and(|peer| gone(origin, peer.ip()));
            if leaving {
                if let Some(c) = current.take() {
                    c.metrics
                        .connection_closed(crate::metrics::CloseReason::AddressGone);
                }
                dropped += 1;
            }
        }
        dropped
    }

    /// Forgets connection `id` if it is still the origin's current one.
    pub(crate) async fn forget(&self, origin: &Origin, id: u64) {
        let slot = self.slot(origin);
        let mut current = slot.conn.lock().await;
        let forgotten = current.as_ref().is_some_and(|c| c.id == id);
        if forgotten {
            *current = None;
        }
        tracing::trace!(%origin, id, forgotten, "HTTP/2 connection dropped from its slot");
    }
}
