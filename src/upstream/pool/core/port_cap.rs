//! The rule for an origin toward which eddy's host ran out of local ports.
//!
//! `EADDRNOTAVAIL` from `connect` says no local port is free toward that
//! destination. Another connect now would fail the same way, so the
//! origin's bound drops to the connections it has, and requests wait for
//! one of those. The shortage may pass (TIME-WAIT sockets expire, other
//! origins close connections), so while requests wait one more connect
//! is tried each [`PORT_RETRY`]; once nobody waits, the cap is lifted.

use std::time::Duration;

use tokio::time::Instant;

/// How long a [`PortCap`] holds before one more connect is tried.
pub(crate) const PORT_RETRY: Duration = Duration::from_secs(1);

/// An origin capped for lack of local ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortCap {
    /// Connections (open and opening) it may have.
    pub(crate) limit: usize,
    /// When the cap is next reconsidered.
    pub(crate) retry_at: Instant,
}

impl PortCap {
    /// A connect just failed for lack of a port while `open` connections
    /// were open or opening.
    pub(crate) fn new(open: usize, now: Instant) -> PortCap {
        PortCap {
            limit: open,
            retry_at: now + PORT_RETRY,
        }
    }

    /// The origin's bound under the cap.
    pub(crate) fn bound(self, max: usize) -> usize {
        self.limit.min(max)
    }

    /// At `retry_at`: one connection more than it has (`open`) while
    /// requests wait, or no cap at all when none do.
    pub(crate) fn at_retry(self, now: Instant, waiting: bool, open: usize) -> Option<PortCap> {
        waiting.then(|| PortCap {
            limit: self.limit.max(open) + 1,
            retry_at: now + PORT_RETRY,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_what_is_open_then_tries_one_more_while_requests_wait() {
        let t0 = Instant::now();
        let cap = PortCap::new(3, t0);
        assert_eq!(cap.bound(32), 3);
        assert_eq!(cap.bound(2), 2, "never above the configured bound");
        let next = cap.at_retry(cap.retry_at, true, 3).expect("still capped");
        assert_eq!(next.limit, 4);
        assert_eq!(next.retry_at, cap.retry_at + PORT_RETRY);
        // Connections opened meanwhile count: one more than those.
        assert_eq!(
            cap.at_retry(cap.retry_at, true, 5).map(|c| c.limit),
            Some(6)
        );
        assert_eq!(cap.at_retry(cap.retry_at, false, 3), None, "lifted");
    }
}
