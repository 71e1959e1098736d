//! The pool's rules, one at a time, on plain values: no socket, no clock
//! (every `now` is explicit).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::config::{Dur, PoolConfig};

/// A connection that is only a number, with the facts tests set on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fake {
    pub(super) id: u64,
    pub(super) closed: bool,
    pub(super) hint: Option<Duration>,
    pub(super) retire_at: Option<Instant>,
    pub(super) worn_out: bool,
}

impl Fake {
    pub(super) fn new(id: u64) -> Fake {
        Fake {
            id,
            closed: false,
            hint: None,
            retire_at: None,
            worn_out: false,
        }
    }
}

impl Poolable for Fake {
    fn id(&self) -> u64 {
        self.id
    }
    fn is_closed(&self) -> bool {
        self.closed
    }
    fn keepalive_hint(&self) -> Option<Duration> {
        self.hint
    }
    fn retire_at(&self) -> Option<Instant> {
        self.retire_at
    }
    fn retirement(&self, _now: Instant, _settings: &PoolConfig) -> Option<CloseReason> {
        self.worn_out.then_some(CloseReason::MaxRequests)
    }
}

/// A waiter: its queue id and whether it still waits.
#[derive(Debug, Clone)]
pub(super) struct Mailbox {
    pub(super) name: u64,
    pub(super) alive: Rc<RefCell<bool>>,
}

pub(super) struct T;
impl Family for T {
    type Key = u8;
    type Conn = Fake;
    type Waiter = Mailbox;
    type Meta = ();
}

/// What waiters received, in order: (waiter name, a connection or a permit).
pub(super) type Received = Rc<RefCell<Vec<(u64, Grant<Fake>)>>>;

pub(super) fn deliverer(
    received: &Received,
) -> impl FnMut(Delivery<'_, T>) -> Result<(), Grant<Fake>> + '_ {
    move |d: Delivery<'_, T>| {
        if !*d.waiter.alive.borrow() {
            return Err(d.grant);
        }
        received.borrow_mut().push((d.waiter.name, d.grant));
        Ok(())
    }
}

pub(super) fn settings(bound: usize, pending: usize, idle: usize) -> Arc<PoolConfig> {
    Arc::new(PoolConfig {
        max_connections_per_host: bound,
        max_pending_per_host: pending,
        max_idle_per_host: idle,
        idle_timeout: Dur::secs(30),
        ..PoolConfig::default()
    })
}

struct World {
    core: Core<T>,
    s: Arc<PoolConfig>,
    t0: Instant,
    received: Received,
    next_conn: u64,
    names: u64,
}

