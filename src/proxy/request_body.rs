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
//! `Expect: 100-continue` is answered here, as nginx and Envoy do by
//! default: reading the body is what makes hyper send the client its
//! `100 Continue`, at once, so the client is never left waiting for an
//! answer that depends on a body it has not sent (what RFC 9110, section
//! 10.1.1 guards against), and the request goes upstream without the
//! expectation, its body complete or streaming. Passing the expectation on
//! would cost every such request (legacy .NET and PHP clients send it on
//! every POST) a round trip to the origin before its body, and an origin
//! that answers before asking for the body would leave the connection
//! owing bytes the client will never send: closed instead of reused.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{timeout_at, Instant};

use crate::error::ProxyError;
use crate::upstream::request_body::Lag;
use crate::upstream::{Pace, PaceRule, ReqBody, RequestProgress};

/// Removes a `100-continue` expectation, which eddy meets itself (see the
/// module documentation). Any other expectation is the origin's to judge.
pub(super) fn take_continue(headers: &mut HeaderMap) {
    let continues = headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if continues {
        headers.remove(EXPECT);
    }
}

/// The framing a body of unknown length needs upstream. hyper sends such
/// a body chunked, except on GET, HEAD and CONNECT requests, whose body it
/// silently drops unless the header says chunked: it is said here.
pub(super) fn frame_unknown_length(headers: &mut HeaderMap, body: &ReqBody) {
    if body.size_hint().exact().is_none() {
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
}

/// Holds an early answer back, for at most `limit`, while the client is
/// still sending its streamed body.
///
/// Why: many clients stop uploading when they see an answer before their
/// body is sent: curl at an error status, Go's net/http at any answer when
/// it will not reuse its connection. They close their connection, and the
/// upstream connection, owed the rest of the body, must close too. Relayed
/// once the body is in, the answer costs nothing; nginx behaves the same,
/// since it reads the whole body before the origin can answer. A 413 is
/// not held: the origin refused the body itself and its connection closes
/// anyway, so the client may as well stop.
pub(super) async fn let_upload_finish(
    progress: &RequestProgress,
    status: StatusCode,
    limit: std::time::Duration,
) {
    if status != StatusCode::PAYLOAD_TOO_LARGE && !progress.is_complete() {
        let _ = tokio::time::timeout(limit, progress.settled()).await;
    }
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
    let mut pace = Pace::new(rule);
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
    // Room for the declared length (within the limit), or to grow into.
    let room = declared.map_or(0, |n| n.min(stop_at as u64) as usize);
    loop {
        let (deadline, lag) = pace.wait(Instant::now());
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
        let data = frame.into_data().unwrap_or_default();
        pace.record(data.len(), Instant::now());
        if !data.is_empty() {
            read.push(data, room);
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
    /// Adds a frame; `room` is the capacity to reserve when a copy starts
    /// (the declared length, within the limit; 0 when unknown, and the
    /// buffer grows as bytes arrive, never ahead of them).
    fn push(&mut self, data: Bytes, room: usize) {
        self.len += data.len();
        if let Some(more) = self.more.as_mut() {
            more.extend_from_slice(&data);
        } else if let Some(first) = self.first.take() {
            let mut more = BytesMut::with_capacity(room.max(self.len));
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
