//! Graceful shutdown plumbing: a signal every task can wait on, and a count
//! of open client connections that shutdown waits to reach zero.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

/// Fires once; every clone sees it.
#[derive(Clone)]
pub(crate) struct ShutdownSignal {
    rx: watch::Receiver<bool>,
    /// Set before the watch fires: a check without the watch's lock.
    fired: Arc<AtomicBool>,
}

pub(crate) struct ShutdownTrigger {
    tx: watch::Sender<bool>,
    fired: Arc<AtomicBool>,
}

pub(crate) fn channel() -> (ShutdownTrigger, ShutdownSignal) {
    let (tx, rx) = watch::channel(false);
    let fired = Arc::new(AtomicBool::new(false));
    (
        ShutdownTrigger {
            tx,
            fired: fired.clone(),
        },
        ShutdownSignal { rx, fired },
    )
}

impl ShutdownTrigger {
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.tx.send_replace(true);
    }
}

impl Drop for ShutdownTrigger {
    /// A dropped trigger counts as fired, as [`ShutdownSignal::wait`] says.
    fn drop(&mut self) {
        self.fired.store(true, Ordering::Release);
    }
}

impl ShutdownSignal {
    /// Resolves once shutdown has started (or the trigger is gone).
    pub(crate) async fn wait(&mut self) {
        // An error means the trigger was dropped: treat it as shutdown.
        let _ = self.rx.wait_for(|fired| *fired).await;
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
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
