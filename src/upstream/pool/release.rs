//! The return path: a connection whose exchange completed goes to the
//! oldest waiter or the idle list (within the per-host and global idle
//! bounds); one that is gone frees its slot for the next waiter. Also the
//! origin's own closes of idle connections, which teach the learner.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::conn::{Conn, IdleConn};
use super::lease::{ConnectPermit, Grant};
use super::origin_state::OriginState;
use super::{CloseReason, Closing, Pool, Route, State, MAX_REMEMBERED_ORIGINS};
use crate::config::PoolConfig;
use crate::upstream::learn::IdleClose;
use crate::upstream::origin::Origin;

impl Pool {
    /// A connection whose exchange completed: to the oldest waiter, to the
    /// idle list, or closed if it must retire.
    /// Returns whether the connection was kept (handed off or idle).
    pub(super) fn release(&self, origin: &Origin, settings: &Arc<PoolConfig>, conn: Conn) -> bool {
        let mut closing = Closing::new();
        let kept = {
            let mut st = self.lock();
            self.release_locked(&mut st, origin, settings, conn, &mut closing)
        };
        drop(closing);
        kept
    }

    pub(super) fn release_locked(
        &self,
        st: &mut State,
        origin: &Origin,
        settings: &Arc<PoolConfig>,
        conn: Conn,
        closing: &mut Closing,
    ) -> bool {
        let now = Instant::now();
        let closing_down = st.closing;
        let Some(os) = st.origins.get_mut(origin) else {
            closing.push((conn, CloseReason::Error));
            return false;
        };
        let reason = if closing_down {
            Some(CloseReason::Shutdown)
        } else if conn.sender.is_closed() {
            // The origin closed it as the response ended.
            Some(CloseReason::PeerClosed)
        } else {
            conn.retirement(now, settings).or_else(|| {
                // A reload lowered the bound: connections above it retire
                // as their exchanges end.
                (os.total() > os.settings.max_connections_per_host).then_some(CloseReason::Evicted)
            })
        };
        let mut conn = conn;
        let reason = reason.or_else(|| {
            // A reload changed `deny_cidrs` since this connection was
            // dialled: one check, and a now-denied address is not reused.
            let epoch = self.shared.connector.deny_epoch();
            if conn.deny_epoch == epoch {
                return None;
            }
            conn.deny_epoch = epoch;
            conn.peer
                .is_some_and(|ip| self.shared.connector.denies(ip))
                .then_some(CloseReason::Evicted)
        });
        if let Some(reason) = reason {
            os.in_use -= 1;
            closing.push((conn, reason));
            self.dispatch_permits(origin, os);
            self.remove_if_unused(st, origin);
            return false;
        }
        // Hand-off: the oldest live waiter gets it; it stays "in use".
        while let Some(waiter) = os.waiters.pop_front() {
            // Just released by a finished exchange: not idle at all.
            let pooled = self.pooled(
                origin.clone(),
                os.settings.clone(),
                conn,
                true,
                Duration::ZERO,
            );
            match waiter.tx.send(Grant::Conn(pooled)) {
                Ok(()) => {
                    os.reused_total += 1;
                    return true;
                }
                Err(Grant::Conn(mut back)) => match back.conn.take() {
                    Some(c) => conn = c,
                    None => return false,
                },
                Err(Grant::Permit(_)) => unreachable!("a oneshot returns the value it was given"),
            }
        }
        os.in_use -= 1;
        let id = conn.id;
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
        // Evictions take the oldest idle first, so the connection is still
        // last in its list unless it was evicted itself.
        st.origins
            .get(origin)
            .and_then(|os| os.idle.last())
            .is_some_and(|i| i.conn.id == id)
    }

    /// Closes the least recently used idle connections, of any origin,
    /// while more than `max_idle_total` are idle.
    pub(super) fn enforce_idle_total(&self, st: &mut State, closing: &mut Closing) {
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
    pub(super) fn dispatch_permits(&self, origin: &Origin, os: &mut OriginState) {
        while os.total() < os.settings.max_connections_per_host {
            let Some(waiter) = os.waiters.pop_front() else {
                return;
            };
            os.connecting += 1;
            let route = Route {
                origin: origin.clone(),
                settings: os.settings.clone(),
                http2: false,
                generation: os.settings_generation,
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
    pub(super) fn forget(&self, origin: &Origin, was_connecting: bool, closing: &mut Closing) {
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
    pub(super) fn remove_if_unused(&self, st: &mut State, origin: &Origin) {
        let Some(os) = st.origins.get(origin) else {
            return;
        };
        if os.is_unused() && (os.retired || st.origins.len() > MAX_REMEMBERED_ORIGINS) {
            st.origins.remove(origin);
        }
    }

    /// A connection of `origin` was reused, and answered, after idling for
    /// `idle_for`: evidence against a keep-alive limit below that.
    pub(super) fn survived(&self, origin: &Origin, idle_for: Duration) {
        let mut st = self.lock();
        if let Some(os) = st.origins.get_mut(origin) {
            if os.settings.learn_idle_timeout {
                os.learner.observe_survival(idle_for);
            }
        }
    }

    /// hyper's task for connection `id` finished. If the connection was idle
    /// the origin closed it: remove it and learn from its idle age.
    pub(super) fn on_connection_ended(&self, origin: &Origin, id: u64) {
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
                let close = IdleClose {
                    age: now.saturating_duration_since(idle.since),
                    oldest_still_idle: os
                        .idle
                        .first()
                        .map(|i| now.saturating_duration_since(i.since)),
                };
                os.learner.observe_close(now, close);
            }
            closing.push((idle.conn, CloseReason::PeerClosed));
            self.dispatch_permits(origin, os);
            st.idle_total -= 1;
            self.remove_if_unused(&mut st, origin);
        }
        tracing::debug!(%origin, "origin closed an idle connection");
        drop(closing);
    }
}
