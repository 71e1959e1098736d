//! The rule that decides what becomes of an upstream connection when the
//! response on it has ended: back to the pool, kept until the request body
//! has been sent in full, or closed.
//!
//! Why a rule of its own: an exchange is complete when the request was
//! written in full and the response read in full, and only then may the
//! connection carry another request. Origins often answer before they have
//! read the request body (nginx `return`, an early 401 or 413), so the
//! response can end while the body is still on its way; when that happens
//! is a matter of microseconds and scheduling. The rule therefore looks
//! only at facts that timing cannot change: what the origin said about the
//! connection, the response status, whether the body was read ahead in
//! full or streamed, and how far its transmission got ([`Sending`]).
//!
//! The rules, in order:
//! 1. an origin that closes the connection (`Connection: close`, HTTP/1.0
//!    without keep-alive) closes it;
//! 2. a body that failed (the client aborted or was too slow) can never be
//!    completed: close;
//! 3. a streamed body answered with 413 (Content Too Large): close. The
//!    origin refused the body itself, for its size, and may never read it;
//!    whether it does cannot be seen from here (the kernel takes megabytes
//!    whether or not anyone reads them), so no later request is bet on it.
//!    Other early answers (a 200 from nginx `return`, a 401 or a 405)
//!    concern the request, not its body, and origins read and discard the
//!    rest (RFC 9110, section 15.5.14 lets a 413 end the connection
//!    instead). Bodies read ahead in full (`client_body_buffer`) went out
//!    with the head and keep their connection whatever the status;
//! 4. a body sent in full: return the connection;
//! 5. a body still being sent: keep sending it, within the drain timeout,
//!    then return the connection if it completed and close it if not.

use http::StatusCode;

use super::CloseReason;
use crate::upstream::request_body::Sending;

/// What is known about an exchange when its response has ended.
#[derive(Clone, Copy, Debug)]
pub(super) struct ExchangeEnd {
    /// The origin keeps the connection open after this response.
    pub(super) origin_keeps_open: bool,
    pub(super) status: StatusCode,
    /// The request body streamed from the client rather than being read
    /// ahead in full.
    pub(super) streamed: bool,
    /// How far the request body's transmission got.
    pub(super) request: Sending,
}

/// What to do with the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AfterResponse {
    /// Both directions complete: back to the pool.
    Return,
    /// The response is complete, the request body still on its way and
    /// able to complete: wait for it (bounded), then [`after_wait`].
    AwaitRequest,
    Close(CloseReason),
}

impl ExchangeEnd {
    pub(super) fn decide(&self) -> AfterResponse {
        if !self.origin_keeps_open {
            return AfterResponse::Close(CloseReason::PeerClosed);
        }
        let refused = self.streamed && self.status == StatusCode::PAYLOAD_TOO_LARGE;
        match self.request {
            Sending::Failed => AfterResponse::Close(CloseReason::NotDrained),
            _ if refused => AfterResponse::Close(CloseReason::NotDrained),
            Sending::Complete => AfterResponse::Return,
            Sending::Partial => AfterResponse::AwaitRequest,
        }
    }
}

/// The decision once the wait for the request body is over.
pub(super) fn after_wait(request: Sending) -> AfterResponse {
    match request {
        Sending::Complete => AfterResponse::Return,
        _ => AfterResponse::Close(CloseReason::NotDrained),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(keeps: bool, status: u16, streamed: bool, request: Sending) -> AfterResponse {
        ExchangeEnd {
            origin_keeps_open: keeps,
            status: StatusCode::from_u16(status).expect("status"),
            streamed,
            request,
        }
        .decide()
    }

    #[test]
    fn a_complete_exchange_returns_its_connection_whatever_the_status() {
        for status in [200, 204, 301, 401, 404, 413, 500] {
            assert_eq!(
                end(true, status, false, Sending::Complete),
                AfterResponse::Return
            );
        }
        assert_eq!(
            end(true, 200, true, Sending::Complete),
            AfterResponse::Return
        );
    }

    #[test]
    fn an_origin_that_closes_wins() {
        assert_eq!(
            end(false, 200, false, Sending::Complete),
            AfterResponse::Close(CloseReason::PeerClosed)
        );
    }

    #[test]
    fn an_early_answer_keeps_sending_the_body() {
        // nginx `return 200` answers on the head; the body is still
        // coming. So does an early 401 or 405, and the origin discards it.
        for status in [200, 204, 401, 405, 500] {
            assert_eq!(
                end(true, status, true, Sending::Partial),
                AfterResponse::AwaitRequest,
                "{status}"
            );
        }
        assert_eq!(after_wait(Sending::Complete), AfterResponse::Return);
        assert_eq!(
            after_wait(Sending::Partial),
            AfterResponse::Close(CloseReason::NotDrained)
        );
        assert_eq!(
            after_wait(Sending::Failed),
            AfterResponse::Close(CloseReason::NotDrained)
        );
    }

    #[test]
    fn an_upload_refused_for_its_size_closes_whether_or_not_it_was_all_written() {
        for request in [Sending::Partial, Sending::Complete] {
            assert_eq!(
                end(true, 413, true, request),
                AfterResponse::Close(CloseReason::NotDrained),
                "{request:?}"
            );
        }
        // Read ahead in full, it went out with the head: nothing is owed.
        assert_eq!(
            end(true, 413, false, Sending::Complete),
            AfterResponse::Return
        );
    }

    #[test]
    fn a_failed_body_closes() {
        assert_eq!(
            end(true, 200, true, Sending::Failed),
            AfterResponse::Close(CloseReason::NotDrained)
        );
    }
}
