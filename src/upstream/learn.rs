//! Learning an origin's keep-alive limit from the idle connections it closes.
//!
//! Many origins close idle keep-alive connections after a few seconds without
//! saying so (no `Keep-Alive: timeout=N`). A proxy whose own idle timeout is
//! longer reuses such a connection at the wrong moment and the request dies
//! with EOF or a reset. The learner watches the idle age at which the origin
//! closes connections and, once the evidence is consistent, makes the pool
//! expire that origin's idle connections a safety margin earlier.
//!
//! What counts as evidence, and why: a keep-alive timer closes *every*
//! connection that stays idle long enough, oldest first, at the same idle
//! age; a restart, a deploy or a network blip closes whatever is open at
//! that moment, whatever its age. So:
//! - a close of a connection idle less than [`MIN_EVIDENCE_AGE`] teaches
//!   nothing: no server sets a keep-alive timeout that short, and it is
//!   exactly what a restart looks like right after a response. Learning it
//!   would expire connections at the floor and switch pooling off, while
//!   closes that young are caught anyway by the check before reuse and the
//!   stale retry;
//! - closes that arrive together (within [`BURST_WINDOW`]) are one event; if
//!   their idle ages disagree it was a restart, not a keep-alive limit, and
//!   the whole event is ignored;
//! - a close while an older idle connection of the same origin is still
//!   open is not a timer either (a timer would have closed the older one
//!   first): ignored;
//! - one event teaches nothing; a second event at a consistent idle age
//!   (within [`tolerance`]) sets the limit, unless a connection was reused
//!   after idling clearly longer in between (it survived the age the first
//!   event suggested);
//! - once a limit is known, any later event below it lowers it;
//! - without new evidence the limit grows back by a quarter every
//!   [`GROWTH_PERIOD`] (or 20× the limit, whichever is longer), so an origin
//!   whose limit was raised is noticed; past the configured `idle_timeout`
//!   it is forgotten.
//!
//! Pure logic over explicit `now` values, no clocks or sockets, so it is
//! tested exhaustively below.

use std::time::Duration;

use tokio::time::Instant;

/// Closes this close together are one event.
pub(crate) const BURST_WINDOW: Duration = Duration::from_millis(100);
/// Minimum time without evidence before a learned limit grows back.
pub(crate) const GROWTH_PERIOD: Duration = Duration::from_secs(60);
/// Learned expiry never goes below this.
pub(crate) const FLOOR: Duration = Duration::from_millis(100);
/// A close of a connection idle less than this is not evidence of a
/// keep-alive limit (a restart, a deploy, a worker recycled).
pub(crate) const MIN_EVIDENCE_AGE: Duration = Duration::from_millis(250);

/// How far apart two idle ages may be and still count as "consistent".
pub(crate) fn tolerance(age: Duration) -> Duration {
    (age / 5).max(Duration::from_millis(100))
}

/// The idle age at which eddy closes a connection itself, given an origin
/// limit: a safety margin (a quarter, between 50 ms and 1 s) before it,
/// never below [`FLOOR`].
pub(crate) fn expire_before(limit: Duration) -> Duration {
    let margin = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    limit.saturating_sub(margin).max(FLOOR)
}

#[derive(Debug, Default)]
pub(crate) struct IdleLearner {
    /// The origin's confirmed idle-close age.
    limit: Option<Duration>,
    /// A single event's age, waiting for a second one to confirm it.
    candidate: Option<Duration>,
    burst: Option<Burst>,
    /// When evidence last arrived (or the limit last grew).
    last_evidence: Option<Instant>,
}

#[derive(Debug)]
struct Burst {
    started: Instant,
    min_age: Duration,
    max_age: Duration,
    /// An older idle connection outlived one of this burst's closes.
    refuted: bool,
    /// What the learner knew before this burst, restored if the burst is
    /// not evidence.
    before: (Option<Duration>, Option<Duration>),
}

/// One idle connection the origin closed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdleClose {
    /// How long it had been idle.
    pub age: Duration,
    /// How long the origin's oldest connection still idle has been idle.
    pub oldest_still_idle: Option<Duration>,
}

impl IdleLearner {
    /// The learned origin limit, if any.
    pub(crate) fn limit(&self) -> Option<Duration> {
        self.limit
    }

