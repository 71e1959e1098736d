//! The pool's idle rules (docs/design.md, "The pool's rules"): idle expiry,
//! origin keep-alive hints, `Connection: close` and HTTP/1.0 origins, learning
//! an origin's idle limit, the global idle bound, prewarming, lifetime and
//! request caps.

use std::time::Duration;

use crate::support::client::get;
use crate::support::eddy::{self, Proxy};
use crate::support::eventually;
use crate::support::origin::{Behavior, Origin};

async fn wait_client_closes(origin: &Origin, n: usize, limit: Duration) {
    origin
        .wait_for(&format!("{n} connection(s) closed by eddy"), limit, |s| {
            s.client_closes().len() >= n
        })
        .await;
}

async fn wait_origin_idle_closes(origin: &Origin, n: usize) {
    origin
        .wait_for(
            "the origin closes the idle connection",
            Duration::from_secs(10),
            |s| s.origin_idle_closes() >= n,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_idle_timeout() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "[pool]\nidle_timeout = \"300ms\"\n").await;
    assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
    wait_client_closes(&origin, 1, Duration::from_secs(10)).await;
    let idle = origin.stats.client_closes()[0];
    assert!(
        idle >= Duration::from_millis(250),
        "closed too early: {idle:?}"
    );
    assert!(
        idle < Duration::from_secs(5),
        "closed by idle_timeout, not later: {idle:?}"
    );
    assert_eq!(proxy.pools_sum("idle").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_from_the_origin_is_honoured() {
    let origin = Origin::start(Behavior {
        keep_alive_timeout: Some(1),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[pool]\nidle_timeout = \"30s\"\n").await;
    assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
    wait_client_closes(&origin, 1, Duration::from_secs(10)).await;
    let idle = origin.stats.client_closes()[0];
    assert!(
        idle < Duration::from_secs(1),
        "eddy must close before the origin's 1s: {idle:?}"
    );
}

async fn sequential_requests_each_use_a_fresh_connection(behavior: Behavior) {
    let origin = Origin::start(behavior).await;
    let proxy = eddy::start("", "").await;
    for i in 0..20 {
        let r = get(proxy.addr, &format!("{}/{i}", origin.url())).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(origin.stats.accepted(), 20);
    assert!(
        origin.stats.per_conn().iter().all(|&n| n == 1),
        "a closed connection was reused: {:?}",
        origin.stats.per_conn()
    );
    eventually("nothing left in use", Duration::from_secs(5), || async {
        proxy.pools_sum("in_use").await == 0 && proxy.pools_sum("idle").await == 0
    })
    .await;
    // Not even tried: a reused closed connection would have failed and been
    // retried quietly, and the origin's counts alone would not show it.
    let pool = &proxy.pools().await[origin.url().as_str()];
    assert_eq!(pool["opened_total"], 20, "{pool}");
    assert_eq!(pool["reused_total"], 0, "{pool}");
    let retries = proxy
        .metric("eddy_stale_retries_total", &[("outcome", "succeeded")])
        .await
        + proxy
            .metric("eddy_stale_retries_total", &[("outcome", "failed")])
            .await;
    assert_eq!(retries, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_from_the_origin_ends_the_connection() {
    sequential_requests_each_use_a_fresh_connection(Behavior {
        connection_close: true,
        ..Behavior::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_origins_are_not_reused() {
    sequential_requests_each_use_a_fresh_connection(Behavior {
        http10: true,
        ..Behavior::default()
    })
    .await;
}

async fn effective_idle_timeout(proxy: &Proxy, origin: &Origin) -> f64 {
    proxy.pools().await[origin.url().as_str()]["effective_idle_timeout_seconds"]
        .as_f64()
        .expect("effective_idle_timeout_seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origins_idle_limit_is_learned_from_repeated_closes() {
    let origin = Origin::start(Behavior {
        idle_close: Some(Duration::from_millis(800)),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[pool]\nidle_timeout = \"30s\"\n").await;
    // Two separate closes at the same idle age (one teaches nothing).
    for n in 1..=2 {
        assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
        wait_origin_idle_closes(&origin, n).await;
        // eddy notices the close (its connection task ends).
        eventually(
            "eddy drops the closed connection",
            Duration::from_secs(5),
            || async { proxy.pools_sum("idle").await == 0 },
        )
        .await;
        if n == 1 {
            assert_eq!(
                effective_idle_timeout(&proxy, &origin).await,
                30.0,
                "one close teaches nothing"
            );
        }
    }
    let learned = effective_idle_timeout(&proxy, &origin).await;
    assert!((0.1..0.8).contains(&learned), "learned {learned}");
    // From now on eddy closes idle connections itself, before 800 ms.
    assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
    wait_client_closes(&origin, 1, Duration::from_secs(10)).await;
    let idle = origin.stats.client_closes()[0];
    assert!(
        idle < Duration::from_millis(800),
        "eddy closed after {idle:?}"
    );
    assert_eq!(origin.stats.origin_idle_closes(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_idle_total_bounds_idle_connections_across_origins() {
    let mut origins = Vec::new();
    for _ in 0..5 {
        origins.push(Origin::start(Behavior::default()).await);
    }
    let proxy = eddy::start("", "[pool]\nmax_idle_total = 3\n").await;
    for (i, o) in origins.iter().enumerate() {
        assert_eq!(get(proxy.addr, &o.url()).await.status, 200);
        // After each request, never more than 3 idle in all.
        let expected = (i + 1).min(3) as u64;
        eventually("the idle count settles", Duration::from_secs(5), || async {
            let idle = proxy.pools_sum("idle").await;
            assert!(idle <= 3, "{idle} idle connections after request {i}");
            idle == expected
        })
        .await;
    }
    // The least recently used (the first two origins) were closed.
    wait_client_closes(&origins[0], 1, Duration::from_secs(5)).await;
    wait_client_closes(&origins[1], 1, Duration::from_secs(5)).await;
    for o in &origins[2..] {
        assert!(o.stats.client_closes().is_empty());
        assert_eq!(o.stats.open(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_per_host_prewarms_named_upstreams() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start(
        "",
        &format!(
            "[[upstream]]\nmatch = \"{}\"\n[upstream.pool]\nmin_idle_per_host = 2\n",
            origin.addr
        ),
    )
    .await;
    origin
        .wait_for(
            "two connections opened ahead of demand",
            Duration::from_secs(5),
            |s| s.open() == 2,
        )
        .await;
    assert_eq!(origin.stats.requests(), 0);
    assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
    // The request used a warm connection (no new connect on its path); the
    // pool was refilled while it ran, and its connection came back too.
    eventually("pool refilled", Duration::from_secs(5), || async {
        proxy.pools_sum("idle").await >= 2
    })
    .await;
    assert!(
        origin.stats.recorded()[0].conn < 2,
        "served by a prewarmed connection"
    );
    assert!(
        origin.stats.accepted() <= 3,
        "accepted {}",
        origin.stats.accepted()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_retires_connections_between_requests() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "[pool]\nmax_requests_per_connection = 3\n").await;
    for _ in 0..9 {
        assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
    }
    assert_eq!(origin.stats.accepted(), 3);
    assert_eq!(origin.stats.per_conn(), vec![3, 3, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_retires_idle_connections() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "[pool]\nmax_lifetime = \"400ms\"\n").await;
    assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
    wait_client_closes(&origin, 1, Duration::from_secs(10)).await;
    assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
    assert_eq!(origin.stats.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_origin_closed_is_never_tried() {
    // The liveness check before reuse: a connection the origin closed while
    // idle is discarded, not written to and then retried.
    let origin = Origin::start(Behavior {
        idle_close: Some(Duration::from_millis(200)),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start(
        "",
        "[pool]\nidle_timeout = \"30s\"\nlearn_idle_timeout = false\n",
    )
    .await;
    for n in 1..=3 {
        assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
        wait_origin_idle_closes(&origin, n).await;
        // At once: eddy may not have seen the close yet.
    }
    assert_eq!(origin.stats.accepted(), 3);
    assert_eq!(origin.stats.requests(), 3);
    // Every request went out on a new connection, none was retried (the
    // counters are absent, not zero, if the names are wrong: /pools fields
    // compare as null, so both kinds of check fail loudly).
    let pool = &proxy.pools().await[origin.url().as_str()];
    assert_eq!(pool["opened_total"], 3, "{pool}");
    let sent_again = proxy
        .metric("eddy_upstream_requests_total", &[("connection", "new")])
        .await;
    assert_eq!(sent_again, 3.0, "three requests, each on a new connection");
    let retried = proxy
        .metric("eddy_stale_retries_total", &[("outcome", "succeeded")])
        .await;
    assert_eq!(retried, 0.0, "a closed connection was tried");
}
