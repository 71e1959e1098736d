//! Following DNS: keeping the names of pooled origins fresh, and retiring
//! connections whose address left their origin's answer.
//!
//! A pool that only resolves when it opens a connection never notices a
//! move while its connections live: busy origins open nothing new. So a
//! task asks again for the name of every origin with connections (or
//! requests waiting) as its answer runs out (`dns_refresh`, or a shorter
//! TTL). When any answer changes:
//! - idle connections to an address no longer in their origin's answer
//!   are closed at once (`reason="address_gone"`);
//! - busy ones finish their exchange and are closed as they come back
//!   (`release`), never interrupted;
//! - new connections go to the new addresses.
//!
//! Each connection also counts toward its address ([`Peers`]), which is
//! what `/pools` shows per origin: the current addresses and the
//! connections each holds, a gone address included while it has any.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::conn::Conn;
use super::{CloseReason, Pool, WeakPool};
use crate::upstream::origin::Origin;

/// How often the task looks for answers that ran out. An answer is asked
/// for again at most this long after it expired.
const TICK: Duration = Duration::from_millis(500);

/// The longest lookup for an HTTP/2 origin's name (its connection does not
/// keep its `connect_timeout`).
const H2_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

impl Pool {
    /// Asks again for the names of pooled origins as their answers expire,
    /// and closes idle connections to addresses that left. Holds the pool
    /// only while it works.
    pub(super) async fn follow_dns(pool: WeakPool) {
        let mut seen = 0;
        loop {
            tokio::time::sleep(TICK).await;
            let Some(strong) = pool.upgrade() else { return };
            if strong.lock().is_closing() {
                return;
            }
            let resolver = strong.shared.connector.resolver().clone();
            let mut names: Vec<(String, Duration, Duration)> = {
                let st = strong.lock();
                st.origins()
                    .filter(|(_, os)| os.total() > 0 || os.pending() > 0)
                    .map(|(o, os)| {
                        let s = os.settings();
                        (
                            o.dial_host().0.to_string(),
                            s.dns_refresh.get(),
                            s.connect_timeout.get(),
                        )
                    })
                    .collect()
            };
            names.extend(
                strong
                    .shared
                    .h2
                    .open_origins()
                    .iter()
                    .map(|(o, refresh)| (o.dial_host().0.to_string(), *refresh, H2_LOOKUP_TIMEOUT)),
            );
            names.retain(|(host, ..)| host.parse::<IpAddr>().is_err());
            names.sort();
            names.dedup_by(|a, b| a.0 == b.0);
            // Not held while lookups wait: the pool may be dropped meanwhile.
            drop(strong);
            for (host, ceiling, timeout) in names {
                let now = Instant::now();
                if resolver.fresh_until(&host).is_none_or(|t| t <= now) {
                    resolver.refresh(&host, ceiling, now + timeout).await;
                }
            }
            let Some(pool) = pool.upgrade() else { return };
            let changes = resolver.changes();
            if changes != seen {
                seen = changes;
                pool.close_idle_to_gone_addresses();
            }
        }
    }

    /// Closes every idle connection whose address left its origin's
    /// answer.
    fn close_idle_to_gone_addresses(&self) {
        let origins: Vec<Origin> = self
            .lock()
            .origins()
            .filter(|(_, os)| !os.idle().is_empty())
            .map(|(o, _)| o.clone())
            .collect();
        let resolver = self.shared.connector.resolver();
        for origin in origins {
            let Some(current) = resolver.current(origin.dial_host().0) else {
                continue;
            };
            let gone = |c: &Conn| c.peer.is_some_and(|ip| !current.contains(&ip));
            let closed = self.with_core(|core, deliver, fx| {
                core.close_idle_where(&origin, gone, CloseReason::AddressGone, deliver, fx)
            });
            if closed > 0 {
                tracing::info!(%origin, closed, "closed idle connections to an address the origin's name no longer has");
            }
        }
        let dropped = self.shared.h2.forget_gone(|origin, ip| {
            resolver
                .current(origin.dial_host().0)
                .is_some_and(|current| !current.contains(&ip))
        });
        if dropped > 0 {
            tracing::info!(
                dropped,
                "HTTP/2 connections to addresses that left their origin's answer are replaced"
            );
        }
    }

