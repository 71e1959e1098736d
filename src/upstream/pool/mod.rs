//! The per-origin connection pool.
//!
//! What it guarantees, per origin:
//! - connecting + in use + idle never exceeds `max_connections_per_host`;
//!   slots are reserved under the lock before any socket is opened;
//! - a request that finds no free connection waits in a bounded FIFO queue
//!   and is served, oldest first, either with a freed connection (hand-off)
//!   or with a permit to open a new one when a slot frees;
//! - idle connections are reused most-recently-used first, checked for a
//!   peer close before reuse, and expired by a single reaper task at the
//!   earliest of `idle_timeout`, the origin's `Keep-Alive: timeout`, the
//!   learned limit and `max_lifetime`;
//! - idle connections across all origins stay within `max_idle_total`, the
//!   least recently used going first.
//!
//! A connection is always owned by exactly one of: the idle list, a
//! `ConnectPermit` being fulfilled, a [`Pooled`] checked out to a request,
//! or a [`Lease`] held by the response body. The RAII types keep the counts
//! true whatever fails: dropping a `Pooled` or `Lease` closes the connection
//! and frees its slot; only a lease whose exchange completed returns it.
//!
//! The rules (which connection, which slot, who waits, what expires) are
//! the socket-free `core::Core`, which owns every count; this layer
//! carries its decisions out on real connections. One `std::sync::Mutex`
//! guards the core, as in hyper-util's pool: the critical sections are a
//! few pushes and pops, no lock is held across an await, and nothing that
//! locks (no RAII drop, no socket close) runs while it is held: the core
//! returns what to close and whom to wake, done once the lock is released
//! (`Pool::settle`).
//!
//! # Layout
//!
//! - `core`: the rules and the counts, tested without sockets;
//! - `body`: the response body that carries a connection's lease;
//! - this file: the shared state and the checkout path (idle, connect, wait);
//! - `release`: the return path and the origin's own closes;
//! - `lease`: the RAII handles a request holds (permit, pooled, lease);
//! - `completion`: what becomes of a connection when its response ends;
//! - `conn`: one connection, its liveness probe and retirement rules;
//! - `maintenance`: reaper, prewarming, shutdown, `/pools` snapshot;
//! - `follow`: DNS answers kept fresh, connections to gone addresses
//!   retired;
//! - `reconfigure`: a reloaded configuration applied to the live pool.

pub(crate) mod body;
mod completion;
mod conn;
pub(crate) mod core;
mod follow;
mod gauges;
mod lease;
mod maintenance;
mod reconfigure;
mod release;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};
use tokio::time::{timeout_at, Instant};

use super::connect::Connector;
use super::origin::Origin;
use super::tunnels::{tunnel_destination, OpenTunnel, Tunnels};
use crate::config::PoolConfig;
use crate::error::ProxyError;
use crate::metrics::{Metrics, OriginMetrics};

use self::core::{Checkout, Core, Deliver, Delivery, Effects, Family};
use conn::{jitter, Conn};
use lease::{ConnectPermit, Grant, WaiterGuard};

pub(crate) use lease::{Lease, Pooled};
pub(crate) use maintenance::OriginStats;

/// How many origins with no connections the pool keeps figures for.
pub(crate) const MAX_REMEMBERED_ORIGINS: usize = 1024;

pub(crate) use crate::metrics::CloseReason;

/// Which idle connections a request may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Any live idle connection.
    Any,
    /// Only one idle for less than this (`retry.unsafe_max_idle_age`, for
    /// requests that could not be replayed if the connection were stale).
    IdleUnder(std::time::Duration),
    /// None: a newly opened connection (a stale-connection retry).
    Fresh,
}

impl Reuse {
    fn allows(self, idle_for: std::time::Duration) -> bool {
        match self {
            Reuse::Any => true,
            Reuse::IdleUnder(max) => idle_for < max,
            Reuse::Fresh => false,
        }
    }
}

/// Where a request goes and under which pool settings.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub origin: Origin,
    pub settings: Arc<PoolConfig>,
    /// `[[upstream]] http2 = true`: served by a multiplexed connection,
    /// not the HTTP/1 pool.
    pub http2: bool,
    /// The routing table's generation (0 until the first reload).
    pub generation: u64,
}