impl World {
    fn new(bound: usize, pending: usize, idle: usize, idle_total: usize) -> World {
        World {
            core: Core::new(idle_total, 1024),
            s: settings(bound, pending, idle),
            t0: Instant::now(),
            received: Rc::default(),
            next_conn: 1,
            names: 0,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// A checkout of origin `k` at `ms`, by a waiter that stays alive.
    fn checkout(
        &mut self,
        k: u8,
        reuse: Reuse,
        ms: u64,
    ) -> (Checkout<Fake>, Effects<Fake>, Mailbox) {
        self.names += 1;
        let mailbox = Mailbox {
            name: self.names,
            alive: Rc::new(RefCell::new(true)),
        };
        let mut fx = Effects::default();
        let now = self.at(ms);
        let s = self.s.clone();
        let m = mailbox.clone();
        let c = self
            .core
            .checkout(&k, &s, 0, reuse, now, || (), move || m, &mut fx);
        (c, fx, mailbox)
    }

    /// Opens a connection for a reserved slot.
    fn open(&mut self, k: u8) -> Fake {
        self.core.connected(&k);
        let c = Fake::new(self.next_conn);
        self.next_conn += 1;
        c
    }

    /// A new connection to `k`, checked out and opened.
    fn new_conn(&mut self, k: u8, ms: u64) -> Fake {
        let (c, _, _) = self.checkout(k, Reuse::Any, ms);
        assert!(matches!(c, Checkout::Connect), "{c:?}");
        self.open(k)
    }

    fn release(&mut self, k: u8, conn: Fake, ms: u64) -> (bool, Effects<Fake>) {
        let mut fx = Effects::default();
        let now = self.at(ms);
        let received = self.received.clone();
        let kept = self
            .core
            .release(&k, conn, None, now, &mut deliverer(&received), &mut fx);
        (kept, fx)
    }

    fn counts(&self, k: u8) -> (usize, usize, usize, usize) {
        let o = self.core.origin(&k).expect("origin");
        (o.idle().len(), o.in_use(), o.connecting(), o.pending())
    }
}

fn reasons(fx: &Effects<Fake>) -> Vec<CloseReason> {
    fx.closed.iter().map(|(_, r)| *r).collect()
}

#[test]
fn a_first_checkout_reserves_a_slot() {
    let mut w = World::new(2, 4, 2, 10);
    let (c, fx, _) = w.checkout(1, Reuse::Any, 0);
    assert!(matches!(c, Checkout::Connect));
    assert!(fx.closed.is_empty());
    assert_eq!(w.counts(1), (0, 0, 1, 0));
}

#[test]
fn a_connected_slot_is_in_use_and_counted_as_opened() {
    let mut w = World::new(2, 4, 2, 10);
    let _conn = w.new_conn(1, 0);
    assert_eq!(w.counts(1), (0, 1, 0, 0));
    assert_eq!(w.core.origin(&1).map(Slots::opened_total), Some(1));
}

#[test]
fn a_released_connection_goes_idle_and_is_reused() {
    let mut w = World::new(2, 4, 2, 10);
    let conn = w.new_conn(1, 0);
    let (kept, _) = w.release(1, conn, 10);
    assert!(kept);
    assert_eq!(w.counts(1), (1, 0, 0, 0));
    assert_eq!(w.core.idle_total(), 1);
    let (c, _, _) = w.checkout(1, Reuse::Any, 20);
    match c {
        Checkout::Reuse { conn, idle_for } => {
            assert_eq!(conn.id, 1);
            assert_eq!(idle_for, Duration::from_millis(10));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.counts(1), (0, 1, 0, 0));
    assert_eq!(w.core.idle_total(), 0);
    assert_eq!(w.core.origin(&1).map(Slots::reused_total), Some(1));
}

#[test]
fn reuse_takes_the_most_recently_used() {
    let mut w = World::new(3, 4, 3, 10);
    let a = w.new_conn(1, 0);
    let b = w.new_conn(1, 0);
    w.release(1, a, 10);
    w.release(1, b, 20);
    let (c, _, _) = w.checkout(1, Reuse::Any, 30);
    assert!(matches!(c, Checkout::Reuse { conn, .. } if conn.id == 2));
}

#[test]
fn the_bound_holds_connecting_slots_too() {
    let mut w = World::new(2, 4, 2, 10);
    w.checkout(1, Reuse::Any, 0);
    w.checkout(1, Reuse::Any, 0);
    let (c, _, _) = w.checkout(1, Reuse::Any, 0);
    assert!(matches!(c, Checkout::Wait(_)), "{c:?}");
    assert_eq!(w.counts(1), (0, 0, 2, 1));
}

#[test]
fn the_queue_is_bounded() {
    let mut w = World::new(1, 2, 1, 10);
    w.checkout(1, Reuse::Any, 0);
    assert!(matches!(w.checkout(1, Reuse::Any, 0).0, Checkout::Wait(_)));
    assert!(matches!(w.checkout(1, Reuse::Any, 0).0, Checkout::Wait(_)));
    assert!(matches!(w.checkout(1, Reuse::Any, 0).0, Checkout::Full(2)));
}

#[test]
fn origins_have_bounds_of_their_own() {
    let mut w = World::new(1, 2, 1, 10);
    w.checkout(1, Reuse::Any, 0);
    assert!(matches!(w.checkout(2, Reuse::Any, 0).0, Checkout::Connect));
}

#[test]
fn a_released_connection_is_handed_to_the_oldest_waiter() {
    let mut w = World::new(1, 4, 1, 10);
    let conn = w.new_conn(1, 0);
    let (_, _, first) = w.checkout(1, Reuse::Any, 1);
    let (_, _, _second) = w.checkout(1, Reuse::Any, 2);
    let (kept, _) = w.release(1, conn, 3);
    assert!(kept);
    let got = w.received.borrow();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, first.name);
    assert!(matches!(got[0].1, Grant::Conn(ref c) if c.id == 1));
    drop(got);
    // Still in use (by the waiter), one still waiting.
    assert_eq!(w.counts(1), (0, 1, 0, 1));
}

#[test]
fn a_hand_off_skips_waiters_that_left() {
    let mut w = World::new(1, 4, 1, 10);
    let conn = w.new_conn(1, 0);
    let (_, _, gone) = w.checkout(1, Reuse::Any, 1);
    let (_, _, there) = w.checkout(1, Reuse::Any, 2);
    *gone.alive.borrow_mut() = false;
    w.release(1, conn, 3);
    let got = w.received.borrow();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, there.name);
    drop(got);
    assert_eq!(w.counts(1), (0, 1, 0, 0));
}

#[test]
fn a_hand_off_with_every_waiter_gone_goes_idle() {
    let mut w = World::new(1, 4, 1, 10);
    let conn = w.new_conn(1, 0);
    let (_, _, gone) = w.checkout(1, Reuse::Any, 1);
    *gone.alive.borrow_mut() = false;
    let (kept, _) = w.release(1, conn, 3);
    assert!(kept);
    assert_eq!(w.counts(1), (1, 0, 0, 0));
}

#[test]
fn a_failed_connect_gives_its_slot_to_the_oldest_waiter() {
    let mut w = World::new(1, 4, 1, 10);
    w.checkout(1, Reuse::Any, 0);
    let (_, _, waiter) = w.checkout(1, Reuse::Any, 1);
    let received = w.received.clone();
    w.core.slot_freed(&1, true, &mut deliverer(&received));
    let got = received.borrow();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, waiter.name);
    assert!(matches!(got[0].1, Grant::Permit));
    drop(got);
    // The waiter now holds the reserved slot.
    assert_eq!(w.counts(1), (0, 0, 1, 0));
}