    /// A connection coming back: whether its address left its origin's
    /// answer since it was last checked (one atomic read when nothing
    /// changed).
    pub(super) fn address_gone(&self, origin: &Origin, conn: &mut Conn) -> Option<CloseReason> {
        self.left_answer(origin, &mut conn.dns_changes, conn.peer)
            .then_some(CloseReason::AddressGone)
    }

    /// The same check for an origin's HTTP/2 connection, as a request is
    /// about to use it: a connection to a gone address is replaced (the
    /// streams on it finish), counted as `address_gone`.
    pub(super) fn h2_address_gone(
        &self,
        origin: &Origin,
        conn: &mut crate::upstream::h2::H2Conn,
    ) -> bool {
        let gone = self.left_answer(origin, &mut conn.dns_changes, conn.peer.map(|p| p.ip()));
        if gone {
            conn.metrics.connection_closed(CloseReason::AddressGone);
        }
        gone
    }

    /// Whether `peer` left `origin`'s answer since the resolver's change
    /// count was `seen` (updated here). Nothing to check when no answer is
    /// held: an IP literal never has one, and a name dropped from the
    /// bounded map counts as a change when it comes back, so its
    /// connections are checked then.
    fn left_answer(&self, origin: &Origin, seen: &mut u64, peer: Option<IpAddr>) -> bool {
        let resolver = self.shared.connector.resolver();
        let changes = resolver.changes();
        if *seen == changes {
            return false;
        }
        *seen = changes;
        resolver
            .current(origin.dial_host().0)
            .is_some_and(|current| peer.is_some_and(|ip| !current.contains(&ip)))
    }

    /// `origin`'s addresses for `/pools`: the current ones, and any other
    /// that still holds connections.
    pub(super) fn addresses_of(&self, origin: &Origin) -> Vec<AddressStats> {
        let host = origin.dial_host().0;
        let current: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self
                .shared
                .connector
                .resolver()
                .current(host)
                .map(|s| s.to_vec())
                .unwrap_or_default(),
        };
        let held = self.shared.peers.of(origin);
        let count = |ip: &IpAddr| held.iter().find(|(a, _)| a == ip).map_or(0, |(_, n)| *n);
        let mut out: Vec<AddressStats> = current
            .iter()
            .map(|ip| AddressStats {
                address: ip.to_string(),
                connections: count(ip),
                current: true,
            })
            .collect();
        for (ip, n) in &held {
            if !current.contains(ip) {
                out.push(AddressStats {
                    address: ip.to_string(),
                    connections: *n,
                    current: false,
                });
            }
        }
        out
    }
}

/// One address of an origin, as `/pools` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AddressStats {
    pub address: String,
    /// Connections open to it (idle, in use).
    pub connections: usize,
    /// In the origin's current DNS answer; `false`: its connections are
    /// retiring.
    pub current: bool,
}

/// Open HTTP/1 connections per (origin, address). Each [`Conn`] holds a
/// [`PeerShare`], so the counts are exact whatever path closes it. The map
/// holds one entry per address with connections: bounded by them.
#[derive(Default)]
pub(super) struct Peers(Mutex<HashMap<(Origin, IpAddr), usize>>);

impl Peers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Origin, IpAddr), usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection to `ip` for `origin` while the share lives.
    pub(super) fn join(self: &Arc<Peers>, origin: &Origin, ip: IpAddr) -> PeerShare {
        *self.lock().entry((origin.clone(), ip)).or_insert(0) += 1;
        PeerShare {
            peers: self.clone(),
            key: (origin.clone(), ip),
        }
    }

    fn of(&self, origin: &Origin) -> Vec<(IpAddr, usize)> {
        let mut v: Vec<(IpAddr, usize)> = self
            .lock()
            .iter()
            .filter(|((o, _), _)| o == origin)
            .map(|((_, ip), n)| (*ip, *n))
            .collect();
        v.sort();
        v
    }
}

/// A connection's place in [`Peers`].
pub(super) struct PeerShare {
    peers: Arc<Peers>,
    key: (Origin, IpAddr),
}

impl Drop for PeerShare {
    fn drop(&mut self) {
        let mut map = self.peers.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}
