//! The per-origin connection pool (SPEC section 4).
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
//! [`ConnectPermit`] being fulfilled, a [`Pooled`] checked out to a request,
//! or a [`Lease`] held by the response body. The RAII types keep the counts
//! true whatever fails: dropping a `Pooled` or `Lease` closes the connection
//! and frees its slot; only a lease whose exchange completed returns it.
//!
//! One `std::sync::Mutex` guards all origins, as in hyper-util's pool: the
//! critical sections are a few pushes and pops, no lock is held across an
//! await, and nothing that locks (no RAII drop) runs while it is held.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::header::{HeaderMap, CONNECTION};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use serde::Serialize;
use tokio::sync::{oneshot, Notify};
use tokio::time::{timeout, timeout_at, Instant};

use super::body::{BodyDone, ReqBody};
use super::connect::Connector;
use super::learn::{expire_before, IdleLearner};
use super::origin::Origin;
use crate::config::PoolConfig;
use crate::error::ProxyError;

/// How many origins with no connections the pool keeps figures for.
pub const MAX_REMEMBERED_ORIGINS: usize = 1024;

/// Why a connection was closed (the `reason` label of SPEC section 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    IdleTimeout,
    KeepaliveHint,
    MaxLifetime,
    MaxRequests,
    PeerClosed,
    NotDrained,
    Evicted,
    Error,
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::KeepaliveHint => "keepalive_hint",
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::MaxRequests => "max_requests",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::NotDrained => "not_drained",
            CloseReason::Evicted => "evicted",
            CloseReason::Error => "error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Where a request goes and under which pool settings.
#[derive(Clone, Debug)]
pub struct Route {
    pub origin: Origin,
    pub settings: Arc<PoolConfig>,
}

/// A live upstream connection, owned by whoever holds it.
pub(crate) struct Conn {
    id: u64,
    sender: SendRequest<ReqBody>,
    socket: socket2::Socket,
    retire_at: Option<Instant>,
    requests: u64,
    keepalive_hint: Option<Duration>,
}

impl Conn {
    /// Non-blocking probe of the socket: `Err` with the reason to discard it.
    /// A readable EOF means the peer closed; unexpected bytes on an idle
    /// HTTP/1 connection mean it cannot be trusted either.
    fn probe(&self) -> Result<(), CloseReason> {
        if self.sender.is_closed() {
            return Err(CloseReason::PeerClosed);
        }
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match self.socket.peek(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Ok(0) => Err(CloseReason::PeerClosed),
            Ok(_) => Err(CloseReason::Error),
            Err(_) => Err(CloseReason::PeerClosed),
        }
    }

