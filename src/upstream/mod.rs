//! Everything on the origin side of eddy: which origin a request goes to
//! ([`origin`]), how a connection is opened (`connect`), how connections
//! are shared and bounded ([`pool`]), what eddy learns about an origin's
//! keep-alive limit ([`learn`]), and the bodies that carry an exchange:
//! the request's ([`request_body`]), whose transmission decides whether its
//! connection may be reused, and the response's (`pool::body`).

pub(crate) mod connect;
pub(crate) mod h2;
pub(crate) mod io;
pub mod learn;
pub mod loop_guard;
pub mod origin;
pub mod pool;
pub mod request_body;
pub mod tls;
pub mod tunnels;

pub use loop_guard::LoopGuard;
pub use origin::Origin;
pub use pool::body::{DrainLimits, Outcome, UpstreamBody};
pub use pool::{CloseReason, OriginStats, Pool, Pooled, Reuse, Route, SendFailure};
pub use request_body::{Pace, PaceRule, ReqBody, RequestProgress};
