//! Applying a reloaded configuration (SIGHUP) to the live pool.
//!
//! Nothing in flight is interrupted: a connection checked out keeps its
//! exchange and only meets the new limits when it comes back (release
//! retires it if its origin is over the new bound). What changes at once:
//! each origin's settings, the global idle bound, the expiry of idle
//! connections, and the idle connections beyond the new per-origin bounds,
//! which are closed oldest first. Waiters get permits if the bound grew.

use std::sync::Arc;

use super::{CloseReason, Closing, Pool};
use crate::config::{Cidr, PoolConfig};
use crate::upstream::origin::Origin;

impl Pool {
    /// Gives every known origin its settings under the new configuration
    /// (`settings_for`) and applies `max_idle_total` and `deny_cidrs`. An
    /// origin `settings_for` no longer knows (`None`) keeps no idle
    /// connections: its idle ones close now, its busy ones when they end.
    /// Origins kept warm stop being pinned; [`Pool::prewarm`] with the new
    /// routes pins the ones that still are.
    pub fn reconfigure(
        &self,
        max_idle_total: usize,
        deny: Vec<Cidr>,
        settings_for: impl Fn(&Origin) -> Option<Arc<PoolConfig>>,
    ) {
        self.shared.connector.set_deny(deny);
        let mut closing = Closing::new();
        {
            let mut st = self.lock();
            if st.closing {
                return;
            }
            st.max_idle_total = max_idle_total;
            let mut trimmed = 0;
            let mut emptied = Vec::new();
            for (origin, os) in st.origins.iter_mut() {
                os.settings = settings_for(origin).unwrap_or_else(|| {
                    let mut orphaned = (*os.settings).clone();
                    orphaned.max_idle_per_host = 0;
                    orphaned.min_idle_per_host = 0;
                    Arc::new(orphaned)
                });
                os.pinned = false;
                let bound = os.settings.max_connections_per_host;
                let keep_idle = os.settings.max_idle_per_host.min(bound);
                while !os.idle.is_empty() && (os.idle.len() > keep_idle || os.total() > bound) {
                    let oldest = os.idle.remove(0);
                    closing.push((oldest.conn, CloseReason::Evicted));
                    trimmed += 1;
                }
                // Expiries were computed from the old idle timeout.
                let expiries: Vec<_> = os
                    .idle
                    .iter()
                    .map(|i| os.expiry(&i.conn, i.since))
                    .collect();
                for (idle, (expires, reason)) in os.idle.iter_mut().zip(expiries) {
                    idle.expires = expires;
                    idle.expiry_reason = reason;
                }
                self.dispatch_permits(origin, os);
                if os.is_unused() {
                    emptied.push(origin.clone());
                }
            }
            st.idle_total -= trimmed;
            for origin in emptied {
                self.remove_if_unused(&mut st, &origin);
            }
            self.enforce_idle_total(&mut st, &mut closing);
            st.reaper_deadline = None;
        }
        self.shared.reaper_wake.notify_one();
        drop(closing);
    }
}