    /// Whether this connection must retire instead of going idle.
    fn retirement(&self, now: Instant, settings: &PoolConfig) -> Option<CloseReason> {
        let max = settings.max_requests_per_connection;
        if max > 0 && self.requests >= max {
            return Some(CloseReason::MaxRequests);
        }
        if self.retire_at.is_some_and(|at| now >= at) {
            return Some(CloseReason::MaxLifetime);
        }
        None
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Ends hyper's connection task promptly whatever it was doing; the
        // file descriptors close when both handles are gone.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

struct IdleConn {
    conn: Conn,
    since: Instant,
    expires: Instant,
    expiry_reason: CloseReason,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

/// What a waiting request is given.
enum Grant {
    Conn(Pooled),
    Permit(ConnectPermit),
}

struct OriginState {
    settings: Arc<PoolConfig>,
    /// Oldest first; reuse pops from the end (most recently used).
    idle: Vec<IdleConn>,
    waiters: VecDeque<Waiter>,
    in_use: usize,
    connecting: usize,
    opened_total: u64,
    reused_total: u64,
    learner: IdleLearner,
    /// Named under `[[upstream]]` with `min_idle_per_host > 0`: kept warm and
    /// never removed from the map.
    pinned: bool,
}

impl OriginState {
    fn new(settings: Arc<PoolConfig>) -> OriginState {
        OriginState {
            settings,
            idle: Vec::new(),
            waiters: VecDeque::new(),
            in_use: 0,
            connecting: 0,
            opened_total: 0,
            reused_total: 0,
            learner: IdleLearner::default(),
            pinned: false,
        }
    }

    fn total(&self) -> usize {
        self.idle.len() + self.in_use + self.connecting
    }

    fn is_unused(&self) -> bool {
        self.total() == 0 && self.waiters.is_empty() && !self.pinned
    }

    /// The idle age after which this origin's connections are closed.
    fn effective_idle_timeout(&self) -> (Duration, CloseReason) {
        let configured = self.settings.idle_timeout.get();
        match self.learner.limit() {
            Some(limit) if self.settings.learn_idle_timeout => {
                let learned = expire_before(limit);
                if learned < configured {
                    (learned, CloseReason::KeepaliveHint)
                } else {
                    (configured, CloseReason::IdleTimeout)
                }
            }
            _ => (configured, CloseReason::IdleTimeout),
        }
    }

    fn expiry(&self, conn: &Conn, now: Instant) -> (Instant, CloseReason) {
        let (idle, mut reason) = self.effective_idle_timeout();
        let mut at = now + idle;
        if let Some(hint) = conn.keepalive_hint {
            let hinted = now + expire_before(hint);
            if hinted < at {
                at = hinted;
                reason = CloseReason::KeepaliveHint;
            }
        }
        if let Some(retire) = conn.retire_at {
            if retire < at {
                at = retire;
                reason = CloseReason::MaxLifetime;
            }
        }
        (at, reason)
    }
}

struct State {
    origins: HashMap<Origin, OriginState>,
    idle_total: usize,
    max_idle_total: usize,
    /// The deadline the reaper is sleeping towards.
    reaper_deadline: Option<Instant>,
    closing: bool,
}

struct Shared {
    state: Mutex<State>,
    reaper_wake: Notify,
    prewarm_wake: Notify,
    connector: Connector,
    next_id: AtomicU64,
}

/// Connections closed in a critical section, dropped after the lock is
/// released (closing a socket is a syscall; dropping RAII types re-locks).
type Closing = Vec<(Conn, CloseReason)>;

/// The pool of upstream connections for all origins. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    pub(crate) fn new(connector: Connector, max_idle_total: usize) -> Pool {
        let pool = Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    origins: HashMap::new(),
                    idle_total: 0,
                    max_idle_total,
                    reaper_deadline: None,
                    closing: false,
                }),
                reaper_wake: Notify::new(),
                prewarm_wake: Notify::new(),
                connector,
                next_id: AtomicU64::new(1),
            }),
        };
        tokio::spawn(pool.clone().reaper());
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

    fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Gets a connection for `route`: a live idle one, a new one, or one
    /// freed by another request after waiting in line.
    pub async fn checkout(&self, route: &Route) -> Result<Pooled, ProxyError> {
        let settings = &route.settings;
        let pending_deadline = Instant::now() + settings.pending_timeout.get();
        loop {
            let mut closing = Closing::new();
            let step = {
                let mut st = self.lock();
                self.next_step(&mut st, route, &mut closing)
            };
            drop(closing);
            let pooled = match step {
                Step::Reuse(pooled) => pooled,
                Step::Connect(permit) => return self.connect(permit).await,
                Step::Full(pending) => {
                    return Err(ProxyError::QueueFull {
                        origin: route.origin.to_string(),
                        pending,
                    })
                }
                Step::Wait(id, rx) => match self.wait(route, id, rx, pending_deadline).await? {
                    Grant::Conn(pooled) => pooled,
                    Grant::Permit(permit) => return self.connect(permit).await,
                },
            };
            if let Some(ready) = pooled.into_ready(settings.connect_timeout.get()).await {
                return Ok(ready);
            }
            // The connection was dead; its slot is free again. Try again.
        }
    }

    fn next_step(&self, st: &mut State, route: &Route, closing: &mut Closing) -> Step {
        let now = Instant::now();
        let os = st
            .origins
            .entry(route.origin.clone())
            .or_insert_with(|| OriginState::new(route.settings.clone()));
        os.settings = route.settings.clone();
        let mut idle_taken = 0;
        let mut reused = None;
        while let Some(idle) = os.idle.pop() {
            idle_taken += 1;
            if idle.expires <= now {
                closing.push((idle.conn, idle.expiry_reason));
                continue;
            }
            os.in_use += 1;
            os.reused_total += 1;
            reused = Some(idle.conn);
            break;
        }
        let pinned = os.pinned;
        let step = if let Some(conn) = reused {
            let pooled = self.pooled(route.origin.clone(), os.settings.clone(), conn, true);
            Step::Reuse(pooled)
        } else if os.total() < os.settings.max_connections_per_host {
            os.connecting += 1;
            Step::Connect(ConnectPermit::new(self.clone(), route.clone()))
        } else if os.waiters.len() >= os.settings.max_pending_per_host {
            Step::Full(os.waiters.len())
        } else {
            let id = self.next_id();
            let (tx, rx) = oneshot::channel();
            os.waiters.push_back(Waiter { id, tx });
            Step::Wait(id, rx)
        };
        st.idle_total -= idle_taken;
        if pinned && idle_taken > 0 {
            self.shared.prewarm_wake.notify_one();
        }
        step
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
                rx.try_recv().map_err(|_| ProxyError::PendingTimeout {
                    origin: route.origin.to_string(),
                })
            }
        };
        drop(guard);
        result
    }

    async fn connect(&self, permit: ConnectPermit) -> Result<Pooled, ProxyError> {
        let settings = &permit.route.settings;
        let deadline = Instant::now() + settings.connect_timeout.get();
        let origin = &permit.route.origin;
        let connected = self.shared.connector.connect(origin, deadline).await?;
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
        let conn = Conn {
            id,
            sender: connected.sender,
            socket: connected.socket,
            retire_at,
            requests: 0,
            keepalive_hint: None,
        };
        Ok(permit.fulfil(conn))
    }

    fn pooled(
        &self,
        origin: Origin,
        settings: Arc<PoolConfig>,
        conn: Conn,
        reused: bool,
    ) -> Pooled {
        Pooled {
            pool: self.clone(),
            origin,
            settings,
            conn: Some(conn),
            reused,
            close_reason: CloseReason::Error,
        }
    }

    /// A connection whose exchange completed: to the oldest waiter, to the
    /// idle list, or closed if it must retire.
    fn release(&self, origin: &Origin, settings: &Arc<PoolConfig>, conn: Conn) {
        let mut closing = Closing::new();
        {
            let mut st = self.lock();
            self.release_locked(&mut st, origin, settings, conn, &mut closing);
        }
        drop(closing);
    }

    fn release_locked(
        &self,
        st: &mut State,
        origin: &Origin,
        settings: &Arc<PoolConfig>,
        conn: Conn,
        closing: &mut Closing,
    ) {
        let now = Instant::now();
        let closing_down = st.closing;
        let Some(os) = st.origins.get_mut(origin) else {
            closing.push((conn, CloseReason::Error));
            return;
        };
        let reason = if closing_down {
            Some(CloseReason::Shutdown)
        } else if conn.sender.is_closed() {
            // The origin closed it as the response ended.
            Some(CloseReason::PeerClosed)
        } else {
            conn.retirement(now, settings)
        };
        if let Some(reason) = reason {
            os.in_use -= 1;
            closing.push((conn, reason));
            self.dispatch_permits(origin, os);
            self.remove_if_unused(st, origin);
            return;
        }
        // Hand-off: the oldest live waiter gets it; it stays "in use".
        let mut conn = conn;
        while let Some(waiter) = os.waiters.pop_front() {
            let pooled = self.pooled(origin.clone(), os.settings.clone(), conn, true);
            match waiter.tx.send(Grant::Conn(pooled)) {
                Ok(()) => {
                    os.reused_total += 1;
                    return;
                }
                Err(Grant::Conn(mut back)) => match back.conn.take() {
                    Some(c) => conn = c,
                    None => return,
                },
                Err(Grant::Permit(_)) => unreachable!("a oneshot returns the value it was given"),
            }
        }
        os.in_use -= 1;
        let (expires, expiry_reason) = os.expiry(&conn, now);
        os.idle.push(IdleConn {
            conn,
            since: now,
            expires,
            expiry_reason,
        });
        st.idle_total += 1;
        let per_host = os
            .settings
            .max_idle_per_host
            .min(os.settings.max_connections_per_host);
        if os.idle.len() > per_host {
            let oldest = os.idle.remove(0);
            st.idle_total -= 1;
            closing.push((oldest.conn, CloseReason::Evicted));
        }
        self.enforce_idle_total(st, closing);
        if st.reaper_deadline.is_none_or(|d| expires < d) {
            st.reaper_deadline = Some(expires);
            self.shared.reaper_wake.notify_one();
        }
    }

    /// Closes the least recently used idle connections, of any origin,
    /// while more than `max_idle_total` are idle.
    fn enforce_idle_total(&self, st: &mut State, closing: &mut Closing) {
        while st.idle_total > st.max_idle_total {
            let oldest = st
                .origins
                .iter()
                .filter_map(|(o, os)| os.idle.first().map(|i| (i.since, o.clone())))
                .min_by_key(|(since, _)| *since);
            let Some((_, origin)) = oldest else { break };
            let Some(os) = st.origins.get_mut(&origin) else {
                break;
            };
            let evicted = os.idle.remove(0);
            st.idle_total -= 1;
            closing.push((evicted.conn, CloseReason::Evicted));
            self.dispatch_permits(&origin, os);
            self.remove_if_unused(st, &origin);
        }
    }

    /// Gives waiters permits to connect while the origin has free slots.
    fn dispatch_permits(&self, origin: &Origin, os: &mut OriginState) {
        while os.total() < os.settings.max_connections_per_host {
            let Some(waiter) = os.waiters.pop_front() else {
                return;
            };
            os.connecting += 1;
            let route = Route {
                origin: origin.clone(),
                settings: os.settings.clone(),
            };
            match waiter
                .tx
                .send(Grant::Permit(ConnectPermit::new(self.clone(), route)))
            {
                Ok(()) => {}
                Err(Grant::Permit(mut permit)) => {
                    // The waiter is gone; take the slot back without
                    // dropping an armed permit under the lock.
                    permit.armed = false;
                    os.connecting -= 1;
                }
                Err(Grant::Conn(_)) => unreachable!("a oneshot returns the value it was given"),
            }
        }
    }

    /// A connection checked out (or being opened) is gone without returning.
    fn forget(&self, origin: &Origin, was_connecting: bool, closing: &mut Closing) {
        let mut st = self.lock();
        if let Some(os) = st.origins.get_mut(origin) {
            if was_connecting {
                os.connecting -= 1;
            } else {
                os.in_use -= 1;
            }
            self.dispatch_permits(origin, os);
        }
        self.remove_if_unused(&mut st, origin);
        drop(st);
        drop(std::mem::take(closing));
    }

    /// Origins with nothing open are remembered (their counters and learned
    /// keep-alive limit stay visible in `/pools`) while fewer than
    /// [`MAX_REMEMBERED_ORIGINS`] are known; past that they are forgotten,
    /// so a forward proxy that sees endless hosts keeps a bounded map.
    fn remove_if_unused(&self, st: &mut State, origin: &Origin) {
        if st.origins.len() <= MAX_REMEMBERED_ORIGINS {
            return;
        }
        if st.origins.get(origin).is_some_and(OriginState::is_unused) {
            st.origins.remove(origin);
        }
    }

    /// hyper's task for connection `id` finished. If the connection was idle
    /// the origin closed it: remove it and learn from its idle age.
    fn on_connection_ended(&self, origin: &Origin, id: u64) {
        let now = Instant::now();
        let mut closing = Closing::new();
        {
            let mut st = self.lock();
            let Some(os) = st.origins.get_mut(origin) else {
                return;
            };
            let Some(pos) = os.idle.iter().position(|i| i.conn.id == id) else {
                return;
            };
            let idle = os.idle.remove(pos);
            if os.settings.learn_idle_timeout {
                os.learner
                    .observe_close(now, now.saturating_duration_since(idle.since));
            }
            closing.push((idle.conn, CloseReason::PeerClosed));
            self.dispatch_permits(origin, os);
            st.idle_total -= 1;
            self.remove_if_unused(&mut st, origin);
        }
        tracing::debug!(%origin, "origin closed an idle connection");
        drop(closing);
    }

    /// Closes expired idle connections; sleeps until the next expiry.
    async fn reaper(self) {
        loop {
            let mut closing = Closing::new();
            let next = {
                let mut st = self.lock();
                if st.closing {
                    return;
                }
                let now = Instant::now();
                let mut next: Option<Instant> = None;
                let mut removed = 0;
                let mut emptied = Vec::new();
                for (origin, os) in st.origins.iter_mut() {
                    let idle_timeout = os.settings.idle_timeout.get();
                    os.learner.grow(now, idle_timeout);
                    let before = os.idle.len();
                    let mut i = 0;
                    while i < os.idle.len() {
                        if os.idle[i].expires <= now {
                            let idle = os.idle.remove(i);
                            closing.push((idle.conn, idle.expiry_reason));
                        } else {
                            next = Some(
                                next.map_or(os.idle[i].expires, |n| n.min(os.idle[i].expires)),
                            );
                            i += 1;
                        }
                    }
                    if os.idle.len() != before {
                        removed += before - os.idle.len();
                        self.dispatch_permits(origin, os);
                        if os.is_unused() {
                            emptied.push(origin.clone());
                        }
                    }
                }
                st.idle_total -= removed;
                for origin in emptied {
                    self.remove_if_unused(&mut st, &origin);
                }
                st.reaper_deadline = next;
                next
            };
            if !closing.is_empty() {
                self.shared.prewarm_wake.notify_one();
            }
            drop(closing);
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.shared.reaper_wake.notified() => {}
                    }
                }
                None => self.shared.reaper_wake.notified().await,
            }
        }
    }

    /// Keeps `min_idle_per_host` connections open for each route, opening
    /// them one at a time, until the pool shuts down.
    pub fn prewarm(&self, routes: Vec<Route>) {
        if routes.is_empty() {
            return;
        }
        {
            let mut st = self.lock();
            for route in &routes {
                st.origins
                    .entry(route.origin.clone())
                    .or_insert_with(|| OriginState::new(route.settings.clone()))
                    .pinned = true;
            }
        }
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                for route in &routes {
                    pool.prewarm_route(route).await;
                }
                if pool.lock().closing {
                    return;
                }
                tokio::select! {
                    _ = pool.shared.prewarm_wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    async fn prewarm_route(&self, route: &Route) {
        loop {
            let permit = {
                let mut st = self.lock();
                if st.closing {
                    return;
                }
                let Some(os) = st.origins.get_mut(&route.origin) else {
                    return;
                };
                let min = route.settings.min_idle_per_host;
                if os.idle.len() + os.connecting >= min
                    || os.total() >= os.settings.max_connections_per_host
                    || !os.waiters.is_empty()
                {
                    return;
                }
                // Prewarming must never evict idle connections, its own or
                // another origin's: that would be a connect/close loop.
                if st.idle_total >= st.max_idle_total {
                    return;
                }
                let Some(os) = st.origins.get_mut(&route.origin) else {
                    return;
                };
                os.connecting += 1;
                ConnectPermit::new(self.clone(), route.clone())
            };
            match self.connect(permit).await {
                Ok(mut pooled) => {
                    if let Some(conn) = pooled.conn.take() {
                        self.release(&route.origin, &route.settings, conn);
                    }
                }
                Err(e) => {
                    tracing::debug!(origin = %route.origin, error = %e, "prewarming failed; retrying later");
                    return;
                }
            }
        }
    }

    /// Closes every idle connection and makes connections that come back
    /// close instead of idling.
    pub fn shutdown(&self) {
        let mut closing = Closing::new();
        {
            let mut st = self.lock();
            st.closing = true;
            for os in st.origins.values_mut() {
                closing.extend(os.idle.drain(..).map(|i| (i.conn, CloseReason::Shutdown)));
                os.waiters.clear();
            }
            st.idle_total = 0;
        }
        self.shared.reaper_wake.notify_one();
        self.shared.prewarm_wake.notify_one();
        drop(closing);
    }

    /// A point-in-time view of every origin's pool (for `/pools`).
    pub fn snapshot(&self) -> Vec<OriginStats> {
        let now = Instant::now();
        let st = self.lock();
        let mut out: Vec<OriginStats> = st
            .origins
            .iter()
            .map(|(origin, os)| OriginStats {
                origin: origin.to_string(),
                idle: os.idle.len(),
                in_use: os.in_use,
                connecting: os.connecting,
                pending: os.waiters.len(),
                opened_total: os.opened_total,
                reused_total: os.reused_total,
                oldest_idle_seconds: os.idle.first().map_or(0.0, |i| {
                    now.saturating_duration_since(i.since).as_secs_f64()
                }),
                effective_idle_timeout_seconds: os.effective_idle_timeout().0.as_secs_f64(),
            })
            .collect();
        out.sort_by(|a, b| a.origin.cmp(&b.origin));
        out
    }
}

enum Step {
    Reuse(Pooled),
    Connect(ConnectPermit),
    Full(usize),
    Wait(u64, oneshot::Receiver<Grant>),
}

/// One origin's figures, as `/pools` reports them.
#[derive(Debug, Clone, Serialize)]
pub struct OriginStats {
    #[serde(skip)]
    pub origin: String,
    pub idle: usize,
    pub in_use: usize,
    pub connecting: usize,
    pub pending: usize,
    pub opened_total: u64,
    pub reused_total: u64,
    pub oldest_idle_seconds: f64,
    pub effective_idle_timeout_seconds: f64,
}

/// Removes a waiter from its queue when the waiting request stops waiting.
struct WaiterGuard<'a> {
    pool: &'a Pool,
    origin: &'a Origin,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        if let Some(os) = st.origins.get_mut(self.origin) {
            if let Some(pos) = os.waiters.iter().position(|w| w.id == self.id) {
                // Removing the sender drops nothing that locks: an unsent
                // grant is never stored in the queue.
                os.waiters.remove(pos);
            }
        }
        self.pool.remove_if_unused(&mut st, self.origin);
    }
}

