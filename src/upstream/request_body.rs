//! The client's request body on its way to the origin, and the facts about
//! its transmission that decide what happens to the connection afterwards.
//!
//! Why it is built this way: whether an upstream connection can carry the
//! next request depends on what was *written* on it, never on which of two
//! futures eddy happened to poll first. [`RequestProgress`] records what
//! hyper takes from the body as it takes it (the end, or a failure), so
//! when the response ends the completion rule (`pool::completion`) asks
//! "was the request sent in full?" and gets an answer that timing cannot
//! change. hyper itself never starts the next request on a connection
//! before the previous body is written, so these facts decide *when* a
//! connection is worth returning, and the pool never has to guess.
//!
//! A streamed body is held to a pace ([`Pace`]): silence for the listener's
//! `client_idle_timeout` fails it, and so does falling behind
//! `client_body_min_rate` once `client_body_timeout` has passed. A client
//! that trickles its upload therefore cannot keep an upstream connection (a
//! slot of a bounded pool) for ever.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// How fast a request body must arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PaceRule {
    /// Silence this long fails the body (`client_idle_timeout`).
    pub idle: Duration,
    /// Time every body gets (`client_body_timeout`)...
    pub grace: Duration,
    /// ...plus one second per this many bytes received
    /// (`client_body_min_rate`); 0 turns the rate rule off.
    pub min_rate: u64,
}

/// Why a body that is still arriving has run out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lag {
    /// No byte for `idle`.
    Silent,
    /// Behind `min_rate` after `grace`.
    TooSlow,
}

/// One body's pace so far: how much came, and how long eddy has waited
/// for it. Plain values and explicit instants, so the rule is tested
/// without a clock.
///
/// The client is charged only for the time eddy was *waiting for its
/// bytes*: not while the request waited for a pool slot, and not while the
/// origin was slow to take what eddy already had. An origin that reads
/// slowly must not get its client cut for being slow.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pace {
    rule: PaceRule,
    received: u64,
    /// Time spent waiting for the client before the current wait.
    waited: Duration,
    /// When the current wait for the client's bytes began; `None` while
    /// eddy is not waiting for them.
    waiting_since: Option<Instant>,
}

impl Pace {
    pub(crate) fn new(rule: PaceRule) -> Pace {
        Pace {
            rule,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
        }
    }

    /// eddy asks the client for more at `now`, having nothing in hand (a
    /// wait already under way goes on); returns the wait's deadline.
    pub(crate) fn wait(&mut self, now: Instant) -> (Instant, Lag) {
        let since = *self.waiting_since.get_or_insert(now);
        self.deadline_from(since)
    }

    /// `n` more bytes (or the end) arrived at `now`: the wait is over.
    pub(crate) fn record(&mut self, n: usize, now: Instant) {
        self.received += n as u64;
        if let Some(since) = self.waiting_since.take() {
            self.waited += now.saturating_duration_since(since);
        }
    }

    /// The instant by which the client's next bytes must arrive, and which
    /// rule that instant comes from; `None` when eddy is not waiting.
    ///
    /// Silence is `idle` in one wait. The rate rule is Apache's
    /// `mod_reqtimeout` one: `grace` of waiting, extended by one second for
    /// every `min_rate` bytes received. A body that keeps that pace is
    /// never cut, however large; one that trickles is cut once it falls
    /// behind.
    #[cfg(test)]
    pub(crate) fn deadline(&self) -> Option<(Instant, Lag)> {
        self.waiting_since.map(|since| self.deadline_from(since))
    }

    fn deadline_from(&self, since: Instant) -> (Instant, Lag) {
        let silent = since + self.rule.idle;
        if self.rule.min_rate == 0 {
            return (silent, Lag::Silent);
        }
        let earned = Duration::from_secs_f64(self.received as f64 / self.rule.min_rate as f64);
        let allowed = self.rule.grace.saturating_add(earned);
        let slow = since + allowed.saturating_sub(self.waited);
        if slow < silent {
            (slow, Lag::TooSlow)
        } else {
            (silent, Lag::Silent)
        }
    }