#[test]
fn a_permit_for_a_waiter_that_left_frees_the_slot_again() {
    let mut w = World::new(1, 4, 1, 10);
    w.checkout(1, Reuse::Any, 0);
    let (_, _, waiter) = w.checkout(1, Reuse::Any, 1);
    *waiter.alive.borrow_mut() = false;
    let received = w.received.clone();
    w.core.slot_freed(&1, true, &mut deliverer(&received));
    assert!(received.borrow().is_empty());
    assert!(w.core.origin(&1).is_none_or(|o| o.total() == 0));
}

#[test]
fn a_lost_connection_in_use_frees_its_slot() {
    let mut w = World::new(1, 4, 1, 10);
    w.new_conn(1, 0);
    let received = w.received.clone();
    w.core.slot_freed(&1, false, &mut deliverer(&received));
    assert!(w.core.origin(&1).is_none_or(|o| o.total() == 0));
}

#[test]
fn a_waiter_that_stops_waiting_leaves_the_queue() {
    let mut w = World::new(1, 4, 1, 10);
    w.checkout(1, Reuse::Any, 0);
    let (c, _, _) = w.checkout(1, Reuse::Any, 1);
    let Checkout::Wait(id) = c else {
        panic!("{c:?}")
    };
    w.core.stop_waiting(&1, id);
    assert_eq!(w.counts(1), (0, 0, 1, 0));
}

#[test]
fn expired_idle_connections_are_closed_at_checkout() {
    let mut w = World::new(2, 4, 2, 10);
    let conn = w.new_conn(1, 0);
    w.release(1, conn, 0);
    let (c, fx, _) = w.checkout(1, Reuse::Any, 30_000);
    assert!(matches!(c, Checkout::Connect), "{c:?}");
    assert_eq!(reasons(&fx), vec![CloseReason::IdleTimeout]);
    assert_eq!(w.core.idle_total(), 0);
}