/// A reserved slot for a connection being opened. Dropping it (the connect
/// failed or the request went away) frees the slot for the next waiter.
pub(crate) struct ConnectPermit {
    pool: Pool,
    route: Route,
    armed: bool,
}

impl ConnectPermit {
    fn new(pool: Pool, route: Route) -> ConnectPermit {
        ConnectPermit {
            pool,
            route,
            armed: true,
        }
    }

    /// The connection is open: the slot turns from connecting to in use.
    fn fulfil(mut self, conn: Conn) -> Pooled {
        self.armed = false;
        {
            let mut st = self.pool.lock();
            if let Some(os) = st.origins.get_mut(&self.route.origin) {
                os.connecting -= 1;
                os.in_use += 1;
                os.opened_total += 1;
            }
        }
        self.pool.pooled(
            self.route.origin.clone(),
            self.route.settings.clone(),
            conn,
            false,
        )
    }
}

impl Drop for ConnectPermit {
    fn drop(&mut self) {
        if self.armed {
            self.pool
                .forget(&self.route.origin, true, &mut Closing::new());
        }
    }
}

/// A connection checked out to one request. Its only way forward is
/// [`Pooled::send`]; dropping it closes the connection.
pub struct Pooled {
    pool: Pool,
    origin: Origin,
    settings: Arc<PoolConfig>,
    /// `Some` until the connection is returned or closed.
    conn: Option<Conn>,
    reused: bool,
    close_reason: CloseReason,
}

