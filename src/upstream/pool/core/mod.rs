//! The pool's rules, without sockets.
//!
//! Every count the pool keeps (connections idle, in use and being opened
//! per origin, idle connections in all, the wait queue) changes here and
//! only here, in methods that take the time as an argument and return what
//! the socket layer must do: which connection to hand out, which to close
//! and why, whom to wake. The socket layer (the rest of `pool`) owns the
//! lock around a [`Core`] and carries the decisions out: it probes sockets,
//! dials, sends requests, and closes what it is given to close.
//!
//! The rules, per origin (`K`):
//! - **bound**: idle + in use + connecting never grows beyond
//!   `max_connections_per_host`; a slot is reserved ([`Checkout::Connect`])
//!   before any socket is opened;
//! - **queue**: a request that finds no free connection waits, FIFO, at
//!   most `max_pending_per_host` of them ([`Checkout::Full`] beyond);
//! - **hand-off**: a connection whose exchange completed goes to the
//!   oldest waiter still waiting, else to the idle list; a slot that frees
//!   becomes a permit to connect for the oldest waiter;
//! - **reuse**: most recently used first (its peer is the least likely to
//!   have given up on it); eviction: least recently used first;
//! - **idle bounds**: `max_idle_per_host` per origin, `max_idle_total`
//!   across all origins (the globally oldest goes first);
//! - **expiry**: each idle connection expires at the earliest of the idle
//!   timeout in effect (configured, or learned from the origin's own
//!   closes), the origin's `Keep-Alive: timeout` and `max_lifetime`;
//! - **learning**: idle closes by the origin and reuses that survived feed
//!   the [`IdleLearner`];
//! - **prewarming**: pinned origins are kept at `min_idle_per_host`, never
//!   at another's expense, backing off after failed connects;
//! - **reconfiguration**: new settings apply at once to idle connections
//!   and waiters, and to busy connections when they come back.
//! - **local ports**: after a connect found no local port free, the
//!   origin is capped at what it has open (`port_cap`);
//! - **gone addresses**: idle connections the socket layer picks (their
//!   address left the origin's DNS answer) are closed on request.
//!
//! A connection handed out by the core is the caller's until it gives it
//! back ([`Core::release`]) or reports it gone ([`Core::slot_freed`]); the
//! property test in `prop_test.rs` checks that the counts always equal the
//! connections actually held.

mod port_cap;
#[cfg(test)]
mod prop_test;
#[cfg(test)]
mod tests;

pub(crate) use port_cap::PortCap;

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{CloseReason, Reuse};
use crate::config::PoolConfig;
use crate::upstream::learn::{expire_before, IdleClose, IdleLearner};

/// The types a pool is made of: real sockets in eddy, plain values in
/// tests.
pub(crate) trait Family {
    /// Names an origin.
    type Key: Clone + Eq + Hash + Debug;
    /// A connection.
    type Conn: Poolable;
    /// Where a waiting request is told what it got.
    type Waiter;
    /// What the socket layer keeps with each origin (its metric handles).
    type Meta;
}

/// What the core needs to know of a connection.
pub(crate) trait Poolable {
    /// Unique within the pool.
    fn id(&self) -> u64;
    /// The connection is known to be closed (by the peer, or broken).
    fn is_closed(&self) -> bool;
    /// The origin's `Keep-Alive: timeout`, if it sent one.
    fn keepalive_hint(&self) -> Option<Duration>;
    /// When `max_lifetime` retires it, if it does.
    fn retire_at(&self) -> Option<Instant>;
    /// Whether it must retire now instead of going idle (request count,
    /// lifetime).
    fn retirement(&self, now: Instant, settings: &PoolConfig) -> Option<CloseReason>;
}

/// What a waiting request is given.
#[derive(Debug)]
pub(crate) enum Grant<C> {
    /// A connection whose exchange just completed (it stays in use).
    Conn(C),
    /// A reserved slot: the waiter opens the connection itself.
    Permit,
}

