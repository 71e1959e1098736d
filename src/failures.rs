//! Warn lines for failures, so that every failure is seen, and a flood of
//! them is not a flood of lines.
//!
//! Why: the access log may be off (it is, by default, in busy sidecars),
//! and a failure seen only at debug level is a failure nobody sees. So every
//! failure a client or the pool meets (an answer eddy made itself, a
//! response cut off mid-body, a prewarm connect that failed) is written at
//! `warn`, whatever `log.access_log` says. An origin that is down fails
//! every request the same way, though, and a thousand identical lines bury
//! the first one. So each origin (by its `upstream` metric label, hence a
//! bounded set) keeps one [`Throttle`] per kind of failure: the first
//! failure of a kind is written at once, the next ones within
//! [`WINDOW`] are only counted, and the first one after the window says how
//! many were left out. The counters (`eddy_errors_total`) count them all.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most one line per origin and kind of failure in this long.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// Whether a failure is written now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write it, saying how many like it were left out since the last line.
    Write { suppressed: u64 },
    /// Count it and leave it out.
    Suppress,
}

/// One kind of failure of one origin: when its window opened, and how many
/// failures it has left out since.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    opened: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// A failure at `now`.
    pub(crate) fn admit(&mut self, now: Instant, window: Duration) -> Admit {
        match self.opened {
            Some(at) if now.saturating_duration_since(at) < window => {
                self.suppressed += 1;
                Admit::Suppress
            }
            _ => {
                self.opened = Some(now);
                Admit::Write {
                    suppressed: std::mem::take(&mut self.suppressed),
                }
            }
        }
    }
}

/// What failed: the Proxy-Status type, and where (a request, a response
/// body, prewarming). Both are fixed strings, so the set is bounded.
pub(crate) type FailureKind = (&'static str, &'static str);

/// One origin's throttles, one per kind of failure seen.
#[derive(Debug, Default)]
pub(crate) struct Throttles(Mutex<Vec<(FailureKind, Throttle)>>);

impl Throttles {
    /// A failure of `kind` now: whether to write it.
    pub(crate) fn admit(&self, kind: FailureKind) -> Admit {
        let now = Instant::now();
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, t)) = all.iter_mut().find(|(k, _)| *k == kind) {
            return t.admit(now, WINDOW);
        }
        let mut t = Throttle::default();
        let admitted = t.admit(now, WINDOW);
        all.push((kind, t));
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_and_the_next_says_how_many_were_left_out() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let mut t = Throttle::default();
        assert_eq!(t.admit(t0, window), Admit::Write { suppressed: 0 });
        for i in 1..1000 {
            let at = t0 + Duration::from_millis(i * 5);
            assert_eq!(t.admit(at, window), Admit::Suppress, "{i}");
        }
        assert_eq!(
            t.admit(t0 + window, window),
            Admit::Write { suppressed: 999 }
        );
        assert_eq!(
            t.admit(t0 + window + Duration::from_secs(1), window),
            Admit::Suppress
        );
        assert_eq!(
            t.admit(t0 + window * 3, window),
            Admit::Write { suppressed: 1 }
        );
    }

    #[test]
    fn kinds_are_throttled_apart() {
        let t = Throttles::default();
        let refused = ("connection_refused", "request");
        let dns = ("dns_error", "prewarm");
        assert_eq!(t.admit(refused), Admit::Write { suppressed: 0 });
        assert_eq!(t.admit(dns), Admit::Write { suppressed: 0 });
        assert_eq!(t.admit(refused), Admit::Suppress);
        assert_eq!(t.admit(dns), Admit::Suppress);
    }
}