impl Pooled {
    /// Whether this connection had served an earlier request.
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// Checks a connection before use: the liveness probe for a reused one,
    /// then hyper's readiness (the previous exchange fully processed).
    /// `None` means it was dead and has been discarded.
    async fn into_ready(mut self, bound: Duration) -> Option<Pooled> {
        let conn = self.conn.as_mut()?;
        if self.reused {
            if let Err(reason) = conn.probe() {
                self.close_reason = reason;
                return None;
            }
        }
        match timeout(bound, conn.sender.ready()).await {
            Ok(Ok(())) => Some(self),
            _ => {
                self.close_reason = CloseReason::PeerClosed;
                None
            }
        }
    }

    /// Sends the request and waits for the response head, at most
    /// `response_timeout` after the request body was fully handed over.
    pub async fn send(
        mut self,
        req: Request<ReqBody>,
        done: Option<Arc<BodyDone>>,
        response_timeout: Duration,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let outcome = {
            let Some(conn) = self.conn.as_mut() else {
                return Err(terminated(&self.origin, "connection already closed".into()));
            };
            conn.requests += 1;
            let response = conn.sender.send_request(req);
            let head_timer = async {
                if let Some(done) = &done {
                    done.wait().await;
                }
                tokio::time::sleep(response_timeout).await;
            };
            tokio::select! {
                r = response => Some(r),
                _ = head_timer => None,
            }
        };
        match outcome {
            None => Err(ProxyError::ResponseTimeout {
                origin: self.origin.to_string(),
            }),
            Some(Err(e)) => Err(classify(&self.origin, &e)),
            Some(Ok(resp)) => {
                let (reusable, hint) = persistence(resp.version(), resp.headers());
                if let (Some(conn), Some(hint)) = (self.conn.as_mut(), hint) {
                    conn.keepalive_hint = Some(hint);
                }
                let lease = Lease {
                    pooled: self,
                    req_done: done,
                    reusable,
                };
                Ok((resp, lease))
            }
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut closing = vec![(conn, self.close_reason)];
            self.pool.forget(&self.origin, false, &mut closing);
        }
    }
}