/// The pool's types for [`Core`]: real connections, waiters told over a
/// oneshot channel, each origin's metric handles.
pub(super) struct Live;

impl Family for Live {
    type Key = Origin;
    type Conn = Conn;
    type Waiter = oneshot::Sender<Grant>;
    type Meta = Arc<OriginMetrics>;
}

type State = Core<Live>;

struct Shared {
    state: Mutex<State>,
    /// In their own `Arc`s: the reaper and prewarming sleep on them holding
    /// only a weak reference to the pool, so a pool nobody holds is dropped.
    reaper_wake: Arc<Notify>,
    prewarm_wake: Arc<Notify>,
    /// Bumped by each [`Pool::prewarm`]; a prewarm loop of an older
    /// generation stops.
    prewarm_generation: AtomicU64,
    connector: Connector,
    metrics: Arc<Metrics>,
    h2: crate::upstream::h2::H2Slots,
    tunnels: Tunnels,
    next_id: AtomicU64,
    /// Open connections per origin and address (`/pools`).
    peers: Arc<follow::Peers>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The background tasks see the pool gone and end.
        self.reaper_wake.notify_one();
        self.prewarm_wake.notify_waiters();
    }
}

/// A handle that does not keep the pool alive (for the metrics collector,
/// which the pool's own metrics registry owns).
#[derive(Clone)]
pub(crate) struct WeakPool(std::sync::Weak<Shared>);

impl WeakPool {
    pub(crate) fn upgrade(&self) -> Option<Pool> {
        self.0.upgrade().map(|shared| Pool { shared })
    }
}

