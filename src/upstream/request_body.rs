//! The client's request body on its way to the origin, and the facts about
//! its transmission that decide what happens to the connection afterwards.
//!
//! Why it is built this way: whether an upstream connection can carry the
//! next request depends on what was *written* on it, never on which of two
//! futures eddy happened to poll first. [`RequestProgress`] records what
//! hyper takes from the body as it takes it (bytes, the end, a failure), so
//! when the response ends the completion rule ([`super::completion`]) asks
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
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
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
pub struct PaceRule {
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
pub enum Lag {
    /// No byte for `idle`.
    Silent,
    /// Behind `min_rate` after `grace`.
    TooSlow,
}

/// One body's pace so far: when it started, how much came, when the last
/// bytes came. Plain values and explicit instants, so the rule is tested
/// without a clock.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    rule: PaceRule,
    started: Instant,
    last: Instant,
    received: u64,
}

impl Pace {
    pub fn start(rule: PaceRule, now: Instant) -> Pace {
        Pace {
            rule,
            started: now,
            last: now,
            received: 0,
        }
    }

    /// `n` more bytes arrived at `now`.
    pub fn record(&mut self, n: usize, now: Instant) {
        self.received += n as u64;
        self.last = now;
    }

    /// The instant by which more of the body must have arrived, and which
    /// rule that instant comes from.
    ///
    /// The rate rule is Apache's `mod_reqtimeout` one: `grace`, extended by
    /// one second for every `min_rate` bytes received. A body that keeps
    /// that pace is never cut, however large; one that trickles is cut once
    /// it falls behind.
    pub fn deadline(&self) -> (Instant, Lag) {
        let silent = self.last + self.rule.idle;
        if self.rule.min_rate == 0 {
            return (silent, Lag::Silent);
        }
        let earned = Duration::from_secs_f64(self.received as f64 / self.rule.min_rate as f64);
        let slow = self.started + self.rule.grace + earned;
        if slow < silent {
            (slow, Lag::TooSlow)
        } else {
            (silent, Lag::Silent)
        }
    }

    /// Whether a body still arriving at `now` has run out of time.
    pub fn check(&self, now: Instant) -> Result<(), Lag> {
        let (deadline, lag) = self.deadline();
        if now >= deadline {
            Err(lag)
        } else {
            Ok(())
        }
    }

    pub fn rule(&self) -> PaceRule {
        self.rule
    }
}

/// A request body that stopped arriving in time.
#[derive(Debug, thiserror::Error)]
pub enum BodyTooSlow {
    #[error("the client sent no request body bytes for {0:?}")]
    Silent(Duration),
    #[error("the request body arrived slower than {0} bytes/s (client_body_min_rate)")]
    TooSlow(u64),
}

impl BodyTooSlow {
    pub fn new(lag: Lag, rule: PaceRule) -> BodyTooSlow {
        match lag {
            Lag::Silent => BodyTooSlow::Silent(rule.idle),
            Lag::TooSlow => BodyTooSlow::TooSlow(rule.min_rate),
        }
    }
}

/// Where a request body's transmission stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sending {
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
pub struct RequestProgress {
    flags: AtomicU8,
    /// Body bytes handed to hyper.
    sent: AtomicU64,
    epoch: Instant,
    /// Milliseconds after `epoch` at which hyper last asked for more.
    last_take_ms: AtomicU64,
    notify: Notify,
}

impl RequestProgress {
    fn new() -> RequestProgress {
        RequestProgress {
            flags: AtomicU8::new(0),
            sent: AtomicU64::new(0),
            epoch: Instant::now(),
            last_take_ms: AtomicU64::new(0),
            notify: Notify::new(),
        }
    }

    pub fn state(&self) -> Sending {
        let flags = self.flags.load(Ordering::Acquire);
        if flags & FAILED != 0 {
            Sending::Failed
        } else if flags & ENDED != 0 {
            Sending::Complete
        } else {
            Sending::Partial
        }
    }

    pub fn is_complete(&self) -> bool {
        self.state() == Sending::Complete
    }

