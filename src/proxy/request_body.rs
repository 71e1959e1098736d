//! Taking in a client's request body before it goes upstream.
//!
//! Why: an upstream connection is a slot of a bounded pool, and a client
//! that sends its body slowly would hold one for as long as it trickles. So,
//! as nginx does with `proxy_request_buffering`, the body is read *before* a
//! connection is taken, up to the listener's `client_body_buffer`: a body
//! that fits goes out whole, with its head, and a slow client holds only its
//! own buffer. A larger body streams on from what was read, held to the
//! listener's pace rules. Reading it here also makes a replayable request
//! replayable (its body is at hand) and settles the completion question
//! early: a body sent whole with its head is complete before any answer.
//!
//! The exception is `Expect: 100-continue` (RFC 9110, section 10.1.1): the
//! client waits to be asked for its body, and a proxy must pass the head on
//! rather than decide for the origin. Such a body is held back until the
//! origin asks for it (see `upstream::request_body`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::EXPECT;
use http::request::Parts;
use http::Version;
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{timeout_at, Instant};

use crate::error::ProxyError;
use crate::upstream::request_body::Lag;
use crate::upstream::{Pace, PaceRule, ReqBody, RequestProgress};

/// Whether the client asked to be told before it sends its body: an
/// HTTP/1.1 request with `Expect: 100-continue` and a body to send. (hyper
/// ignores the expectation of an HTTP/1.0 request, whose client sends the
/// body at once.)
pub(super) fn expects_continue(parts: &Parts, body: &Incoming) -> bool {
    parts.version == Version::HTTP_11
        && !body.is_end_stream()
        && parts
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads the client's body ahead of taking a connection, up to `limit`
/// bytes. A body of at most `limit` bytes comes back whole (`Full`, no
/// progress to watch); a longer one comes back streaming, starting with
/// what was read, at the pace measured so far. What is held here is at
/// most `limit` plus one frame (hyper's read buffer bounds a frame).
pub(super) async fn read_ahead(
    mut incoming: Incoming,
    limit: usize,
    rule: PaceRule,
) -> Result<(ReqBody, Option<Arc<RequestProgress>>), ProxyError> {
    if incoming.is_end_stream() {
        return Ok((ReqBody::Empty, None));
    }
    let mut pace = Pace::start(rule, Instant::now());
    if limit == 0 {
        let (body, progress) = ReqBody::stream(None, incoming, pace);
        return Ok((body, Some(progress)));
    }
    // A body declared longer than the buffer streams after `limit` bytes;
    // one of unknown length after more than `limit`.
    let declared = incoming.size_hint().exact();
    let stop_at = match declared {
        Some(n) if n > limit as u64 => limit,
        _ => limit + 1,
    };
    let mut read = Collected::default();
    loop {
        let (deadline, lag) = pace.deadline();
        let frame = match timeout_at(deadline, incoming.frame()).await {
            Err(_) => {
                return Err(ProxyError::BadRequest(match lag {
                    Lag::Silent => "the request body stalled",
                    Lag::TooSlow => "the request body arrived slower than client_body_min_rate",
                }))
            }
            Ok(Some(Err(_))) => return Err(ProxyError::BadRequest("the request body was cut off")),
            Ok(None) => return Ok((read.into_full(), None)),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers are not kept for a body read ahead.
        if let Ok(data) = frame.into_data() {
            pace.record(data.len(), Instant::now());
            read.push(data, stop_at);
        }
        // Over the limit streams, even if the end came in the same frame:
        // what is read ahead (and replayable) never exceeds `limit`.
        if read.len >= stop_at {
            let (body, progress) = ReqBody::stream(read.into_bytes(), incoming, pace);
            return Ok((body, Some(progress)));
        }
        if incoming.is_end_stream() {
            return Ok((read.into_full(), None));
        }
    }
}

/// What was read so far. Most bodies arrive in one frame, which is kept as
/// it is; only a second frame starts a copy.
#[derive(Default)]
struct Collected {
    first: Option<Bytes>,
    more: Option<BytesMut>,
    len: usize,
}

impl Collected {
    fn push(&mut self, data: Bytes, expect: usize) {
        self.len += data.len();
        if let Some(more) = self.more.as_mut() {
            more.extend_from_slice(&data);
        } else if let Some(first) = self.first.take() {
            let mut more = BytesMut::with_capacity(expect.max(self.len));
            more.extend_from_slice(&first);
            more.extend_from_slice(&data);
            self.more = Some(more);
        } else {
            self.first = Some(data);
        }
    }

    fn into_bytes(self) -> Option<Bytes> {
        match (self.first, self.more) {
            (_, Some(more)) => Some(more.freeze()),
            (first, None) => first,
        }
    }

    fn into_full(self) -> ReqBody {
        match self.into_bytes() {
            Some(b) if !b.is_empty() => ReqBody::Full(Some(b)),
            _ => ReqBody::Empty,
        }
    }
}