/// A grant on its way to a waiter, with what the socket layer needs to
/// build the handle it sends.
pub(crate) struct Delivery<'a, F: Family> {
    pub(crate) key: &'a F::Key,
    pub(crate) meta: &'a F::Meta,
    pub(crate) settings: &'a Arc<PoolConfig>,
    pub(crate) generation: u64,
    pub(crate) waiter: F::Waiter,
    pub(crate) grant: Grant<F::Conn>,
}

/// Sends a grant to its waiter; gives it back if the waiter is gone.
pub(crate) type Deliver<'d, F> =
    dyn FnMut(Delivery<'_, F>) -> Result<(), Grant<<F as Family>::Conn>> + 'd;

/// What the socket layer must do once it has released the lock.
pub(crate) struct Effects<C> {
    /// Close these connections, counted under these reasons.
    pub(crate) closed: Vec<(C, CloseReason)>,
    /// The reaper's deadline moved earlier.
    pub(crate) wake_reaper: bool,
    /// A pinned origin lost idle connections: prewarming has work.
    pub(crate) wake_prewarm: bool,
}

impl<C> Default for Effects<C> {
    fn default() -> Self {
        Effects {
            closed: Vec::new(),
            wake_reaper: false,
            wake_prewarm: false,
        }
    }
}

impl<C> Effects<C> {
    fn close(&mut self, conn: C, reason: CloseReason) {
        self.closed.push((conn, reason));
    }
}

/// An idle connection and its times.
pub(crate) struct IdleConn<C> {
    pub(crate) conn: C,
    pub(crate) since: Instant,
    pub(crate) expires: Instant,
    pub(crate) expiry_reason: CloseReason,
}

/// The answer to a checkout.
#[derive(Debug)]
pub(crate) enum Checkout<C> {
    /// An idle connection, idle for this long: probe it, then use it.
    Reuse { conn: C, idle_for: Duration },
    /// A slot is reserved: open a connection.
    Connect,
    /// The wait queue is full (this many wait).
    Full(usize),
    /// Queued under this id: wait for a grant.
    Wait(u64),
}

/// What prewarming should do for an origin now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Prewarm {
    /// Nothing (enough connections, not pinned, no room, backing off).
    Done,
    /// A slot is reserved: open a connection and release it.
    Connect,
}

/// One origin's share of the pool.
pub(crate) struct Slots<F: Family> {
    pub(crate) meta: F::Meta,
    settings: Arc<PoolConfig>,
    /// The routing-table generation `settings` came from.
    settings_generation: u64,
    /// No route reaches this origin any more: it keeps no idle connections
    /// and is forgotten once its last connection is gone.
    retired: bool,
    /// Oldest first; reuse takes from the end (most recently used).
    idle: Vec<IdleConn<F::Conn>>,
    waiters: VecDeque<(u64, F::Waiter)>,
    in_use: usize,
    connecting: usize,
    opened_total: u64,
    reused_total: u64,
    learner: IdleLearner,
    /// Kept warm (`min_idle_per_host`) and never forgotten.
    pinned: bool,
    /// Connects that failed since the last that succeeded.
    connect_failures: u32,
    last_failure: Option<(Instant, &'static str)>,
    /// Local ports ran out toward this origin: see [`PortCap`].
    port_cap: Option<PortCap>,
}

impl<F: Family> Slots<F> {
    fn new(settings: Arc<PoolConfig>, generation: u64, meta: F::Meta) -> Slots<F> {
        Slots {
            meta,
            settings,
            settings_generation: generation,
            retired: false,
            idle: Vec::new(),
            waiters: VecDeque::new(),
            in_use: 0,
            connecting: 0,
            opened_total: 0,
            reused_total: 0,
            learner: IdleLearner::default(),
            pinned: false,
            connect_failures: 0,
            last_failure: None,
            port_cap: None,
        }
    }

