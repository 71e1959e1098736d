//! When a failed attempt goes again: one rule for HTTP/1 and HTTP/2.
//!
//! A request may be sent again only if the origin cannot have acted on it,
//! or acting twice is harmless, and eddy still has the request in hand:
//! - hyper gave it back unsent (the connection was gone before it was
//!   written): any method may go again;
//! - the origin refused it unprocessed (an HTTP/2 `REFUSED_STREAM`, or a
//!   graceful GOAWAY that left it out): any method whose body eddy kept a
//!   copy of;
//! - the connection was lost before any response byte (a reused HTTP/1
//!   connection the origin had closed, an HTTP/2 connection that broke):
//!   only idempotent requests (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, or
//!   one with an idempotency key) whose body eddy kept;
//! - anything else (a malformed answer, a timeout, the client's own body
//!   failing) is final;
//!
//! and never more than `retry.stale_retries` times. The socket layers
//! classify what happened ([`Failure`]); this decides.

/// How an attempt failed, for the purpose of sending it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The origin refused the request without processing it.
    Refused,
    /// The connection was lost before any byte of the answer.
    Lost,
    /// Anything else.
    Final,
}

/// What eddy still has of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InHand {
    /// hyper gave the request back: it was never written.
    Unsent,
    /// A copy of the head and its whole body.
    Copy,
    /// Nothing to send again (a streamed body).
    Nothing,
}

/// The rule above: whether to send the request again.
pub(crate) fn again(
    failure: Failure,
    in_hand: InHand,
    idempotent: bool,
    retries_done: u32,
    max_retries: u32,
) -> bool {
    if retries_done >= max_retries {
        return false;
    }
    match (failure, in_hand) {
        (Failure::Final, _) | (_, InHand::Nothing) => false,
        (_, InHand::Unsent) => true,
        (Failure::Refused, InHand::Copy) => true,
        (Failure::Lost, InHand::Copy) => idempotent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsent_request_goes_again_whatever_its_method() {
        assert!(again(Failure::Lost, InHand::Unsent, false, 0, 1));
        assert!(again(Failure::Refused, InHand::Unsent, false, 0, 1));
    }

    #[test]
    fn a_lost_connection_replays_only_idempotent_requests() {
        assert!(again(Failure::Lost, InHand::Copy, true, 0, 1));
        assert!(!again(Failure::Lost, InHand::Copy, false, 0, 1));
    }

    #[test]
    fn a_refused_stream_replays_any_request_in_hand() {
        assert!(again(Failure::Refused, InHand::Copy, false, 0, 1));
        assert!(!again(Failure::Refused, InHand::Nothing, false, 0, 1));
    }

    #[test]
    fn final_failures_and_spent_retries_stop() {
        assert!(!again(Failure::Final, InHand::Unsent, true, 0, 1));
        assert!(!again(Failure::Lost, InHand::Unsent, true, 1, 1));
        assert!(!again(Failure::Lost, InHand::Copy, true, 0, 0));
    }
}
