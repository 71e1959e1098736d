//! Stale-connection retry: requests that hit a connection the origin had closed
//! are sent again when that is safe, and only then.

use std::time::Duration;

use crate::support::client::{get, request};
use crate::support::eddy::{self, Proxy};
use crate::support::origin::{Behavior, Origin};

async fn retries(proxy: &Proxy, origin: &Origin, outcome: &str) -> f64 {
    proxy
        .metric(
            "eddy_stale_retries_total",
            &[("upstream", &origin.url()), ("outcome", outcome)],
        )
        .await
}

/// Waits until the connection of the request just answered is idle, so
/// the next request is certain to reuse it.
async fn idle_again(proxy: &Proxy) {
    crate::support::eventually(
        "the connection is idle again",
        Duration::from_secs(5),
        || async { proxy.pools_sum("idle").await == 1 },
    )
    .await;
}

/// Deterministic spacing in `[lo, hi)` milliseconds.
fn spacing(i: u64, lo: u64, hi: u64) -> Duration {
    let x = i
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
        >> 33;
    Duration::from_millis(lo + x % (hi - lo))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_closing_idle_connections_causes_no_client_errors() {
    let origin = Origin::start(Behavior {
        idle_close: Some(Duration::from_millis(300)),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[pool]\nidle_timeout = \"30s\"\n").await;
    for i in 0..60 {
        let r = get(proxy.addr, &format!("{}/{i}", origin.url())).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        tokio::time::sleep(spacing(i, 200, 500)).await;
    }
    let hits = origin.stats.closed_under_request() as f64;
    assert!(
        retries(&proxy, &origin, "succeeded").await >= hits,
        "every stale hit ({hits}) was retried"
    );
    assert_eq!(retries(&proxy, &origin, "failed").await, 0.0);
    let peer_closed = proxy
        .metric(
            "eddy_upstream_connections_closed_total",
            &[("upstream", &origin.url()), ("reason", "peer_closed")],
        )
        .await;
    assert!(
        peer_closed >= 2.0,
        "the origin's closes are counted: {peer_closed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_forgets_idle_connections_costs_the_client_nothing() {
    // The same pace against an origin (or a NAT in front of it) that drops
    // a connection idle 300 ms without a FIN: eddy cannot see it coming, the
    // request meets a reset, and only the retry saves it.
    let origin = Origin::start(Behavior {
        idle_close: Some(Duration::from_millis(300)),
        forget_silently: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start(
        "",
        "[pool]\nidle_timeout = \"30s\"\nlearn_idle_timeout = false\n",
    )
    .await;
    for i in 0..40 {
        let r = get(proxy.addr, &format!("{}/{i}", origin.url())).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        tokio::time::sleep(spacing(i, 200, 500)).await;
    }
    let hits = origin.stats.closed_under_request();
    assert!(hits >= 10, "the pace makes many stale hits: {hits}");
    assert_eq!(retries(&proxy, &origin, "succeeded").await, hits as f64);
    assert_eq!(retries(&proxy, &origin, "failed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_fails_too_is_not_retried_again() {
    // Every /doomed request is reset, on any connection. The first attempt
    // (on a reused connection) is retried once on a new one; that one was
    // written and failed on a new connection, so the client gets 502.
    let origin = Origin::start(Behavior {
        reset_targets: Some("/doomed"),
        ..Behavior::default()
    })
    .await;
    for stale_retries in [0u32, 1, 2] {
        let proxy = eddy::start("", &format!("[retry]\nstale_retries = {stale_retries}\n")).await;
        let url = origin.url();
        assert_eq!(get(proxy.addr, &format!("{url}/warm")).await.status, 200);
        idle_again(&proxy).await;
        let target = format!("/doomed{stale_retries}");
        let r = get(proxy.addr, &format!("{url}{target}")).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.proxy_error().as_deref(), Some("connection_terminated"));
        let seen = origin
            .stats
            .recorded_starting(&format!("GET {target} "))
            .len();
        let expected = 1 + stale_retries.min(1) as usize;
        assert_eq!(seen, expected, "stale_retries = {stale_retries}");
        assert_eq!(
            retries(&proxy, &origin, "failed").await,
            f64::from(stale_retries.min(1))
        );
        assert_eq!(retries(&proxy, &origin, "succeeded").await, 0.0);
        // Nothing stuck, and the next request is fine.
        assert_eq!(get(proxy.addr, &format!("{url}/after")).await.status, 200);
        assert_eq!(proxy.pools_sum("in_use").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_response_bytes_is_not_retried() {
    // The second request on a connection gets half a status line, then the
    // origin closes: a response had begun, so even a GET is not replayed.
    let origin = Origin::start(Behavior {
        raw_response_on: Some((2, b"HTTP/1.1 200 O")),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let url = origin.url();
    assert_eq!(get(proxy.addr, &format!("{url}/warm")).await.status, 200);
    idle_again(&proxy).await;
    let r = get(proxy.addr, &format!("{url}/half")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(origin.stats.recorded_starting("GET /half ").len(), 1);
    assert_eq!(retries(&proxy, &origin, "succeeded").await, 0.0);
    assert_eq!(get(proxy.addr, &format!("{url}/after")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayable_requests_are_retried_and_others_are_not() {
    // Every second request on a connection is read and dropped unanswered.
    let origin = Origin::start(Behavior {
        kill_request: Some(2),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[retry]\nretry_body_buffer = \"64KiB\"\n").await;
    let url = origin.url();
    let ten_k = vec![b'p'; 10 * 1024];

    // A first GET opens connection A.
    assert_eq!(get(proxy.addr, &format!("{url}/warm")).await.status, 200);
    // GET: killed on A, sent again on B.
    let r = get(proxy.addr, &format!("{url}/get")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // PUT with a 10 KiB body: killed on B, replayed on C with its body.
    let r = request(proxy.addr, "PUT", &format!("{url}/put"), &[], &ten_k).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let puts = origin.stats.recorded_starting("PUT ");
    assert_eq!(puts.len(), 2);
    assert!(
        puts.iter().all(|p| p.body == ten_k),
        "the replay carried the same body"
    );
    // POST: killed on C, never replayed.
    let r = request(proxy.addr, "POST", &format!("{url}/post"), &[], b"order=1").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("connection_terminated"));
    assert_eq!(
        origin.stats.recorded_starting("POST ").len(),
        1,
        "the origin saw the POST once"
    );
    // POST with an idempotency key: replayable.
    assert_eq!(get(proxy.addr, &format!("{url}/warm2")).await.status, 200);
    let r = request(
        proxy.addr,
        "POST",
        &format!("{url}/keyed"),
        &["Idempotency-Key: k-42"],
        b"order=2",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(origin.stats.recorded_starting("POST /keyed").len(), 2);
    // PUT larger than retry_body_buffer: streamed, so not replayable.
    let big = vec![b'q'; 100 * 1024];
    let r = request(proxy.addr, "PUT", &format!("{url}/big"), &[], &big).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("connection_terminated"));
    assert_eq!(origin.stats.recorded_starting("PUT /big").len(), 1);

    assert_eq!(retries(&proxy, &origin, "succeeded").await, 3.0);
    assert_eq!(retries(&proxy, &origin, "failed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_be_replayed_avoid_long_idle_connections() {
    let origin = Origin::start(Behavior {
        idle_close: Some(Duration::from_secs(1)),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start(
        "",
        "[pool]\nlearn_idle_timeout = false\nidle_timeout = \"30s\"\n[retry]\nunsafe_max_idle_age = \"500ms\"\n",
    )
    .await;
    let url = origin.url();
    // POSTs 1.2 s apart, GETs between them: each GET finds the POST's
    // connection 0.6 s idle (fine for a GET), each POST finds the GET's
    // connection 0.6 s idle (too old for a POST).
    for i in 0..5 {
        let r = request(proxy.addr, "POST", &format!("{url}/post{i}"), &[], b"x=1").await;
        assert_eq!(r.status, 200, "POST {i}: {}", r.text());
        tokio::time::sleep(Duration::from_millis(600)).await;
        let r = get(proxy.addr, &format!("{url}/get{i}")).await;
        assert_eq!(r.status, 200, "GET {i}: {}", r.text());
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let posts = origin.stats.recorded_starting("POST ");
    assert_eq!(posts.len(), 5);
    assert!(
        posts.iter().all(|p| p.index == 1),
        "every POST on a fresh connection: {posts:?}"
    );
    let reused_gets = origin
        .stats
        .recorded_starting("GET ")
        .iter()
        .filter(|g| g.index > 1)
        .count();
    assert!(
        reused_gets >= 4,
        "GETs reuse connections ({reused_gets} of 5)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_are_retried_within_stale_retries() {
    let origin = Origin::start(Behavior {
        reset_request: Some(2),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[retry]\nstale_retries = 1\n").await;
    for i in 0..10 {
        let r = get(proxy.addr, &format!("{}/r{i}", origin.url())).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    // Each request reached the origin at most 1 + stale_retries times.
    for i in 0..10 {
        let seen = origin.stats.recorded_starting(&format!("GET /r{i} ")).len();
        assert!((1..=2).contains(&seen), "/r{i} seen {seen} times");
    }
    assert!(origin.stats.killed() >= 4);
    assert_eq!(
        retries(&proxy, &origin, "succeeded").await,
        origin.stats.killed() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_retries_zero_disables_retry() {
    let origin = Origin::start(Behavior {
        kill_request: Some(2),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[retry]\nstale_retries = 0\n").await;
    assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
    let r = get(proxy.addr, &format!("{}/again", origin.url())).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.proxy_error().as_deref(), Some("connection_terminated"));
    assert_eq!(origin.stats.recorded_starting("GET /again").len(), 1);
}