    /// How many connections may be open or opening now: the configured
    /// bound, or fewer while local ports are short ([`PortCap`]).
    pub(crate) fn bound(&self) -> usize {
        let max = self.settings.max_connections_per_host;
        self.port_cap.map_or(max, |c| c.bound(max))
    }

    pub(crate) fn port_cap(&self) -> Option<PortCap> {
        self.port_cap
    }

    /// Idle + in use + connecting: what counts against the bound.
    pub(crate) fn total(&self) -> usize {
        self.idle.len() + self.in_use + self.connecting
    }

    pub(crate) fn idle(&self) -> &[IdleConn<F::Conn>] {
        &self.idle
    }
    pub(crate) fn in_use(&self) -> usize {
        self.in_use
    }
    pub(crate) fn connecting(&self) -> usize {
        self.connecting
    }
    pub(crate) fn pending(&self) -> usize {
        self.waiters.len()
    }
    pub(crate) fn opened_total(&self) -> u64 {
        self.opened_total
    }
    pub(crate) fn reused_total(&self) -> u64 {
        self.reused_total
    }
    pub(crate) fn settings(&self) -> &Arc<PoolConfig> {
        &self.settings
    }
    pub(crate) fn connect_failures(&self) -> u32 {
        self.connect_failures
    }
    pub(crate) fn last_failure(&self) -> Option<(Instant, &'static str)> {
        self.last_failure
    }

    fn is_unused(&self) -> bool {
        self.total() == 0 && self.waiters.is_empty() && !self.pinned
    }

    /// The idle age after which this origin's connections are closed, and
    /// the reason they are closed under.
    pub(crate) fn effective_idle_timeout(&self) -> (Duration, CloseReason) {
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

    /// When `conn`, idle since `since`, expires, and why.
    fn expiry(&self, conn: &F::Conn, since: Instant) -> (Instant, CloseReason) {
        let (idle, mut reason) = self.effective_idle_timeout();
        let mut at = since + idle;
        if let Some(hint) = conn.keepalive_hint() {
            let hinted = since + expire_before(hint);
            if hinted < at {
                at = hinted;
                reason = CloseReason::KeepaliveHint;
            }
        }
        if let Some(retire) = conn.retire_at() {
            if retire < at {
                at = retire;
                reason = CloseReason::MaxLifetime;
            }
        }
        (at, reason)
    }

    /// How many idle connections this origin may keep.
    fn idle_bound(&self) -> usize {
        self.settings
            .max_idle_per_host
            .min(self.settings.max_connections_per_host)
    }

    /// Gives the oldest waiters permits while slots are free.
    fn dispatch_permits(&mut self, key: &F::Key, deliver: &mut Deliver<'_, F>) {
        while self.total() < self.bound() {
            let Some((_, waiter)) = self.waiters.pop_front() else {
                return;
            };
            self.connecting += 1;
            let delivered = deliver(Delivery {
                key,
                meta: &self.meta,
                settings: &self.settings,
                generation: self.settings_generation,
                waiter,
                grant: Grant::Permit,
            });
            if delivered.is_err() {
                // The waiter is gone: the slot is free again.
                self.connecting -= 1;
            }
        }
    }

    /// Removes the oldest idle connection.
    fn evict_oldest(&mut self, fx: &mut Effects<F::Conn>) -> bool {
        if self.idle.is_empty() {
            return false;
        }
        let oldest = self.idle.remove(0);
        fx.close(oldest.conn, CloseReason::Evicted);
        true
    }
}

/// The pool's state: every origin's [`Slots`] and the global idle count.
pub(crate) struct Core<F: Family> {
    origins: HashMap<F::Key, Slots<F>>,
    idle_total: usize,
    max_idle_total: usize,
    /// Origins with nothing open are remembered (their figures and learned
    /// limit) while fewer than this many are known.
    max_remembered: usize,
    /// The deadline the reaper sleeps towards.
    reaper_deadline: Option<Instant>,
    closing: bool,
    next_waiter: u64,
}

impl<F: Family> Core<F> {
    pub(crate) fn new(max_idle_total: usize, max_remembered: usize) -> Core<F> {
        Core {
            origins: HashMap::new(),
            idle_total: 0,
            max_idle_total,
            max_remembered,
            reaper_deadline: None,
            closing: false,
            next_waiter: 0,
        }
    }