/// A connection whose response is streaming to the client. Held by
/// [`super::body::UpstreamBody`], the only code that ends it.
pub struct Lease {
    pooled: Pooled,
    req_done: Option<Arc<BodyDone>>,
    reusable: bool,
}

impl Lease {
    /// The response body reached its end: return the connection if the
    /// request was fully written and the origin keeps it open.
    pub(super) fn finish(mut self) {
        if !self.reusable {
            self.pooled.close_reason = CloseReason::PeerClosed;
            return;
        }
        if self.req_done.as_ref().is_some_and(|d| !d.is_done()) {
            // The origin answered before the request body was sent in full.
            self.pooled.close_reason = CloseReason::Error;
            return;
        }
        if let Some(conn) = self.pooled.conn.take() {
            let p = &self.pooled;
            p.pool.release(&p.origin, &p.settings, conn);
        }
    }

    /// The exchange did not complete: close the connection.
    pub(super) fn close(mut self, reason: CloseReason) {
        self.pooled.close_reason = reason;
    }
}

fn terminated(origin: &Origin, reason: String) -> ProxyError {
    ProxyError::ConnectionTerminated {
        origin: origin.to_string(),
        reason,
    }
}

/// Maps a failed exchange onto the Proxy-Status table.
fn classify(origin: &Origin, e: &hyper::Error) -> ProxyError {
    if e.is_user() {
        // Our request body failed: the client stalled or went away mid-body.
        ProxyError::BadRequest("the request body stalled or was cut off")
    } else if e.is_parse() || e.is_parse_too_large() || e.is_parse_status() {
        ProxyError::HttpProtocol {
            origin: origin.to_string(),
            reason: e.to_string(),
        }
    } else {
        terminated(origin, e.to_string())
    }
}