    /// True when there is nothing worth remembering about the origin.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.limit.is_none() && self.candidate.is_none()
    }

    /// The origin closed an idle connection.
    pub(crate) fn observe_close(&mut self, now: Instant, close: IdleClose) {
        let IdleClose {
            age,
            oldest_still_idle,
        } = close;
        let refuted = oldest_still_idle.is_some_and(|o| o > age + tolerance(age));
        let burst = match self.burst.take() {
            Some(mut b) if now.saturating_duration_since(b.started) <= BURST_WINDOW => {
                b.min_age = b.min_age.min(age);
                b.max_age = b.max_age.max(age);
                b.refuted |= refuted;
                b
            }
            _ => Burst {
                started: now,
                min_age: age,
                max_age: age,
                refuted,
                before: (self.limit, self.candidate),
            },
        };
        let evidence = !burst.refuted
            && burst.min_age >= MIN_EVIDENCE_AGE
            && burst.max_age - burst.min_age <= tolerance(burst.min_age);
        if evidence {
            // The event's age is the youngest connection it closed.
            self.apply_event(burst.before, burst.min_age);
            self.last_evidence = Some(now);
        } else {
            (self.limit, self.candidate) = burst.before;
        }
        self.burst = Some(burst);
    }

    /// A connection of this origin was reused, and answered, after idling
    /// for `age`: the origin does not close connections that young. A
    /// candidate or limit clearly below it was not a keep-alive limit.
    pub(crate) fn observe_survival(&mut self, age: Duration) {
        let outlived = |v: Duration| age > v + tolerance(v);
        if self.candidate.is_some_and(outlived) {
            self.candidate = None;
        }
        if self.limit.is_some_and(outlived) {
            self.limit = None;
        }
    }

    /// Applies one event of idle age `age` to the state `before` it.
    fn apply_event(&mut self, before: (Option<Duration>, Option<Duration>), age: Duration) {
        let (limit, candidate) = before;
        (self.limit, self.candidate) = match (limit, candidate) {
            // A known limit: an event at or below it (within tolerance) is a
            // repeat; it can only lower the limit.
            (Some(l), _) if age <= l + tolerance(l) => (Some(l.min(age)), None),
            // A close well above the known limit: the limit may have grown.
            (Some(l), _) => (Some(l), Some(age)),
            (None, Some(c)) if age.abs_diff(c) <= tolerance(c.min(age)) => (Some(c.min(age)), None),
            (None, _) => (None, Some(age)),
        };
    }

    /// Lets a learned limit grow back when no evidence has arrived for a
    /// while; forgets it once it reaches `configured`.
    pub(crate) fn grow(&mut self, now: Instant, configured: Duration) {
        let (Some(limit), Some(last)) = (self.limit, self.last_evidence) else {
            return;
        };
        let period = GROWTH_PERIOD.max(limit * 20);
        if now.saturating_duration_since(last) < period {
            return;
        }
        let grown = limit + limit / 4;
        self.limit = if grown >= configured {
            None
        } else {
            Some(grown)
        };
        self.candidate = None;
        self.last_evidence = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A close with no other idle connection open.
    fn lone(age: Duration) -> IdleClose {
        IdleClose {
            age,
            oldest_still_idle: None,
        }
    }

    #[test]
    fn restarts_right_after_a_response_teach_nothing() {
        // Two graceful restarts, each closing the one pooled connection
        // ~30 ms after its response: consistent, single, and not a limit.
        let t0 = Instant::now();
        let mut l = IdleLearner::default();
        l.observe_close(t0, lone(ms(30)));
        l.observe_close(t0 + ms(3_000), lone(ms(31)));
        l.observe_close(t0 + ms(6_000), lone(ms(29)));
        assert_eq!(l.limit(), None);
        assert!(l.is_empty());
        // Just above the floor, the same pattern is a limit.
        l.observe_close(t0 + ms(9_000), lone(MIN_EVIDENCE_AGE));
        l.observe_close(t0 + ms(12_000), lone(MIN_EVIDENCE_AGE + ms(5)));
        assert_eq!(l.limit(), Some(MIN_EVIDENCE_AGE));
    }

    #[test]
    fn a_close_while_an_older_idle_connection_lives_is_not_a_timer() {
        let t0 = Instant::now();
        let mut l = IdleLearner::default();
        let refuted = IdleClose {
            age: ms(900),
            oldest_still_idle: Some(ms(5_000)),
        };
        l.observe_close(t0, refuted);
        l.observe_close(t0 + ms(2_000), refuted);
        assert_eq!(l.limit(), None);
        // An older connection within tolerance does not refute.
        let close_enough = IdleClose {
            age: ms(900),
            oldest_still_idle: Some(ms(950)),
        };
        l.observe_close(t0 + ms(4_000), close_enough);
        l.observe_close(t0 + ms(6_000), close_enough);
        assert_eq!(l.limit(), Some(ms(900)));
    }

    #[test]
    fn a_connection_that_survived_longer_refutes_a_candidate() {
        let t0 = Instant::now();
        let mut l = IdleLearner::default();
        l.observe_close(t0, lone(ms(1_000)));
        l.observe_survival(ms(5_000));
        l.observe_close(t0 + ms(10_000), lone(ms(1_000)));
        assert_eq!(l.limit(), None, "the first close was refuted in between");
        l.observe_survival(ms(1_050));
        l.observe_close(t0 + ms(20_000), lone(ms(1_000)));
        assert_eq!(
            l.limit(),
            Some(ms(1_000)),
            "a survival within tolerance refutes nothing"
        );
        l.observe_survival(ms(3_000));
        assert_eq!(l.limit(), None, "a limit outlived is forgotten");
    }

    #[test]
    fn one_close_teaches_nothing_two_consistent_closes_do() {
        let t0 = Instant::now();
        let mut l = IdleLearner::default();
        l.observe_close(t0, lone(ms(810)));
        assert_eq!(l.limit(), None);
        l.observe_close(t0 + ms(2_000), lone(ms(805)));
        assert_eq!(l.limit(), Some(ms(805)));
        assert!(expire_before(ms(805)) < ms(800));
    }

    #[test]
    fn inconsistent_closes_teach_nothing() {
        let t0 = Instant::now();
        let mut l = IdleLearner::default();
        l.observe_close(t0, lone(ms(800)));
        l.observe_close(t0 + ms(5_000), lone(ms(3_000)));
        assert_eq!(l.limit(), None);
    }

    #[test]
    fn a_restart_closing_connections_of_any_age_at_once_is_ignored() {
        let t0 = Instant::now();
        let mut l = IdleLearner::default();
        // A single earlier close leaves a candidate...
        l.observe_close(t0, lone(ms(400)));
        // ...then a restart closes three connections at once, one of them at
        // a consistent age: the burst's spread marks it as a restart.
        let t1 = t0 + ms(10_000);
        l.observe_close(t1, lone(ms(420)));
        l.observe_close(t1 + ms(1), lone(ms(2_500)));
        l.observe_close(t1 + ms(2), lone(ms(40)));
        assert_eq!(l.limit(), None);
    }

    #[test]
    fn a_burst_of_consistent_closes_is_one_event() {
        let t0 = Instant::now();
        let mut l = IdleLearner::default();
        l.observe_close(t0, lone(ms(900)));
        l.observe_close(t0 + ms(5), lone(ms(905)));
        assert_eq!(l.limit(), None, "two closes in one burst are one event");
    }

    #[test]
    fn a_known_limit_only_goes_down_on_evidence_and_grows_back_without() {
        let t0 = Instant::now();
        let mut l = IdleLearner::default();
        l.observe_close(t0, lone(ms(1_000)));
        l.observe_close(t0 + ms(3_000), lone(ms(1_000)));
        assert_eq!(l.limit(), Some(ms(1_000)));
        l.observe_close(t0 + ms(6_000), lone(ms(600)));
        assert_eq!(l.limit(), Some(ms(600)));
        l.grow(t0 + ms(7_000), Duration::from_secs(30));
        assert_eq!(l.limit(), Some(ms(600)), "too soon to grow");
        let later = t0 + ms(6_000) + GROWTH_PERIOD;
        l.grow(later, Duration::from_secs(30));
        assert_eq!(l.limit(), Some(ms(750)));
        l.grow(later + GROWTH_PERIOD, ms(800));
        assert_eq!(l.limit(), None, "forgotten once it reaches idle_timeout");
    }

    #[test]
    fn expiry_keeps_a_margin_and_a_floor() {
        assert_eq!(expire_before(Duration::from_secs(1)), ms(750));
        assert_eq!(expire_before(Duration::from_secs(60)), ms(59_000));
        assert_eq!(expire_before(ms(120)), FLOOR);
    }
}