    pub(crate) fn origins(&self) -> impl Iterator<Item = (&F::Key, &Slots<F>)> {
        self.origins.iter()
    }
    pub(crate) fn origin(&self, key: &F::Key) -> Option<&Slots<F>> {
        self.origins.get(key)
    }
    #[cfg(test)]
    pub(crate) fn idle_total(&self) -> usize {
        self.idle_total
    }
    #[cfg(test)]
    pub(crate) fn max_idle_total(&self) -> usize {
        self.max_idle_total
    }
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    /// The origin's slots, made with `meta` on first use, under `settings`
    /// unless a later routing table already gave it others.
    fn enter(
        &mut self,
        key: &F::Key,
        settings: &Arc<PoolConfig>,
        generation: u64,
        meta: impl FnOnce() -> F::Meta,
    ) -> &mut Slots<F> {
        let os = self
            .origins
            .entry(key.clone())
            .or_insert_with(|| Slots::new(settings.clone(), generation, meta()));
        // A route made before a reload must not bring the old settings back.
        if generation >= os.settings_generation && !Arc::ptr_eq(&os.settings, settings) {
            os.settings = settings.clone();
            os.settings_generation = generation;
        }
        os
    }

    /// A request for a connection to `key`: the most recently used live
    /// idle one `reuse` allows, a reserved slot, a place in the queue, or
    /// a refusal. Expired idle connections met on the way are closed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn checkout(
        &mut self,
        key: &F::Key,
        settings: &Arc<PoolConfig>,
        generation: u64,
        reuse: Reuse,
        now: Instant,
        meta: impl FnOnce() -> F::Meta,
        waiter: impl FnOnce() -> F::Waiter,
        fx: &mut Effects<F::Conn>,
    ) -> Checkout<F::Conn> {
        let next_waiter = self.next_waiter;
        let os = self.enter(key, settings, generation, meta);
        let mut idle_taken = 0;
        let mut reused = None;
        while let Some(idle) = os.idle.pop() {
            if idle.expires <= now {
                idle_taken += 1;
                fx.close(idle.conn, idle.expiry_reason);
                continue;
            }
            let idle_for = now.saturating_duration_since(idle.since);
            if !reuse.allows(idle_for) {
                // The most recently used is the youngest: none will do.
                os.idle.push(idle);
                break;
            }
            idle_taken += 1;
            os.in_use += 1;
            os.reused_total += 1;
            reused = Some((idle.conn, idle_for));
            break;
        }
        let bound = os.bound();
        let step = if let Some((conn, idle_for)) = reused {
            Checkout::Reuse { conn, idle_for }
        } else if os.total() < bound
            || (reuse != Reuse::Any && !os.idle.is_empty() && os.port_cap.is_none())
        {
            if os.total() >= bound && os.evict_oldest(fx) {
                // Idle connections this request may not use held every
                // slot: the least recently used made room.
                idle_taken += 1;
            }
            os.connecting += 1;
            Checkout::Connect
        } else if os.waiters.len() >= os.settings.max_pending_per_host {
            Checkout::Full(os.waiters.len())
        } else {
            os.waiters.push_back((next_waiter, waiter()));
            Checkout::Wait(next_waiter)
        };
        fx.wake_prewarm |= os.pinned && idle_taken > 0;
        self.idle_total -= idle_taken;
        if matches!(step, Checkout::Wait(_)) {
            self.next_waiter += 1;
        }
        step
    }

    /// A waiter stopped waiting (timed out, or its request went away).
    pub(crate) fn stop_waiting(&mut self, key: &F::Key, id: u64) {
        if let Some(os) = self.origins.get_mut(key) {
            if let Some(pos) = os.waiters.iter().position(|(w, _)| *w == id) {
                os.waiters.remove(pos);
            }
        }
        self.forget_if_unused(key);
    }

