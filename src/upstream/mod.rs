//! Everything on the origin side of eddy: which origin a request goes to
//! ([`origin`]), how a connection is opened (`connect`), how connections
//! are shared and bounded ([`pool`]), what eddy learns about an origin's
//! keep-alive limit ([`learn`]), and the bodies that carry an exchange:
//! the request's ([`request_body`]), whose transmission decides whether its
//! connection may be reused, and the response's (`pool::body`).

pub(crate) mod connect;
pub(crate) mod dial;
pub(crate) mod dns;
pub(crate) mod h2;
pub(crate) mod io;
pub(crate) mod learn;
pub(crate) mod loop_guard;
pub(crate) mod origin;
pub(crate) mod pool;
pub(crate) mod request_body;
pub(crate) mod tls;
pub(crate) mod tunnels;
pub(crate) mod via;

pub(crate) use loop_guard::LoopGuard;
pub(crate) use origin::Origin;
pub(crate) use pool::body::{DrainLimits, Outcome, UpstreamBody};
pub(crate) use pool::{Pool, Reuse, Route};
pub(crate) use request_body::{Pace, PaceRule, ReqBody, RequestProgress};