    /// Whether a body still awaited at `now` has run out of time (the
    /// deadline, as a verdict: what the tests state the rule with).
    #[cfg(test)]
    pub(crate) fn check(&self, now: Instant) -> Result<(), Lag> {
        match self.deadline() {
            Some((deadline, lag)) if now >= deadline => Err(lag),
            _ => Ok(()),
        }
    }

    pub(crate) fn rule(&self) -> PaceRule {
        self.rule
    }
}

/// A request body that stopped arriving in time.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyTooSlow {
    #[error("the client sent no request body bytes for {0:?}")]
    Silent(Duration),
    #[error("the request body arrived slower than {0} bytes/s (client_body_min_rate)")]
    TooSlow(u64),
}

impl BodyTooSlow {
    pub(crate) fn new(lag: Lag, rule: PaceRule) -> BodyTooSlow {
        match lag {
            Lag::Silent => BodyTooSlow::Silent(rule.idle),
            Lag::TooSlow => BodyTooSlow::TooSlow(rule.min_rate),
        }
    }
}

/// Where a request body's transmission stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sending {
    /// Some of it may have been written; the end has not.
    Partial,
    /// hyper has taken all of it, the end included.
    Complete,
    /// The client's body failed (aborted, stalled, too slow): it can never
    /// be completed on this connection.
    Failed,
}

const ENDED: u8 = 1;
const FAILED: u8 = 2;

/// What hyper has taken of one streamed request body, shared between the
/// body (which hyper owns) and the exchange that watches it.
#[derive(Debug)]
pub(crate) struct RequestProgress {
    flags: AtomicU8,
    /// The body is waiting for the client's bytes (not for hyper to take
    /// them): time that does not count against the origin.
    waiting_on_client: AtomicBool,
    epoch: Instant,
    /// Milliseconds after `epoch` at which hyper last asked for more.
    last_take_ms: AtomicU64,
    /// Body bytes received from the client so far (for the access log).
    received: AtomicU64,
    notify: Notify,
}

impl RequestProgress {
    fn new() -> RequestProgress {
        RequestProgress {
            flags: AtomicU8::new(0),
            waiting_on_client: AtomicBool::new(false),
            epoch: Instant::now(),
            last_take_ms: AtomicU64::new(0),
            received: AtomicU64::new(0),
            notify: Notify::new(),
        }
    }

    pub(crate) fn state(&self) -> Sending {
        let flags = self.flags.load(Ordering::Acquire);
        if flags & FAILED != 0 {
            Sending::Failed
        } else if flags & ENDED != 0 {
            Sending::Complete
        } else {
            Sending::Partial
        }
    }