/// The pool of upstream connections for all origins. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    pub(crate) fn new(connector: Connector, max_idle_total: usize, metrics: Arc<Metrics>) -> Pool {
        let pool = Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(Core::new(max_idle_total, MAX_REMEMBERED_ORIGINS)),
                reaper_wake: Arc::new(Notify::new()),
                prewarm_wake: Arc::new(Notify::new()),
                prewarm_generation: AtomicU64::new(0),
                connector,
                metrics,
                h2: Default::default(),
                tunnels: Tunnels::default(),
                next_id: AtomicU64::new(1),
                peers: Arc::default(),
            }),
        };
        tokio::spawn(Pool::follow_dns(pool.downgrade()));
        tokio::spawn(Pool::reaper(
            pool.downgrade(),
            pool.shared.reaper_wake.clone(),
        ));
        pool
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counts half-updated
        // in a way worse than stopping; keep serving with what is there.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the core under the lock, with a way to reach waiters,
    /// then carries out its effects once the lock is released.
    // A grant a waiter could not take comes back whole, connection and all:
    // the rare path, not worth a box.
    #[allow(clippy::result_large_err)]
    fn with_core<T>(
        &self,
        f: impl FnOnce(&mut State, &mut Deliver<'_, Live>, &mut Effects<Conn>) -> T,
    ) -> T {
        let mut fx = Effects::default();
        let out = {
            let mut st = self.lock();
            let mut deliver = |d: Delivery<'_, Live>| self.deliver(d);
            f(&mut st, &mut deliver, &mut fx)
        };
        self.settle(fx);
        out
    }

    /// Sends a waiter what the core granted it: a connection (as a
    /// [`Pooled`]) or a permit to connect. A waiter that is gone gives it
    /// back. Runs under the lock, so nothing here may lock or close.
    #[allow(clippy::result_large_err)]
    fn deliver(&self, d: Delivery<'_, Live>) -> Result<(), self::core::Grant<Conn>> {
        match d.grant {
            self::core::Grant::Conn(conn) => {
                // Just released by a finished exchange: not idle at all.
                let pooled = self.pooled(d.key.clone(), conn, true, std::time::Duration::ZERO);
                match d.waiter.send(Grant::Conn(pooled)) {
                    Ok(()) => Ok(()),
                    Err(Grant::Conn(mut back)) => match back.conn.take() {
                        Some(conn) => Err(self::core::Grant::Conn(conn)),
                        None => Ok(()),
                    },
                    Err(Grant::Permit(mut p)) => {
                        p.armed = false;
                        Ok(())
                    }
                }
            }
            self::core::Grant::Permit => {
                let route = Route {
                    origin: d.key.clone(),
                    settings: d.settings.clone(),
                    http2: false,
                    generation: d.generation,
                };
                let permit = ConnectPermit::new(self.clone(), route).with_metrics(d.meta.clone());
                match d.waiter.send(Grant::Permit(permit)) {
                    Ok(()) => Ok(()),
                    Err(Grant::Permit(mut permit)) => {
                        // Not dropped armed under the lock: the core takes
                        // the slot back.
                        permit.armed = false;
                        Err(self::core::Grant::Permit)
                    }
                    Err(Grant::Conn(mut back)) => {
                        back.conn.take();
                        Ok(())
                    }
                }
            }
        }
    }

    /// Carries out what the core decided, outside the lock: wakes the
    /// reaper and prewarming, counts each close by reason, and closes.
    fn settle(&self, fx: Effects<Conn>) {
        if fx.wake_reaper {
            self.shared.reaper_wake.notify_one();
        }
        if fx.wake_prewarm {
            self.shared.prewarm_wake.notify_one();
        }
        for (conn, reason) in fx.closed {
            conn.metrics.connection_closed(reason);
            tracing::trace!(
                id = conn.id,
                reason = reason.as_str(),
                "upstream connection closed"
            );
        }
    }

    /// A connection of its own for an `Upgrade` request (WebSocket): the
    /// same connect path as pooled ones (DNS, TCP, TLS, loop checks), but
    /// it belongs to the caller and never enters the pool.
    pub(crate) async fn open_dedicated(
        &self,
        origin: &Origin,
        settings: &PoolConfig,
    ) -> Result<hyper::client::conn::http1::SendRequest<crate::upstream::ReqBody>, ProxyError> {
        let deadline = Instant::now() + settings.connect_timeout.get();
        let connected = self
            .shared
            .connector
            .connect(origin, settings, deadline)
            .await?;
        let metrics = self.shared.metrics.origin(origin.as_str());
        metrics.opened.inc();
        metrics.upstream_new.inc();
        let task_origin = origin.clone();
        let connection = connected.connection.with_upgrades();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(origin = %task_origin, error = %e, "dedicated upstream connection ended");
            }
            metrics.connection_closed(CloseReason::PeerClosed);
        });
        Ok(connected.sender)
    }

    /// The shared HTTP/2 connection to `origin`, opened (once, however many
    /// requests ask at the same time) if there is none or it has closed.
    /// Returns it with whether it already existed.
    pub(crate) async fn h2_sender(
        &self,
        origin: &Origin,
        settings: &PoolConfig,
    ) -> Result<(crate::upstream::h2::H2Conn, bool), ProxyError> {
        let started = Instant::now();
        let deadline = started + settings.connect_timeout.get();
        let slot = self.shared.h2.slot(origin);
        // Waiting for another request's connect counts against this one's
        // connect_timeout: a slow origin cannot build an unbounded queue.
        let Ok(mut current) = timeout_at(deadline, slot.conn.lock()).await else {
            return Err(ProxyError::ConnectTimeout {
                origin: origin.to_string(),
            });
        };
        if let Some(c) = current.as_mut() {
            if !c.sender.is_closed() {
                if !self.h2_address_gone(origin, c) {
                    return Ok((c.clone(), true));
                }
                // Its address left the origin's answer: not used again.
                *current = None;
            }
        }
        let dns_changes = self.shared.connector.resolver().changes();
        slot.connecting.store(true, Ordering::Relaxed);
        let connected = self
            .shared
            .connector
            .connect_h2(origin, settings, deadline)
            .await;
        slot.connecting.store(false, Ordering::Relaxed);
        slot.note_connect(connected.as_ref().err().map(ProxyError::proxy_status));
        let (sender, peer) = connected?;
        let metrics = self.shared.metrics.origin(origin.as_str());
        let took = started.elapsed();
        metrics.connection_opened(took);
        let conn = crate::upstream::h2::H2Conn {
            id: self.shared.h2.next_id(),
            sender,
            metrics,
            peer,
            connect_took: Some(took),
            dns_refresh: settings.dns_refresh.get(),
            dns_changes,
        };
        *current = Some(conn.clone());
        Ok((conn, false))
    }

    /// Counts a request in flight on `origin`'s HTTP/2 connection for as
    /// long as the result is held.
    pub(crate) fn h2_in_flight(&self, origin: &Origin) -> crate::upstream::h2::InFlight {
        crate::upstream::h2::InFlight::new(self.shared.h2.slot(origin))
    }

    /// Drops HTTP/2 connection `id` of `origin` so the next request opens
    /// a new one (it failed, or the origin sent GOAWAY).
    pub(crate) async fn h2_forget(&self, origin: &Origin, id: u64) {
        self.shared.h2.forget(origin, id).await;
    }

    /// A plain TCP connection for a CONNECT tunnel: never pooled, but
    /// dialled with the same DNS, deadline and loop checks.
    ///
    /// The tunnel counts in `/pools` and the gauges, under its destination
    /// `tcp://host:port`, for as long as the returned [`OpenTunnel`] lives.
    pub(crate) async fn open_tunnel(
        &self,
        origin: &Origin,
        settings: &PoolConfig,
    ) -> Result<(tokio::net::TcpStream, OpenTunnel), ProxyError> {
        let deadline = Instant::now() + settings.connect_timeout.get();
        let mut stream = self
            .shared
            .connector
            .tcp(origin, settings, deadline)
            .await?;
        if origin.via_proxy().is_some() {
            crate::upstream::via::open_tunnel(&mut stream, origin, deadline).await?;
        }
        let destination = tunnel_destination(origin);
        Ok((stream, self.shared.tunnels.open(destination)))
    }

    /// Registers the pool's gauges with the metrics registry, read from
    /// the pool at every scrape.
    pub(crate) fn register_gauges(&self, metrics: &Metrics) {
        let collector = gauges::PoolCollector::new(self.downgrade());
        if let Err(e) = metrics.register(Box::new(collector)) {
            tracing::warn!(error = %e, "pool gauges unavailable");
        }
    }

    pub(crate) fn downgrade(&self) -> WeakPool {
        WeakPool(Arc::downgrade(&self.shared))
    }

    fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Gets a connection for `route`: a live idle one (as `reuse` allows),
    /// a new one, or one freed by another request after waiting in line.
    pub(crate) async fn checkout(&self, route: &Route, reuse: Reuse) -> Result<Pooled, ProxyError> {
        let settings = &route.settings;
        let started = Instant::now();
        let pending_deadline = started + settings.pending_timeout.get();
        let mut waited = std::time::Duration::ZERO;
        // Records the queue time on the connection and in the histogram.
        let stamp = |mut p: Pooled, waited| {
            p.waited = waited;
            if let Some(c) = &p.conn {
                c.metrics.pool_wait.observe(waited.as_secs_f64());
            }
            p
        };
        // A connect failed for lack of a local port: the request waited
        // again, and if its time runs out that is what it is told.
        let mut short_of_ports = false;
        loop {
            let permit = match self.next_step(route, reuse) {
                Step::Reuse(pooled) => {
                    if let Some(ready) = self.ready(pooled, reuse, settings).await {
                        // A pooled connection's wait is the whole checkout:
                        // queue, lookup and probe.
                        return Ok(stamp(ready, started.elapsed()));
                    }
                    // The connection was dead; its slot is free again.
                    continue;
                }
                Step::Connect(permit) => permit,
                Step::Full(pending, metrics) => {
                    metrics.rejected_queue_full.inc();
                    return Err(ProxyError::QueueFull {
                        origin: route.origin.to_string(),
                        pending,
                    });
                }
                Step::Wait(id, rx) => {
                    let queued = Instant::now();
                    let grant = Box::pin(self.wait(route, id, rx, pending_deadline)).await;
                    waited += queued.elapsed();
                    match grant {
                        Err(ProxyError::PendingTimeout { .. }) if short_of_ports => {
                            return Err(ProxyError::NoLocalPort {
                                origin: route.origin.to_string(),
                            })
                        }
                        Err(e) => return Err(e),
                        Ok(Grant::Conn(pooled)) if reuse == Reuse::Fresh => {
                            pooled.into_permit(route)
                        }
                        Ok(Grant::Conn(pooled)) => {
                            if let Some(ready) = self.ready(pooled, reuse, settings).await {
                                return Ok(stamp(ready, started.elapsed()));
                            }
                            continue;
                        }
                        Ok(Grant::Permit(permit)) => permit,
                    }
                }
            };
            match Box::pin(self.connect(permit)).await {
                // A retry that must have a new connection cannot wait for
                // a pooled one: it fails (trading a pooled connection for
                // another failed connect would only shrink the pool).
                Err(ProxyError::NoLocalPort { .. })
                    if reuse != Reuse::Fresh && Instant::now() < pending_deadline =>
                {
                    short_of_ports = true;
                    self.note_port_shortage(route);
                }
                connected => return connected.map(|p| stamp(p, waited)),
            }
        }
    }

    /// A pooled connection probed and made ready, or `None` if it was dead
    /// (its slot is free again).
    async fn ready(&self, pooled: Pooled, reuse: Reuse, settings: &PoolConfig) -> Option<Pooled> {
        pooled
            .into_ready(reuse, settings.connect_timeout.get())
            .await
    }

    /// A connect found no local port free; the request waits for a pooled
    /// connection instead. Counted, and logged (at most once a window per
    /// origin), as `proxy_internal_error`: the origin is not at fault.
    fn note_port_shortage(&self, route: &Route) {
        let metrics = self.shared.metrics.origin(route.origin.as_str());
        let error = "proxy_internal_error";
        if let crate::failures::Admit::Write { suppressed } = metrics.failed(error, "request") {
            tracing::warn!(
                target: "eddy::failure",
                upstream = %route.origin,
                error,
                detail = "no local port free toward the origin (EADDRNOTAVAIL: ephemeral ports exhausted); requests wait for pooled connections",
                suppressed,
                "upstream connect failed"
            );
        }
    }

    /// Asks the core for a connection and turns its answer into a handle.
    fn next_step(&self, route: &Route, reuse: Reuse) -> Step {
        // The channel is made only for a request that will wait.
        let mut receiver = None;
        let (checkout, metrics) = self.with_core(|core, _, fx| {
            let checkout = core.checkout(
                &route.origin,
                &route.settings,
                route.generation,
                reuse,
                Instant::now(),
                || self.shared.metrics.origin(route.origin.as_str()),
                || {
                    let (tx, rx) = oneshot::channel();
                    receiver = Some(rx);
                    tx
                },
                fx,
            );
            // A new connection or a refusal needs the origin's handles,
            // resolved when it was first seen; a reuse has them already.
            let metrics = match checkout {
                Checkout::Connect | Checkout::Full(_) => {
                    core.origin(&route.origin).map(|o| o.meta.clone())
                }
                _ => None,
            };
            (checkout, metrics)
        });
        let metrics =
            || metrics.unwrap_or_else(|| self.shared.metrics.origin(route.origin.as_str()));
        match (checkout, receiver) {
            (Checkout::Reuse { conn, idle_for }, _) => {
                Step::Reuse(self.pooled(route.origin.clone(), conn, true, idle_for))
            }
            (Checkout::Connect, _) => Step::Connect(
                ConnectPermit::new(self.clone(), route.clone()).with_metrics(metrics()),
            ),
            (Checkout::Full(pending), _) => Step::Full(pending, metrics()),
            (Checkout::Wait(id), Some(rx)) => Step::Wait(id, rx),
            // The core queued a waiter it made: there is a receiver.
            (Checkout::Wait(id), None) => {
                self.with_core(|core, _, _| core.stop_waiting(&route.origin, id));
                Step::Full(0, metrics())
            }
        }
    }

    async fn wait(
        &self,
        route: &Route,
        id: u64,
        mut rx: oneshot::Receiver<Grant>,
        deadline: Instant,
    ) -> Result<Grant, ProxyError> {
        let guard = WaiterGuard {
            pool: self,
            origin: &route.origin,
            id,
        };
        let result = match timeout_at(deadline, &mut rx).await {
            Ok(Ok(grant)) => Ok(grant),
            // The pool dropped the waiter: it is shutting down.
            Ok(Err(_)) => Err(ProxyError::PendingTimeout {
                origin: route.origin.to_string(),
            }),
            Err(_) => {
                rx.close();
                // A grant sent at the last moment is still ours to use.
                rx.try_recv().map_err(|_| {
                    self.shared
                        .metrics
                        .origin(route.origin.as_str())
                        .rejected_timeout
                        .inc();
                    ProxyError::PendingTimeout {
                        origin: route.origin.to_string(),
                    }
                })
            }
        };
        drop(guard);
        result
    }

    async fn connect(&self, mut permit: ConnectPermit) -> Result<Pooled, ProxyError> {
        let settings = &permit.route.settings;
        let deadline = Instant::now() + settings.connect_timeout.get();
        let origin = &permit.route.origin;
        let started = Instant::now();
        let deny_epoch = self.shared.connector.deny_epoch();
        let dns_changes = self.shared.connector.resolver().changes();
        let connected = self
            .shared
            .connector
            .connect(origin, settings, deadline)
            .await;
        self.note_connect(origin, connected.as_ref().err());
        if let Err(e @ ProxyError::NoLocalPort { .. }) = connected {
            // The slot goes back with the origin capped, not to the next
            // waiter, whose connect would fail the same way.
            let origin = permit.route.origin.clone();
            permit.armed = false;
            self.with_core(|core, _, fx| core.ports_exhausted(&origin, Instant::now(), fx));
            return Err(e);
        }
        let connected = connected?;
        let metrics = match &permit.metrics {
            Some(m) => m.clone(),
            None => self.shared.metrics.origin(origin.as_str()),
        };
        let connect_took = started.elapsed();
        metrics.connection_opened(connect_took);
        let id = self.next_id();
        let task_pool = self.clone();
        let task_origin = origin.clone();
        let connection = connected.connection;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(origin = %task_origin, error = %e, "upstream connection ended");
            }
            task_pool.on_connection_ended(&task_origin, id);
        });
        let max_lifetime = settings.max_lifetime.get();
        let retire_at = (!max_lifetime.is_zero())
            .then(|| Instant::now() + max_lifetime - jitter(max_lifetime, id));
        let peer = connected
            .socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.ip());
        let peer_share = peer.map(|ip| self.shared.peers.join(origin, ip));
        let conn = Conn {
            id,
            sender: connected.sender,
            socket: connected.socket,
            retire_at,
            requests: 0,
            keepalive_hint: None,
            read_log: connected.read_log,
            metrics,
            tls: origin.is_tls(),
            peer,
            connect_took,
            deny_epoch,
            dns_changes,
            _peer_share: peer_share,
        };
        Ok(permit.fulfil(conn))
    }

    /// Keeps the origin's run of failed connects (for `/pools`, the status
    /// page and prewarming's backoff).
    fn note_connect(&self, origin: &Origin, failed: Option<&ProxyError>) {
        let failed = failed.map(ProxyError::proxy_status);
        self.with_core(|core, _, _| core.note_connect(origin, failed, Instant::now()));
    }

    fn pooled(
        &self,
        origin: Origin,
        conn: Conn,
        reused: bool,
        idle_for: std::time::Duration,
    ) -> Pooled {
        Pooled {
            pool: self.clone(),
            origin,
            conn: Some(conn),
            reused,
            idle_for,
            untouched: true,
            close_reason: CloseReason::Error,
            waited: std::time::Duration::ZERO,
        }
    }
}

/// A connection idle at least this long is probed (`MSG_PEEK`) before use.
/// hyper's own task reads an EOF on an idle connection as soon as it
/// arrives, so the probe only covers a close that arrived moments before
/// checkout; for a connection idle less than this, that needs an origin
/// closing connections within this long of their last response, and the
/// stale retry still covers idempotent requests. Under load most reuses
/// are that young, and the probe is one system call each.
pub(super) const PROBE_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// A reuse after idling at least this long is reported to the origin's
/// learner: a survival that young cannot refute anything it learned (see
/// [`super::learn::MIN_EVIDENCE_AGE`]), and under load most reuses are
/// younger, so the hot path takes no lock for it.
pub(super) const SURVIVAL_WORTH_NOTING: std::time::Duration = super::learn::MIN_EVIDENCE_AGE;

enum Step {
    Reuse(Pooled),
    Connect(ConnectPermit),
    Full(usize, Arc<OriginMetrics>),
    Wait(u64, oneshot::Receiver<Grant>),
}
