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
//!                              ◄── upstream::pool::body (response streams back; the
//!                                  connection returns to the pool at its end)
//! ```
//!
//! - [`config`]: the TOML schema, defaults and validation.
//! - [`app`]: binds sockets, wires everything, orders shutdown.
//! - [`reload`]: SIGHUP, a new configuration applied to new work.
//! - `listener`: accept loop and per-connection timeouts.
//! - [`proxy`]: one request: target, route, hop-by-hop rewrite, send.
//! - `upstream`: origins, the pool (its socket-free core), connecting,
//!   learning keep-alive limits.
//! - `error`: every failure eddy answers itself, with its Proxy-Status.
//! - `admin`: the status page, `/healthz`, `/readyz`, `/pools`, `/config`,
//!   `/metrics`.
//!
//! Only what the binary, the integration tests and the fuzz targets use is
//! public: [`Eddy`], [`Config`] and the [`config`] parsers, [`reload`],
//! [`head_scan`], and the target parsing in [`proxy`]. docs/design.md
//! has the request's path and the pool's rules.
//!
//! # Glossary
//!
//! - *origin*: `scheme://host:port` of an upstream server; one pool each.
//! - *idle*: an open upstream connection with no request on it.
//! - *hand-off*: a freed connection given straight to the oldest waiter.
//! - *lease*: the hold a streaming response has on its connection.

#![deny(missing_docs)]
pub(crate) mod access;
pub(crate) mod admin;
pub mod app;
pub mod config;
pub(crate) mod error;
pub(crate) mod failures;
pub mod head_scan;
pub(crate) mod intercept;
pub(crate) mod listener;
pub(crate) mod metrics;
pub mod proxy;
pub mod reload;
pub(crate) mod shutdown;
pub(crate) mod upstream;

pub use app::Eddy;
pub use config::Config;
