//! Which client timeout applies to a connection right now.
//!
//! A client connection is in one of three phases, and each has its own
//! bound:
//! - *head*: a request head is arriving. `client_header_timeout` runs from
//!   its first byte, or from accept for the first request;
//! - *idle*: between requests. `client_idle_timeout` runs from the end of
//!   the last response;
//! - *busy*: a request is in flight. The origin may take as long as it
//!   takes; the only bound is on a client that stops reading its response:
//!   no write progress for `client_idle_timeout` ends the connection (the
//!   response body is then drained to save the upstream connection).
//!
//! hyper's own header timer cannot express any of this, so it is off, and
//! this state machine ([`Activity`]) decides instead. The socket wrapper
//! reports reads and writes to it, a [`BusyGuard`] marks each request in
//! flight, and the connection task keeps one timer at [`Activity`]'s
//! deadline. The deadline is milliseconds since the connection began, moved
//! with a plain store; the connection task re-arms its timer when it next
//! polls, which is exact because the phase only changes while it polls.
//!
//! The same facts decide when a connection may let hyper go until its next
//! request ([`Activity::park_at`]): nothing in flight, nothing unread,
//! nothing unwritten, and [`LINGER_MS`] past the last response. The timer
//! is then armed at whichever comes first, that moment or the deadline.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

const NO_DEADLINE: u64 = u64::MAX;
/// How long hyper is kept after a response, in case the next request
/// follows at once. Rebuilding hyper's connection costs a few microseconds
/// (about 15 % of a kept-alive request's CPU), so a keep-alive client under
/// load, whose next request comes within a millisecond or two, keeps it; a
/// client that pauses longer gives its buffers back. Short, because every
/// connection inside this window holds its buffers.
const LINGER_MS: u64 = 10;
const PHASE_IDLE: u8 = 0;
const PHASE_HEAD: u8 = 1;
const PHASE_BUSY: u8 = 2;

/// Which timeout applies to a client connection right now. Touched only
/// from the connection's own task; atomics make it `Sync` for hyper.
pub(super) struct Activity {
    epoch: Instant,
    phase: AtomicU8,
    in_flight: AtomicU32,
    /// Milliseconds since `epoch`, or [`NO_DEADLINE`].
    deadline: AtomicU64,
    header_ms: u64,
    idle_ms: u64,
    /// Since when a response write has been blocked, or [`NO_DEADLINE`].
    write_blocked_since: AtomicU64,
    /// Finish the requests in flight, then close.
    pub(super) close_requested: AtomicBool,
    /// hyper's last read found no bytes, at a request boundary: hyper holds
    /// no unread byte (it reads only once its buffer has no whole request).
    reads_drained: AtomicBool,
    /// hyper is kept at least until then after a response (milliseconds
    /// since `epoch`; 0 until the first response: a connection that has
    /// sent nothing has nothing to keep).
    linger_until: AtomicU64,
}

impl Activity {
    pub(super) fn new(header_timeout: Duration, idle_timeout: Duration) -> Activity {
        let header_ms = header_timeout.as_millis() as u64;
        Activity {
            epoch: Instant::now(),
            phase: AtomicU8::new(PHASE_HEAD),
            in_flight: AtomicU32::new(0),
            deadline: AtomicU64::new(header_ms),
            header_ms,
            idle_ms: idle_timeout.as_millis() as u64,
            write_blocked_since: AtomicU64::new(NO_DEADLINE),
            close_requested: AtomicBool::new(false),
            reads_drained: AtomicBool::new(false),
            linger_until: AtomicU64::new(0),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(super) fn deadline_ms(&self) -> u64 {
        self.deadline.load(Ordering::Relaxed)
    }

    pub(super) fn instant(&self, ms: u64) -> Instant {
        if ms == NO_DEADLINE {
            // Far enough to never fire, near enough not to overflow.
            self.epoch + Duration::from_secs(86_400 * 365)
        } else {
            self.epoch + Duration::from_millis(ms)
        }
    }

    /// Bytes arrived: an idle connection starts receiving a head. Returns
    /// true when this read starts a new head.
    pub(super) fn on_read(&self) -> bool {
        if self.phase.load(Ordering::Relaxed) == PHASE_IDLE {
            self.phase.store(PHASE_HEAD, Ordering::Relaxed);
            self.deadline.store(
                self.now_ms().saturating_add(self.header_ms),
                Ordering::Relaxed,
            );
            return true;
        }
        false
    }
}

impl Activity {
    /// The socket's last read for hyper: `drained` when it found no bytes
    /// at a request boundary, not when it returned some (or is inside a
    /// request, a tunnel or a refused stream).
    pub(super) fn on_read_attempt(&self, drained: bool) {
        self.reads_drained.store(drained, Ordering::Relaxed);
    }

    /// When the connection may let hyper go until its next request, if it
    /// can: no request in flight, every byte read belongs to requests
    /// already answered, no response byte waiting for the client to read
    /// it, and nobody asked to close. Dropping hyper then loses nothing,
    /// and its buffers (16 KiB or more) are freed while the client is idle,
    /// or before its first request has sent a byte (the phase is then
    /// *head*, and `client_header_timeout` still runs from accept). The
    /// moment, in milliseconds since the connection began, is right away
    /// for a connection that has sent nothing yet, and [`LINGER_MS`] after
    /// the last response otherwise.
    pub(super) fn park_at(&self) -> Option<u64> {
        let parkable = self.phase.load(Ordering::Relaxed) != PHASE_BUSY
            && self.reads_drained.load(Ordering::Relaxed)
            && self.write_blocked_since.load(Ordering::Relaxed) == NO_DEADLINE
            && !self.close_requested.load(Ordering::Relaxed);
        parkable.then(|| self.linger_until.load(Ordering::Relaxed))
    }

    /// A fresh hyper connection takes over the socket.
    pub(super) fn unpark(&self) {
        self.reads_drained.store(false, Ordering::Relaxed);
    }

    /// The client is not taking response bytes: during a request, that
    /// starts the clock on `client_idle_timeout`.
    pub(super) fn on_write_blocked(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) != NO_DEADLINE {
            return;
        }
        let now = self.now_ms();
        self.write_blocked_since.store(now, Ordering::Relaxed);
        if self.phase.load(Ordering::Relaxed) == PHASE_BUSY {
            self.deadline
                .store(now.saturating_add(self.idle_ms), Ordering::Relaxed);
        }
    }

    pub(super) fn on_write_progress(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) == NO_DEADLINE {
            return;
        }
        self.write_blocked_since
            .store(NO_DEADLINE, Ordering::Relaxed);
        match self.phase.load(Ordering::Relaxed) {
            PHASE_BUSY => self.deadline.store(NO_DEADLINE, Ordering::Relaxed),
            // The last of a response is still being flushed after its body
            // ended: progress there restarts the idle clock too.
            PHASE_IDLE => self.deadline.store(
                self.now_ms().saturating_add(self.idle_ms),
                Ordering::Relaxed,
            ),
            _ => {}
        }
    }
}

