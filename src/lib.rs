//! eddy: a forward-proxy sidecar that pools upstream HTTP connections.
//!
//! # Layout
//!
//! The modules follow a request's path through the proxy:
//!
//! ```text
//!  app ── client ──► listener ──► proxy ──► upstream::pool ──► upstream::connect ──► origin
//!                    (accept,     (target,   (bounded per       (DNS, TCP,
//!                     timeouts)    route,     origin, waiters,   HTTP/1 handshake)
//!                                  rewrite)   idle, reaper)
//!                              ◄── upstream::body (response streams back; the
//!                                  connection returns to the pool at its end)
//! ```
//!
//! - [`config`]: the TOML schema, defaults and validation.
//! - [`app`]: binds sockets, wires everything, orders shutdown.
//! - [`reload`]: SIGHUP, a new configuration applied to new work.
//! - [`listener`]: accept loop and per-connection timeouts.
//! - [`proxy`]: one request: target, route, hop-by-hop rewrite, send.
//! - [`upstream`]: origins, the pool, connecting, learning keep-alive limits.
//! - [`error`]: every failure eddy answers itself, with its Proxy-Status.
//! - [`admin`]: `/healthz`, `/readyz`, `/pools`, `/config`.
//!
//! # Glossary
//!
//! - *origin*: `scheme://host:port` of an upstream server; one pool each.
//! - *idle*: an open upstream connection with no request on it.
//! - *hand-off*: a freed connection given straight to the oldest waiter.
//! - *lease*: the hold a streaming response has on its connection.

pub mod access;
pub mod admin;
pub mod app;
pub mod config;
pub mod error;
pub(crate) mod failures;
pub mod head_scan;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod shutdown;
pub mod upstream;

pub use app::Eddy;
pub use config::Config;
