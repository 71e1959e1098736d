//! Integration tests over real loopback sockets: eddy in-process, origins
//! and clients from `tests/support`. One binary, so it links once.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod deploy;
mod dns;
mod docs;
mod drain;
mod errors;
mod headers;
mod http2;
mod idle;
mod intercept;
mod layers;
mod listener;
mod logs;
mod metrics;
mod pool;
mod reload;
mod retry;
mod reuse;
mod security;
mod signals;
mod smuggling;
mod soak;
mod status_page;
mod tls;
mod tunnel;
mod via;
mod websocket;
