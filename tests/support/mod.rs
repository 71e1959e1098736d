//! Test support: origins that count and misbehave on demand, a raw HTTP/1
//! client, and a harness that runs eddy in-process on `127.0.0.1:0`.
#![allow(dead_code, unreachable_pub)]

pub mod client;
pub mod eddy;
pub mod h2;
pub mod origin;
pub mod tls;

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns true, failing the test after `limit`.
/// For conditions that no event announces (the pool's own timers).
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
