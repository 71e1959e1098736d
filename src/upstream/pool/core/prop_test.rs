//! Random sequences of everything that happens to a pool (checkouts,
//! connects that succeed or fail, exchanges that finish or abort, waiters
//! that give up, origins that close idle connections, time passing,
//! reloads), checked after every step against a model of who holds what.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::tests::{settings, Fake, Mailbox, T};
use super::*;

#[derive(Debug, Clone)]
enum Op {
    Checkout {
        key: u8,
        reuse: u8,
    },
    ConnectOk(usize),
    ConnectFail(usize),
    Finish {
        pick: usize,
        worn: bool,
        closed: bool,
    },
    Abort(usize),
    /// A waiting request gives up; `quietly`: it is gone before it leaves
    /// the queue (a grant to it fails until it does).
    GiveUp {
        pick: usize,
        quietly: bool,
    },
    OriginCloses {
        key: u8,
        pick: usize,
    },
    Advance(u64),
    Reload {
        bound: usize,
        idle: usize,
        idle_total: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 0u8..3).prop_map(|(key, reuse)| Op::Checkout { key, reuse }),
        4 => any::<usize>().prop_map(Op::ConnectOk),
        1 => any::<usize>().prop_map(Op::ConnectFail),
        5 => (any::<usize>(), prop::bool::weighted(0.1), prop::bool::weighted(0.1))
            .prop_map(|(pick, worn, closed)| Op::Finish { pick, worn, closed }),
        1 => any::<usize>().prop_map(Op::Abort),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, quietly)| Op::GiveUp { pick, quietly }),
        1 => (0u8..3, any::<usize>()).prop_map(|(key, pick)| Op::OriginCloses { key, pick }),
        2 => (0u64..40_000).prop_map(Op::Advance),
        1 => (1usize..5, 0usize..5, 0usize..6)
            .prop_map(|(bound, idle, idle_total)| Op::Reload { bound, idle, idle_total }),
    ]
}

/// Grants delivered: origin, mailbox name, grant (`None`: refused, the
/// waiter was gone).
type Delivered = Rc<RefCell<Vec<(u8, u64, Option<Grant<Fake>>)>>>;