/// Whether the origin keeps the connection open after this response, and
/// the idle limit it announced (`Keep-Alive: timeout=N`).
fn persistence(version: Version, headers: &HeaderMap) -> (bool, Option<Duration>) {
    let mut close = false;
    let mut keep_alive = false;
    for value in headers.get_all(CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            close |= token.eq_ignore_ascii_case("close");
            keep_alive |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    let reusable = !close && (version != Version::HTTP_10 || keep_alive);
    let hint = headers
        .get("keep-alive")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').find_map(|part| {
                let (k, val) = part.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("timeout")
                    .then(|| val.trim().parse::<u64>().ok())
                    .flatten()
            })
        })
        .map(Duration::from_secs);
    (reusable, hint)
}

/// Up to a tenth of `lifetime`, different per connection, so a pool opened
/// in one burst does not retire in one burst.
fn jitter(lifetime: Duration, id: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = id ^ nanos ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let tenth = lifetime / 10;
    let fraction = (x % 1_000) as u32;
    tenth * fraction / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn origin_persistence_follows_connection_and_version() {
        let mut h = HeaderMap::new();
        assert_eq!(persistence(Version::HTTP_11, &h), (true, None));
        assert_eq!(persistence(Version::HTTP_10, &h), (false, None));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5, max=100"));
        assert_eq!(
            persistence(Version::HTTP_10, &h),
            (true, Some(Duration::from_secs(5)))
        );
        h.insert(CONNECTION, HeaderValue::from_static("Close"));
        assert!(!persistence(Version::HTTP_11, &h).0);
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        let life = Duration::from_secs(100);
        for id in 0..1_000 {
            assert!(jitter(life, id) <= Duration::from_secs(10));
        }
    }
}
