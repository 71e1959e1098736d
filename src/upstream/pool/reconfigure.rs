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
    /// Gives every known origin its settings under the new routing table
    /// (`settings_for`, of generation `generation`) and applies
    /// `max_idle_total` and `deny_cidrs`. An origin `settings_for` no
    /// longer knows (`None`) is retired: its idle connections close now, its
    /// busy ones when they end, and then it is forgotten; an HTTP/2
    /// connection to it is dropped once its streams end. Idle connections
    /// to an address `deny` now forbids close now; busy ones are checked
    /// when they come back (release).
    pub fn reconfigure(
        &self,
        generation: u64,
        max_idle_total: usize,
        deny: Vec<Cidr>,
        settings_for: impl Fn(&Origin) -> Option<Arc<PoolConfig>>,
    ) {
        self.shared.connector.set_deny(deny);
        let epoch = self.shared.connector.deny_epoch();
        self.shared
            .h2
            .retain(|origin| settings_for(origin).is_some());
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
                match settings_for(origin) {
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
                    let conn = &mut os.idle[i].conn;
                    conn.deny_epoch = epoch;
                    if conn.peer.is_some_and(|ip| self.shared.connector.denies(ip)) {
                        closing.push((os.idle.remove(i).conn, CloseReason::Evicted));
                        trimmed += 1;
                    } else {
                        i += 1;
                    }
                }
                let bound = os.settings.max_connections_per_host;
                let keep_idle = os.settings.max_idle_per_host.min(bound);
                while !os.idle.is_empty() && (os.idle.len() > keep_idle || os.total() > bound) {
                    let oldest = os.idle.remove(0);
                    closing.push((oldest.conn, CloseReason::Evicted));
                    trimmed += 1;
                }
                // Expiries were computed from the old idle timeout.
                for i in 0..os.idle.len() {
                    let (expires, reason) = os.expiry(&os.idle[i].conn, os.idle[i].since);
                    os.idle[i].expires = expires;
                    os.idle[i].expiry_reason = reason;
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