#[test]
fn the_reaper_closes_what_expired_and_names_the_next_expiry() {
    let mut w = World::new(2, 4, 2, 10);
    let a = w.new_conn(1, 0);
    let b = w.new_conn(1, 0);
    w.release(1, a, 0);
    w.release(1, b, 5_000);
    let mut fx = Effects::default();
    let received = w.received.clone();
    let next = w
        .core
        .reap(w.at(30_000), &mut deliverer(&received), &mut fx);
    assert_eq!(reasons(&fx), vec![CloseReason::IdleTimeout]);
    assert_eq!(next, Some(w.at(35_000)));
    assert_eq!(w.core.idle_total(), 1);
}

#[test]
fn a_keep_alive_hint_shortens_the_expiry() {
    let mut w = World::new(2, 4, 2, 10);
    let mut conn = w.new_conn(1, 0);
    conn.hint = Some(Duration::from_secs(5));
    w.release(1, conn, 0);
    let o = w.core.origin(&1).expect("origin");
    assert_eq!(o.idle()[0].expiry_reason, CloseReason::KeepaliveHint);
    assert!(o.idle()[0].expires < w.at(5_000));
}

#[test]
fn max_lifetime_bounds_the_expiry() {
    let mut w = World::new(2, 4, 2, 10);
    let mut conn = w.new_conn(1, 0);
    conn.retire_at = Some(w.at(1_000));
    w.release(1, conn, 0);
    let o = w.core.origin(&1).expect("origin");
    assert_eq!(o.idle()[0].expiry_reason, CloseReason::MaxLifetime);
    assert_eq!(o.idle()[0].expires, w.at(1_000));
}

#[test]
fn a_connection_that_must_retire_is_closed_on_release() {
    let mut w = World::new(2, 4, 2, 10);
    let mut conn = w.new_conn(1, 0);
    conn.worn_out = true;
    let (kept, fx) = w.release(1, conn, 1);
    assert!(!kept);
    assert_eq!(reasons(&fx), vec![CloseReason::MaxRequests]);
}

#[test]
fn a_connection_the_peer_closed_is_not_kept() {
    let mut w = World::new(2, 4, 2, 10);
    let mut conn = w.new_conn(1, 0);
    conn.closed = true;
    let (kept, fx) = w.release(1, conn, 1);
    assert!(!kept);
    assert_eq!(reasons(&fx), vec![CloseReason::PeerClosed]);
    assert!(w.core.origin(&1).is_none_or(|o| o.total() == 0));
}

#[test]
fn a_retiring_connection_gives_its_slot_to_a_waiter() {
    let mut w = World::new(1, 4, 1, 10);
    let mut conn = w.new_conn(1, 0);
    let (_, _, waiter) = w.checkout(1, Reuse::Any, 1);
    conn.worn_out = true;
    w.release(1, conn, 2);
    let got = w.received.borrow();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, waiter.name);
    assert!(matches!(got[0].1, Grant::Permit));
}

#[test]
fn the_idle_list_per_origin_is_bounded_oldest_out() {
    let mut w = World::new(3, 4, 1, 10);
    let a = w.new_conn(1, 0);
    let b = w.new_conn(1, 0);
    w.release(1, a, 1);
    let (kept, fx) = w.release(1, b, 2);
    assert!(kept);
    assert_eq!(fx.closed.len(), 1);
    assert_eq!(fx.closed[0].0.id, 1);
    assert_eq!(fx.closed[0].1, CloseReason::Evicted);
    assert_eq!(w.core.idle_total(), 1);
}

#[test]
fn the_global_idle_budget_evicts_the_oldest_of_any_origin() {
    let mut w = World::new(2, 4, 2, 2);
    let a = w.new_conn(1, 0);
    let b = w.new_conn(2, 0);
    let c = w.new_conn(3, 0);
    w.release(2, b, 1);
    w.release(1, a, 2);
    let (kept, fx) = w.release(3, c, 3);
    assert!(kept);
    assert_eq!(fx.closed.len(), 1);
    assert_eq!(fx.closed[0].0.id, 2, "the oldest idle, origin 2's");
    assert_eq!(w.core.idle_total(), 2);
}