    /// Body bytes received from the client so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.state() == Sending::Complete
    }

    fn set(&self, flag: u8) {
        if self.flags.fetch_or(flag, Ordering::AcqRel) & flag == 0 {
            self.notify.notify_waiters();
        }
    }

    /// hyper asks for more of the body now (or the exchange starts:
    /// time spent waiting for a connection is nobody's stall).
    pub(crate) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_take_ms.store(ms, Ordering::Relaxed);
    }

    /// When hyper last asked for more of the body (or the body was made).
    fn last_take(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_take_ms.load(Ordering::Relaxed))
    }

    /// Resolves when the body is complete or failed, or fails once hyper
    /// has not asked for more for `idle`: an origin that stops reading the
    /// upload must not hold the exchange (and its pool slot) for ever.
    /// While the body waits for the client instead, the client's pace rules
    /// decide, not this.
    pub(crate) async fn wait_taken(&self, idle: Duration) -> Result<(), OriginStalled> {
        loop {
            let notified = self.notify.notified();
            if matches!(self.state(), Sending::Complete | Sending::Failed) {
                return Ok(());
            }
            let deadline = self.last_take() + idle;
            if Instant::now() >= deadline {
                if !self.waiting_on_client.load(Ordering::Acquire) {
                    return Err(OriginStalled);
                }
                self.touch();
                continue;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Resolves once the body is complete or has failed, with which.
    pub(crate) async fn settled(&self) -> Sending {
        loop {
            let notified = self.notify.notified();
            let state = self.state();
            if matches!(state, Sending::Complete | Sending::Failed) {
                return state;
            }
            notified.await;
        }
    }
}

/// The origin stopped taking the request body.
#[derive(Debug)]
pub(crate) struct OriginStalled;

/// A body streaming from the client.
#[derive(Debug)]
pub(crate) struct Streamed {
    /// Bytes already read before a connection was taken.
    prefix: Option<Bytes>,
    inner: Incoming,
    progress: Arc<RequestProgress>,
    pace: Pace,
    /// Fires at the pace's deadline while hyper waits for more.
    timer: Pin<Box<Sleep>>,
}

/// A request body on its way upstream.
#[derive(Debug)]
pub(crate) enum ReqBody {
    Empty,
    /// A body read in full before sending (it can be replayed).
    Full(Option<Bytes>),
    Stream(Box<Streamed>),
}

impl ReqBody {
    /// Wraps a client body that was not read ahead; `None` for the
    /// progress when there is no body at all (the common GET), so nothing
    /// is allocated for it.
    pub(crate) fn from_incoming(
        inner: Incoming,
        rule: PaceRule,
    ) -> (ReqBody, Option<Arc<RequestProgress>>) {
        if inner.is_end_stream() {
            return (ReqBody::Empty, None);
        }
        let (body, progress) = ReqBody::stream(None, inner, Pace::new(rule));
        (body, Some(progress))
    }

    /// A streamed body whose first bytes (`prefix`) were already read, at
    /// the pace measured while reading them.
    pub(crate) fn stream(
        prefix: Option<Bytes>,
        inner: Incoming,
        pace: Pace,
    ) -> (ReqBody, Arc<RequestProgress>) {
        let progress = Arc::new(RequestProgress::new());
        // Armed at the first wait for the client.
        let far = Instant::now() + Duration::from_secs(86_400);
        let body = ReqBody::Stream(Box::new(Streamed {
            prefix,
            inner,
            progress: progress.clone(),
            pace,
            timer: Box::pin(tokio::time::sleep_until(far)),
        }));
        (body, progress)
    }
}

impl Streamed {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.progress.touch();
        if let Some(p) = self.prefix.take() {
            self.progress
                .received
                .fetch_add(p.len() as u64, Ordering::Relaxed);
            if self.inner.is_end_stream() {
                self.progress.set(ENDED);
            }
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                let now = Instant::now();
                let (deadline, lag) = self.pace.wait(now);
                self.progress
                    .waiting_on_client
                    .store(true, Ordering::Release);
                if now >= deadline {
                    return self.fail(BodyTooSlow::new(lag, self.pace.rule()).into());
                }
                if self.timer.deadline() != deadline {
                    self.timer.as_mut().reset(deadline);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    // The deadline passed since the check: late now.
                    return self.fail(BodyTooSlow::new(lag, self.pace.rule()).into());
                }
                return Poll::Pending;
            }
        };
        self.pace.record(0, Instant::now());
        self.progress
            .waiting_on_client
            .store(false, Ordering::Release);
        match frame {
            None => {
                self.progress.set(ENDED);
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                let n = frame.data_ref().map_or(0, Bytes::len);
                self.pace.record(n, Instant::now());
                self.progress
                    .received
                    .fetch_add(n as u64, Ordering::Relaxed);
                // Trailers end a body: hyper takes nothing after them.
                if frame.is_trailers() || self.inner.is_end_stream() {
                    self.progress.set(ENDED);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => self.fail(e.into()),
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.progress.set(FAILED);
        Poll::Ready(Some(Err(e)))
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // hyper dropped the body before its end (the connection closed):
        // whoever waits for it to settle must not wait for ever.
        if !self.progress.is_complete() {
            self.progress.set(FAILED);
        }
    }
}

/// Errors a request body can end with.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ReqBody::Stream(s) => s.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(data) => data.is_none(),
            ReqBody::Stream(s) => {
                let end = s.prefix.is_none() && s.inner.is_end_stream();
                if end {
                    s.progress.set(ENDED);
                }
                end
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReqBody::Stream(s) => {
                let extra = s.prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = s.inner.size_hint();
                // Upper first: `set_lower` panics above the current upper.
                let mut hint = SizeHint::new();
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint.set_lower(inner.lower().saturating_add(extra));
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(idle: u64, grace: u64, rate: u64) -> PaceRule {
        PaceRule {
            idle: Duration::from_secs(idle),
            grace: Duration::from_secs(grace),
            min_rate: rate,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn silence_fails_a_body_after_the_idle_timeout() {
        let t0 = Instant::now();
        let mut p = Pace::new(rule(5, 100, 0));
        assert_eq!(p.deadline(), None, "not waiting yet");
        p.wait(t0);
        assert_eq!(p.deadline(), Some((t0 + secs(5), Lag::Silent)));
        p.record(10, t0 + secs(4));
        p.wait(t0 + secs(4));
        assert_eq!(p.check(t0 + secs(8)), Ok(()));
        assert_eq!(p.check(t0 + secs(9)), Err(Lag::Silent));
    }

    #[test]
    fn a_trickle_is_cut_once_it_falls_behind_the_minimum_rate() {
        // 1 byte every half second, never silent for the idle timeout.
        let t0 = Instant::now();
        let mut p = Pace::new(rule(60, 10, 1024));
        let mut now = t0;
        p.wait(now);
        let cut = loop {
            now += Duration::from_millis(500);
            if let Err(lag) = p.check(now) {
                break (now, lag);
            }
            p.record(1, now);
            p.wait(now);
        };
        assert_eq!(cut.1, Lag::TooSlow);
        let after = cut.0.saturating_duration_since(t0);
        assert!(after >= secs(10) && after <= secs(11), "{after:?}");
    }

    #[test]
    fn a_body_that_keeps_the_pace_is_never_cut() {
        // 8 KiB a second against a minimum of 4 KiB/s, for an hour.
        let t0 = Instant::now();
        let mut p = Pace::new(rule(60, 10, 4096));
        p.wait(t0);
        for s in 1..=3600 {
            let now = t0 + secs(s);
            assert_eq!(p.check(now), Ok(()), "cut after {s} s");
            p.record(8192, now);
            p.wait(now);
        }
    }

    #[test]
    fn time_not_spent_waiting_for_the_client_is_not_charged() {
        // 64 KiB read ahead at once, then a minute in the pool's queue and
        // behind a slow origin: the client is not behind.
        let t0 = Instant::now();
        let mut p = Pace::new(rule(60, 10, 8192));
        p.wait(t0);
        p.record(64 * 1024, t0 + Duration::from_millis(5));
        let later = t0 + secs(60);
        p.wait(later);
        assert_eq!(p.check(later + secs(9)), Ok(()));
        // Its allowance: 10 s, plus 8 s for 64 KiB, less 5 ms waited.
        let (deadline, lag) = p.deadline().expect("waiting");
        assert_eq!(lag, Lag::TooSlow);
        assert_eq!(deadline, later + secs(18) - Duration::from_millis(5));
    }

    #[test]
    fn without_a_rate_only_silence_counts() {
        let t0 = Instant::now();
        let mut p = Pace::new(rule(2, 1, 0));
        p.wait(t0);
        for s in 1..=100 {
            let now = t0 + secs(s);
            assert_eq!(p.check(now), Ok(()));
            p.record(1, now);
            p.wait(now);
        }
    }

    #[test]
    fn progress_states_follow_the_flags() {
        let p = RequestProgress::new();
        assert_eq!(p.state(), Sending::Partial);
        p.set(ENDED);
        assert_eq!(p.state(), Sending::Complete);
        let q = RequestProgress::new();
        q.set(FAILED);
        assert_eq!(q.state(), Sending::Failed);
    }
}
