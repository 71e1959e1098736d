//! The return path: a connection whose exchange completed goes back
//! through the core (to the oldest waiter, the idle list, or closed), and
//! the origin's own closes of idle connections, which teach the learner.

use std::time::Duration;

use tokio::time::Instant;

use super::conn::Conn;
use super::{CloseReason, Pool};
use crate::upstream::origin::Origin;

impl Pool {
    /// A connection whose exchange completed: to the oldest waiter, to the
    /// idle list, or closed if it must retire.
    /// Returns whether the connection was kept (handed off or idle).
    pub(super) fn release(&self, origin: &Origin, mut conn: Conn) -> bool {
        let retire = self
            .denied_since_dialled(&mut conn)
            .or_else(|| self.address_gone(origin, &mut conn));
        self.with_core(|core, deliver, fx| {
            core.release(origin, conn, retire, Instant::now(), deliver, fx)
        })
    }

    /// A reload changed `deny_cidrs` since `conn` was dialled: one check,
    /// and a now-denied address is not reused.
    fn denied_since_dialled(&self, conn: &mut Conn) -> Option<CloseReason> {
        let epoch = self.shared.connector.deny_epoch();
        if conn.deny_epoch == epoch {
            return None;
        }
        conn.deny_epoch = epoch;
        conn.peer
            .is_some_and(|ip| self.shared.connector.denies(ip))
            .then_some(CloseReason::Evicted)
    }

    /// A connection of `origin` was reused, and answered, after idling for
    /// `idle_for`: evidence against a keep-alive limit below that.
    pub(super) fn survived(&self, origin: &Origin, idle_for: Duration) {
        self.with_core(|core, _, _| core.survived(origin, idle_for));
    }

    /// hyper's task for connection `id` finished. If the connection was idle
    /// the origin closed it: remove it and learn from its idle age.
    pub(super) fn on_connection_ended(&self, origin: &Origin, id: u64) {
        let now = Instant::now();
        let removed =
            self.with_core(|core, deliver, fx| core.closed_by_peer(origin, id, now, deliver, fx));
        if removed {
            tracing::debug!(%origin, "origin closed an idle connection");
        }
    }
}