#[test]
fn a_request_that_may_not_reuse_evicts_idle_to_make_room() {
    let mut w = World::new(1, 4, 1, 10);
    let conn = w.new_conn(1, 0);
    w.release(1, conn, 0);
    let (c, fx, _) = w.checkout(1, Reuse::Fresh, 10);
    assert!(matches!(c, Checkout::Connect), "{c:?}");
    assert_eq!(reasons(&fx), vec![CloseReason::Evicted]);
    assert_eq!(w.counts(1), (0, 0, 1, 0));
    assert_eq!(w.core.idle_total(), 0);
}

#[test]
fn idle_under_reuses_only_young_connections() {
    let mut w = World::new(2, 4, 2, 10);
    let conn = w.new_conn(1, 0);
    w.release(1, conn, 0);
    let (c, _, _) = w.checkout(1, Reuse::IdleUnder(Duration::from_millis(500)), 2_000);
    assert!(matches!(c, Checkout::Connect), "{c:?}");
    // The old one is still idle, for requests that may take it.
    assert_eq!(w.counts(1), (1, 0, 1, 0));
    let (c, _, _) = w.checkout(1, Reuse::Any, 2_001);
    assert!(matches!(c, Checkout::Reuse { .. }), "{c:?}");
}

#[test]
fn a_connection_traded_for_a_permit_keeps_its_slot() {
    let mut w = World::new(1, 4, 1, 10);
    w.new_conn(1, 0);
    w.core.trade_for_permit(&1);
    assert_eq!(w.counts(1), (0, 0, 1, 0));
}

#[test]
fn an_idle_close_by_the_origin_is_removed_and_taught() {
    let mut w = World::new(3, 4, 3, 10);
    let a = w.new_conn(1, 0);
    w.release(1, a, 0);
    let mut fx = Effects::default();
    let received = w.received.clone();
    assert!(w
        .core
        .closed_by_peer(&1, 1, w.at(4_000), &mut deliverer(&received), &mut fx));
    assert_eq!(reasons(&fx), vec![CloseReason::PeerClosed]);
    assert_eq!(w.core.idle_total(), 0);
    // Not idle any more: a second report changes nothing.
    assert!(!w
        .core
        .closed_by_peer(&1, 1, w.at(4_001), &mut deliverer(&received), &mut fx));
}

#[test]
fn two_consistent_idle_closes_teach_a_shorter_expiry() {
    let mut w = World::new(3, 4, 3, 10);
    let received = w.received.clone();
    for (open_ms, close_ms) in [(0, 4_000), (10_000, 14_000)] {
        let conn = w.new_conn(1, open_ms);
        let id = conn.id;
        w.release(1, conn, open_ms);
        let mut fx = Effects::default();
        w.core
            .closed_by_peer(&1, id, w.at(close_ms), &mut deliverer(&received), &mut fx);
    }
    let (timeout, reason) = w.core.origin(&1).expect("origin").effective_idle_timeout();
    assert_eq!(reason, CloseReason::KeepaliveHint);
    assert!(timeout < Duration::from_secs(4), "{timeout:?}");
}

#[test]
fn a_release_after_shutdown_closes() {
    let mut w = World::new(2, 4, 2, 10);
    let conn = w.new_conn(1, 0);
    let idle = w.new_conn(1, 0);
    w.release(1, idle, 0);
    let mut fx = Effects::default();
    w.core.shutdown(&mut fx);
    assert_eq!(reasons(&fx), vec![CloseReason::Shutdown]);
    let (kept, fx) = w.release(1, conn, 1);
    assert!(!kept);
    assert_eq!(reasons(&fx), vec![CloseReason::Shutdown]);
    assert_eq!(w.core.idle_total(), 0);
}

#[test]
fn shutdown_turns_waiters_away() {
    let mut w = World::new(1, 4, 1, 10);
    w.checkout(1, Reuse::Any, 0);
    w.checkout(1, Reuse::Any, 0);
    let mut fx = Effects::default();
    w.core.shutdown(&mut fx);
    assert_eq!(w.counts(1).3, 0);
}

