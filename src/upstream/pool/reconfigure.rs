//! Applying a reloaded configuration (SIGHUP) to the live pool.
//!
//! Nothing in flight is interrupted: a connection checked out keeps its
//! exchange and only meets the new limits when it comes back (release
//! retires it if its origin is over the new bound). What changes at once:
//! each origin's settings, the global idle bound, the expiry of idle
//! connections, and the idle connections beyond the new per-origin bounds,
//! which are closed oldest first. Waiters get permits if the bound grew.
//! The rules are [`super::core::Core::reconfigure`]'s.

use std::sync::Arc;

use super::Pool;
use crate::config::{Cidr, PoolConfig};
use crate::upstream::origin::Origin;

impl Pool {
    /// Gives every known origin its settings under the new routing table
    /// (`settings_for`, of generation `generation`) and applies
    /// `max_idle_total` and `deny_cidrs`. An origin `settings_for` no
    /// longer knows (`None`) is retired: its idle connections close now, its
    /// busy ones when they end, and then it is forgotten; an HTTP/2
    /// connection to it is dropped once its streams end. Idle connections
    /// to an address `deny` now forbids close now; busy ones are checked
    /// when they come back (release).
    pub(crate) fn reconfigure(
        &self,
        generation: u64,
        max_idle_total: usize,
        deny: Vec<Cidr>,
        settings_for: impl Fn(&Origin) -> Option<Arc<PoolConfig>>,
    ) {
        let connector = &self.shared.connector;
        connector.set_deny(deny);
        let epoch = connector.deny_epoch();
        self.shared
            .h2
            .retain(|origin| settings_for(origin).is_some());
        self.with_core(|core, deliver, fx| {
            core.reconfigure(
                generation,
                max_idle_total,
                &settings_for,
                |conn| {
                    conn.deny_epoch = epoch;
                    conn.peer.is_some_and(|ip| connector.denies(ip))
                },
                deliver,
                fx,
            )
        });
    }
}
