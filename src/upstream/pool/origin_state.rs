//! One origin's share of the pool: its idle list (oldest first), its FIFO of
//! waiters, its counts, and the keep-alive limit learned for it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::conn::{Conn, IdleConn};
use super::lease::Waiter;
use super::CloseReason;
use crate::config::PoolConfig;
use crate::metrics::OriginMetrics;
use crate::upstream::learn::{expire_before, IdleLearner};

pub(super) struct OriginState {
    pub(super) metrics: Arc<OriginMetrics>,
    pub(super) settings: Arc<PoolConfig>,
    /// The routing-table generation `settings` came from.
    pub(super) settings_generation: u64,
    /// No route reaches this origin any more (a reload changed its TLS
    /// settings): it keeps no idle connections and is forgotten once its
    /// last connection is gone.
    pub(super) retired: bool,
    /// Oldest first; reuse pops from the end (most recently used).
    pub(super) idle: Vec<IdleConn>,
    pub(super) waiters: VecDeque<Waiter>,
    pub(super) in_use: usize,
    pub(super) connecting: usize,
    pub(super) opened_total: u64,
    pub(super) reused_total: u64,
    pub(super) learner: IdleLearner,
    /// Named under `[[upstream]]` with `min_idle_per_host > 0`: kept warm and
    /// never removed from the map.
    pub(super) pinned: bool,
    /// Connects that failed since the last one that succeeded.
    pub(super) connect_failures: u32,
    /// The last failed connect: when, and its Proxy-Status type.
    pub(super) last_failure: Option<(Instant, &'static str)>,
}

impl OriginState {
    pub(super) fn new(settings: Arc<PoolConfig>, metrics: Arc<OriginMetrics>) -> OriginState {
        OriginState {
            settings,
            settings_generation: 0,
            retired: false,
            metrics,
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
        }
    }

    pub(super) fn total(&self) -> usize {
        self.idle.len() + self.in_use + self.connecting
    }

    pub(super) fn is_unused(&self) -> bool {
        self.total() == 0 && self.waiters.is_empty() && !self.pinned
    }

    /// The idle age after which this origin's connections are closed.
    pub(super) fn effective_idle_timeout(&self) -> (Duration, CloseReason) {
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

    pub(super) fn expiry(&self, conn: &Conn, now: Instant) -> (Instant, CloseReason) {
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