#[test]
fn a_reload_that_lowers_the_bound_trims_idle_and_retires_busy_ones_later() {
    let mut w = World::new(3, 4, 3, 10);
    let a = w.new_conn(1, 0);
    let b = w.new_conn(1, 0);
    let c = w.new_conn(1, 0);
    w.release(1, a, 1);
    let lower = settings(1, 4, 1);
    let mut fx = Effects::default();
    let received = w.received.clone();
    w.core.reconfigure(
        1,
        10,
        |_| Some(lower.clone()),
        |_| false,
        &mut deliverer(&received),
        &mut fx,
    );
    assert_eq!(reasons(&fx), vec![CloseReason::Evicted]);
    // Two in use over a bound of one: each closes as it comes back...
    let (kept, fx) = w.release(1, b, 2);
    assert!(!kept);
    assert_eq!(reasons(&fx), vec![CloseReason::Evicted]);
    // ...until the origin is within the bound again.
    let (kept, _) = w.release(1, c, 3);
    assert!(kept);
}

#[test]
fn a_reload_that_raises_the_bound_lets_waiters_connect() {
    let mut w = World::new(1, 4, 1, 10);
    w.new_conn(1, 0);
    let (_, _, waiter) = w.checkout(1, Reuse::Any, 1);
    let higher = settings(2, 4, 2);
    let mut fx = Effects::default();
    let received = w.received.clone();
    w.core.reconfigure(
        1,
        10,
        |_| Some(higher.clone()),
        |_| false,
        &mut deliverer(&received),
        &mut fx,
    );
    let got = received.borrow();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, waiter.name);
    assert!(matches!(got[0].1, Grant::Permit));
}

#[test]
fn a_reload_closes_idle_connections_to_denied_addresses() {
    let mut w = World::new(2, 4, 2, 10);
    let a = w.new_conn(1, 0);
    let b = w.new_conn(1, 0);
    w.release(1, a, 0);
    w.release(1, b, 0);
    let s = w.s.clone();
    let mut fx = Effects::default();
    let received = w.received.clone();
    w.core.reconfigure(
        1,
        10,
        |_| Some(s.clone()),
        |c| c.id == 2,
        &mut deliverer(&received),
        &mut fx,
    );
    assert_eq!(fx.closed.len(), 1);
    assert_eq!(fx.closed[0].0.id, 2);
    assert_eq!(w.core.idle_total(), 1);
}

#[test]
fn a_retired_origin_keeps_nothing_idle_and_is_forgotten() {
    let mut w = World::new(2, 4, 2, 10);
    let a = w.new_conn(1, 0);
    let mut fx = Effects::default();
    let received = w.received.clone();
    w.core.reconfigure(
        1,
        10,
        |_| None,
        |_| false,
        &mut deliverer(&received),
        &mut fx,
    );
    let (kept, fx) = w.release(1, a, 1);
    assert!(!kept);
    assert_eq!(reasons(&fx), vec![CloseReason::Evicted]);
    assert!(w.core.origin(&1).is_none());
}

#[test]
fn prewarming_reserves_up_to_the_minimum_and_no_further() {
    let mut w = World::new(4, 4, 4, 10);
    let warm = Arc::new(PoolConfig {
        min_idle_per_host: 2,
        ..(*settings(4, 4, 4)).clone()
    });
    w.core.pin(&1, &warm, 0, || ());
    let now = w.at(0);
    assert_eq!(w.core.prewarm(&1, now), Prewarm::Connect);
    assert_eq!(w.core.prewarm(&1, now), Prewarm::Connect);
    assert_eq!(w.core.prewarm(&1, now), Prewarm::Done);
    assert_eq!(w.counts(1), (0, 0, 2, 0));
}