    /// A reserved slot's connection is open: it is in use now.
    pub(crate) fn connected(&mut self, key: &F::Key) {
        if let Some(os) = self.origins.get_mut(key) {
            os.connecting -= 1;
            os.in_use += 1;
            os.opened_total += 1;
        }
    }

    /// A connect finished, well or not: the run of failures (for `/pools`,
    /// the status page and prewarming's backoff).
    pub(crate) fn note_connect(
        &mut self,
        key: &F::Key,
        failed: Option<&'static str>,
        now: Instant,
    ) {
        let Some(os) = self.origins.get_mut(key) else {
            return;
        };
        match failed {
            None => os.connect_failures = 0,
            Some(error) => {
                os.connect_failures = os.connect_failures.saturating_add(1);
                os.last_failure = Some((now, error));
            }
        }
    }

    /// A slot is free again: its connect failed or was abandoned
    /// (`was_connecting`), or a connection in use is gone without coming
    /// back. The oldest waiter gets the slot.
    pub(crate) fn slot_freed(
        &mut self,
        key: &F::Key,
        was_connecting: bool,
        deliver: &mut Deliver<'_, F>,
    ) {
        if let Some(os) = self.origins.get_mut(key) {
            if was_connecting {
                os.connecting -= 1;
            } else {
                os.in_use -= 1;
            }
            os.dispatch_permits(key, deliver);
        }
        self.forget_if_unused(key);
    }

    /// A reserved slot's connect failed for lack of a local port: the slot
    /// is free again, and the origin's bound drops to what it has open
    /// ([`PortCap`]) so that waiters are not handed permits that would
    /// fail the same way. The caller queues its request again.
    pub(crate) fn ports_exhausted(
        &mut self,
        key: &F::Key,
        now: Instant,
        fx: &mut Effects<F::Conn>,
    ) {
        let Some(os) = self.origins.get_mut(key) else {
            return;
        };
        os.connecting -= 1;
        let cap = PortCap::new(os.total(), now);
        let retry_at = cap.retry_at;
        os.port_cap = Some(cap);
        if self.reaper_deadline.is_none_or(|d| retry_at < d) {
            self.reaper_deadline = Some(retry_at);
            fx.wake_reaper = true;
        }
    }

    /// Closes `key`'s idle connections that `gone` picks, under `reason`
    /// (their address left the origin's DNS answer). Returns how many.
    pub(crate) fn close_idle_where(
        &mut self,
        key: &F::Key,
        mut gone: impl FnMut(&F::Conn) -> bool,
        reason: CloseReason,
        deliver: &mut Deliver<'_, F>,
        fx: &mut Effects<F::Conn>,
    ) -> usize {
        let Some(os) = self.origins.get_mut(key) else {
            return 0;
        };
        let before = os.idle.len();
        let mut i = 0;
        while i < os.idle.len() {
            if gone(&os.idle[i].conn) {
                fx.close(os.idle.remove(i).conn, reason);
            } else {
                i += 1;
            }
        }
        let closed = before - os.idle.len();
        if closed > 0 {
            fx.wake_prewarm |= os.pinned;
            os.dispatch_permits(key, deliver);
            self.idle_total -= closed;
            self.forget_if_unused(key);
        }
        closed
    }

    /// A connection in use is traded for a reserved slot (a retry must go
    /// on a new connection): the caller closes it and connects.
    pub(crate) fn trade_for_permit(&mut self, key: &F::Key) {
        if let Some(os) = self.origins.get_mut(key) {
            os.in_use -= 1;
            os.connecting += 1;
        }
    }