/// Marks a request in flight from head parsed to response written.
pub(super) struct BusyGuard(Arc<Activity>);

impl BusyGuard {
    pub(super) fn begin(activity: Arc<Activity>) -> BusyGuard {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.phase.store(PHASE_BUSY, Ordering::Relaxed);
        activity.deadline.store(NO_DEADLINE, Ordering::Relaxed);
        BusyGuard(activity)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let now = a.now_ms();
            a.phase.store(PHASE_IDLE, Ordering::Relaxed);
            a.linger_until
                .store(now.saturating_add(LINGER_MS), Ordering::Relaxed);
            a.deadline
                .store(now.saturating_add(a.idle_ms), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity() -> Arc<Activity> {
        Arc::new(Activity::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
        ))
    }

    #[test]
    fn a_new_connection_parks_once_a_read_finds_nothing() {
        let a = activity();
        assert_eq!(a.park_at(), None, "nothing read yet: hyper may hold bytes");
        a.on_read_attempt(true);
        assert_eq!(
            a.park_at(),
            Some(0),
            "no byte of the first head yet: nothing to keep"
        );
        a.on_read_attempt(false);
        assert_eq!(a.park_at(), None, "bytes arrived");
    }

    #[test]
    fn hyper_lingers_after_a_response() {
        let a = activity();
        let busy = BusyGuard::begin(a.clone());
        a.on_read_attempt(true);
        let before = a.now_ms();
        drop(busy);
        let at = a.park_at().expect("parkable");
        assert!(at >= before + LINGER_MS);
        assert!(at <= a.now_ms() + LINGER_MS);
    }

    #[test]
    fn a_request_in_flight_is_never_parked() {
        let a = activity();
        let busy = BusyGuard::begin(a.clone());
        a.on_read_attempt(true);
        assert_eq!(a.park_at(), None);
        drop(busy);
        assert!(
            a.park_at().is_some(),
            "answered, and the last read found nothing"
        );
    }

    #[test]
    fn a_response_still_waiting_for_the_client_is_never_dropped() {
        let a = activity();
        let busy = BusyGuard::begin(a.clone());
        a.on_read_attempt(true);
        a.on_write_blocked();
        drop(busy);
        assert_eq!(a.park_at(), None, "the response's last bytes are unwritten");
        a.on_write_progress();
        assert!(a.park_at().is_some());
    }

    #[test]
    fn a_connection_asked_to_close_is_not_parked() {
        let a = activity();
        a.on_read_attempt(true);
        a.close_requested.store(true, Ordering::Relaxed);
        assert_eq!(a.park_at(), None);
    }

    #[test]
    fn unparking_forgets_the_last_read() {
        let a = activity();
        a.on_read_attempt(true);
        a.unpark();
        assert_eq!(
            a.park_at(),
            None,
            "a fresh hyper connection has not read yet"
        );
    }

    #[test]
    fn the_idle_clock_starts_when_the_response_ends() {
        let a = activity();
        assert_eq!(a.deadline_ms(), 10_000, "header timeout from accept");
        let busy = BusyGuard::begin(a.clone());
        assert_eq!(a.deadline_ms(), NO_DEADLINE, "the origin takes its time");
        drop(busy);
        assert!(
            a.deadline_ms() >= 60_000,
            "idle timeout from the response's end"
        );
        assert!(a.on_read(), "the next head starts");
        assert!(a.deadline_ms() < 60_000, "header timeout again");
    }
}