#[test]
fn prewarming_backs_off_after_failed_connects() {
    let mut w = World::new(4, 4, 4, 10);
    let warm = Arc::new(PoolConfig {
        min_idle_per_host: 1,
        ..(*settings(4, 4, 4)).clone()
    });
    w.core.pin(&1, &warm, 0, || ());
    assert_eq!(w.core.prewarm(&1, w.at(0)), Prewarm::Connect);
    let received = w.received.clone();
    w.core.slot_freed(&1, true, &mut deliverer(&received));
    w.core.note_connect(&1, Some("dns_error"), w.at(0));
    w.core.note_connect(&1, Some("dns_error"), w.at(0));
    assert_eq!(w.core.prewarm(&1, w.at(1_999)), Prewarm::Done);
    assert_eq!(w.core.prewarm(&1, w.at(2_000)), Prewarm::Connect);
    assert_eq!(w.core.origin(&1).map(Slots::connect_failures), Some(2));
    w.core.note_connect(&1, None, w.at(2_100));
    assert_eq!(w.core.origin(&1).map(Slots::connect_failures), Some(0));
}

#[test]
fn prewarming_yields_to_waiting_requests_and_the_idle_budget() {
    let mut w = World::new(1, 4, 1, 1);
    let warm = Arc::new(PoolConfig {
        min_idle_per_host: 1,
        ..(*settings(1, 4, 1)).clone()
    });
    w.core.pin(&1, &warm, 0, || ());
    w.core.pin(&2, &warm, 0, || ());
    // Origin 2's idle connection fills the global budget of one.
    let conn = w.new_conn(2, 0);
    w.release(2, conn, 0);
    assert_eq!(w.core.prewarm(&1, w.at(1)), Prewarm::Done);
}

#[test]
fn prewarm_backoff_doubles_to_thirty_seconds() {
    let secs = |n| prewarm_backoff(n).as_secs();
    assert_eq!(secs(0), 0);
    assert_eq!(secs(1), 1);
    assert_eq!(secs(2), 2);
    assert_eq!(secs(5), 16);
    assert_eq!(secs(6), 30);
    assert_eq!(secs(u32::MAX), 30);
}

#[test]
fn an_origin_with_nothing_open_is_remembered_within_the_limit() {
    let mut w = World::new(1, 4, 1, 10);
    w.core = Core::new(10, 1);
    w.new_conn(1, 0);
    let received = w.received.clone();
    w.core.slot_freed(&1, false, &mut deliverer(&received));
    // The only origin known: remembered.
    assert!(w.core.origin(&1).is_some());
    w.new_conn(2, 0);
    w.core.slot_freed(&2, false, &mut deliverer(&received));
    // Two known, over the limit of one: the unused one is forgotten.
    assert!(w.core.origin(&2).is_none());
}

#[test]
fn settings_from_an_older_routing_table_do_not_come_back() {
    let mut w = World::new(1, 4, 1, 10);
    let newer = settings(5, 4, 5);
    let older = settings(1, 4, 1);
    let mut fx = Effects::default();
    let k = 1u8;
    w.core.checkout(
        &k,
        &newer,
        2,
        Reuse::Any,
        w.at(0),
        || (),
        unreachable_mailbox,
        &mut fx,
    );
    w.core.checkout(
        &k,
        &older,
        1,
        Reuse::Any,
        w.at(0),
        || (),
        unreachable_mailbox,
        &mut fx,
    );
    assert_eq!(
        w.core
            .origin(&1)
            .map(|o| o.settings().max_connections_per_host),
        Some(5)
    );
}

fn unreachable_mailbox() -> Mailbox {
    Mailbox {
        name: 0,
        alive: Rc::new(RefCell::new(false)),
    }
}

#[test]
fn a_port_shortage_caps_the_origin_at_what_it_has_open() {
    let mut w = World::new(8, 16, 8, 10);
    let a = w.new_conn(1, 0);
    let _b = w.new_conn(1, 0);
    // A third connect fails with EADDRNOTAVAIL.
    assert!(matches!(w.checkout(1, Reuse::Any, 1).0, Checkout::Connect));
    let mut fx = Effects::default();
    w.core.ports_exhausted(&1, w.at(2), &mut fx);
    assert!(fx.wake_reaper, "the reaper must lift the cap later");
    assert_eq!(
        w.core.origin(&1).and_then(Slots::port_cap).map(|c| c.limit),
        Some(2)
    );
    // The request queues again instead of connecting and failing again.
    let (c, _, waiter) = w.checkout(1, Reuse::Any, 3);
    assert!(matches!(c, Checkout::Wait(_)), "{c:?}");
    assert_eq!(w.counts(1), (0, 2, 0, 1));
    // A connection coming back goes to it.
    let (kept, _) = w.release(1, a, 4);
    assert!(kept);
    assert_eq!(
        w.received.borrow().last().map(|(n, _)| *n),
        Some(waiter.name)
    );
}

