//! Everything on the origin side of eddy: which origin a request goes to
//! ([`origin`]), how a connection is opened (`connect`), how connections
//! are shared and bounded ([`pool`]), what eddy learns about an origin's
//! keep-alive limit ([`learn`]), and the bodies that carry an exchange and
//! decide whether its connection may be reused ([`body`]).

pub mod body;
pub(crate) mod connect;
pub(crate) mod h2;
pub(crate) mod io;
pub mod learn;
pub mod origin;
pub mod pool;
pub mod tls;

pub use body::DrainLimits;
pub use body::{BodyDone, ReqBody, UpstreamBody};
pub use origin::Origin;
pub use pool::{CloseReason, OriginStats, Pool, Pooled, Reuse, Route, SendFailure};