/// Who holds what, as the socket layer would.
struct Model {
    core: Core<T>,
    settings: Arc<PoolConfig>,
    now: Instant,
    /// Connections in use by requests.
    held: Vec<(u8, Fake)>,
    /// Reserved slots whose connect is under way.
    permits: Vec<u8>,
    /// Queued requests: origin, queue id, mailbox.
    waiting: Vec<(u8, u64, Mailbox)>,
    delivered: Delivered,
    /// The last mailbox served per origin (served oldest first).
    last_served: HashMap<u8, u64>,
    names: u64,
    next_conn: u64,
    generation: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            core: Core::new(4, 1024),
            settings: settings(2, 3, 2),
            now: Instant::now(),
            held: Vec::new(),
            permits: Vec::new(),
            waiting: Vec::new(),
            delivered: Rc::default(),
            last_served: HashMap::new(),
            names: 0,
            next_conn: 1,
            generation: 0,
        }
    }

    fn deliver(
        delivered: &Delivered,
    ) -> impl FnMut(Delivery<'_, T>) -> Result<(), Grant<Fake>> + '_ {
        move |d: Delivery<'_, T>| {
            if !*d.waiter.alive.borrow() {
                delivered.borrow_mut().push((*d.key, d.waiter.name, None));
                return Err(d.grant);
            }
            delivered
                .borrow_mut()
                .push((*d.key, d.waiter.name, Some(d.grant)));
            Ok(())
        }
    }

    fn totals(&self) -> HashMap<u8, usize> {
        self.core.origins().map(|(k, o)| (*k, o.total())).collect()
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        let before = self.totals();
        let mut fx = Effects::default();
        let delivered = self.delivered.clone();
        let mut deliver = Model::deliver(&delivered);
        match op {
            Op::Checkout { key, reuse } => {
                let reuse = match reuse {
                    0 => Reuse::Any,
                    1 => Reuse::IdleUnder(Duration::from_secs(5)),
                    _ => Reuse::Fresh,
                };
                self.names += 1;
                let mailbox = Mailbox {
                    name: self.names,
                    alive: Rc::new(RefCell::new(true)),
                };
                let m = mailbox.clone();
                let s = self.settings.clone();
                match self.core.checkout(
                    &key,
                    &s,
                    self.generation,
                    reuse,
                    self.now,
                    || (),
                    move || m,
                    &mut fx,
                ) {
                    Checkout::Reuse { conn, .. } => self.held.push((key, conn)),
                    Checkout::Connect => self.permits.push(key),
                    Checkout::Wait(id) => self.waiting.push((key, id, mailbox)),
                    Checkout::Full(n) => prop_assert_eq!(n, self.settings.max_pending_per_host),
                }
            }
            Op::ConnectOk(i) if !self.permits.is_empty() => {
                let key = self.permits.swap_remove(i % self.permits.len());
                self.core.connected(&key);
                self.core.note_connect(&key, None, self.now);
                self.held.push((key, Fake::new(self.next_conn)));
                self.next_conn += 1;
            }
            Op::ConnectFail(i) if !self.permits.is_empty() => {
                let key = self.permits.swap_remove(i % self.permits.len());
                self.core
                    .note_connect(&key, Some("connection_refused"), self.now);
                self.core.slot_freed(&key, true, &mut deliver);
            }
            Op::Finish { pick, worn, closed } if !self.held.is_empty() => {
                let (key, mut conn) = self.held.swap_remove(pick % self.held.len());
                conn.worn_out = worn;
                conn.closed = closed;
                self.core
                    .release(&key, conn, None, self.now, &mut deliver, &mut fx);
            }
            Op::Abort(i) if !self.held.is_empty() => {
                let (key, conn) = self.held.swap_remove(i % self.held.len());
                fx.closed.push((conn, CloseReason::Error));
                self.core.slot_freed(&key, false, &mut deliver);
            }
            Op::GiveUp { pick, quietly } if !self.waiting.is_empty() => {
                let i = pick % self.waiting.len();
                *self.waiting[i].2.alive.borrow_mut() = false;
                if !quietly {
                    let (key, id, _) = self.waiting.swap_remove(i);
                    self.core.stop_waiting(&key, id);
                }
            }
            Op::OriginCloses { key, pick } => {
                let ids: Vec<u64> = self
                    .core
                    .origin(&key)
                    .map(|o| o.idle().iter().map(|i| i.conn.id).collect())
                    .unwrap_or_default();
                if !ids.is_empty() {
                    let id = ids[pick % ids.len()];
                    let removed =
                        self.core
                            .closed_by_peer(&key, id, self.now, &mut deliver, &mut fx);
                    prop_assert!(removed);
                }
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                self.core.reap(self.now, &mut deliver, &mut fx);
            }
            Op::Reload {
                bound,
                idle,
                idle_total,
            } => {
                self.generation += 1;
                self.settings = settings(bound, 3, idle);
                let s = self.settings.clone();
                self.core.reconfigure(
                    self.generation,
                    idle_total,
                    |_| Some(s.clone()),
                    |_| false,
                    &mut deliver,
                    &mut fx,
                );
            }
            // An op with nothing to act on.
            _ => {}
        }
        drop(deliver);
        self.collect()?;
        self.check(&before)
    }

    /// Takes what was delivered: a connection is held, a permit connects.
    fn collect(&mut self) -> Result<(), TestCaseError> {
        let delivered: Vec<_> = self.delivered.borrow_mut().drain(..).collect();
        for (key, name, grant) in delivered {
            // Served (or found gone) oldest first.
            let last = self.last_served.entry(key).or_insert(0);
            prop_assert!(name > *last, "served oldest first: {name} after {last}");
            *last = name;
            let pos = self
                .waiting
                .iter()
                .position(|(_, _, m)| m.name == name)
                .ok_or_else(|| TestCaseError::fail("a grant for a request not waiting"))?;
            self.waiting.swap_remove(pos);
            match grant {
                Some(Grant::Conn(conn)) => self.held.push((key, conn)),
                Some(Grant::Permit) => self.permits.push(key),
                // The core dropped the waiter that was gone.
                None => {}
            }
        }
        Ok(())
    }

    fn check(&self, before: &HashMap<u8, usize>) -> Result<(), TestCaseError> {
        let mut idle_total = 0;
        for (key, o) in self.core.origins() {
            let held = self.held.iter().filter(|(k, _)| k == key).count();
            let permits = self.permits.iter().filter(|k| *k == key).count();
            let waiting = self.waiting.iter().filter(|(k, _, _)| k == key).count();
            prop_assert_eq!(o.in_use(), held, "in use = held, origin {}", key);
            prop_assert_eq!(
                o.connecting(),
                permits,
                "connecting = permits, origin {}",
                key
            );
            prop_assert_eq!(o.pending(), waiting, "pending = waiting, origin {}", key);
            let bound = o.settings().max_connections_per_host;
            let was = before.get(key).copied().unwrap_or(0);
            prop_assert!(
                o.total() <= bound || o.total() <= was,
                "origin {} grew to {} past its bound {}",
                key,
                o.total(),
                bound
            );
            prop_assert!(o.idle().len() <= o.settings().max_idle_per_host.min(bound));
            idle_total += o.idle().len();
        }
        // Everything held belongs to a known origin.
        for (key, _) in &self.held {
            prop_assert!(self.core.origin(key).is_some());
        }
        prop_assert_eq!(self.core.idle_total(), idle_total);
        prop_assert!(idle_total <= self.core.max_idle_total());
        Ok(())
    }

    /// Every request ends (finished, aborted, given up): nothing is left
    /// in use or connecting, and shutdown leaves nothing idle.
    fn wind_down(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..1000 {
            if self.held.is_empty() && self.permits.is_empty() && self.waiting.is_empty() {
                break;
            }
            let op = if !self.waiting.is_empty() {
                Op::GiveUp {
                    pick: 0,
                    quietly: false,
                }
            } else if !self.permits.is_empty() {
                Op::ConnectOk(0)
            } else {
                Op::Finish {
                    pick: 0,
                    worn: false,
                    closed: false,
                }
            };
            self.step(op)?;
        }
        for (_, o) in self.core.origins() {
            prop_assert_eq!(o.in_use(), 0);
            prop_assert_eq!(o.connecting(), 0);
            prop_assert_eq!(o.pending(), 0);
        }
        let mut fx = Effects::default();
        self.core.shutdown(&mut fx);
        prop_assert_eq!(self.core.idle_total(), 0);
        for (_, o) in self.core.origins() {
            prop_assert_eq!(o.total(), 0);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_counts_always_match_what_is_held(ops in prop::collection::vec(op(), 1..80)) {
        let mut m = Model::new();
        for op in ops {
            m.step(op)?;
        }
        m.wind_down()?;
    }
}