#[test]
fn a_port_cap_tries_one_more_while_requests_wait_and_lifts_when_none_do() {
    let mut w = World::new(8, 16, 8, 10);
    // Nothing open at all: every request waits.
    assert!(matches!(w.checkout(1, Reuse::Any, 0).0, Checkout::Connect));
    let mut fx = Effects::default();
    w.core.ports_exhausted(&1, w.at(0), &mut fx);
    let (c, _, waiter) = w.checkout(1, Reuse::Any, 1);
    assert!(matches!(c, Checkout::Wait(_)));
    // Before PORT_RETRY, the reaper changes nothing.
    let received = w.received.clone();
    let mut fx = Effects::default();
    let next = w.core.reap(w.at(500), &mut deliverer(&received), &mut fx);
    assert_eq!(next, Some(w.at(1_000)));
    assert!(w.received.borrow().is_empty());
    // At PORT_RETRY, the waiter gets a permit: one more connect is tried.
    let mut fx = Effects::default();
    w.core.reap(w.at(1_000), &mut deliverer(&received), &mut fx);
    assert!(matches!(
        w.received.borrow().last(),
        Some((n, Grant::Permit)) if *n == waiter.name
    ));
    // It connects; nobody waits at the next retry: the cap is lifted.
    w.open(1);
    let mut fx = Effects::default();
    w.core.reap(w.at(2_000), &mut deliverer(&received), &mut fx);
    assert_eq!(w.core.origin(&1).and_then(Slots::port_cap), None);
    assert!(matches!(
        w.checkout(1, Reuse::Any, 2_001).0,
        Checkout::Connect
    ));
}

#[test]
fn idle_connections_to_a_gone_address_are_closed_and_others_kept() {
    let mut w = World::new(4, 4, 4, 10);
    let a = w.new_conn(1, 0);
    let b = w.new_conn(1, 0);
    w.release(1, a, 1);
    w.release(1, b, 2);
    let received = w.received.clone();
    let mut fx = Effects::default();
    let closed = w.core.close_idle_where(
        &1,
        |c| c.id == 1,
        CloseReason::AddressGone,
        &mut deliverer(&received),
        &mut fx,
    );
    assert_eq!(closed, 1);
    assert_eq!(reasons(&fx), vec![CloseReason::AddressGone]);
    assert_eq!(w.counts(1), (1, 0, 0, 0));
    assert_eq!(w.core.idle_total(), 1);
}

#[test]
fn during_a_port_shortage_a_fresh_connection_does_not_evict_an_idle_one() {
    let mut w = World::new(2, 16, 2, 10);
    let a = w.new_conn(1, 0);
    let b = w.new_conn(1, 0);
    w.release(1, a, 1);
    w.release(1, b, 2);
    // Without a shortage, a request that needs a new connection makes room.
    let (c, fx, _) = w.checkout(1, Reuse::Fresh, 3);
    assert!(matches!(c, Checkout::Connect), "{c:?}");
    assert_eq!(reasons(&fx), vec![CloseReason::Evicted]);
    // Its connect finds no local port: the origin is capped at what is open.
    let mut fx = Effects::default();
    w.core.ports_exhausted(&1, w.at(4), &mut fx);
    assert_eq!(w.counts(1), (1, 0, 0, 0));
    // Now it waits instead of evicting the last idle connection.
    let (c, fx, _) = w.checkout(1, Reuse::Fresh, 5);
    assert!(matches!(c, Checkout::Wait(_)), "{c:?}");
    assert!(fx.closed.is_empty());
    assert_eq!(w.counts(1), (1, 0, 0, 1));
}
