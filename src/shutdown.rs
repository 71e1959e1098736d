//! Graceful shutdown plumbing: a signal every task can wait on, and a count
//! of open client connections that shutdown waits to reach zero.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Fires once; every clone sees it. One pointer: every client connection
/// keeps a clone, and a wait on it, for as long as it lives.
#[derive(Clone)]
pub(crate) struct ShutdownSignal(Arc<Signal>);

struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

pub(crate) struct ShutdownTrigger(Arc<Signal>);

pub(crate) fn channel() -> (ShutdownTrigger, ShutdownSignal) {
    let signal = Arc::new(Signal {
        fired: AtomicBool::new(false),
        notify: Notify::new(),
    });
    (ShutdownTrigger(signal.clone()), ShutdownSignal(signal))
}

impl ShutdownTrigger {
    pub(crate) fn fire(&self) {
        self.0.fired.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }
}

impl Drop for ShutdownTrigger {
    /// A dropped trigger counts as fired.
    fn drop(&mut self) {
        self.fire();
    }
}

impl ShutdownSignal {
    /// Resolves once shutdown has started (or the trigger is gone).
    pub(crate) async fn wait(&self) {
        let notified = self.0.notify.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read, so a fire in between is not
        // missed.
        notified.as_mut().enable();
        if self.is_fired() {
            return;
        }
        notified.await;
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }
}

/// Counts live client connections.
#[derive(Clone, Default)]
pub(crate) struct ConnTracker(Arc<TrackerInner>);

#[derive(Default)]
struct TrackerInner {
    open: AtomicUsize,
    idle: Notify,
}

pub(crate) struct TrackGuard(ConnTracker);

impl ConnTracker {
    pub(crate) fn track(&self) -> TrackGuard {
        self.0.open.fetch_add(1, Ordering::AcqRel);
        TrackGuard(self.clone())
    }

    pub(crate) fn open(&self) -> usize {
        self.0.open.load(Ordering::Acquire)
    }

    /// Resolves when no connection is open.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0 .0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .0.idle.notify_waiters();
        }
    }
}