    /// Body bytes handed to hyper so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn set(&self, flag: u8) {
        if self.flags.fetch_or(flag, Ordering::AcqRel) & flag == 0 {
            self.notify.notify_waiters();
        }
    }

    fn took(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn touch(&self) {
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
    pub async fn wait_taken(&self, idle: Duration) -> Result<(), OriginStalled> {
        loop {
            let notified = self.notify.notified();
            if matches!(self.state(), Sending::Complete | Sending::Failed) {
                return Ok(());
            }
            let deadline = self.last_take() + idle;
            if Instant::now() >= deadline {
                return Err(OriginStalled);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Resolves once the body is complete or has failed, with which.
    pub async fn settled(&self) -> Sending {
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
pub struct OriginStalled;

/// A body streaming from the client.
#[derive(Debug)]
pub struct Streamed {
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
pub enum ReqBody {
    Empty,
    /// A body read in full before sending (it can be replayed).
    Full(Option<Bytes>),
    Stream(Box<Streamed>),
}

impl ReqBody {
    /// Wraps a client body that was not read ahead; `None` for the
    /// progress when there is no body at all (the common GET), so nothing
    /// is allocated for it.
    pub fn from_incoming(
        inner: Incoming,
        rule: PaceRule,
    ) -> (ReqBody, Option<Arc<RequestProgress>>) {
        if inner.is_end_stream() {
            return (ReqBody::Empty, None);
        }
        let (body, progress) = ReqBody::stream(None, inner, Pace::start(rule, Instant::now()));
        (body, Some(progress))
    }

    /// A streamed body whose first bytes (`prefix`) were already read, at
    /// the pace measured while reading them.
    pub fn stream(
        prefix: Option<Bytes>,
        inner: Incoming,
        pace: Pace,
    ) -> (ReqBody, Arc<RequestProgress>) {
        let progress = Arc::new(RequestProgress::new());
        let (deadline, _) = pace.deadline();
        let body = ReqBody::Stream(Box::new(Streamed {
            prefix,
            inner,
            progress: progress.clone(),
            pace,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        }));
        (body, progress)
    }
}

impl Streamed {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.progress.touch();
        if let Some(p) = self.prefix.take() {
            self.progress.took(p.len());
            if self.inner.is_end_stream() {
                self.progress.set(ENDED);
            }
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                let now = Instant::now();
                if let Err(lag) = self.pace.check(now) {
                    return self.fail(BodyTooSlow::new(lag, self.pace.rule()).into());
                }
                let (deadline, lag) = self.pace.deadline();
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
        match frame {
            None => {
                self.progress.set(ENDED);
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                let n = frame.data_ref().map_or(0, Bytes::len);
                self.pace.record(n, Instant::now());
                self.progress.took(n);
                if self.inner.is_end_stream() {
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
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

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

    #[test]
    fn silence_fails_a_body_after_the_idle_timeout() {
        let t0 = Instant::now();
        let mut p = Pace::start(rule(5, 100, 0), t0);
        assert_eq!(p.deadline(), (t0 + Duration::from_secs(5), Lag::Silent));
        p.record(10, t0 + Duration::from_secs(4));
        assert_eq!(p.check(t0 + Duration::from_secs(8)), Ok(()));
        assert_eq!(p.check(t0 + Duration::from_secs(9)), Err(Lag::Silent));
    }

    #[test]
    fn a_trickle_is_cut_once_it_falls_behind_the_minimum_rate() {
        // 1 byte every half second, never silent for the idle timeout.
        let t0 = Instant::now();
        let mut p = Pace::start(rule(60, 10, 1024), t0);
        let mut now = t0;
        let cut = loop {
            now += Duration::from_millis(500);
            if let Err(lag) = p.check(now) {
                break (now, lag);
            }
            p.record(1, now);
        };
        assert_eq!(cut.1, Lag::TooSlow);
        let after = cut.0.saturating_duration_since(t0);
        assert!(
            after >= Duration::from_secs(10) && after <= Duration::from_secs(11),
            "{after:?}"
        );
    }

    #[test]
    fn a_body_that_keeps_the_pace_is_never_cut() {
        // 8 KiB a second against a minimum of 4 KiB/s, for an hour.
        let t0 = Instant::now();
        let mut p = Pace::start(rule(60, 10, 4096), t0);
        for s in 1..=3600 {
            let now = t0 + Duration::from_secs(s);
            assert_eq!(p.check(now), Ok(()), "cut after {s} s");
            p.record(8192, now);
        }
    }

    #[test]
    fn without_a_rate_only_silence_counts() {
        let t0 = Instant::now();
        let mut p = Pace::start(rule(2, 1, 0), t0);
        for s in 1..=100 {
            let now = t0 + Duration::from_secs(s);
            assert_eq!(p.check(now), Ok(()));
            p.record(1, now);
        }
    }

    #[test]
    fn progress_states_follow_the_flags() {
        let p = RequestProgress::new();
        assert_eq!(p.state(), Sending::Partial);
        p.took(10);
        assert_eq!(p.sent(), 10);
        p.set(ENDED);
        assert_eq!(p.state(), Sending::Complete);
        let q = RequestProgress::new();
        q.set(FAILED);
        assert_eq!(q.state(), Sending::Failed);
    }
}