    /// A connection whose exchange completed comes back. `retire` is the
    /// socket layer's own reason to close it (an address a reload denied).
    /// It goes to the oldest waiter (still in use), or idle, or is closed.
    /// Returns whether it was kept.
    pub(crate) fn release(
        &mut self,
        key: &F::Key,
        conn: F::Conn,
        retire: Option<CloseReason>,
        now: Instant,
        deliver: &mut Deliver<'_, F>,
        fx: &mut Effects<F::Conn>,
    ) -> bool {
        let closing_down = self.closing;
        let Some(os) = self.origins.get_mut(key) else {
            fx.close(conn, CloseReason::Error);
            return false;
        };
        let reason = if closing_down {
            Some(CloseReason::Shutdown)
        } else if conn.is_closed() {
            // The origin closed it as the response ended.
            Some(CloseReason::PeerClosed)
        } else {
            conn.retirement(now, &os.settings)
                .or(retire)
                // A reload lowered the bound: connections above it retire
                // as their exchanges end.
                .or_else(|| {
                    (os.total() > os.settings.max_connections_per_host)
                        .then_some(CloseReason::Evicted)
                })
        };
        if let Some(reason) = reason {
            os.in_use -= 1;
            fx.close(conn, reason);
            os.dispatch_permits(key, deliver);
            self.forget_if_unused(key);
            return false;
        }
        // Hand-off: the oldest live waiter gets it; it stays in use.
        let mut conn = conn;
        while let Some((_, waiter)) = os.waiters.pop_front() {
            let delivered = deliver(Delivery {
                key,
                meta: &os.meta,
                settings: &os.settings,
                generation: os.settings_generation,
                waiter,
                grant: Grant::Conn(conn),
            });
            match delivered {
                Ok(()) => {
                    os.reused_total += 1;
                    return true;
                }
                Err(Grant::Conn(back)) => conn = back,
                Err(Grant::Permit) => return false,
            }
        }
        os.in_use -= 1;
        let id = conn.id();
        let (expires, expiry_reason) = os.expiry(&conn, now);
        os.idle.push(IdleConn {
            conn,
            since: now,
            expires,
            expiry_reason,
        });
        self.idle_total += 1;
        if os.idle.len() > os.idle_bound() && os.evict_oldest(fx) {
            self.idle_total -= 1;
        }
        self.enforce_idle_total(deliver, fx);
        // A retired origin keeps nothing idle: it may be empty now.
        self.forget_if_unused(key);
        if self.reaper_deadline.is_none_or(|d| expires < d) {
            self.reaper_deadline = Some(expires);
            fx.wake_reaper = true;
        }
        // Evictions take the oldest first, so the connection is still last
        // in its list unless it was evicted itself.
        self.origins
            .get(key)
            .and_then(|os| os.idle.last())
            .is_some_and(|i| i.conn.id() == id)
    }

    /// Closes the least recently used idle connections, of any origin,
    /// while more than `max_idle_total` are idle.
    fn enforce_idle_total(&mut self, deliver: &mut Deliver<'_, F>, fx: &mut Effects<F::Conn>) {
        while self.idle_total > self.max_idle_total {
            let oldest = self
                .origins
                .iter()
                .filter_map(|(k, os)| os.idle.first().map(|i| (i.since, k.clone())))
                .min_by_key(|(since, _)| *since);
            let Some((_, key)) = oldest else { break };
            let Some(os) = self.origins.get_mut(&key) else {
                break;
            };
            os.evict_oldest(fx);
            self.idle_total -= 1;
            fx.wake_prewarm |= os.pinned;
            os.dispatch_permits(&key, deliver);
            self.forget_if_unused(&key);
        }
    }

    /// Closes the idle connections that expired by `now`; returns the next
    /// expiry, if any (the reaper sleeps until then).
    pub(crate) fn reap(
        &mut self,
        now: Instant,
        deliver: &mut Deliver<'_, F>,
        fx: &mut Effects<F::Conn>,
    ) -> Option<Instant> {
        if self.closing {
            return None;
        }
        let mut next: Option<Instant> = None;
        let mut removed = 0;
        let mut emptied = Vec::new();
        for (key, os) in self.origins.iter_mut() {
            if let Some(cap) = os.port_cap {
                if cap.retry_at <= now {
                    os.port_cap = cap.at_retry(now, !os.waiters.is_empty(), os.total());
                    os.dispatch_permits(key, deliver);
                }
                if let Some(cap) = os.port_cap {
                    next = Some(next.map_or(cap.retry_at, |n| n.min(cap.retry_at)));
                }
            }
            let idle_timeout = os.settings.idle_timeout.get();
            os.learner.grow(now, idle_timeout);
            let before = os.idle.len();
            let mut i = 0;
            while i < os.idle.len() {
                if os.idle[i].expires <= now {
                    let idle = os.idle.remove(i);
                    fx.close(idle.conn, idle.expiry_reason);
                } else {
                    let at = os.idle[i].expires;
                    next = Some(next.map_or(at, |n| n.min(at)));
                    i += 1;
                }
            }
            if os.idle.len() != before {
                removed += before - os.idle.len();
                fx.wake_prewarm = true;
                os.dispatch_permits(key, deliver);
                if os.is_unused() {
                    emptied.push(key.clone());
                }
            }
        }
        self.idle_total -= removed;
        for key in emptied {
            self.forget_if_unused(&key);
        }
        self.reaper_deadline = next;
        next
    }

    /// The origin closed idle connection `id` (its task ended): it is
    /// removed, and its idle age teaches the learner. False if it was not
    /// idle (in use, or already gone).
    pub(crate) fn closed_by_peer(
        &mut self,
        key: &F::Key,
        id: u64,
        now: Instant,
        deliver: &mut Deliver<'_, F>,
        fx: &mut Effects<F::Conn>,
    ) -> bool {
        let Some(os) = self.origins.get_mut(key) else {
            return false;
        };
        let Some(pos) = os.idle.iter().position(|i| i.conn.id() == id) else {
            return false;
        };
        let idle = os.idle.remove(pos);
        if os.settings.learn_idle_timeout {
            let close = IdleClose {
                age: now.saturating_duration_since(idle.since),
                oldest_still_idle: os
                    .idle
                    .first()
                    .map(|i| now.saturating_duration_since(i.since)),
            };
            os.learner.observe_close(now, close);
        }
        fx.close(idle.conn, CloseReason::PeerClosed);
        fx.wake_prewarm |= os.pinned;
        os.dispatch_permits(key, deliver);
        self.idle_total -= 1;
        self.forget_if_unused(key);
        true
    }

    /// A connection of `key` was reused, and answered, after idling for
    /// `idle_for`: evidence against a keep-alive limit below that.
    pub(crate) fn survived(&mut self, key: &F::Key, idle_for: Duration) {
        if let Some(os) = self.origins.get_mut(key) {
            if os.settings.learn_idle_timeout {
                os.learner.observe_survival(idle_for);
            }
        }
    }

    /// `key` is to be kept warm (`min_idle_per_host`).
    pub(crate) fn pin(
        &mut self,
        key: &F::Key,
        settings: &Arc<PoolConfig>,
        generation: u64,
        meta: impl FnOnce() -> F::Meta,
    ) {
        self.enter(key, settings, generation, meta).pinned = true;
    }

    /// Whether prewarming should open a connection to `key` now, and if so
    /// a reserved slot. Never beyond the bound, never while requests wait
    /// (they come first), never by evicting anyone (that would be a
    /// connect/close loop), and not while backing off from failures.
    pub(crate) fn prewarm(&mut self, key: &F::Key, now: Instant) -> Prewarm {
        if self.closing || self.idle_total >= self.max_idle_total {
            return Prewarm::Done;
        }
        let Some(os) = self.origins.get_mut(key) else {
            return Prewarm::Done;
        };
        let min = os
            .settings
            .min_idle_per_host
            .min(os.settings.max_idle_per_host);
        let backing_off = os
            .last_failure
            .is_some_and(|(at, _)| now < at + prewarm_backoff(os.connect_failures));
        if !os.pinned
            || backing_off
            || os.idle.len() + os.connecting >= min
            || os.total() >= os.bound()
            || !os.waiters.is_empty()
        {
            return Prewarm::Done;
        }
        os.connecting += 1;
        Prewarm::Connect
    }

    /// Applies a reloaded configuration: each origin's settings from
    /// `settings_for` (`None`: no route reaches it any more, it is retired),
    /// the global idle bound, and `denied` (an idle connection to an
    /// address a reload now forbids). Idle connections beyond the new
    /// bounds close, oldest first; expiries are recomputed; waiters get
    /// permits if the bound grew. Nothing in use is interrupted.
    pub(crate) fn reconfigure(
        &mut self,
        generation: u64,
        max_idle_total: usize,
        settings_for: impl Fn(&F::Key) -> Option<Arc<PoolConfig>>,
        mut denied: impl FnMut(&mut F::Conn) -> bool,
        deliver: &mut Deliver<'_, F>,
        fx: &mut Effects<F::Conn>,
    ) {
        if self.closing {
            return;
        }
        self.max_idle_total = max_idle_total;
        let mut trimmed = 0;
        let mut emptied = Vec::new();
        for (key, os) in self.origins.iter_mut() {
            match settings_for(key) {
                Some(settings) => os.settings = settings,
                None => {
                    let mut retired = (*os.settings).clone();
                    retired.max_idle_per_host = 0;
                    retired.min_idle_per_host = 0;
                    os.settings = Arc::new(retired);
                    os.retired = true;
                }
            }
            os.settings_generation = generation;
            os.pinned = false;
            let mut i = 0;
            while i < os.idle.len() {
                if denied(&mut os.idle[i].conn) {
                    fx.close(os.idle.remove(i).conn, CloseReason::Evicted);
                    trimmed += 1;
                } else {
                    i += 1;
                }
            }
            let bound = os.settings.max_connections_per_host;
            let keep_idle = os.idle_bound();
            while !os.idle.is_empty() && (os.idle.len() > keep_idle || os.total() > bound) {
                os.evict_oldest(fx);
                trimmed += 1;
            }
            // Expiries were computed from the old idle timeout.
            for i in 0..os.idle.len() {
                let (expires, reason) = os.expiry(&os.idle[i].conn, os.idle[i].since);
                os.idle[i].expires = expires;
                os.idle[i].expiry_reason = reason;
            }
            os.dispatch_permits(key, deliver);
            if os.is_unused() {
                emptied.push(key.clone());
            }
        }
        self.idle_total -= trimmed;
        for key in emptied {
            self.forget_if_unused(&key);
        }
        self.enforce_idle_total(deliver, fx);
        self.reaper_deadline = None;
        fx.wake_reaper = true;
    }

    /// Closes every idle connection and turns the waiters away; from now
    /// on connections that come back close instead of idling.
    pub(crate) fn shutdown(&mut self, fx: &mut Effects<F::Conn>) {
        self.closing = true;
        for os in self.origins.values_mut() {
            for idle in os.idle.drain(..) {
                fx.close(idle.conn, CloseReason::Shutdown);
            }
            os.waiters.clear();
        }
        self.idle_total = 0;
        fx.wake_reaper = true;
        fx.wake_prewarm = true;
    }

    /// Forgets an origin with nothing open, waiting or pinned, if it was
    /// retired or more than `max_remembered` origins are known: a forward
    /// proxy that sees endless hosts keeps a bounded map.
    fn forget_if_unused(&mut self, key: &F::Key) {
        let Some(os) = self.origins.get(key) else {
            return;
        };
        if os.is_unused() && (os.retired || self.origins.len() > self.max_remembered) {
            self.origins.remove(key);
        }
    }
}

/// How long prewarming waits before trying an origin again after
/// `failures` connects in a row failed: 1 s, doubling, at most 30 s. An
/// origin that is down (or a name that does not resolve) is not dialled
/// every second for ever.
pub(crate) fn prewarm_backoff(failures: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(30);
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 1).min(5)).min(MAX),
    }
}
